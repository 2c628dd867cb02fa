"""BLAS through Numba's own bridge (numba_xxgemm / numba_xxgemv, SciPy's BLAS).

np.dot in nopython mode accepts only contiguous arrays; calling the bridge
directly gives the leading dimensions too, so a worker multiplies a column
slice of a weight matrix, or writes a column slice of a shared activation,
in place -- no packing, no scratch copy.  The bridge is an external symbol
Numba registers at import, so functions calling it are cached on disk.

Layout: views are row-major 2-D arrays whose last axis has unit stride
(rows may be strided).  Row-major C = X @ W.T is, in BLAS's column-major
terms, C^T = W^T' @ X^T: sgemm('T', 'N', m, n, k, W, ldw, X, ldx, C, ldc).

Since shmrt's own tile (tile.py, gemm.py) runs the Linear, recurrent and
stride-1 convolution products, this is the fallback: layers of fewer than
8 outputs (a regression's GEMV) and strided convolutions (im2row).
"""
import numpy as np
from numba import njit, types
from numba.np.linalg import ensure_blas

ensure_blas()  # SciPy's BLAS must be importable; Numba says so clearly if not

_P = types.CPointer(types.float32)
_gemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,
    _P, _P, types.intp, _P, types.intp, _P, _P, types.intp))
_gemv = types.ExternalFunction("numba_xxgemv", types.intc(
    types.char, types.char, types.intp, types.intp, _P, _P, types.intp, _P, _P, _P))

_ONE = np.ones(1, np.float32)
_ZERO = np.zeros(1, np.float32)


@njit(cache=True)
def ld(a):
    """Leading dimension (elements between rows) of a row-major 2-D view."""
    return max(a.strides[0] // 4, a.shape[1], 1)


@njit(cache=True)
def gemm_nt(x, w, out, accumulate):
    """out[n, m] (+)= x[n, k] @ w[m, k].T -- all row-major, rows may be strided."""
    n, k = x.shape
    m = w.shape[0]
    if n == 0 or m == 0:
        return
    if k == 0:  # BLAS returns at once when a dimension is 0 and leaves out as it was (GEMV: even with beta 0)
        if not accumulate:
            out[:, :] = 0
        return
    beta = _ONE if accumulate else _ZERO
    if n == 1 and out.strides[1] == 4:
        # y = W x: W row-major is W^T column-major, so trans='T' with lda = ldw
        _gemv(ord("s"), ord("T"), k, m, _ONE.ctypes, w.ctypes, ld(w), x.ctypes, beta.ctypes, out.ctypes)
    elif m == 1 and out.strides[0] == 4 and w.strides[1] == 4:
        # one output feature (regressions): y = X w, the same call with X as the matrix
        _gemv(ord("s"), ord("T"), k, n, _ONE.ctypes, x.ctypes, ld(x), w.ctypes, beta.ctypes, out.ctypes)
    else:
        _gemm(ord("s"), ord("T"), ord("N"), m, n, k, _ONE.ctypes, w.ctypes, ld(w),
              x.ctypes, ld(x), beta.ctypes, out.ctypes, ld(out))
