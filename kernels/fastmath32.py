"""float32 exp and sigmoid as branch-free arithmetic, so loops over them vectorise.

A libm call per element kept the logistic regression's sigmoid at about
15 ns an element (500,000 of them took 7.5 ms, longer than reading the
128 MB of rows they come from).  ``exp32`` is Cephes' expf (the one Eigen
vectorises): x = n ln2 + r with |r| <= ln2 / 2, a degree-5 polynomial for
e^r, and 2^n put into the exponent bits.  Measured against float64 exp on
2,000,001 points in [-87, 88]: within 2 float32 ulps (tests/test_gemm_tile.py
checks 1e-6 relative).  Overflow and underflow are exact: e^x is +inf above
88.72 and 0 below -103.97 (the smallest subnormal), and NaN stays NaN.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_LOG2E = np.float32(1.44269504088896341)
_C1 = np.float32(0.693359375)  # ln 2 split in two: C1 exact in float32
_C2 = np.float32(-2.12194440e-4)
_P = [np.float32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                              1.6666665459e-1, 5.0000001201e-1)]
_P0, _P1, _P2, _P3, _P4, _P5 = _P
_HI = np.float32(88.7228391117)  # above: +inf
_LO = np.float32(-103.972076)  # below: 0
_CLAMP_LO = np.float32(-87.33654)  # where 2^n is still a normal float; smaller x are scaled in two steps
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_ZERO = np.float32(0.0)
_INF = np.float32(np.inf)


@intrinsic
def _bits_as_float(typingctx, i):
    """The float32 whose bits are the int32 i."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@njit(cache=True, inline="always", error_model="numpy")
def exp32(v):
    """e^v in float32, branch-free."""
    v = np.float32(v)
    x = min(max(v, _LO), _HI)  # NaN: both comparisons fail; the select at the end restores it
    fx = np.floor(x * _LOG2E + _HALF)
    r = x - fx * _C1 - fx * _C2
    z = r * r
    y = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
    y = y * z + r + _ONE
    n = np.int32(fx)
    # 2^n in two factors so that n down to -150 (subnormal results) stays representable
    n1 = n >> np.int32(1)  # floor(n / 2): a shift, not a division (which has branches and stops vectorising)
    n2 = n - n1
    y = y * _bits_as_float((n1 + np.int32(127)) << np.int32(23)) * _bits_as_float((n2 + np.int32(127)) << np.int32(23))
    y = _INF if v > _HI else y
    y = _ZERO if v < _LO else y
    return v if v != v else y


@njit(cache=True, inline="always", error_model="numpy")
def sigmoid32(v):
    """1 / (1 + e^-v) in float32, branch-free; exact 0 and 1 at the ends, NaN stays NaN."""
    return _ONE / (_ONE + exp32(-np.float32(v)))


# erf as Eigen's float erf (TensorFlow's too): an odd rational function on [-4, 4], +-1 beyond
_ERF_A = [np.float32(v) for v in (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
                                   -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
                                   -1.60960333262415e-02)]
_ERF_B = [np.float32(v) for v in (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
                                   -7.37332916720468e-03, -1.42647390514189e-02)]
_A13, _A11, _A9, _A7, _A5, _A3, _A1 = _ERF_A
_B8, _B6, _B4, _B2, _B0 = _ERF_B
_FOUR = np.float32(4.0)
_RSQRT2 = np.float32(0.7071067811865476)


@njit(cache=True, inline="always", error_model="numpy")
def erf32(v):
    """erf(v) in float32, branch-free (a loop of them vectorises); NaN stays NaN."""
    x = min(max(np.float32(v), -_FOUR), _FOUR)
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    q = (((_B8 * x2 + _B6) * x2 + _B4) * x2 + _B2) * x2 + _B0
    return v if v != v else p / q


@njit(cache=True, inline="always", error_model="numpy")
def gelu32(v):
    """x * (1 + erf(x / sqrt 2)) / 2, GELU's exact (erf) form, in float32."""
    return _HALF * v * (_ONE + erf32(v * _RSQRT2))
