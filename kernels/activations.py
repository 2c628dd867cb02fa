"""Elementwise activations, by code, and the fused bias + activation epilogue.

Codes: the index of the activation's name in ACT_NAMES -- the one table
of them; the instruction set (shmrt/compile/isa.py) and the layers name
activations from it.  LeakyReLU takes its negative slope as ``alpha``
(ACT steps only; the others ignore it, so the fused epilogues pass 0); Hardtanh clamps to
[alpha, beta] (min_val, max_val: min(max(v, alpha), beta), so beta wins where alpha > beta, as
ONNX Clip), hard_sigmoid is ONNX HardSigmoid's max(0, min(1, alpha * v + beta)).
Math is done in float64 and rounded once to float32 -- except over a row
(add_act_row, bias_act_row, apply_act): there the piecewise-linear ones
(ReLU, ReLU6, Hardswish, Hardsigmoid, LeakyReLU) are float32 loops that
vectorise, and sigmoid and SiLU use fastmath32's float32 exp: within 2
ulps (a libm exp per element cost 15 ns, more than reading the row).
"""
import math

import numpy as np
from numba import njit

from .fastmath32 import gelu32, sigmoid32

ACT_NAMES = ("identity", "relu", "sigmoid", "tanh", "gelu", "gelu_tanh", "silu", "hardswish", "leaky_relu", "relu6",
             "hardsigmoid", "hardtanh", "hard_sigmoid")
(IDENTITY, RELU, SIGMOID, TANH, GELU, GELU_TANH, SILU, HARDSWISH, LEAKY_RELU, RELU6, HARDSIGMOID, HARDTANH,
 HARD_SIGMOID) = range(len(ACT_NAMES))
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def _sigmoid(v):
    if v >= 0.0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@njit(cache=True, inline="always")
def _relu6(v):
    return 0.0 if v < 0.0 else (6.0 if v > 6.0 else v)  # NaN fails both tests and stays NaN


@njit(cache=True, inline="always")
def act1(v, act, alpha=0.0, beta=0.0):
    if act == RELU:
        return 0.0 if v <= 0.0 else v  # NaN stays NaN, as in IEEE arithmetic and PyTorch
    if act == SIGMOID:
        return _sigmoid(v)
    if act == TANH:
        return math.tanh(v)
    if act == GELU:
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))
    if act == GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    if act == SILU:
        return v * _sigmoid(v)
    if act == HARDSWISH:  # x * relu6(x + 3) / 6, as in PyTorch
        return v * _relu6(v + 3.0) / 6.0
    if act == RELU6:
        return _relu6(v)
    if act == HARDSIGMOID:
        return _relu6(v + 3.0) / 6.0
    if act == LEAKY_RELU:
        return v if v >= 0.0 else v * alpha  # NaN: the comparison fails, NaN * alpha is NaN
    if act == HARDTANH:  # NaN fails both tests and stays NaN
        t = alpha if v < alpha else v
        return beta if t > beta else t
    if act == HARD_SIGMOID:
        t = alpha * v + beta
        return 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)
    return v


@njit(cache=True, inline="always", error_model="numpy")
def _sigmoid_or_silu(v, act):
    """sigmoid(v) for SIGMOID, v * sigmoid(v) for SILU, in float32 (fastmath32): a loop of them vectorises."""
    return sigmoid32(v) if act == SIGMOID else v * sigmoid32(v)


@njit(cache=True, inline="always")
def _relu6_32(v):
    """min(max(v, 0), 6) in float32; NaN fails both tests and stays NaN."""
    return np.float32(0.0) if v < np.float32(0.0) else (np.float32(6.0) if v > np.float32(6.0) else v)


@njit(cache=True, inline="always")
def _vectorised(act):
    """The activations add_act_row computes in float32, one loop each, which vectorise."""
    return act == IDENTITY or act == RELU or act == RELU6 or act == HARDSWISH or act == HARDSIGMOID or act == GELU


