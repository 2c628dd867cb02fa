"""Vector data movement the auto-vectoriser does not produce, emitted as LLVM IR (as tile.py's tile).

deinterleave2(src, even, odd, n): even[k] = src[2k], odd[k] = src[2k + 1] for k < n -- a row of an
image dealt to the two column phases of a stride-2 convolution.  Numba compiles that loop to scalar
moves (0.55 ns an element: a stride-2 depthwise convolution spent 85 % of its time there); here each
step loads two vectors and splits them with two shuffles.  Addresses are integers (``arr.ctypes.data``
+ byte offsets); nothing is assumed about alignment.
"""
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._isa import ISA, ISAS

V = ISAS[ISA][0]


def _deint_codegen(context, builder, signature, args):
    src, even, odd, n = args
    f32 = ir.FloatType()
    i64 = ir.IntType(64)
    vec = ir.VectorType(f32, V)
    four = ir.Constant(i64, 4)

    def vptr(base, elems):
        return builder.inttoptr(builder.add(base, builder.mul(elems, four)), vec.as_pointer())

    evens = ir.Constant(ir.VectorType(ir.IntType(32), V), list(range(0, 2 * V, 2)))
    odds = ir.Constant(ir.VectorType(ir.IntType(32), V), list(range(1, 2 * V, 2)))
    steps = builder.udiv(n, ir.Constant(i64, V))
    with cgutils.for_range(builder, steps) as loop:
        k = builder.mul(loop.index, ir.Constant(i64, V))
        a = builder.load(vptr(src, builder.mul(k, ir.Constant(i64, 2))), align=4)
        b = builder.load(vptr(src, builder.add(builder.mul(k, ir.Constant(i64, 2)), ir.Constant(i64, V))), align=4)
        builder.store(builder.shuffle_vector(a, b, evens), vptr(even, k), align=4)
        builder.store(builder.shuffle_vector(a, b, odds), vptr(odd, k), align=4)
    return context.get_dummy_value()


@intrinsic
def _deinterleave_vectors(typingctx, src, even, odd, n):
    """The whole vectors of deinterleave2: k < n - n % V."""
    sig = types.void(types.intp, types.intp, types.intp, types.intp)
    return sig, _deint_codegen


@njit(cache=True, inline="always")
def deinterleave2(src, even, odd, n):
    """even[k] = src[2k], odd[k] = src[2k + 1] for k < n (1-D float32 views; src holds 2n floats)."""
    _deinterleave_vectors(src.ctypes.data, even.ctypes.data, odd.ctypes.data, n)
    for k in range(n - n % V, n):
        even[k] = src[2 * k]
        odd[k] = src[2 * k + 1]
