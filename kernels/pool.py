"""Pooling and resampling over one image at a time (NCHW, flat buffers): max / average pools (any
padding, ceil mode, dilation, adaptive windows), the 2x2 fast path, global average pool, MaxPool's
argmax indices, and Upsample's table-driven nearest / bilinear resampling.  Each function's
docstring gives the layout of its geometry g (pool2d's differs from conv2d's: no groups, and the
bottom and right padding last).
"""
import numpy as np
from numba import njit


@njit(cache=True)
def pool2d(x, out, g, c0, c1, is_max, count_include_pad, adaptive):
    """Max or average pooling of channels c0:c1 of one image (flat buffers).
    g = (C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, pb, pr): pt, pl the top and left padding,
    pb, pr the bottom and right (a window in ceil mode may reach past them: it takes what lies inside).
    adaptive: PyTorch's adaptive windows over H x W instead (kernel, stride, padding unused).  NaN
    propagates through max.  Windows that all lie inside the image take a path without bounds checks."""
    H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW = (g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10],
                                                    g[11], g[12])
    if adaptive:
        _pool_adaptive(x, out, H, W, OH, OW, c0, c1, is_max)
    elif (pt == 0 and pl == 0 and (OH - 1) * sh + (kh - 1) * dh < H and (OW - 1) * sw + (kw - 1) * dw < W):
        _pool_inside(x, out, g, c0, c1, is_max)
    else:
        _pool_padded(x, out, g, c0, c1, is_max, count_include_pad)


@njit(cache=True)
def _taps(n, o, k, s, d, p0, p1, include_pad):
    """Per output index along one axis: the taps of its window inside the input, or inside the
    padded input [-p0, n + p1) when include_pad (the average's divisor, PyTorch's and ONNX's)."""
    lo, hi = (-p0, n + p1) if include_pad else (0, n)
    cnt = np.zeros(o, np.float64)
    for q in range(o):
        for i in range(k):
            if lo <= q * s - p0 + i * d < hi:
                cnt[q] += 1.0
    return cnt


@njit(cache=True)
def _pool_inside(x, out, g, c0, c1, is_max):
    """pool2d without padding: every window lies inside the image.  The
    output row is the accumulator and the window offset the outer loop, so
    the inner loop runs along the row, branch-free (a NaN wins the select)."""
    H, W, kh, kw, sh, sw, dh, dw, OH, OW = g[1], g[2], g[3], g[4], g[5], g[6], g[9], g[10], g[11], g[12]
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and dh == 1 and dw == 1:
        _pool_2x2(x, out, H, W, OH, OW, c0, c1, is_max)
        return
    inv = np.float32(1.0 / (kh * kw))
    for c in range(c0, c1):
        for oh in range(OH):
            o = out[(c * OH + oh) * OW:(c * OH + oh + 1) * OW]
            for i in range(kh):
                top = (c * H + oh * sh + i * dh) * W
                for j in range(kw):
                    row = x[top + j * dw:top + j * dw + (OW - 1) * sw + 1]
                    if i == 0 and j == 0:
                        for ow in range(OW):
                            o[ow] = row[ow * sw]
                    elif is_max:
                        for ow in range(OW):
                            o[ow] = _max_nan(row[ow * sw], o[ow])
                    else:
                        for ow in range(OW):
                            o[ow] += row[ow * sw]
            if not is_max:
                for ow in range(OW):
                    o[ow] *= inv


