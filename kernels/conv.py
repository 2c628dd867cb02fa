"""Convolution and pooling over one image at a time (NCHW, flat buffers).

conv2d: im2row + BLAS.  For each group, the patches of output rows
oh0:oh1 go into a scratch matrix [pixels, Cg*kh*kw]; one GEMM then gives
output channels co0:co1 of those rows:
    out[co, pixel] = W[co, :] . patches[pixel, :]
(gemm_nt with x = W, w = patches), written in place into the image's
[Cout, OH*OW] output with its row stride.  Worker slices are an output
channel range (model parallel), an output row range (spatial, batch 1)
or whole images (data parallel); the kernel only sees the bounds.

g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW): the geometry.
"""
import numpy as np
from numba import njit

from .activations import act1
from .blas import gemm_nt


@njit(cache=True)
def conv2d(x, wmat, b, out, g, co0, co1, oh0, oh1, scratch, act):
    """x: one image, flat [C*H*W]; wmat [Cout, Cg*kh*kw]; b [Cout] or empty;
    out: flat [Cout*OH*OW]; scratch: at least (oh1-oh0)*OW*Cg*kh*kw floats."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7],
                                                                g[8], g[9], g[10], g[11], g[12], g[13])
    if co1 <= co0 or oh1 <= oh0:
        return
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
            bb = b[a + r] if has_b else 0.0
            for q in range(M):
                o[r, q] = act1(float(o[r, q]) + bb, act)


@njit(cache=True)
def pool2d(x, out, g, c0, c1, is_max, count_include_pad):
    """Max or average pooling of channels c0:c1 of one image (flat buffers).
    g = (C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW)."""
    C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, OH, OW = (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8],
                                                       g[9], g[10], g[11], g[12])
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
                            if v > best or v != v:
                                best = v
                            s += v
                            cnt += 1
                        elif count_include_pad and ih < H + ph and iw < W + pw:
                            cnt += 1
                if is_max:
                    out[(c * OH + oh) * OW + ow] = best
                else:
                    out[(c * OH + oh) * OW + ow] = s / max(cnt, 1)


@njit(cache=True)
def global_avg_pool(x, out, hw, c0, c1):
    """out[c] = mean of channel c's hw pixels, for c in c0:c1 (flat buffers)."""
    for c in range(c0, c1):
        s = 0.0
        for p in range(hw):
            s += x[c * hw + p]
        out[c] = s / hw
