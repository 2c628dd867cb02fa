"""Compressed weight formats: their codes, how a weight is quantized and packed into panels, and the sizes
the planner lays out in the float32 weight store (a compressed panel is bytes, viewed as floats there).

Formats (a LINEAR / RECUR step's ``fmt``):
- FLOAT32: gemm.pack's panels.
- BF16: the same panels rounded to bfloat16 (nearest, ties to even), 2 bytes a weight.
- INT8: symmetric per-output-channel scales, q = round(w / s) in -127..127, s = max|w| / 127.
- INT4: symmetric per block of 32 input features per output channel (Q4_0's scheme: s = m / -8 where m is
  the block's weight of largest magnitude, q = round(w / s) clipped to -8..7), 0.5 byte a weight.

Integer panels (qgemm.py): the input features padded to KQ (4 for INT8, 32 for INT4), then in groups of 4:
panel p holds, for each group g, NR columns x 4 bytes (column j's q[c0 + j, 4g:4g + 4]), the layout of a
4-way integer dot product (VNNI's vpdpbusd, AVX2's vpmaddubsw + vpmaddwd).  INT4 keeps that order, blocks
of 32 features at a time, with pairs of CHUNK-byte pieces folded into one: the even piece in the low
nibbles, the odd one in the high nibbles, each stored as q + 8.  Beside each panel (its "scales", float32
words): per block (INT8: one block, all of K) NR weight scales, then NR int32 words 128 * sum of the
block's q per column -- the correction for activations offset into uint8 (the VNNI path).
"""
import numpy as np
from numba import njit

from .qtile import CHUNK
from .tile import NR

FORMATS = ("float32", "bf16", "int8", "int4")
FLOAT32, BF16, INT8, INT4 = range(len(FORMATS))
BLOCK4 = 32  # INT4's block of input features


def kq(fmt, k):
    """Input features as packed: padded to a whole group (INT8) or block (INT4)."""
    step = 4 if fmt == INT8 else BLOCK4 if fmt == INT4 else 1
    return -(-k // step) * step


def panel_floats(fmt, k):
    """Weight-store floats from one panel of k input features to the next."""
    step = 4 if fmt == INT8 else BLOCK4 if fmt == INT4 else 1
    q = (k + step - 1) // step * step * NR
    return q if fmt == FLOAT32 else q // 2 if fmt == BF16 else q // 4 if fmt == INT8 else q // 8


def panel_scales(fmt, k):
    """Weight-store floats of one panel's scales (and corrections)."""
    return 2 * NR * ((k + BLOCK4 - 1) // BLOCK4) if fmt == INT4 else 2 * NR if fmt == INT8 else 0


# the same, for the kernels (the planner calls the Python ones: no Numba dispatcher runs at plan time)
nb_panel_floats = njit(inline="always")(panel_floats)
nb_panel_scales = njit(inline="always")(panel_scales)


def format_code(name) -> int:
    if name not in FORMATS:
        raise ValueError(f"weights must be one of {', '.join(map(repr, FORMATS))} (or None), got {name!r}")
    return FORMATS.index(name)


def quantize(w, fmt):
    """W[m, k] (float) -> (q int8 [m, kq], scale float32 [m, blocks]) for INT8 (one block) or INT4."""
    w = np.asarray(w, np.float64)
    m, k = w.shape
    kp = kq(fmt, k)
    wp = np.zeros((m, kp))
    wp[:, :k] = w
    if fmt == INT8:
        s = np.abs(wp).max(axis=1, keepdims=True) / 127.0
        lo, hi = -127, 127
    else:
        blocks = wp.reshape(m, kp // BLOCK4, BLOCK4)
        at = np.abs(blocks).argmax(axis=2)[..., None]
        s = (np.take_along_axis(blocks, at, axis=2) / -8.0).reshape(m, -1)  # Q4_0: the extreme maps to -8
        lo, hi = -8, 7
    s = s.astype(np.float32)
    safe = np.where(s == 0, 1.0, s.astype(np.float64))
    per = np.repeat(safe, kp // safe.shape[1], axis=1)
    q = np.clip(np.rint(wp / per), lo, hi).astype(np.int8)
    return q, s


def dequantize(q, s, k):
    """The float32 weight [m, k] that (q, s) stand for."""
    per = np.repeat(s.astype(np.float32), q.shape[1] // s.shape[1], axis=1)
    return (q.astype(np.float32) * per)[:, :k]


def to_bf16(w):
    """float32 -> bfloat16 bits (uint16), rounded to nearest, ties to even (NaN kept a NaN)."""
    u = np.ascontiguousarray(w, np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(np.asarray(w, np.float32))
    return np.where(nan, ((u >> 16) | 0x40).astype(np.uint16), r)


def from_bf16(h):
    return (np.asarray(h, np.uint16).astype(np.uint32) << 16).view(np.float32)


def pack_q(q, s, fmt):
    """(q [m, kq], s [m, blocks]) -> (panels as float32 words, scales as float32 words), the layout above."""
    m, kp = q.shape
    panels = -(-m // NR)
    qp = np.zeros((panels * NR, kp), np.int8)
    qp[:m] = q
    sp = np.zeros((panels * NR, s.shape[1]), np.float32)
    sp[:m] = s
    # [panel, group, column, 4]
    g = qp.reshape(panels, NR, kp // 4, 4).transpose(0, 2, 1, 3)
    if fmt == INT8:
        body = np.ascontiguousarray(g).reshape(panels, -1)
    else:
        blk = g.reshape(panels, kp // BLOCK4, -1)  # each block's bytes in the int8 order
        nib = (blk.astype(np.int16) + 8).astype(np.uint8).reshape(panels, kp // BLOCK4, -1, 2, CHUNK)
        body = (nib[:, :, :, 0, :] | (nib[:, :, :, 1, :] << 4)).reshape(panels, -1)
    blocks = s.shape[1]
    sums = qp.astype(np.int64).reshape(panels, NR, blocks, kp // blocks).sum(axis=3) * 128  # [panel, col, block]
    sc = np.empty((panels, blocks, 2, NR), np.float32)
    sc[:, :, 0, :] = sp.reshape(panels, NR, blocks).transpose(0, 2, 1)
    sc[:, :, 1, :] = sums.astype(np.int32).transpose(0, 2, 1).view(np.float32)
    return np.ascontiguousarray(body).view(np.float32).reshape(-1), sc.reshape(-1)


def pack_bf16(panels):
    """gemm.pack's float32 panels -> the same panels in bfloat16, as float32 words (two weights a word)."""
    return np.ascontiguousarray(to_bf16(panels)).view(np.float32)


def pack_format(w, fmt, own=None):
    """W[m, k] -> {"panels": ..., "scales": ...} (scales absent for BF16) and the weight the panels stand for.
    own: (q int8 [m, k], scale [m]) -- a pre-quantized INT8 weight kept with its own scales."""
    from .gemm import pack
    w = np.asarray(w, np.float32)
    if fmt == BF16:
        return {"panels": pack_bf16(pack(w))}, from_bf16(to_bf16(w))
    if own is not None:
        q0, s0 = own
        q = np.zeros((q0.shape[0], kq(INT8, q0.shape[1])), np.int8)
        q[:, :q0.shape[1]] = q0
        s = np.asarray(s0, np.float32).reshape(-1, 1)
    else:
        q, s = quantize(w, fmt)
    panels, scales = pack_q(q, s, fmt)
    return {"panels": panels, "scales": scales}, dequantize(q, s, w.shape[1])
