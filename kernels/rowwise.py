"""Row-wise postprocessing over the feature axis: Softmax, LogSoftmax, ArgMax, TopK.

Each takes the rows it is given (a 2-D view) and writes the matching rows
of its output; sums are float64.
"""
import math

import numpy as np
from numba import njit


@njit(cache=True)
def softmax(x, out, log, m, inner):
    """out = softmax(x) (or log_softmax when log) over the middle dim of each row of x seen as
    [outer, m, inner] (m == width, inner == 1: along axis 1)."""
    n, width = x.shape
    outer = width // (m * inner)
    for i in range(n):
        for o in range(outer):
            for t in range(inner):
                p = o * m * inner + t
                mx = -np.inf
                for j in range(m):
                    if x[i, p + j * inner] > mx:
                        mx = x[i, p + j * inner]
                s = 0.0
                for j in range(m):
                    s += math.exp(float(x[i, p + j * inner]) - mx)
                if log:
                    ls = math.log(s)
                    for j in range(m):
                        out[i, p + j * inner] = float(x[i, p + j * inner]) - mx - ls
                else:
                    for j in range(m):
                        out[i, p + j * inner] = math.exp(float(x[i, p + j * inner]) - mx) / s


@njit(cache=True)
def argmax(x, out, last):
    """out[i] = index of the largest x[i, :] (the first on ties, the last with ``last``; the first NaN
    wins, like numpy)."""
    n, m = x.shape
    for i in range(n):
        best = 0
        for j in range(1, m):
            if x[i, best] != x[i, best]:
                break
            if x[i, j] > x[i, best] or x[i, j] != x[i, j] or (last and x[i, j] == x[i, best]):
                best = j
        out[i] = best


@njit(cache=True, inline="always")
def _above(a, b):
    """a ranks above b: larger, with NaN above every number (as torch.topk and argmax rank it)."""
    return a > b or (a != a and b == b)


@njit(cache=True)
def topk(x, values, indices):
    """The k = values.shape[1] largest per row, descending (NaN first); ties keep the lower index."""
    n, m = x.shape
    k = values.shape[1]
    for i in range(n):
        cnt = 0
        for j in range(m):
            v = x[i, j]
            if cnt == k and not _above(v, values[i, k - 1]):
                continue
            p = cnt if cnt < k else k - 1
            while p > 0 and _above(v, values[i, p - 1]):
                if p < k:
                    values[i, p] = values[i, p - 1]
                    indices[i, p] = indices[i, p - 1]
                p -= 1
            values[i, p] = v
            indices[i, p] = j
            if cnt < k:
                cnt += 1
