"""Elementwise activations, by code, and the fused bias + activation epilogue.

Codes (shared with the planner): 0 identity, 1 ReLU, 2 Sigmoid, 3 Tanh,
4 GELU (erf, exact), 5 GELU (tanh approximation).  Math is done in float64
and rounded once to float32.
"""
import math

from numba import njit

IDENTITY, RELU, SIGMOID, TANH, GELU, GELU_TANH = range(6)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def act1(v, act):
    if act == RELU:
        return v if v > 0.0 else 0.0
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


@njit(cache=True)
def bias_act(out, b, act):
    """out[i, j] = act(out[i, j] + b[j]) in place; b may be empty (no bias)."""
    n, m = out.shape
    has_b = b.shape[0] > 0
    if act == IDENTITY and not has_b:
        return
    for i in range(n):
        for j in range(m):
            v = float(out[i, j])
            if has_b:
                v += b[j]
            out[i, j] = act1(v, act)


@njit(cache=True)
def apply_act(x, out, act):
    """out = act(x), elementwise over 2-D views (out may be x)."""
    n, m = x.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = act1(float(x[i, j]), act)
