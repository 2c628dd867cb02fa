"""Elementwise activations, by code, and the fused bias + activation epilogue.

Codes (shared with the planner): 0 identity, 1 ReLU, 2 Sigmoid, 3 Tanh,
4 GELU (erf, exact), 5 GELU (tanh approximation).  Math is done in float64
and rounded once to float32.
"""
import math

import numpy as np
from numba import njit

IDENTITY, RELU, SIGMOID, TANH, GELU, GELU_TANH = range(6)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def act1(v, act):
    if act == RELU:
        return 0.0 if v <= 0.0 else v  # NaN stays NaN, as in IEEE arithmetic and PyTorch
    if act == SIGMOID:
        if v >= 0.0:
            return 1.0 / (1.0 + math.exp(-v))
        e = math.exp(v)
        return e / (1.0 + e)
    if act == TANH:
        return math.tanh(v)
    if act == GELU:
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    if act == GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    return v


@njit(cache=True, inline="always")
def bias_act_row(o, b, act):
    """o[j] = act(o[j] + b[j]) in place, one row; b may be empty.  Identity and
    ReLU stay in float32 and vectorise; the others go through act1.  Inlined:
    a call per row costs more than a narrow row (logreg's one column)."""
    has_b = b.shape[0] > 0
    if act == IDENTITY or act == RELU:
        if has_b:
            for j in range(o.shape[0]):
                o[j] += b[j]
        if act == RELU:
            zero = np.float32(0.0)
            for j in range(o.shape[0]):
                v = o[j]
                o[j] = zero if v <= zero else v  # NaN stays NaN
        return
    for j in range(o.shape[0]):
        v = float(o[j])
        if has_b:
            v += b[j]
        o[j] = act1(v, act)


@njit(cache=True)
def bias_act(out, b, act):
    """out[i, j] = act(out[i, j] + b[j]) in place; b may be empty (no bias)."""
    if act == IDENTITY and b.shape[0] == 0:
        return
    for i in range(out.shape[0]):
        bias_act_row(out[i], b, act)


@njit(cache=True)
def apply_act(x, out, act):
    """out = act(x), elementwise over 2-D views (out may be x)."""
    n, m = x.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = act1(float(x[i, j]), act)
