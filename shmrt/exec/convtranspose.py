"""The interpreter's CONVT step (isa.py), apart from executor.run_steps to keep that file short:
a transposed convolution of images r0:r1, one kernels.convtranspose call per image."""
from __future__ import annotations

from numba import njit

from shmrt.compile.isa import CONV_GEOM, CONVT
from shmrt.kernels.convtranspose import conv_transpose2d


@njit(cache=True, nogil=True)
def convt_step(s, weights, arena, xa, xo, r0, r1):
    """Step s (a CONVT row) over images r0:r1; the input at xa[xo:] (the arena or the caller's rows)."""
    g = s[CONVT.geom:CONVT.geom + CONV_GEOM]
    cout, xld, oo, old = s[CONVT.cout], s[CONVT.x_ld], s[CONVT.out], s[CONVT.out_ld]
    wp = weights[s[CONVT.w]:]
    b = weights[s[CONVT.b]:s[CONVT.b] + cout] if s[CONVT.b] >= 0 else weights[0:0]
    insz, outsz = g[0] * g[1] * g[2], cout * g[12] * g[13]
    scratch = arena[s[CONVT.scratch]:s[CONVT.scratch] + s[CONVT.scratch_floats]]
    for img in range(r0, r1):
        conv_transpose2d(xa[xo + img * xld:xo + img * xld + insz], wp, b, arena[oo + img * old:oo + img * old + outsz],
                         g, cout, s[CONVT.co0], s[CONVT.co1], s[CONVT.oh0], s[CONVT.oh1], scratch, s[CONVT.act])
