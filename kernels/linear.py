"""Linear layer slices: y = act(x @ W.T + b), whole or partial.

The product itself is gemm.gemm_packed on the weight's panels; ``linear``
here (OpenBLAS, row-major W) is kept for layers with fewer than
PACKED_MIN_OUT outputs (a regression's one column), where OpenBLAS's
GEMV streams the rows faster than a 32-wide tile (bench/microkernel.py).

The three shapes a plan uses:
- a block of rows and/or output columns, written in place
  (data parallel: rows; column parallel: output columns).
- without bias + ``reduce_partials``: row parallel -- each worker multiplies
  its slice of the input features, then each reduces a slice of the output
  columns over every worker's partial sums (a reduce-scatter).
"""
from numba import njit

from .activations import bias_act, bias_act_row
from .blas import gemm_nt

PACKED_MIN_OUT = 8  # outputs from which a Linear runs on packed panels (measured: below, OpenBLAS's GEMV is faster)


@njit(cache=True)
def linear(x, w, b, out, act):
    """out[n, m] = act(x[n, k] @ w[m, k].T + b[m]); b may be empty."""
    gemm_nt(x, w, out, False)
    bias_act(out, b, act)


@njit(cache=True)
def reduce_partials(parts, m, c0, b, out, act):
    """out[i, j] = act(sum_p parts[i, p*m + c0 + j] + b[j]) for j < out.shape[1].

    parts[n, P*m] holds each worker's partial sums side by side; out and b
    are the column slice c0:c0+out.shape[1] being reduced.  Summed into the
    output row in a fixed worker order (so results do not depend on
    timing), one pass along the row per worker: the loops vectorise.
    """
    n, w = out.shape
    P = parts.shape[1] // m
    for i in range(n):
        o = out[i]
        row = parts[i]
        for j in range(w):
            o[j] = row[c0 + j]
        for p in range(1, P):
            base = p * m + c0
            for j in range(w):
                o[j] += row[base + j]
        bias_act_row(o, b, act)
