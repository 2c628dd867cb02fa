"""GEMM on compressed panels (qformat.py), and ``gemm_fmt``: the one entry point LINEAR and RECUR steps
call for any weight format.

INT8 / INT4: each row of x is quantized to int8 at run time with its own scale (max|x| / 127: dynamic
quantization, per row rather than the peers' per tensor), the register tile (qtile.py) accumulates 4-way
integer dot products in int32 and dequantizes in its epilogue (+ bias); other activations run on the
panel's rows right after.  A panel of K features is read once for every QMR rows.
BF16: gemm.gemm_packed_bf16 (float32 arithmetic, each weight widened by a shift in the tile).
"""
import numpy as np
from numba import njit

from .activations import IDENTITY, bias_act, bias_act_row
from .blas import ld
from .gemm import gemm_packed, gemm_packed_bf16
from .qformat import BF16, BLOCK4, FLOAT32, INT8
from .qtile import CHUNK, OFFSET, QISA, QMR, qtile_rows
from .tile import NR

PORTABLE = QISA == "portable"


@njit(cache=True, error_model="numpy")
def quantize_rows(x, xq, xs, offset):
    """xq[r, :k] = round(x[r] / xs[r]) (int8; + 128 as uint8 when offset), xq[r, k:] = 0 (offset: 128),
    xs[r] = max|x[r]| / 127 -- NaN when the row holds a NaN or an infinity (the output is then NaN), 0 for a
    row of zeros."""
    n, k = x.shape
    pad = np.uint8(128 if offset else 0)
    for r in range(n):
        row = x[r]
        amax = np.float32(0.0)
        for kk in range(k):
            a = abs(row[kk])
            if not a <= amax:  # a NaN sticks
                amax = a
        q = xq[r]
        if not amax < np.inf or amax == 0:
            xs[r] = np.float32(np.nan) if amax != 0 else np.float32(0.0)
            for kk in range(xq.shape[1]):
                q[kk] = pad
            continue
        inv = np.float32(127.0) / amax
        xs[r] = amax / np.float32(127.0)
        for kk in range(k):
            v = min(max(np.rint(row[kk] * inv), np.float32(-127.0)), np.float32(127.0))
            q[kk] = np.uint8((np.int32(v) + (128 if offset else 256)) & 255)
        for kk in range(k, xq.shape[1]):
            q[kk] = pad


