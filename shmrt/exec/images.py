"""Step bodies of the interpreter (executor.run_steps) kept apart from it to keep that file short:
the ops over whole images (CONV, POOL, GAP, RESIZE, CONVT: one kernel call per image r0:r1), and
MERGE.  Each reads its input at xa[xo:] -- the arena, or the calling thread's own input rows."""
from __future__ import annotations

import numpy as np
from numba import njit

from shmrt.compile.isa import CONV, CONV_GEOM, CONVT, GAP, MERGE, POOL, POOL_GEOM, RESIZE
from shmrt.kernels import conv2d, global_avg_pool, merge, pool2d, pool2d_argmax, upsample2d
from shmrt.kernels.convtranspose import conv_transpose2d


@njit(cache=True, nogil=True)
def conv_step(s, weights, arena, xa, xo, r0, r1):
    g = s[CONV.geom:CONV.geom + CONV_GEOM]
    cout, xld, oo, old = s[CONV.cout], s[CONV.x_ld], s[CONV.out], s[CONV.out_ld]
    K = g[0] // g[11] * g[3] * g[4]
    wmat = weights[s[CONV.w]:s[CONV.w] + cout * K].reshape((cout, K))
    b = weights[s[CONV.b]:s[CONV.b] + cout] if s[CONV.b] >= 0 else weights[0:0]
    pool = s[CONV.pool]
    insz = g[0] * g[1] * g[2]
    outsz = cout * (g[12] // 2) * (g[13] // 2) if pool else cout * g[12] * g[13]
    scratch = arena[s[CONV.scratch]:s[CONV.scratch] + s[CONV.scratch_floats]]
    for img in range(r0, r1):
        conv2d(xa[xo + img * xld:xo + img * xld + insz], wmat, b, arena[oo + img * old:oo + img * old + outsz],
               g, s[CONV.co0], s[CONV.co1], s[CONV.oh0], s[CONV.oh1], scratch, s[CONV.act], pool)


@njit(cache=True, nogil=True)
def pool_step(s, arena, xa, xo, r0, r1):
    g = s[POOL.geom:POOL.geom + POOL_GEOM]
    xld, oo, old = s[POOL.x_ld], s[POOL.out], s[POOL.out_ld]
    insz, outsz = g[0] * g[1] * g[2], g[0] * g[11] * g[12]
    for img in range(r0, r1):
        pool2d(xa[xo + img * xld:xo + img * xld + insz], arena[oo + img * old:oo + img * old + outsz],
               g, s[POOL.c0], s[POOL.c1], s[POOL.is_max] != 0, s[POOL.count_include_pad] != 0,
               s[POOL.adaptive] != 0)
    io = s[POOL.indices]
    if io >= 0:  # ONNX MaxPool's Indices: flat in the call's [n, C, H, W] (calls.py adds a chunk's first row)
        for img in range(r0, r1):
            pool2d_argmax(xa[xo + img * xld:xo + img * xld + insz],
                          arena[io + 2 * img * outsz:io + 2 * (img + 1) * outsz].view(np.int64), g, s[POOL.c0],
                          s[POOL.c1], s[POOL.col_major] != 0, img * insz)


@njit(cache=True, nogil=True)
def gap_step(s, arena, xa, xo, r0, r1):
    xld, oo, old = s[GAP.x_ld], s[GAP.out], s[GAP.out_ld]
    for img in range(r0, r1):
        global_avg_pool(xa[xo + img * xld:xo + (img + 1) * xld], arena[oo + img * old:oo + (img + 1) * old],
                        s[GAP.hw], s[GAP.c0], s[GAP.c1])


@njit(cache=True, nogil=True)
def resize_step(s, weights, arena, xa, xo, r0, r1):
    g = s[RESIZE.geom:RESIZE.geom + 5]
    xld, oo, old = s[RESIZE.x_ld], s[RESIZE.out], s[RESIZE.out_ld]
    insz, outsz = g[0] * g[1] * g[2], g[0] * g[3] * g[4]
    taps = weights[s[RESIZE.taps]:s[RESIZE.taps] + 3 * (g[3] + g[4])]
    for img in range(r0, r1):
        upsample2d(xa[xo + img * xld:xo + img * xld + insz], arena[oo + img * old:oo + img * old + outsz],
                   g, s[RESIZE.c0], s[RESIZE.c1], s[RESIZE.bilinear] != 0, taps)


@njit(cache=True, nogil=True)
def convt_step(s, weights, arena, xa, xo, r0, r1):
    g = s[CONVT.geom:CONVT.geom + CONV_GEOM]
    cout, xld, oo, old = s[CONVT.cout], s[CONVT.x_ld], s[CONVT.out], s[CONVT.out_ld]
    wp = weights[s[CONVT.w]:]
    b = weights[s[CONVT.b]:s[CONVT.b] + cout] if s[CONVT.b] >= 0 else weights[0:0]
    insz, outsz = g[0] * g[1] * g[2], cout * g[12] * g[13]
    scratch = arena[s[CONVT.scratch]:s[CONVT.scratch] + s[CONVT.scratch_floats]]
    for img in range(r0, r1):
        conv_transpose2d(xa[xo + img * xld:xo + img * xld + insz], wp, b, arena[oo + img * old:oo + img * old + outsz],
                         g, cout, s[CONVT.co0], s[CONVT.co1], s[CONVT.oh0], s[CONVT.oh1], scratch, s[CONVT.act])


@njit(cache=True, nogil=True)
def merge_step(s, weights, arena, aa, ao, ba, bo, r0, r1):
    """a at aa[ao:]; b at ba[bo:], or the weight store's constant where the step says so."""
    d, sa, sb, so = s[MERGE.d:MERGE.d + 3], s[MERGE.sa:MERGE.sa + 3], s[MERGE.sb:MERGE.sb + 3], s[MERGE.so:MERGE.so + 3]
    if s[MERGE.b_w]:  # a separate call: the weight store is another array type
        merge(aa, ao, s[MERGE.a_ld], weights, s[MERGE.b], 0, arena, s[MERGE.out], s[MERGE.out_ld], r0, r1,
              s[MERGE.op], d, sa, sb, so, s[MERGE.c0], s[MERGE.c1], s[MERGE.act], s[MERGE.swap] != 0)
    else:
        merge(aa, ao, s[MERGE.a_ld], ba, bo, s[MERGE.b_ld], arena, s[MERGE.out], s[MERGE.out_ld], r0, r1,
              s[MERGE.op], d, sa, sb, so, s[MERGE.c0], s[MERGE.c1], s[MERGE.act], False)
