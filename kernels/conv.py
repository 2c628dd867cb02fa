"""Convolution and pooling over one image at a time (NCHW, flat buffers).

conv2d, stride 1 (the common case): the image is copied once into a
zero-padded [C, H+2ph, W+2pw] plane; in padded coordinates every row of
the im2col matrix [(c, i, j), pixels] is then one contiguous run of that
plane, provided each output row is computed at the padded width
Wp = W + 2pw -- so the GEMM reads them there, through a table of where
each row starts (gemm.gemm_cols, shmrt's tile with indirect B rows): no
im2col copy.  One GEMM per group,
    tmp[co, oh*Wp + ow] = W[co, :] . cols[:, oh*Wp + ow],
and the epilogue adds the bias, applies the activation and keeps the OW
valid columns of each row, writing the image's [Cout, OH*OW] output.
Other strides: im2row -- the patches of each output pixel gathered into
[pixels, Cg*kh*kw] with bounds checks, one GEMM written in place.
Worker slices are an output channel range (model parallel), an output row
range (spatial, batch 1) or whole images (data parallel); the kernel only
sees the bounds.  ``scratch_floats`` is the scratch one worker needs.

g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW): the geometry.
"""
import numpy as np
from numba import njit

from .activations import add_act_row
from .blas import gemm_nt
from .gemm import gemm_cols
from .tile import NR


def scratch_floats(g, cout):
    """Floats of scratch conv2d needs for any slice of geometry g with cout output channels."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (int(v) for v in g)
    K = C // groups * kh * kw
    if sh == 1 and sw == 1:
        Wp = W + 2 * pw
        return C * (H + 2 * ph) * Wp + (kw - 1) * dw + NR + cout // groups * OH * Wp
    return OH * OW * K


@njit(cache=True)
def conv2d(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act, pool):
    """x: one image, flat [C*H*W]; wmat [Cout, Cg*kh*kw]; b [Cout] or empty;
    out: flat [Cout*OH*OW], or with pool (stride 1 only; oh0, oh1 even) the 2x2 max pool of the
    activation, flat [Cout*(OH//2)*(OW//2)]; scratch: scratch_floats(g, Cout) floats."""
    if co1 <= co0 or oh1 <= oh0:
        return
    if g[5] == 1 and g[6] == 1:
        _conv_stride1(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act, pool)
    else:
        _conv_im2row(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act)


@njit(cache=True)
def _conv_stride1(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act, pool):
    C, H, W, kh, kw, ph, pw, dh, dw, groups, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[7], g[8], g[9], g[10],
                                                       g[11], g[12], g[13])
    Cout = wmat.shape[0]
    Cg, Og = C // groups, Cout // groups
    Kg = Cg * kh * kw
    Hp, Wp = H + 2 * ph, W + 2 * pw
    S = Hp * Wp
    # the zero-padded image, and slack the last im2col row's last panel may read past its end
    xp = scratch[:C * S + (kw - 1) * dw + NR]
    for k in range(C * S, xp.shape[0]):
        xp[k] = 0.0
    for c in range(C):
        for r in range(Hp):
            o = c * S + r * Wp
            if r < ph or r >= ph + H:
                for k in range(Wp):
                    xp[o + k] = 0.0
            else:
                src = (c * H + r - ph) * W
                for k in range(pw):
                    xp[o + k] = 0.0
                    xp[o + pw + W + k] = 0.0
                for k in range(W):
                    xp[o + pw + k] = x[src + k]
    N = (oh1 - oh0) * Wp
    offs = np.empty(Kg, np.int64)  # im2col row (c, i, j) of this group: where it starts in the padded image
    tmp_at = xp.shape[0]
    PW = OW // 2
    out2 = out[:0 if pool else Cout * OH * OW].reshape((0 if pool else Cout, OH * OW))
    pooled = out[:Cout * (OH // 2) * PW if pool else 0].reshape((Cout if pool else 0, (OH // 2) * PW))
    has_b = b.shape[0] > 0
    for grp in range(co0 // Og, (co1 - 1) // Og + 1):
        a, z = max(co0, grp * Og), min(co1, (grp + 1) * Og)
        r = 0
        for c in range(grp * Cg, (grp + 1) * Cg):
            for i in range(kh):
                for j in range(kw):
                    offs[r] = c * S + (oh0 + i * dh) * Wp + j * dw
                    r += 1
        tmp = scratch[tmp_at:tmp_at + (z - a) * N].reshape((z - a, N))
        gemm_cols(wmat[a:z], xp, offs, N, tmp)
        for q in range(z - a):
            bb = b[a + q] if has_b else np.float32(0.0)  # one type: a float64 0.0 here made the loop 7x slower
            if pool:
                _act_pool_rows(tmp[q], Wp, oh1 - oh0, OW, bb, act, pooled[a + q], oh0 // 2)
                continue
            for oh in range(oh1 - oh0):
                add_act_row(out2[a + q, (oh0 + oh) * OW:(oh0 + oh + 1) * OW], tmp[q, oh * Wp:oh * Wp + OW], bb, act)


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
def _conv_im2row(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act):
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                                                                g[8], g[9], g[10], g[11], g[12], g[13])
    Cout = wmat.shape[0]
    Cg, Og = C // groups, Cout // groups
    K = Cg * kh * kw
    M = (oh1 - oh0) * OW
    out2 = out.reshape((Cout, OH * OW))
    patches = scratch[:M * K].reshape((M, K))
    for grp in range(co0 // Og, (co1 - 1) // Og + 1):
        a, z = max(co0, grp * Og), min(co1, (grp + 1) * Og)
        ci0 = grp * Cg
        for oh in range(oh0, oh1):
            for ow in range(OW):
                p = (oh - oh0) * OW + ow
                col = 0
                for c in range(Cg):
                    base = (ci0 + c) * H * W
                    for i in range(kh):
                        ih = oh * sh - ph + i * dh
                        for j in range(kw):
                            iw = ow * sw - pw + j * dw
                            if 0 <= ih < H and 0 <= iw < W:
                                patches[p, col] = x[base + ih * W + iw]
                            else:
                                patches[p, col] = 0.0
                            col += 1
        o = out2[a:z, oh0 * OW:oh1 * OW]
        gemm_nt(wmat[a:z], patches, o, False)
        has_b = b.shape[0] > 0
        for r in range(z - a):
            bb = b[a + r] if has_b else np.float32(0.0)  # one type: a float64 0.0 here made the loop 7x slower
            add_act_row(o[r], o[r], bb, act)


@njit(cache=True)
def pool2d(x, out, g, c0, c1, is_max, count_include_pad):
    """Max or average pooling of channels c0:c1 of one image (flat buffers).
    g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW).  NaN propagates
    through max.  Windows that all lie inside the image (no padding) take
    a path without bounds checks."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                                                       g[9], g[10], g[11], g[12])
    if ph == 0 and pw == 0:
        _pool_inside(x, out, g, c0, c1, is_max)
        return
    for c in range(c0, c1):
        for oh in range(OH):
            for ow in range(OW):
                best = -np.inf
                s = 0.0
                cnt = 0
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if 0 <= ih < H and 0 <= iw < W:
                            v = x[(c * H + ih) * W + iw]
                            best = _max_nan(v, best)
                            s += v
                            cnt += 1
                        elif count_include_pad and ih < H + ph and iw < W + pw:
                            cnt += 1
                if is_max:
                    out[(c * OH + oh) * OW + ow] = best
                else:
                    out[(c * OH + oh) * OW + ow] = s / max(cnt, 1)


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