@njit(cache=True, inline="always")
def _wbyte(wb, base, e, bits):
    """The signed weight at int8-order index e of a group-ordered panel (INT4: of a block at base)."""
    if bits == 8:
        v = np.int32(wb[base + e])
        return v - 256 if v > 127 else v
    ch = e // CHUNK
    byte = np.int32(wb[base + (ch // 2) * CHUNK + e % CHUNK])
    return (byte & 15 if ch % 2 == 0 else byte >> 4) - 8


@njit(cache=True)
def _portable(xq, xs, wb, kbytes, scf, sstride, n, m, bits, out, b, accumulate):
    """The integer tile's arithmetic in plain loops, same int32 sums and float32 steps (qtile.py)."""
    kp = xq.shape[1]
    for p in range((m + NR - 1) // NR):
        for j in range(min(NR, m - p * NR)):
            col = p * NR + j
            for r in range(n):
                xr = xq[r]
                f = np.float32(0.0)
                for blk in range(1 if bits == 8 else kp // BLOCK4):
                    f0, f1 = (0, kp) if bits == 8 else (blk * BLOCK4, (blk + 1) * BLOCK4)
                    base = p * kbytes + (0 if bits == 8 else blk * 16 * NR)
                    t = np.int32(0)
                    for kk in range(f0, f1):
                        xv = np.int32(xr[kk])
                        xv = xv - 256 if xv > 127 else xv
                        e = ((kk - f0) // 4) * NR * 4 + j * 4 + (kk - f0) % 4
                        t += xv * _wbyte(wb, base, e, bits)
                    so = p * sstride + blk * 2 * NR
                    if bits == 8:
                        f = np.float32(t) * scf[so + j]
                    else:
                        f = f + np.float32(t) * scf[so + j]
                y = f * xs[r]
                if b.shape[0] > 0:
                    y = y + b[col]
                out[r, col] = out[r, col] + y if accumulate else y


@njit(cache=True, inline="never")
def _keep(a, b):
    """A use of a and b (their memory must outlive the addresses taken of them)."""
    return a.shape[0] + b.shape[0]


@njit(cache=True, error_model="numpy")
def gemm_q(x, wp, kstride, sc, sstride, b, out, act, accumulate, bits):
    """out[n, m] (+)= act(x[n, k] @ W + b), W the INT8 (bits 8) or INT4 (bits 4) panels at wp (float32 words,
    panel p at p * kstride words) with their scales at sc (p * sstride words); b may be empty."""
    n, k = x.shape
    m = out.shape[1]
    if n == 0 or m == 0:
        return
    if k == 0:
        if not accumulate:
            out[:, :] = 0
        bias_act(out, b, act)
        return
    step = 4 if bits == 8 else BLOCK4
    kp = (k + step - 1) // step * step
    xq = np.empty((n, kp), np.uint8)
    xs = np.empty(n, np.float32)
    quantize_rows(x, xq, xs, OFFSET and not PORTABLE)
    panels = (m + NR - 1) // NR
    if PORTABLE:
        _portable(xq, xs, wp.view(np.uint8), 4 * kstride, sc, sstride, n, m, bits, out, b, accumulate)
    else:
        ldo = ld(out)
        xa, wa, sa, xsa = xq.ctypes.data, wp.ctypes.data, sc.ctypes.data, xs.ctypes.data
        edge = np.empty((QMR, NR), np.float32)
        bpad = np.zeros(NR, np.float32)
        has_b = b.shape[0] > 0
        for p in range(panels):
            c0 = p * NR
            nv = min(NR, m - c0)
            bias = 0
            if has_b:
                if nv == NR:
                    bias = b.ctypes.data + 4 * c0
                else:
                    bpad[:nv] = b[c0:m]
                    bias = bpad.ctypes.data
            pw, ps = wa + 4 * p * kstride, sa + 4 * p * sstride
            for r in range(0, n, QMR):
                mr = min(QMR, n - r)
                if nv == NR:
                    qtile_rows(bits, xa + r * kp, kp, pw, kp // 4, out.ctypes.data + 4 * (r * ldo + c0), ldo, ps,
                               xsa + 4 * r, bias, accumulate, mr)
                    continue
                if accumulate:
                    for i in range(mr):
                        for j in range(nv):
                            edge[i, j] = out[r + i, c0 + j]
                qtile_rows(bits, xa + r * kp, kp, pw, kp // 4, edge.ctypes.data, NR, ps, xsa + 4 * r, bias,
                           accumulate, mr)
                for i in range(mr):
                    for j in range(nv):
                        out[r + i, c0 + j] = edge[i, j]
        _keep(xq, xs)  # the tile reads them by address: Numba would free them after their last use above
    if act != IDENTITY:
        for r in range(n):
            bias_act_row(out[r], b[0:0], act)


@njit(cache=True, inline="always")
def gemm_fmt(fmt, x, wp, kstride, sc, sstride, b, out, act, accumulate):
    """gemm_packed for a weight of any format (qformat.FORMATS): wp at the first panel, panels kstride
    float32 words apart; sc at the first panel's scales, sstride words apart (INT8 / INT4)."""
    if fmt == FLOAT32:
        gemm_packed(x, wp, kstride, b, out, act, accumulate)
    elif fmt == BF16:
        gemm_packed_bf16(x, wp, 2 * kstride, b, out, act, accumulate)
    else:
        gemm_q(x, wp, kstride, sc, sstride, b, out, act, accumulate, 8 if fmt == INT8 else 4)
