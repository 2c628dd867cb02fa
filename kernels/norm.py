"""Per-feature and per-row normalisation: affine (Standardize, MinMaxScale,
BatchNorm), feature gathering (Select), LayerNorm."""
import math

from numba import njit


@njit(cache=True)
def affine(x, scale, shift, out):
    """out[i, j] = x[i, j] * scale[j] + shift[j] (out may be x)."""
    n, m = x.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = float(x[i, j]) * scale[j] + shift[j]


@njit(cache=True)
def gather(x, idx, out):
    """out[i, j] = x[i, idx[j]] (idx holds feature numbers as float32, exact below 2**24)."""
    n, m = out.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = x[i, int(idx[j])]


@njit(cache=True, inline="always")
def _row_mean(x, i, m):
    """The mean of row i of x[:, :m], in float64."""
    s = 0.0
    for j in range(m):
        s += x[i, j]
    return s / m


@njit(cache=True, inline="always")
def _row_rstd(x, i, m, mean, eps):
    """1 / sqrt(variance + eps) of row i of x[:, :m] about its mean, in float64; inf for a
    constant row with eps 0, as numpy and torch give (never a worker's ZeroDivisionError)."""
    v = 0.0
    for j in range(m):
        d = x[i, j] - mean
        v += d * d
    d = v / m + eps
    return math.inf if d == 0.0 else 1.0 / math.sqrt(d)


@njit(cache=True)
def layernorm(x, weight, bias, eps, out):
    """out = (x - mean) / sqrt(var + eps) * weight + bias along axis 1 (float64 statistics)."""
    n, m = x.shape
    for i in range(n):
        mean = _row_mean(x, i, m)
        inv = _row_rstd(x, i, m, mean, eps)
        for j in range(m):
            out[i, j] = (x[i, j] - mean) * inv * weight[j] + bias[j]


@njit(cache=True)
def layernorm_stat(x, eps, rstd, out):
    """out[i, 0] = the mean of row i of x, or (rstd) 1 / sqrt(its variance + eps): LayerNorm's
    statistics, as ONNX LayerNormalization's Mean and InvStdDev outputs (float64, rounded once)."""
    n, m = x.shape
    for i in range(n):
        mean = _row_mean(x, i, m)
        out[i, 0] = _row_rstd(x, i, m, mean, eps) if rstd else mean
