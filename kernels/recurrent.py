"""Recurrent cells: the pointwise half of one time step.

The matrix half (input projection for every step at once, then h(t-1) @
W_hh^T per step) is BLAS; these combine the gate pre-activations of one
worker's rows and hidden units into the new state.  Gate views are
[rows, units]; PyTorch's gate orders (LSTM i, f, g, o; GRU r, z, n).
float32 arithmetic with a rational tanh (sigmoid(x) = tanh(x/2)/2 + 1/2):
the cell was the bottleneck at batch 32 with libm's exp/tanh per element.
"""
import numpy as np
from numba import njit

# The cells, by code (a RECUR step's mode; the layers name them), and each one's gates per hidden unit.
# "gru" is PyTorch's GRU (ONNX linear_before_reset=1): n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
# "gru_lbr0" is ONNX's default GRU (linear_before_reset=0): n = tanh(W_in x + b_in + W_hn (r * h) + b_hn).
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru", "gru_lbr0")
RNN_TANH, RNN_RELU, LSTM_CELL, GRU_CELL, GRU_LBR0 = range(len(CELLS))
GATES = (1, 1, 4, 3, 3)

# tanh as a rational function (Eigen's float32 ptanh): branch-free
# arithmetic, so the cell loops vectorise, unlike a libm call per element.
# Measured against np.tanh on 2,000,001 points in [-12, 12]: max absolute
# error 3.4e-7 when evaluated in float32 (the clamp at 7.905 included).
_CLAMP = np.float32(7.90531110763549805)
_A = [np.float32(v) for v in (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11,
                              5.12229709037114e-08, 1.48572235717979e-05, 6.37261928875436e-04,
                              4.89352455891786e-03)]
_B = [np.float32(v) for v in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                              4.89352518554385e-03)]
_A0, _A1, _A2, _A3, _A4, _A5, _A6 = _A
_B0, _B1, _B2, _B3 = _B
_HALF = np.float32(0.5)
# fastmath without 'nnan'/'ninf': FMA contraction and vectorisation, while a
# NaN in the input still gives NaN out; error_model="numpy": a division by
# zero gives inf/nan instead of raising in a worker
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, inline="always", fastmath=_FAST, error_model="numpy")
def _tanh(v):
    v = np.float32(v)
    x = min(max(v, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x2 * _A0 + _A1
    p = x2 * p + _A2
    p = x2 * p + _A3
    p = x2 * p + _A4
    p = x2 * p + _A5
    p = x2 * p + _A6
    q = x2 * _B0 + _B1
    q = x2 * q + _B2
    q = x2 * q + _B3
    t = x * p / q
    return t if v == v else v  # the clamp would turn NaN into -1


@njit(cache=True, inline="always", fastmath=_FAST, error_model="numpy")
def _sigmoid(v):
    return _HALF * _tanh(_HALF * np.float32(v)) + _HALF


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def lstm_cell(gi, gf, gg, go, c, h):
    """c = sigmoid(f) * c + sigmoid(i) * tanh(g);  h = sigmoid(o) * tanh(c)."""
    n, m = c.shape
    for r in range(n):
        for u in range(m):
            cn = _sigmoid(gf[r, u]) * c[r, u] + _sigmoid(gi[r, u]) * _tanh(gg[r, u])
            c[r, u] = cn
            h[r, u] = _sigmoid(go[r, u]) * _tanh(cn)


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def gru_cell(gr, gz, gn, hn, b_hn, h_prev, h):
    """r, z = sigmoid(.); n = tanh(gn + r * (hn + b_hn)); h = (1 - z) * n + z * h_prev.

    gr, gz, gn hold the input projections (gr, gz with both biases added,
    gn with b_in only); hn = h_prev_full @ W_hn^T; b_hn may be empty."""
    n, m = h.shape
    has_b = b_hn.shape[0] > 0
    for r in range(n):
        for u in range(m):
            rr = _sigmoid(gr[r, u])
            z = _sigmoid(gz[r, u])
            a = hn[r, u] + (b_hn[u] if has_b else np.float32(0.0))
            nn = _tanh(gn[r, u] + rr * a)
            h[r, u] = (np.float32(1.0) - z) * nn + z * h_prev[r, u]


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def gru_reset(gr, h_prev):
    """gr = sigmoid(gr) * h_prev: the reset gate applied to h(t-1), in place (GRU linear_before_reset=0)."""
    n, m = gr.shape
    for r in range(n):
        for u in range(m):
            gr[r, u] = _sigmoid(gr[r, u]) * h_prev[r, u]


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def gru_lbr0_cell(gz, gn, hn, h_prev, h):
    """z = sigmoid(gz); n = tanh(gn + hn); h = (1 - z) * n + z * h_prev.

    gz, gn hold the input projections with both biases added; hn = (r * h_prev)_full @ W_hn^T."""
    n, m = h.shape
    for r in range(n):
        for u in range(m):
            z = _sigmoid(gz[r, u])
            nn = _tanh(gn[r, u] + hn[r, u])
            h[r, u] = (np.float32(1.0) - z) * nn + z * h_prev[r, u]


@njit(cache=True, fastmath=_FAST, error_model="numpy")
def rnn_cell(g, h, relu):
    """h = tanh(g), or max(g, 0) when relu."""
    n, m = h.shape
    for r in range(n):
        for u in range(m):
            v = g[r, u]
            h[r, u] = (v if v > np.float32(0.0) or v != v else np.float32(0.0)) if relu else _tanh(v)
