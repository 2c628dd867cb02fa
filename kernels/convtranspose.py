"""Transposed convolution over one image at a time (NCHW, flat buffers), as one small
convolution per output phase.

Output pixel (oy, ox) sums w[ci, co, ky, kx] * x[ci, iy, ix] over the taps with
oy = iy sh - ph + ky dh (and alike across).  Which taps reach a row depends only on its
phase r = oy mod sh: tap ky does when (r + ph - ky dh) is a multiple of sh, and then row
oy = r + sh t reads input row iy = t + c(ky), c(ky) = (r + ph - ky dh) / sh.  So the rows of
one phase are an ordinary stride-1 correlation of the input with that phase's sub-kernel, and
with the input copied once, zero-padded on every side (``padded``), each phase (r, q) is one
GEMM per group

    tmp[co, t * Wp + u] = Wrq[co, :] . cols[:, t * Wp + u],   cols[(ci, ky, kx), j] = xp[ci][row(ky) .. + j]

read in place through a table of where each row starts (gemm.gemm_cols, as conv2d does), at the
padded width Wp; the epilogue adds the bias, applies the activation and writes the valid columns
of each row to the output, sw apart.  Every output pixel belongs to exactly one phase: no
accumulation across phases, no zero fill.  The weights are packed once at compile time (``pack``)
into one row-major matrix per phase, [Cout, Cg * taps(r) * taps(q)], (ci, ky, kx) in order.

Worker slices are an output channel range (model parallel), an output row range (spatial) or
whole images (data parallel); the kernel only sees the bounds.

g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW): the geometry (OH, OW include the
output padding; ph, pw are the rows and columns cropped from the start).
"""
import numpy as np
from numba import njit

from .activations import IDENTITY, RELU, act1, add_act_row
from .gemm import gemm_cols
from .tile import NR


def taps(k, s, p, d, r):
    """The kernel taps (ky) that reach output rows of phase r (oy mod s == r)."""
    return [i for i in range(k) if (r + p - i * d) % s == 0]


