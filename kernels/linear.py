"""Linear layer slices: y = act(x @ W.T + b), whole or partial.

The three shapes a plan uses:
- ``linear``: any block of rows and/or output columns, written in place
  (data parallel: rows; column parallel: output columns).
- ``linear`` without bias + ``reduce_partials``: row parallel -- each worker multiplies
  its slice of the input features, then each reduces a slice of the output
  columns over every worker's partial sums (a reduce-scatter).
"""
from numba import njit

from .activations import act1, bias_act
from .blas import gemm_nt


@njit(cache=True)
def linear(x, w, b, out, act):
    """out[n, m] = act(x[n, k] @ w[m, k].T + b[m]); b may be empty."""
    gemm_nt(x, w, out, False)
    bias_act(out, b, act)


@njit(cache=True)
def reduce_partials(parts, m, c0, b, out, act):
    """out[i, j] = act(sum_p parts[i, p*m + c0 + j] + b[j]) for j < out.shape[1].

    parts[n, P*m] holds each worker's partial sums side by side; out and b
    are the column slice c0:c0+out.shape[1] being reduced.  Summed in float64
    in a fixed worker order, so results do not depend on timing.
    """
    n, w = out.shape
    P = parts.shape[1] // m
    has_b = b.shape[0] > 0
    for i in range(n):
        for j in range(w):
            s = 0.0
            for p in range(P):
                s += parts[i, p * m + c0 + j]
            if has_b:
                s += b[j]
            out[i, j] = act1(s, act)
