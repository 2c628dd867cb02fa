"""Convolution over one image at a time (NCHW, flat buffers); pooling is in pool.py.

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

Depthwise convolutions (groups = channels) skip the GEMM: on images with
more than HWC_MAX_PIXELS output pixels per channel, scaled runs of the
phase planes (_conv_depthwise); on smaller ones channels-last, vectorised
across channels (_conv_depthwise_hwc).

g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW): the geometry; ph, pw the top and left
padding, the bottom and right as far as OH, OW reach (asymmetric padding: ONNX's pads).
"""
import numpy as np
from numba import njit

from .activations import add_act_row
from .gemm import gemm_cols
from .pool import _max_nan
from .simd import deinterleave2
from .tile import NR


def scratch_floats(g, cout):
    """Floats of scratch conv2d needs for any slice of geometry g with cout output channels."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (int(v) for v in g)
    Hs, Ws = _plane_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    floats = C * sh * sw * Hs * Ws + (kw - 1) * dw // sw + NR + cout // groups * OH * Ws
    if _depthwise(C, groups, cout) and _channels_last(OH, OW):
        Hp, Wp = _block_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
        floats = max(floats, Hp * Wp * C)
    return floats


@njit(cache=True, inline="always")
def _depthwise(C, groups, cout):
    """groups = channels, one filter each (a depth multiplier goes through the GEMM)."""
    return groups == C and cout == C


HWC_MAX_PIXELS = 196  # depthwise output planes up to 14 x 14 go channels-last (bench/conv_kernel.py)


@njit(cache=True, inline="always")
def _channels_last(OH, OW):
    return OH * OW <= HWC_MAX_PIXELS


@njit(cache=True, inline="always")
def _block_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW):
    """(Hp, Wp): the zero-padded image's rows and columns as far as the top/left padding and the
    output's windows reach."""
    return max(H + ph, (OH - 1) * sh + (kh - 1) * dh + 1), max(W + pw, (OW - 1) * sw + (kw - 1) * dw + 1)


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
    if _depthwise(g[0], g[11], wmat.shape[0]) and not pool:
        if _channels_last(g[12], g[13]):
            _conv_depthwise_hwc(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act)
        else:
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
def _conv_depthwise_hwc(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act):
    """Depthwise on a small image, channels-last: per channel the planes' loops are a few floats long
    and their overhead was the time (960 channels of 7 x 7: 0.65 us a channel, 6x ORT).  So the channel
    range is transposed into a zero-padded [Hp, Wp, channels] block, each output pixel is a sum over
    the taps of whole channel vectors (the loop over channels vectorises however small the image),
    and the [pixels, channels] result goes back through the epilogue a channel at a time."""
    _, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                                                       g[9], g[10], g[12], g[13])
    nc = co1 - co0
    Hp, Wp = _block_dims(H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)
    xt = scratch[:Hp * Wp * nc]
    xt[:] = 0.0
    # only the image rows that output rows oh0:oh1 read (a worker may hold a range of them)
    for h in range(max(0, oh0 * sh - ph), min(H, (oh1 - 1) * sh - ph + (kh - 1) * dh + 1)):
        for w_ in range(W):
            o = ((h + ph) * Wp + w_ + pw) * nc
            src = co0 * H * W + h * W + w_
            for c in range(nc):
                xt[o + c] = x[src + c * H * W]
    taps = kh * kw
    wt = np.empty(taps * nc, np.float32)  # not in scratch: the channel loops vectorise where nothing aliases
    for c in range(nc):
        for t in range(taps):
            wt[t * nc + c] = wmat[co0 + c, t]
    npix = (oh1 - oh0) * OW
    acc = np.empty(npix * nc, np.float32)
    for oh in range(oh0, oh1):
        for ow in range(OW):
            a = ((oh - oh0) * OW + ow) * nc
            av = acc[a:a + nc]  # slices indexed from 0: no wraparound check, so the loops vectorise
            for c in range(nc):
                av[c] = 0.0
            for i in range(kh):
                for j in range(kw):
                    s = ((oh * sh + i * dh) * Wp + ow * sw + j * dw) * nc
                    xv = xt[s:s + nc]
                    wv = wt[(i * kw + j) * nc:(i * kw + j + 1) * nc]
                    for c in range(nc):
                        av[c] += wv[c] * xv[c]
    row = np.empty(npix, np.float32)
    has_b = b.shape[0] > 0
    for c in range(nc):
        for p in range(npix):
            row[p] = acc[p * nc + c]
        o = (co0 + c) * OH * OW + oh0 * OW
        add_act_row(out[o:o + npix], row, b[co0 + c] if has_b else np.float32(0.0), act)


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
    if sw == 2:  # each image row dealt to its two column phases with vector shuffles (simd.deinterleave2)
        xp[:sh * 2 * C * S] = 0.0
        qe = pw % 2  # the plane of the even image columns; column 2m lands at m + ke, 2m + 1 at m + ko
        ke, ko = (pw - qe) // 2, (1 + pw) // 2
        pairs = W // 2
        for c in range(C):
            for r in range(H):
                p, a = (r + ph) % sh, (r + ph) // sh
                src = (c * H + r) * W
                e0 = ((p * 2 + qe) * C + c) * S + a * Ws + ke
                o0 = ((p * 2 + 1 - qe) * C + c) * S + a * Ws + ko
                deinterleave2(x[src:src + 2 * pairs], xp[e0:e0 + pairs], xp[o0:o0 + pairs], pairs)
                if W % 2:
                    xp[e0 + pairs] = x[src + W - 1]
        return
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
