"""The integer register tile: C[mr, NR] (+)= dequantized (Xq[mr, K] . Wq[K, NR]), emitted as LLVM IR.

Xq holds activations quantized per row (qgemm.quantize_rows), Wq a panel of qformat.py: groups of 4 input
features, NR columns x 4 bytes each.  One vector instruction sequence takes a CHUNK of a group (CHUNK / 4
columns x 4 features) and one row's 4 activations broadcast to every lane, and adds the 4-way dot product to
each column's int32 accumulator:
- "vnni512" (AVX-512 VNNI): vpdpbusd on 64 bytes.  It multiplies unsigned by signed bytes, so activations
  are stored offset into uint8 (q + 128) and each column's 128 * sum(q_w) is taken off in the epilogue.
- "avx2": vpmaddubsw + vpmaddwd on 32 bytes, llama.cpp's sign trick: |x| (unsigned) times w * sign(x)
  (signed); |x|, |w| <= 127 keep vpmaddubsw's int16 pair sums below saturation.
- "portable": no vectors here; qgemm.py runs plain loops over the same layout.
All three give the same int32 sums, and the same float32 epilogue in the same order, so they agree exactly:
int8: y = float(sum) * s_w[j] * s_x[r] (+ bias[j]) (c + y when accumulating); int4: per block of 32
features f += float(sum) * s_w[block, j], then y = f * s_x[r] (+ bias, + c).  Plain IEEE arithmetic (no
fma contraction), so the portable loops reproduce it.

Chosen once per process from the CPU's features, or forced with SHMRT_QUANT_ISA (vnni512, avx2, portable).
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._isa import QISA, QISAS
from .tile import NR

QROWS = (4, 2, 1)  # the tile's row counts (any other count: a few calls)
QMR = QROWS[0]


CHUNK = QISAS[QISA]
NPG = NR * 4 // CHUNK  # chunks of a group
OFFSET = QISA == "vnni512"  # activations stored as uint8 q + 128
LANES = CHUNK // 4  # int32 lanes (columns) of a chunk


def _emit(builder, m, args, bits):
    xq, ldx, wp, groups, c, ldc, sc, xs, bias, accumulate = args
    i8, i16, i32, i64, f32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()
    vb, vi, vf = ir.VectorType(i8, CHUNK), ir.VectorType(i32, LANES), ir.VectorType(f32, LANES)
    mod = builder.module

    def const(x):
        return ir.Constant(i64, x)

    def addr(base, nbytes):
        return builder.add(base, nbytes if isinstance(nbytes, ir.Value) else const(nbytes))

    def load(ty, base, nbytes, align=1):
        return builder.load(builder.inttoptr(addr(base, nbytes), ty.as_pointer()), align=align)

    if QISA == "vnni512":
        dp = cgutils.get_or_insert_function(mod, ir.FunctionType(vi, [vi, vi, vi]), "llvm.x86.avx512.vpdpbusd.512")

        def dot(acc, xb, w):
            return builder.call(dp, [acc, xb, builder.bitcast(w, vi)])
    else:
        vs = ir.VectorType(i16, 16)
        maddubs = cgutils.get_or_insert_function(mod, ir.FunctionType(vs, [vb, vb]), "llvm.x86.avx2.pmadd.ub.sw")
        maddwd = cgutils.get_or_insert_function(mod, ir.FunctionType(vi, [vs, vs]), "llvm.x86.avx2.pmadd.wd")
        sign = cgutils.get_or_insert_function(mod, ir.FunctionType(vb, [vb, vb]), "llvm.x86.avx2.psign.b")
        absb = cgutils.get_or_insert_function(mod, ir.FunctionType(vb, [vb, ir.IntType(1)]), "llvm.abs.v32i8")
        ones = ir.Constant(vs, [1] * 16)

        def dot(acc, xb, w):
            xv = builder.bitcast(xb, vb)
            ax = builder.call(absb, [xv, ir.Constant(ir.IntType(1), 0)])
            return builder.add(acc, builder.call(maddwd, [builder.call(maddubs, [ax, builder.call(sign, [w, xv])]),
                                                          ones]))

    zero_i = ir.Constant(vi, [0] * LANES)
    splat0 = ir.Constant(ir.VectorType(i32, LANES), [0] * LANES)

    def bcast(r, g_bytes):  # row r's 4 activations at byte g_bytes, in every lane
        v = load(i32, builder.add(xq, builder.mul(const(r), ldx)), g_bytes)
        return builder.shuffle_vector(builder.insert_element(ir.Constant(vi, ir.Undefined), v, const(0)),
                                      ir.Constant(vi, ir.Undefined), splat0)

    def vload(base, nbytes):
        return load(vb, base, nbytes)

    def group(g_bytes, ws, iacc):  # one group of 4 features: chunks ws, every row
        for r in range(m):
            xb = bcast(r, g_bytes)
            for v in range(NPG):
                builder.store(dot(builder.load(iacc[r][v]), xb, ws[v]), iacc[r][v])

    def fvec(base, nbytes):
        return load(vf, base, nbytes, 4)

    def true_sum(iacc_rv, blk_sc, v):  # int32 sum, less the uint8 offset's correction -> float
        s = builder.load(iacc_rv)
        if OFFSET:
            s = builder.sub(s, load(vi, blk_sc, 4 * (NR + v * LANES), 4))
        return builder.sitofp(s, vf)

    iacc = [[cgutils.alloca_once(builder, vi, name=f"i{r}_{v}") for v in range(NPG)] for r in range(m)]
    out = []
    if bits == 8:
        for r in range(m):
            for v in range(NPG):
                builder.store(zero_i, iacc[r][v])
        with cgutils.for_range(builder, groups) as loop:
            gb = builder.mul(loop.index, const(4))
            wbase = addr(wp, builder.mul(loop.index, const(NR * 4)))
            group(gb, [vload(wbase, v * CHUNK) for v in range(NPG)], iacc)
        for r in range(m):
            out.append([builder.fmul(true_sum(iacc[r][v], sc, v), fvec(sc, 4 * v * LANES)) for v in range(NPG)])
    else:
        facc = [[cgutils.alloca_once(builder, vf, name=f"f{r}_{v}") for v in range(NPG)] for r in range(m)]
        for r in range(m):
            for v in range(NPG):
                builder.store(ir.Constant(vf, [0.0] * LANES), facc[r][v])
        lowmask, eight, four = (ir.Constant(vb, [x] * CHUNK) for x in (15, 8, 4))
        with cgutils.for_range(builder, builder.udiv(groups, const(8))) as loop:
            blk = loop.index
            for r in range(m):
                for v in range(NPG):
                    builder.store(zero_i, iacc[r][v])
            bbase = addr(wp, builder.mul(blk, const(16 * NR)))  # a block: 32 features x NR columns / 2
            pieces = {}
            for g in range(8):
                ws = []
                for v in range(NPG):
                    ch = g * NPG + v
                    if ch // 2 not in pieces:
                        pieces[ch // 2] = vload(bbase, (ch // 2) * CHUNK)
                    raw = pieces[ch // 2]
                    nib = builder.and_(raw, lowmask) if ch % 2 == 0 else builder.lshr(raw, four)
                    ws.append(builder.sub(nib, eight))
                group(builder.add(builder.mul(blk, const(32)), const(4 * g)), ws, iacc)
            bsc = addr(sc, builder.mul(blk, const(4 * 2 * NR)))
            for r in range(m):
                for v in range(NPG):
                    t = builder.fmul(true_sum(iacc[r][v], bsc, v), fvec(bsc, 4 * v * LANES))
                    builder.store(builder.fadd(builder.load(facc[r][v]), t), facc[r][v])
        for r in range(m):
            out.append([builder.load(facc[r][v]) for v in range(NPG)])
    # epilogue: * the row's scale, + bias, + C when accumulating
    has_bias = builder.icmp_unsigned("!=", bias, const(0))
    acc_on = builder.icmp_unsigned("!=", accumulate, ir.Constant(accumulate.type, 0))
    for r in range(m):
        sx = load(f32, xs, 4 * r, 4)
        sxv = builder.shuffle_vector(builder.insert_element(ir.Constant(vf, ir.Undefined), sx, const(0)),
                                     ir.Constant(vf, ir.Undefined), splat0)
        crow = builder.add(c, builder.mul(builder.mul(const(r), ldc), const(4)))
        for v in range(NPG):
            y = builder.fmul(out[r][v], sxv)
            slot = cgutils.alloca_once_value(builder, y)
            with builder.if_then(has_bias):
                builder.store(builder.fadd(builder.load(slot), fvec(bias, 4 * v * LANES)), slot)
            with builder.if_then(acc_on):
                builder.store(builder.fadd(fvec(crow, 4 * v * LANES), builder.load(slot)), slot)
            builder.store(builder.load(slot), builder.inttoptr(addr(crow, 4 * v * LANES), vf.as_pointer()), align=4)


def _make(bits):
    def codegen(context, builder, signature, args):
        mr = args[-1]
        end = builder.append_basic_block("qtile.end")
        switch = builder.switch(mr, end)
        for m in QROWS:
            block = builder.append_basic_block(f"qtile.m{m}")
            switch.add_case(ir.Constant(mr.type, m), block)
            builder.position_at_end(block)
            _emit(builder, m, args[:-1], bits)
            builder.branch(end)
        builder.position_at_end(end)
        return context.get_dummy_value()

    def typer(typingctx, xq, ldx, wp, groups, c, ldc, sc, xs, bias, accumulate, mr):
        i = types.intp
        return types.void(i, i, i, i, i, i, i, i, i, types.boolean, i), codegen

    return intrinsic(typer)


qtile8 = _make(8)
qtile4 = _make(4)
qtile8.__doc__ = """qtile8(xq, ldx, wp, groups, c, ldc, sc, xs, bias, accumulate, mr): C[mr, NR] (+)= the int8 panel
at wp (groups of 4 features) times rows Xq (ldx bytes apart), dequantized with the panel's scales at sc and
the rows' at xs, + bias (address of NR floats, 0: none); addresses are integers, mr one of QROWS."""
qtile4.__doc__ = "The same for an int4 panel (groups a multiple of 8: whole blocks of 32 features)."


@njit(cache=True, inline="always")
def qtile_rows(bits, xq, ldx, wp, groups, c, ldc, sc, xs, bias, accumulate, mr):
    """qtile8 / qtile4 for any mr in 1..QMR."""
    done = 0
    while done < mr:
        v = 1
        for cand in QROWS:
            if cand <= mr - done:
                v = cand
                break
        if bits == 8:
            qtile8(xq + done * ldx, ldx, wp, groups, c + 4 * done * ldc, ldc, sc, xs + 4 * done, bias, accumulate, v)
        else:
            qtile4(xq + done * ldx, ldx, wp, groups, c + 4 * done * ldc, ldc, sc, xs + 4 * done, bias, accumulate, v)
        done += v