@njit(cache=True, inline="always")
def bias_act_row(o, b, act):
    """o[j] = act(o[j] + b[j]) in place, one row; b may be empty.  The piecewise-linear activations
    stay in float32 and vectorise (add_act_row); sigmoid and SiLU use fastmath32; the others go through
    act1.  Inlined: a call per row costs more than a narrow row (logreg's one column)."""
    has_b = b.shape[0] > 0
    if _vectorised(act):
        if has_b:
            for j in range(o.shape[0]):
                o[j] += b[j]
        if act != IDENTITY:
            add_act_row(o, o, np.float32(0.0), act)
        return
    if act == SIGMOID or act == SILU:
        for j in range(o.shape[0]):
            v = o[j] + (b[j] if has_b else np.float32(0.0))
            o[j] = _sigmoid_or_silu(v, act)
        return
    for j in range(o.shape[0]):
        v = float(o[j])
        if has_b:
            v += b[j]
        o[j] = act1(v, act)


@njit(cache=True, inline="always")
def add_act_row(dst, src, bb, act):
    """dst[j] = act(src[j] + bb), one row with one bias for all of it (a convolution's channel); dst may
    be src.  Identity, ReLU, ReLU6, Hardswish, Hardsigmoid and GELU stay in float32, one loop each, and
    vectorise; the others go through act1 per element.  That loop does not vectorise: when act1 grew
    from 6 to 11 functions a CNN's calls took 1.5-1.6x as long, and ReLU6 through it cost MobileNetV2's
    expansion convolutions 5-8x their GEMM (7.5 ns an element; bench/conv_kernel.py)."""
    n = dst.shape[0]
    zero, three, six = np.float32(0.0), np.float32(3.0), np.float32(6.0)
    if act == IDENTITY:
        for j in range(n):
            dst[j] = src[j] + bb
    elif act == RELU:
        for j in range(n):
            v = src[j] + bb
            dst[j] = zero if v <= zero else v  # NaN stays NaN
    elif act == RELU6:
        for j in range(n):
            dst[j] = _relu6_32(src[j] + bb)
    elif act == HARDSWISH:  # x * relu6(x + 3) / 6, as in PyTorch
        for j in range(n):
            v = src[j] + bb
            dst[j] = v * _relu6_32(v + three) / six
    elif act == HARDSIGMOID:
        for j in range(n):
            dst[j] = _relu6_32(src[j] + bb + three) / six
    elif act == GELU:  # fastmath32's erf: within 5e-7 of erf (1.3e-6 of GELU up to |x| = 10)
        for j in range(n):
            dst[j] = gelu32(src[j] + bb)
    else:
        for j in range(n):
            dst[j] = act1(float(src[j]) + bb, act)


@njit(cache=True, error_model="numpy")
def bias_act(out, b, act):
    """out[i, j] = act(out[i, j] + b[j]) in place; b may be empty (no bias)."""
    if act == IDENTITY and b.shape[0] == 0:
        return
    n, m = out.shape
    if m < 16 and (act == SIGMOID or act == SILU):  # narrow (a regression's one column): down the columns
        for j in range(m):
            bj = b[j] if b.shape[0] > 0 else np.float32(0.0)
            for i in range(n):
                v = out[i, j] + bj
                out[i, j] = _sigmoid_or_silu(v, act)
        return
    for i in range(n):
        bias_act_row(out[i], b, act)


@njit(cache=True, error_model="numpy")
def apply_act(x, out, act, alpha, beta):
    """out = act(x), elementwise over 2-D views (out may be x); alpha: LeakyReLU's slope, Hardtanh's
    min_val; beta: Hardtanh's max_val (alpha and beta: ONNX HardSigmoid's)."""
    n, m = x.shape
    if _vectorised(act):
        for i in range(n):
            add_act_row(out[i], x[i], np.float32(0.0), act)
        return
    if act == LEAKY_RELU:
        a32, zero = np.float32(alpha), np.float32(0.0)
        for i in range(n):
            for j in range(m):
                v = x[i, j]
                out[i, j] = v if v >= zero else v * a32  # NaN: the comparison fails, NaN * alpha is NaN
        return
    a, bt = float(alpha), float(beta)
    if act == SIGMOID or act == SILU:
        for i in range(n):
            for j in range(m):
                out[i, j] = _sigmoid_or_silu(x[i, j], act)
        return
    for i in range(n):
        for j in range(m):
            out[i, j] = act1(float(x[i, j]), act, a, bt)
