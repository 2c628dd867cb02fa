"""Where a step's rows and matrices lie: the row range of a worker's slice, a 2-D view of the flat
arena, and whether a step reads the caller's own input array or the arena."""
from __future__ import annotations

import numpy as np
from numba import njit

from shmrt.compile.isa import FRAC


@njit(cache=True, inline="always")
def _rows(base, cnt, w0, w1, lo, hi):
    """Rows lo/FRAC..hi/FRAC of the cnt rows from base (the batch, or a micro-batch); or, when
    w1 > w0, the window w0:w1 of them (run_command's blocks of a worker's own rows)."""
    if w1 > w0:
        return w0, w1
    return base + (cnt * lo) // FRAC, base + (cnt * hi) // FRAC


@njit(cache=True, inline="always")
def _view(flat, off, ld, r0, r1, col, ncols):
    """Rows r0:r1, columns col:col+ncols of the row-major [*, ld] matrix at off."""
    return flat[off + r0 * ld:off + r1 * ld].reshape((r1 - r0, ld))[:, col:col + ncols]


@njit(cache=True, inline="always")
def _src(arena, xin, off, in_off):
    """Where a step reads its input x at arena offset off: the caller's own array xin (rows from the
    batch's first; empty: none) when off is the input rows' offset in_off, else the arena."""
    if xin.shape[0] > 0 and off == in_off:
        return xin, np.int64(0)
    return arena, np.int64(off)
