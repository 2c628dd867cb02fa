"""The built-in benchmark workloads, and the same models in plain numpy.

numpy_forward is the "numpy in one process" column of the benchmark (in
float32) and its float64 reference (in float64) -- written independently
of shmrt's planner and kernels, straight from the layers' parameters.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shmrt.ir import layers as L


@dataclass
class Workload:
    name: str
    description: str
    model: L.Sequential
    input_shape: tuple
    batches: tuple
    max_batch: int
    unit: str = "items"  # what one row is
    zero_copy: bool = False  # rows live in the shared input buffer; run_in_place, no copies
    chunk: int = 0  # > 0: stream the rows through the zero-copy tier, chunk rows at a time
    fixed_batch: bool = False  # always runs its own batch (the bench's --batches does not apply)

    @property
    def subset(self) -> tuple:
        """The default bench's batches: one latency and one throughput batch."""
        return (min(self.batches), max(self.batches)) if len(self.batches) > 1 else self.batches


def mlp():
    L.manual_seed(1234)
    dims = (1024, 4096, 4096, 1024)
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [L.Linear(a, b), L.ReLU()]
    return Workload("mlp", "MLP 1024-4096-4096-1024 + ReLU", L.Sequential(layers[:-1]), (1024,), (1, 256), 256)


def cnn():
    L.manual_seed(1235)
    model = L.Sequential([L.Conv2d(3, 32, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                          L.Conv2d(32, 64, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                          L.Linear(4096, 256), L.ReLU(), L.Linear(256, 10), L.Softmax()])
    return Workload("cnn", "CNN 3x32x32: conv32-pool-conv64-pool-fc256-fc10-softmax", model, (3, 32, 32),
                    (1, 64), 64, "images")


def lstm():
    L.manual_seed(1236)
    model = L.Sequential([L.LSTM(256, 1024, return_sequences=False)])
    return Workload("lstm", "LSTM input 256, hidden 1024, 64 steps (last h)", model, (64, 256), (1, 32), 32,
                    "sequences")


def deep():
    L.manual_seed(1238)
    layers = []
    for _ in range(12):
        layers += [L.Linear(256, 256), L.ReLU()]
    return Workload("deep", "deep MLP: 12 x (Linear 256-256 + ReLU), the pipeline's case", L.Sequential(layers),
                    (256,), (1, 4096), 4096)


def _logreg_model():
    L.manual_seed(1237)
    rng = np.random.default_rng(7)
    return L.logistic_regression(rng.standard_normal(64) / 8, 0.1)


def logreg():
    return Workload("logreg", "logistic regression, 64 features, 1,000,000 rows already in shared memory "
                    "(zero-copy tier: computed in place)", _logreg_model(), (64,), (1_000_000,), 1_000_000, "rows",
                    zero_copy=True, fixed_batch=True)


def logreg_stream():
    return Workload("logreg-stream", "the same, 1,000,000 rows streamed through the zero-copy tier in chunks of "
                    "65,536 (each chunk written into the shared input buffer, as a reader would)",
                    _logreg_model(), (64,), (1_000_000,), 65_536, "rows", chunk=65_536, fixed_batch=True)


WORKLOADS = {"mlp": mlp, "cnn": cnn, "lstm": lstm, "deep": deep, "logreg": logreg, "logreg-stream": logreg_stream}


def _sigmoid(h):
    return 1.0 / (1.0 + np.exp(-h))


def _conv(l, h, dtype):
    w = l.params["weight"].astype(dtype, copy=False)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = l.kernel_size, l.stride, l.padding, l.dilation
    if (dh, dw) != (1, 1) or l.groups != 1:
        raise NotImplementedError("the numpy workload conv has no dilation or groups")
    hp = np.pad(h, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(hp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]  # N, C, OH, OW, kh, kw
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # N, OH, OW, Cout
    y = y.transpose(0, 3, 1, 2)
    if "bias" in l.params:
        y = y + l.params["bias"].astype(dtype, copy=False).reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y)


def _lstm(l, x, dtype):
    N, T, _ = x.shape
    H = l.hidden_size
    p = {k: v.astype(dtype, copy=False) for k, v in l.params.items()}
    seq = x
    for k in range(l.num_layers):
        xi = seq @ p[f"weight_ih_l{k}"].T
        if l.bias:
            xi = xi + p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"]
        h = np.zeros((N, H), dtype)
        c = np.zeros((N, H), dtype)
        out = np.empty((N, T, H), dtype)
        whh_t = p[f"weight_hh_l{k}"].T
        for t in range(T):
            g = xi[:, t] + h @ whh_t
            i, f, gg, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(gg)
            h = _sigmoid(o) * np.tanh(c)
            out[:, t] = h
        seq = out
    return seq if l.return_sequences else seq[:, -1]


def numpy_forward(model, x, dtype=np.float32):
    """The workload models in plain numpy (the layers the workloads use)."""
    h = np.asarray(x).astype(dtype, copy=False)
    for l in model.layers:
        if isinstance(l, L.Linear):
            h = h @ l.params["weight"].astype(dtype, copy=False).T
            if "bias" in l.params:
                h = h + l.params["bias"].astype(dtype, copy=False)
        elif isinstance(l, L.ReLU):
            h = np.maximum(h, 0)
        elif isinstance(l, L.Sigmoid):
            h = _sigmoid(h)
        elif isinstance(l, L.Softmax):
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
        elif isinstance(l, L.Conv2d):
            h = _conv(l, h, dtype)
        elif isinstance(l, L.MaxPool2d):
            k = l.kernel_size
            if l.stride != k or l.padding != (0, 0):
                raise NotImplementedError("the numpy workload pool is non-overlapping, unpadded")
            N, C, H, W = h.shape
            h = h[:, :, :H // k[0] * k[0], :W // k[1] * k[1]].reshape(N, C, H // k[0], k[0], W // k[1], k[1])
            h = h.max(axis=(3, 5))
        elif isinstance(l, L.Flatten):
            h = h.reshape(h.shape[0], -1)
        elif isinstance(l, L.LSTM):
            h = _lstm(l, h, dtype)
        else:
            raise NotImplementedError(f"numpy_forward has no {l!r}")
    return h
