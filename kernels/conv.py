"""Convolution and pooling over one image at a time (NCHW, flat buffers).

conv2d: the image is copied once, zero-padded and split into its stride's
phases -- plane (p, q) holds rows p, p + sh, ... and columns q, q + sw, ...
of the padded image (one plane at stride 1) -- so that every row (c, i, j)
of the im2col matrix [(c, i, j), pixels] is one contiguous run of a plane,
provided each output row is computed at the plane's width Ws = ceil((W +
2pw) / sw).  The GEMM reads the rows there, through a table of where each
starts (gemm.gemm_cols, shmrt's tile with indirect B rows): no im2col copy,
at any stride.  One GEMM per group,
    tmp[co, oh*Ws + ow] = W[co, :] . cols[:, oh*Ws + ow],
and the epilogue adds the bias, applies the activation and keeps the OW
valid columns of each row, writing the image's [Cout, OH*OW] output.
Worker slices are an output channel range (model parallel), an output row
range (spatial, batch 1) or whole images (data parallel); the kernel only
sees the bounds.  ``scratch_floats`` is the scratch one worker needs.

g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW): the geometry; ph, pw the top and left
padding, the bottom and right as far as OH, OW reach (asymmetric padding: ONNX's pads).
"""
import numpy as np
from numba import njit

from .activations import add_act_row
from .gemm import gemm_cols
from .tile import NR


