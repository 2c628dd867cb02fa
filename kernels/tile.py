"""The register tile: C[mr, nr] (+)= A[mr, k] @ Bp[k, nr], emitted as LLVM IR.

One micro-kernel for every GEMM-shaped step (Linear, the LSTM's recurrent
product, convolutions' filter product).  B is NR = 2 V columns of a
row-major matrix, rows ldb floats apart -- for a weight, a *packed panel*
(ldb = NR: ``Bp[kk*NR + j] = W[c0 + j, kk]``, contiguous), so the tile
streams it with two vector loads per k.  A's rows are read where they lie (any row stride), one scalar
each per k, broadcast into the FMAs.  MR x 2 vector accumulators stay in
registers: on AVX-512 (V = 16) that is 12 x 32 in 24 zmm, the shape of
ONNX Runtime's MLAS kernel; on AVX2 + FMA (V = 8) 6 x 16 in 12 ymm, the
shape of BLIS's Haswell kernel; elsewhere (ARM64 NEON, V = 4) 6 x 8.

Numba's auto-vectoriser picks 256-bit vectors on AVX-512 and spills in a
tile this size, so the loop is written out here: ``<V x float>`` loads,
``llvm.fma``, and a ``switch`` on the run-time row count mr to a copy of
the loop specialised for it.  Copies exist for the row counts in ROWS
(12, 8, 4, 2, 1 on AVX-512); the drivers (gemm.py) cover any other count
with a few of them (11 = 8 + 2 + 1), so M = 1..32 (every latency row) runs
exactly its rows, no padding.  A copy for every count from 1 to 12 made
the cold compile 20 s longer (Numba optimises the tile again in every
function that links it).  The tile always writes NR columns: the drivers
point it at a buffer for a last, partial panel.

Plain IEEE arithmetic: fma rounds once, nothing assumes away NaN or Inf.
Addresses are integers (``arr.ctypes.data`` + byte offsets); leading
dimensions are in elements.
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _isa


ISA = _isa.ISA  # chosen once per process: kernels/_isa.py
V, MR = _isa.ISAS[ISA]
NR = 2 * V  # output columns of a packed panel (two vectors)
ROWS = tuple(sorted({MR, 8, 4, 2, 1} & set(range(1, MR + 1)), reverse=True))  # the tile's row counts, largest first
_NV = NR // V


def _emit(builder, m, args, indirect, bf16=False):
    """The tile for exactly m rows; indirect: B's row kk at b + table[kk] floats (ldb the table's address);
    bf16: B holds bfloat16 (2 bytes an element), widened to float32 by a shift as it is loaded."""
    a, lda, lka, b, ldb, c, ldc, k, accumulate, bias, relu = args
    f32 = ir.FloatType()
    i64 = ir.IntType(64)
    vec = ir.VectorType(f32, V)
    fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{V}f32")
    four = ir.Constant(i64, 4)

    def const(x):
        return ir.Constant(i64, x)

    def at(base, elems):  # the float at byte address base + 4 * elems
        return builder.inttoptr(builder.add(base, builder.mul(elems, four)), f32.as_pointer())

    def vat(base, elems):
        return builder.bitcast(at(base, elems), vec.as_pointer())

    acc = [[cgutils.alloca_once(builder, vec, name=f"acc{r}_{j}") for j in range(_NV)] for r in range(m)]
    rows_c = [builder.mul(const(r), ldc) for r in range(m)]
    rows_a = [builder.mul(const(r), lda) for r in range(m)]
    with builder.if_else(builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))) as (yes, no):
        with yes:
            for r in range(m):
                for j in range(_NV):
                    builder.store(builder.load(vat(c, builder.add(rows_c[r], const(j * V))), align=4), acc[r][j])
        with no:
            for r in range(m):
                for j in range(_NV):
                    builder.store(ir.Constant(vec, [0.0] * V), acc[r][j])
    splat_mask = ir.Constant(ir.VectorType(ir.IntType(32), V), [0] * V)
    with cgutils.for_range(builder, k) as loop:
        kk = loop.index
        if indirect:
            i64p = i64.as_pointer()
            row_b = builder.load(builder.inttoptr(builder.add(ldb, builder.mul(kk, ir.Constant(i64, 8))), i64p), align=8)
        else:
            row_b = builder.mul(kk, ldb)
        col_a = builder.mul(kk, lka)
        if bf16:
            hvec, wvec = ir.VectorType(ir.IntType(16), V), ir.VectorType(ir.IntType(32), V)
            sixteen = ir.Constant(wvec, [16] * V)
            bv = [builder.bitcast(builder.shl(builder.zext(builder.load(builder.inttoptr(
                builder.add(b, builder.mul(builder.add(row_b, const(j * V)), const(2))), hvec.as_pointer()), align=2),
                wvec), sixteen), vec) for j in range(_NV)]
        else:
            bv = [builder.load(vat(b, builder.add(row_b, const(j * V))), align=4) for j in range(_NV)]
        for r in range(m):
            s = builder.load(at(a, builder.add(rows_a[r], col_a)), align=4)
            splat = builder.shuffle_vector(builder.insert_element(ir.Constant(vec, ir.Undefined), s, const(0)),
                                           ir.Constant(vec, ir.Undefined), splat_mask)
            for j in range(_NV):
                builder.store(builder.call(fma, [splat, bv[j], builder.load(acc[r][j])]), acc[r][j])
    # the epilogue, on the registers: + bias[0:NR] (bias an address, 0: none), then ReLU when asked
    # (x <= 0 -> 0 as an ordered comparison: a NaN fails it and stays NaN)
    with builder.if_then(builder.icmp_unsigned("!=", bias, const(0))):
        bvec = [builder.load(vat(bias, const(j * V)), align=4) for j in range(_NV)]
        for r in range(m):
            for j in range(_NV):
                builder.store(builder.fadd(builder.load(acc[r][j]), bvec[j]), acc[r][j])
    with builder.if_then(builder.icmp_unsigned("!=", relu, ir.Constant(relu.type, 0))):
        zero = ir.Constant(vec, [0.0] * V)
        for r in range(m):
            for j in range(_NV):
                v = builder.load(acc[r][j])
                builder.store(builder.select(builder.fcmp_ordered("<=", v, zero), zero, v), acc[r][j])
    for r in range(m):
        for j in range(_NV):
            builder.store(builder.load(acc[r][j]), vat(c, builder.add(rows_c[r], const(j * V))), align=4)


def _make_tile(indirect, bf16=False):
    def codegen(context, builder, signature, args):
        a_, lda_, lka_, b_, ldb_, c_, ldc_, k_, mr_, acc_, bias_, relu_ = args
        end = builder.append_basic_block("tile.end")
        switch = builder.switch(mr_, end)
        for m in ROWS:
            block = builder.append_basic_block(f"tile.m{m}")
            switch.add_case(ir.Constant(mr_.type, m), block)
            builder.position_at_end(block)
            _emit(builder, m, (a_, lda_, lka_, b_, ldb_, c_, ldc_, k_, acc_, bias_, relu_), indirect, bf16)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    def typer(typingctx, a, lda, lka, b, ldb, c, ldc, k, mr, accumulate, bias, relu):
        sig = types.void(types.intp, types.intp, types.intp, types.intp, types.intp, types.intp, types.intp,
                         types.intp, types.intp, types.boolean, types.intp, types.boolean)
        return sig, codegen

    return typer


tile = intrinsic(_make_tile(False))
tile.__doc__ = """tile(a, lda, lka, b, ldb, c, ldc, k, mr, accumulate, bias, relu):
C[mr, NR] = relu?(C (if accumulate) + A[mr, k] @ B[k, NR] + bias); a, b, c, bias: addresses (bias NR
floats, 0: none); mr one of ROWS (any other: nothing is computed); A[r, kk] at a + (r * lda + kk * lka)
floats (lka = 1: rows as they lie; lda = 1, lka = MR: packed); B's rows ldb floats apart (NR in a packed
panel)."""
tile_bf16 = intrinsic(_make_tile(False, True))
tile_bf16.__doc__ = "The same, B in bfloat16 (b an address of 2-byte elements, ldb in elements)."
tile_indirect = intrinsic(_make_tile(True))
tile_indirect.__doc__ = """The same, B's row kk at b + table[kk] floats, ldb the address of the int64 table: a
convolution's columns read where they lie in the padded image, no im2col copy."""


