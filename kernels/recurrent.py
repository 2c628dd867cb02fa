"""Recurrent cells: the pointwise half of one time step.

The matrix half (input projection for every step at once, then h(t-1) @
W_hh^T per step) is BLAS; these combine the gate pre-activations of one
worker's rows and hidden units into the new state.  Gate views are
[rows, units]; PyTorch's gate orders (LSTM i, f, g, o; GRU r, z, n).
"""
import math

from numba import njit


@njit(cache=True, inline="always")
def _sigmoid(v):
    if v >= 0.0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


@njit(cache=True)
def lstm_cell(gi, gf, gg, go, c, h):
    """c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)."""
    n, m = c.shape
    for r in range(n):
        for u in range(m):
            cn = _sigmoid(float(gf[r, u])) * c[r, u] + _sigmoid(float(gi[r, u])) * math.tanh(float(gg[r, u]))
            c[r, u] = cn
            h[r, u] = _sigmoid(float(go[r, u])) * math.tanh(cn)


@njit(cache=True)
def gru_cell(gr, gz, gn, hn, b_hn, h_prev, h):
    """r, z = sigmoid(.); n = tanh(gn + r * (hn + b_hn)); h = (1 - z) * n + z * h_prev.

    gr, gz, gn hold the input projections (gr, gz with both biases added,
    gn with b_in only); hn = h_prev_full @ W_hn^T; b_hn may be empty."""
    n, m = h.shape
    has_b = b_hn.shape[0] > 0
    for r in range(n):
        for u in range(m):
            rr = _sigmoid(float(gr[r, u]))
            z = _sigmoid(float(gz[r, u]))
            a = float(hn[r, u]) + (b_hn[u] if has_b else 0.0)
            nn = math.tanh(float(gn[r, u]) + rr * a)
            h[r, u] = (1.0 - z) * nn + z * h_prev[r, u]


@njit(cache=True)
def rnn_cell(g, h, relu):
    """h = tanh(g), or max(g, 0) when relu."""
    n, m = h.shape
    for r in range(n):
        for u in range(m):
            v = float(g[r, u])
            h[r, u] = (v if v > 0.0 else 0.0) if relu else math.tanh(v)