def scratch_floats(g, cout):
    """Floats of scratch conv2d needs for any slice of geometry g with cout output channels."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (int(v) for v in g)
    Hs, Ws = _plane_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    return C * sh * sw * Hs * Ws + (kw - 1) * dw // sw + NR + cout // groups * OH * Ws


@njit(cache=True, inline="always")
def _plane_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW):
    """(Hs, Ws): a phase plane's rows and columns -- the image padded by ph, pw on every side, or as
    far as the output's windows reach where that is further (asymmetric padding: more at the bottom
    or right than at the top or left; ph, pw are the top and left padding)."""
    Hs = max((H + 2 * ph + sh - 1) // sh, OH + (kh - 1) * dh // sh)
    Ws = max((W + 2 * pw + sw - 1) // sw, OW + (kw - 1) * dw // sw)
    return Hs, Ws


@njit(cache=True)
def conv2d(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act, pool):
    """x: one image, flat [C*H*W]; wmat [Cout, Cg*kh*kw]; b [Cout] or empty;
    out: flat [Cout*OH*OW], or with pool (stride 1 only; oh0, oh1 even) the 2x2 max pool of the
    activation, flat [Cout*(OH//2)*(OW//2)]; scratch: scratch_floats(g, Cout) floats."""
    if co1 <= co0 or oh1 <= oh0:
        return
    if g[11] == g[0] and wmat.shape[0] == g[0] and not pool:  # depthwise: a channel's own filter
        _conv_depthwise(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act)
        return
    _conv_phased(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act, pool)


@njit(cache=True)
def _conv_depthwise(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act):
    """Depthwise (groups = channels, one filter each): a GEMM of one row would waste the tile, so
    directly -- per channel its phases, then for each of the kh x kw taps one scaled run of them
    added into the output rows at the plane's width (one long loop per tap, which vectorises: 6x
    the loop per output row, 2.7 against 16 us for a 56 x 56 channel), bias and activation as each
    row is written out."""
    _, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                                                       g[9], g[10], g[12], g[13])
    Hs, Ws = _plane_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    S = Hs * Ws
    slack = (kw - 1) * dw // sw + 1
    xp = scratch[:sh * sw * S + slack]
    for k in range(sh * sw * S, xp.shape[0]):
        xp[k] = 0.0
    N = (oh1 - oh0) * Ws
    acc = np.empty(N, np.float32)  # not in scratch: the tap loop vectorises only where it cannot alias xp
    has_b = b.shape[0] > 0
    for c in range(co0, co1):
        _phases(x[c * H * W:(c + 1) * H * W], xp, 1, H, W, sh, sw, ph, pw, Hs, Ws)
        _depthwise_taps(xp, wmat[c], acc, N, kh, kw, sh, sw, dh, dw, S, Ws, oh0)
        bb = b[c] if has_b else np.float32(0.0)
        for r in range(oh1 - oh0):
            o = (c * OH + oh0 + r) * OW
            add_act_row(out[o:o + OW], acc[r * Ws:r * Ws + OW], bb, act)


@njit(cache=True, fastmath={"contract"})
def _depthwise_taps(xp, w, acc, N, kh, kw, sh, sw, dh, dw, S, Ws, oh0):
    """acc[0:N] = sum over taps (i, j) of w[i * kw + j] * the run of the phases that tap reads."""
    for k in range(N):
        acc[k] = 0.0
    for i in range(kh):
        for j in range(kw):
            wv = w[i * kw + j]
            st = ((i * dh) % sh * sw + (j * dw) % sw) * S + (oh0 + (i * dh) // sh) * Ws + (j * dw) // sw
            src = xp[st:st + N]
            for k in range(N):
                acc[k] += wv * src[k]


@njit(cache=True)
def _phases(x, xp, C, H, W, sh, sw, ph, pw, Hs, Ws):
    """The zero-padded image split into its sh x sw phases: plane (p, q) holds rows p, p + sh, ... and
    columns q, q + sw, ... of the padded image, [C, Hs, Ws] each, at ((p * sw + q) * C + c) * Hs * Ws."""
    S = Hs * Ws
    for p in range(sh):
        for q in range(sw):
            for c in range(C):
                base = ((p * sw + q) * C + c) * S
                for a in range(Hs):
                    o = base + a * Ws
                    r = a * sh + p - ph
                    if r < 0 or r >= H:
                        for k in range(Ws):
                            xp[o + k] = 0.0
                        continue
                    src = (c * H + r) * W
                    b0 = max(0, (pw - q + sw - 1) // sw)  # first column inside the image
                    b1 = min(Ws, (W + pw - q + sw - 1) // sw)  # past the last
                    for k in range(b0):
                        xp[o + k] = 0.0
                    if sw == 1:
                        xp[o + b0:o + b1] = x[src + b0 + q - pw:src + b1 + q - pw]
                    else:
                        for k in range(b0, b1):
                            xp[o + k] = x[src + k * sw + q - pw]
                    for k in range(max(b1, b0), Ws):
                        xp[o + k] = 0.0


@njit(cache=True)
def _conv_phased(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act, pool):
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                                                                g[8], g[9], g[10], g[11], g[12], g[13])
    Cout = wmat.shape[0]
    Cg, Og = C // groups, Cout // groups
    Kg = Cg * kh * kw
    Hs, Ws = _plane_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    S = Hs * Ws
    # the phases of the zero-padded image, and slack the last im2col row's last panel may read past its end
    xp = scratch[:C * sh * sw * S + (kw - 1) * dw // sw + NR]
    _phases(x, xp, C, H, W, sh, sw, ph, pw, Hs, Ws)
    for k in range(C * sh * sw * S, xp.shape[0]):
        xp[k] = 0.0
    N = (oh1 - oh0) * Ws
    offs = np.empty(Kg, np.int64)  # im2col row (c, i, j) of this group: where it starts in the phases
    tmp_at = xp.shape[0]
    PW = OW // 2
    pooled = out[:Cout * (OH // 2) * PW if pool else 0].reshape((Cout if pool else 0, (OH // 2) * PW))
    has_b = b.shape[0] > 0
    # The epilogue reads and writes flat slices of out and scratch: a row of a 2-D slice is typed with an
    # unknown stride, and there ReLU6's loop compiled to branches (10x the GEMM on random signs).
    for grp in range(co0 // Og, (co1 - 1) // Og + 1):
        a, z = max(co0, grp * Og), min(co1, (grp + 1) * Og)
        r = 0
        for c in range(grp * Cg, (grp + 1) * Cg):
            for i in range(kh):
                for j in range(kw):
                    plane = ((i * dh) % sh * sw + (j * dw) % sw) * C + c
                    offs[r] = plane * S + (oh0 + (i * dh) // sh) * Ws + (j * dw) // sw
                    r += 1
        if Ws == OW and not pool:  # no padding columns (a 1x1, or unpadded): the GEMM writes the output itself
            gemm_cols(wmat[a:z], xp, offs, N, out[:Cout * OH * OW].reshape((Cout, OH * OW))[a:z, oh0 * OW:oh1 * OW])
            if has_b or act != 0:
                for q in range(a, z):
                    row = out[q * OH * OW + oh0 * OW:q * OH * OW + oh1 * OW]
                    add_act_row(row, row, b[q] if has_b else np.float32(0.0), act)
            continue
        tmp = scratch[tmp_at:tmp_at + (z - a) * N]
        gemm_cols(wmat[a:z], xp, offs, N, tmp.reshape((z - a, N)))
        for q in range(z - a):
            bb = b[a + q] if has_b else np.float32(0.0)  # one type: a float64 0.0 here made the loop 7x slower
            if pool:
                _act_pool_rows(tmp[q * N:(q + 1) * N], Ws, oh1 - oh0, OW, bb, act, pooled[a + q], oh0 // 2)
                continue
            for oh in range(oh1 - oh0):
                o = ((a + q) * OH + oh0 + oh) * OW
                add_act_row(out[o:o + OW], tmp[q * N + oh * Ws:q * N + oh * Ws + OW], bb, act)


@njit(cache=True, inline="always")
def _act_pool_rows(t, Wp, rows, OW, bb, act, dst, ph0):
    """dst[ph0 + i, :] = the 2x2 max of act(t + bb) over output rows 2i, 2i+1 of t (rows Wp apart,
    OW valid columns): the activation first, as the model runs it; NaN propagates."""
    PW = OW // 2
    row = np.empty(2 * PW, np.float32)
    row2 = np.empty(2 * PW, np.float32)
    for i in range(rows // 2):
        add_act_row(row, t[2 * i * Wp:2 * i * Wp + 2 * PW], bb, act)
        add_act_row(row2, t[(2 * i + 1) * Wp:(2 * i + 1) * Wp + 2 * PW], bb, act)
        for j in range(2 * PW):
            row[j] = _max_nan(row[j], row2[j])
        o = dst[(ph0 + i) * PW:(ph0 + i + 1) * PW]
        for j in range(PW):
            o[j] = _max_nan(row[2 * j], row[2 * j + 1])


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
                elif is_max:
                    for k in range(W):
                        t[k] = _max_nan(row[k], t[k])
                else:
                    for k in range(W):
                        t[k] += row[k]
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
                row = x[(c * H + ih) * W:(c * H + ih + 1) * W]
                if is_max:
                    for k in range(W):
                        t[k] = _max_nan(row[k], t[k])
                else:
                    for k in range(W):
                        t[k] += row[k]
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