@njit(cache=True, inline="always")
def next_rows(left):
    """The largest of ROWS that fits in ``left`` rows: tile() covers any row count with a few calls."""
    for cand in ROWS:
        if cand <= left:
            return cand
    return 1


@njit(cache=True, inline="always")
def tile_rows(a, lda, lka, b, ldb, c, ldc, k, mr, accumulate, bias, relu, bf16=False):
    """tile() (tile_bf16(): bf16, a constant where it is inlined) for any mr in 1..MR."""
    done = 0
    while done < mr:
        v = next_rows(mr - done)
        if bf16:
            tile_bf16(a + 4 * done * lda, lda, lka, b, ldb, c + 4 * done * ldc, ldc, k, v, accumulate, bias, relu)
        else:
            tile(a + 4 * done * lda, lda, lka, b, ldb, c + 4 * done * ldc, ldc, k, v, accumulate, bias, relu)
        done += v


@njit(cache=True, inline="always")
def tile_rows_indirect(a, lda, lka, b, table, c, ldc, k, mr, accumulate, bias, relu):
    """tile_indirect() for any mr in 1..MR."""
    done = 0
    while done < mr:
        v = next_rows(mr - done)
        tile_indirect(a + 4 * done * lda, lda, lka, b, table, c + 4 * done * ldc, ldc, k, v, accumulate, bias, relu)
        done += v