@njit(cache=True)
def padded(n, k, s, p, d, on):
    """(before, total) of one axis of the zero-padded input: every input index any output index in
    [0, on) reads, iy = (oy + p - ky d) / s, lies in [-before, total - before)."""
    lo, hi = 0, n
    for i in range(k):
        lo = min(lo, -((i * d - p) // s))  # the first: ceil((p - i d) / s)
        hi = max(hi, (on - 1 + p - i * d) // s + 1)
    return -lo, hi - lo


def scratch_floats(g, cout):
    """Floats of scratch conv_transpose2d needs for any slice of geometry g with cout output channels."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (int(v) for v in g)
    Hp = padded(H, kh, sh, ph, dh, OH)[1]
    Wp = max(padded(W, kw, sw, pw, dw, OW)[1], -(-OW // sw))
    return C * Hp * Wp + Wp + NR + cout // groups * -(-OH // sh) * Wp


def pack(w, g):
    """weight [C, Cout/groups, kh, kw] -> the phases' matrices, flat: phase (r, q) is [Cout, Cg * taps]."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (int(v) for v in g)
    Cg, Og = C // groups, w.shape[1]
    wg = np.asarray(w, np.float32).reshape(groups, Cg, Og, kh, kw)
    parts = []
    for r in range(sh):
        for q in range(sw):
            ty, tx = taps(kh, sh, ph, dh, r), taps(kw, sw, pw, dw, q)
            sub = wg[:, :, :, ty][:, :, :, :, tx]  # [groups, Cg, Og, |ty|, |tx|]
            parts.append(np.ascontiguousarray(sub.transpose(0, 2, 1, 3, 4)).reshape(-1))  # [Cout, Cg*|ty|*|tx|]
    return np.concatenate(parts).astype(np.float32)


@njit(cache=True)
def _pad_image(x, xp, c0, c1, H, W, top, left, Hp, Wp):
    """Channels c0:c1 of the image into xp ([C, Hp, Wp]), zero-padded, the input at (top, left)."""
    for c in range(c0, c1):
        for a in range(Hp):
            o = (c * Hp + a) * Wp
            r = a - top
            if r < 0 or r >= H:
                for k in range(Wp):
                    xp[o + k] = 0.0
                continue
            for k in range(left):
                xp[o + k] = 0.0
            xp[o + left:o + left + W] = x[(c * H + r) * W:(c * H + r + 1) * W]
            for k in range(left + W, Wp):
                xp[o + k] = 0.0


@njit(cache=True, fastmath={"contract"})
def _row_taps(w, xp, offs, N, acc):
    """acc[0:N] = sum over k of w[k] * xp[offs[k]:offs[k] + N]: one output channel's phase, tap by tap
    (one long loop each, which vectorises)."""
    for j in range(N):
        acc[j] = 0.0
    for k in range(w.shape[0]):
        wv = w[k]
        src = xp[offs[k]:offs[k] + N]
        for j in range(N):
            acc[j] += wv * src[j]


@njit(cache=True, inline="always")
def _put_row(out, o, step, src, n, bb, act):
    """out[o + j * step] = act(src[j] + bb) for j < n."""
    if step == 1:
        add_act_row(out[o:o + n], src[:n], bb, act)
    elif act == IDENTITY:
        for j in range(n):
            out[o + j * step] = src[j] + bb
    elif act == RELU:
        zero = np.float32(0.0)
        for j in range(n):
            v = src[j] + bb
            out[o + j * step] = zero if v <= zero else v  # NaN stays NaN
    else:
        for j in range(n):
            out[o + j * step] = act1(float(src[j]) + bb, act)


@njit(cache=True)
def conv_transpose2d(x, wp, b, out, g, cout, co0, co1, oh0, oh1, scratch, act):
    """x: one image, flat [C*H*W]; wp: pack(weight) (flat); b [Cout] or empty; out: flat [Cout*OH*OW],
    of which output channels co0:co1, rows oh0:oh1 are written; scratch: scratch_floats(g, cout) floats."""
    if co1 <= co0 or oh1 <= oh0:
        return
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                                                                g[8], g[9], g[10], g[11], g[12], g[13])
    Cg, Og = C // groups, cout // groups
    top, Hp = padded(H, kh, sh, ph, dh, OH)
    left, Wp = padded(W, kw, sw, pw, dw, OW)
    Wp = max(Wp, (OW + sw - 1) // sw)
    S = Hp * Wp
    g0, g1 = co0 // Og, (co1 - 1) // Og + 1  # the groups this slice touches
    xp = scratch[:C * S + Wp + NR]
    _pad_image(x, xp, g0 * Cg, g1 * Cg, H, W, top, left, Hp, Wp)
    for k in range(C * S, xp.shape[0]):  # slack the junk columns of the last rows read
        xp[k] = 0.0
    tmp_at = xp.shape[0]
    ty = np.empty(kh, np.int64)
    tx = np.empty(kw, np.int64)
    has_b = b.shape[0] > 0
    # one channel's phase, for the tap loop: not in scratch, where it could alias xp and would not vectorise
    one = np.empty(((oh1 - oh0 + sh - 1) // sh) * Wp, np.float32)
    offs_all = np.empty(Cg * kh * kw, np.int64)  # where each im2col row of a phase starts in xp
    w_at = 0
    for r in range(sh):
        nty = 0
        for i in range(kh):
            if (r + ph - i * dh) % sh == 0:
                ty[nty] = i
                nty += 1
        t0, t1 = (oh0 - r + sh - 1) // sh, (oh1 - r + sh - 1) // sh  # this phase's rows oy = r + sh t in oh0:oh1
        for q in range(sw):
            ntx = 0
            for j in range(kw):
                if (q + pw - j * dw) % sw == 0:
                    tx[ntx] = j
                    ntx += 1
            K = Cg * nty * ntx
            wmat = wp[w_at:w_at + cout * K].reshape((cout, K))
            w_at += cout * K
            nrows = t1 - t0
            if nrows <= 0 or q >= OW:
                continue
            N = nrows * Wp
            OWq = (OW - q + sw - 1) // sw
            offs = offs_all[:K]
            for grp in range(g0, g1):
                a, z = max(co0, grp * Og), min(co1, (grp + 1) * Og)
                kk = 0
                for cl in range(Cg):
                    for i in range(nty):
                        row = t0 + (r + ph - ty[i] * dh) // sh + top
                        for j in range(ntx):
                            col = (q + pw - tx[j] * dw) // sw + left
                            offs[kk] = (grp * Cg + cl) * S + row * Wp + col
                            kk += 1
                if z - a == 1:  # one output channel (depthwise): a GEMM of one row would waste the tile
                    tmp = one[:N].reshape((1, N))
                    _row_taps(wmat[a], xp, offs, N, one)
                else:
                    tmp = scratch[tmp_at:tmp_at + (z - a) * N].reshape((z - a, N))
                    gemm_cols(wmat[a:z], xp, offs, N, tmp)
                for c in range(z - a):
                    bb = b[a + c] if has_b else np.float32(0.0)
                    for t in range(nrows):
                        oy = r + sh * (t0 + t)
                        _put_row(out, ((a + c) * OH + oy) * OW + q, sw, tmp[c, t * Wp:(t + 1) * Wp], OWq, bb, act)
