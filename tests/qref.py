"""An independent model of the compressed GEMM's arithmetic (kernels/qformat.py, qgemm.py), in numpy:
weights quantized per output channel (int8) or per block of 32 (int4, Q4_0's scale), activations per row
(max|x| / 127, round half to even), exact integer sums in int64, then the float32 steps the kernels
document, in their order.  The kernels must match it bit for bit."""
from __future__ import annotations

import numpy as np


def quantize_w(w, bits):
    w = np.asarray(w, np.float64)
    m, k = w.shape
    step = 4 if bits == 8 else 32
    kp = -(-k // step) * step
    wp = np.zeros((m, kp))
    wp[:, :k] = w
    if bits == 8:
        s = np.abs(wp).max(axis=1, keepdims=True) / 127.0
        lo, hi = -127, 127
    else:
        b = wp.reshape(m, kp // 32, 32)
        i = np.abs(b).argmax(axis=2)
        s = np.take_along_axis(b, i[..., None], axis=2)[..., 0] / -8.0
        lo, hi = -8, 7
    s = s.astype(np.float32)
    per = np.repeat(np.where(s == 0, 1.0, s.astype(np.float64)), kp // s.shape[1], axis=1)
    return np.clip(np.rint(wp / per), lo, hi).astype(np.int64), s


def quantize_x(x, kp):
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (np.float32(127.0) / amax).astype(np.float32)
        q = np.clip(np.rint((x * inv[:, None]).astype(np.float32)), -127, 127)
    q = np.where(amax[:, None] > 0, q, 0)
    xq = np.zeros((x.shape[0], kp), np.int64)
    xq[:, :x.shape[1]] = q
    return xq, (amax / np.float32(127.0)).astype(np.float32)


def qgemm(x, w, bits, bias=None, c=None):
    """act-free y = x @ W.T (+ bias) (c + y when c is given) as the kernels compute it."""
    q, s = quantize_w(w, bits)
    xq, xs = quantize_x(x, q.shape[1])
    if bits == 8:
        y = ((xq @ q.T).astype(np.float32) * s[:, 0][None, :]).astype(np.float32)
    else:
        y = np.zeros((x.shape[0], w.shape[0]), np.float32)
        for b in range(q.shape[1] // 32):
            t = xq[:, 32 * b:32 * b + 32] @ q[:, 32 * b:32 * b + 32].T
            y = (y + (t.astype(np.float32) * s[:, b][None, :]).astype(np.float32)).astype(np.float32)
    y = (y * xs[:, None]).astype(np.float32)
    if bias is not None:
        y = (y + np.asarray(bias, np.float32)).astype(np.float32)
    return y if c is None else (np.asarray(c, np.float32) + y).astype(np.float32)


def qgemm_own(x, q, s, bias):
    """qgemm for an int8 weight given with its own per-row scales (a loaded quantized model's): -128 is
    run as -127 (qformat.pack_format)."""
    q = np.maximum(np.asarray(q, np.int64), -127)
    k = x.shape[1]
    kp = -(-k // 4) * 4
    qp = np.zeros((q.shape[0], kp), np.int64)
    qp[:, :k] = q
    xq, xs = quantize_x(x, kp)
    y = ((xq @ qp.T).astype(np.float32) * np.asarray(s, np.float32)[None, :]).astype(np.float32)
    return ((y * xs[:, None]).astype(np.float32) + np.asarray(bias, np.float32)).astype(np.float32)