@njit(cache=True)
def _pool_padded(x, out, g, c0, c1, is_max, count_include_pad):
    """pool2d where a window may reach outside the image (padding, ceil mode).  Per output row: the
    window's rows inside the image combined element by element into one row (a loop that
    vectorises), then for each column offset j the output columns whose input column lies inside the
    image -- one range, computed once -- take theirs, branch-free.  An average divides by its
    window's taps inside the image, or inside the padded image with count_include_pad (_taps)."""
    H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, pb, pr = (g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9],
                                                            g[10], g[11], g[12], g[13], g[14])
    lo = np.empty(kw, np.int64)  # output columns lo[j]:hi[j] read an input column inside the image at offset j
    hi = np.empty(kw, np.int64)
    for j in range(kw):
        first = pl - j * dw  # ow * sw >= first
        lo[j] = (first + sw - 1) // sw if first > 0 else 0
        hi[j] = min(OW, (W - 1 + pl - j * dw) // sw + 1) if W - 1 + pl - j * dw >= 0 else 0
    inv = np.empty((0 if is_max else OH, OW), np.float32)
    if not is_max:
        rows = _taps(H, OH, kh, sh, dh, pt, pb, count_include_pad)
        cols = _taps(W, OW, kw, sw, dw, pl, pr, count_include_pad)
        for oh in range(OH):
            for ow in range(OW):
                inv[oh, ow] = 1.0 / max(rows[oh] * cols[ow], 1.0)
    t = np.empty(W, np.float32)
    fill = np.float32(-np.inf) if is_max else np.float32(0.0)
    for c in range(c0, c1):
        for oh in range(OH):
            o = out[(c * OH + oh) * OW:(c * OH + oh + 1) * OW]
            first = True
            for i in range(kh):
                ih = oh * sh - pt + i * dh
                if ih < 0 or ih >= H:
                    continue
                row = x[(c * H + ih) * W:(c * H + ih + 1) * W]
                if first:
                    t[:] = row
                    first = False
                else:
                    _combine(t, row, W, is_max)
            for ow in range(OW):
                o[ow] = fill
            if first:  # no row of this window inside the image (an average counting the padding: 0)
                continue
            for j in range(kw):
                base = j * dw - pl
                if is_max:
                    for ow in range(lo[j], hi[j]):
                        o[ow] = _max_nan(t[base + ow * sw], o[ow])
                else:
                    for ow in range(lo[j], hi[j]):
                        o[ow] += t[base + ow * sw]
            if not is_max:
                for ow in range(OW):
                    o[ow] *= inv[oh, ow]


@njit(cache=True)
def _pool_adaptive(x, out, H, W, OH, OW, c0, c1, is_max):
    """PyTorch's adaptive pooling: output cell (i, j) covers rows floor(i * H / OH) .. ceil((i + 1) *
    H / OH) and the columns alike; its rows combined into one row first, then each cell's columns."""
    t = np.empty(W, np.float32)
    for c in range(c0, c1):
        for oh in range(OH):
            h0, h1 = oh * H // OH, ((oh + 1) * H + OH - 1) // OH
            t[:] = x[(c * H + h0) * W:(c * H + h0 + 1) * W]
            for ih in range(h0 + 1, h1):
                _combine(t, x[(c * H + ih) * W:(c * H + ih + 1) * W], W, is_max)
            o = out[(c * OH + oh) * OW:(c * OH + oh + 1) * OW]
            for ow in range(OW):
                w0, w1 = ow * W // OW, ((ow + 1) * W + OW - 1) // OW
                v = t[w0]
                for k in range(w0 + 1, w1):
                    v = _max_nan(t[k], v) if is_max else v + t[k]
                o[ow] = v if is_max else np.float32(v / ((h1 - h0) * (w1 - w0)))


@njit(cache=True, inline="always")
def _max_nan(a, b):
    """max(a, b), NaN if either is NaN."""
    return a if (a > b) | (a != a) else b


@njit(cache=True, inline="always")
def _combine(t, row, W, is_max):
    """t[:W] = the NaN-propagating max (is_max) or the sum of t and row: a window's rows into one."""
    if is_max:
        for k in range(W):
            t[k] = _max_nan(row[k], t[k])
    else:
        for k in range(W):
            t[k] += row[k]


@njit(cache=True)
def _pool_2x2(x, out, H, W, OH, OW, c0, c1, is_max):
    """The common 2x2, stride-2 pool: the two rows combined element by element into a row buffer (a
    loop that vectorises), then each pair of that row: 1.8x faster than combining the four values of
    each window at once (32 channels of 32 x 32, max, interleaved in one process: 22.1 -> 12.1 us)."""
    t = np.empty(2 * OW, np.float32)
    quarter = np.float32(0.25)
    for c in range(c0, c1):
        for oh in range(OH):
            a = x[(c * H + 2 * oh) * W:(c * H + 2 * oh) * W + 2 * OW]
            b = x[(c * H + 2 * oh + 1) * W:(c * H + 2 * oh + 1) * W + 2 * OW]
            o = out[(c * OH + oh) * OW:(c * OH + oh + 1) * OW]
            if is_max:
                for j in range(2 * OW):
                    t[j] = _max_nan(a[j], b[j])
                for ow in range(OW):
                    o[ow] = _max_nan(t[2 * ow], t[2 * ow + 1])
            else:
                for j in range(2 * OW):
                    t[j] = a[j] + b[j]
                for ow in range(OW):
                    o[ow] = (t[2 * ow] + t[2 * ow + 1]) * quarter


@njit(cache=True)
def global_avg_pool(x, out, hw, c0, c1):
    """out[c] = mean of channel c's hw pixels, for c in c0:c1 (flat buffers)."""
    for c in range(c0, c1):
        s = 0.0
        for p in range(hw):
            s += x[c * hw + p]
        out[c] = s / hw


@njit(cache=True)
def _table(t, at, n):
    """Rows at, at + n, at + 2n of a taps table: source indices i0, i1 (stored as floats) and weights w."""
    i0 = np.empty(n, np.int64)
    i1 = np.empty(n, np.int64)
    for k in range(n):
        i0[k], i1[k] = int(t[at + k]), int(t[at + n + k])
    return i0, i1, t[at + 2 * n:at + 3 * n]


@njit(cache=True)
def upsample2d(x, out, g, c0, c1, bilinear, taps):
    """Channels c0:c1 of one image resized from H x W to OH x OW (flat buffers), g = (C, H, W, OH, OW):
    each output row is a blend of two source rows (one for nearest), gathered by column tables.  taps:
    the source tables (i0, i1, w) over the OH rows, then over the OW columns (the layer's, made at
    compile time: any coordinate transform, nearest rounding and scale)."""
    H, W, OH, OW = g[1], g[2], g[3], g[4]
    r0, r1, wr = _table(taps, 0, OH)
    q0, q1, wq = _table(taps, 3 * OH, OW)
    row = np.empty(W, np.float32)
    for c in range(c0, c1):
        for oh in range(OH):
            a = x[(c * H + r0[oh]) * W:(c * H + r0[oh] + 1) * W]
            o = out[(c * OH + oh) * OW:(c * OH + oh + 1) * OW]
            if not bilinear:
                for k in range(OW):
                    o[k] = a[q0[k]]
                continue
            b = x[(c * H + r1[oh]) * W:(c * H + r1[oh] + 1) * W]
            w = wr[oh]
            for k in range(W):
                row[k] = a[k] + (b[k] - a[k]) * w
            for k in range(OW):
                o[k] = row[q0[k]] + (row[q1[k]] - row[q0[k]]) * wq[k]


@njit(cache=True)
def pool2d_argmax(x, idx, g, c0, c1, col_major, base):
    """ONNX MaxPool's Indices for channels c0:c1 of one image (flat buffers; idx int64 [C * OH * OW]):
    base + the flat index in the image [C, H, W] of each window's max -- row-major c*H*W + h*W + w, or
    column-major per plane c*H*W + w*H + h (col_major, ONNX's storage_order=1).  Only taps inside the
    image count (never the padding).  Ties: the first in scan order (rows, then columns), as ONNX's
    reference; NaN: the first NaN of the window wins, as pool2d's max propagates it."""
    H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW = (g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10],
                                                    g[11], g[12])
    for c in range(c0, c1):
        plane = c * H * W
        for oh in range(OH):
            for ow in range(OW):
                best, bh, bw = np.float32(0.0), -1, -1
                for i in range(kh):
                    h = oh * sh - pt + i * dh
                    if h < 0 or h >= H:
                        continue
                    for j in range(kw):
                        w = ow * sw - pl + j * dw
                        if w < 0 or w >= W:
                            continue
                        v = x[plane + h * W + w]
                        if bh < 0 or (best == best and (v > best or v != v)):
                            best, bh, bw = v, h, w
                at = plane + (bw * H + bh if col_major else bh * W + bw)
                idx[(c * OH + oh) * OW + ow] = base + at
