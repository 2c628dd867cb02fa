"""An independent float64 numpy forward pass, the yardstick for every test."""
import math

import numpy as np

import shmrt

_erf = np.vectorize(math.erf)


def act(h, layer):
    if isinstance(layer, shmrt.ReLU):
        return np.maximum(h, 0.0)
    if isinstance(layer, shmrt.Sigmoid):
        return 1.0 / (1.0 + np.exp(-h))
    if isinstance(layer, shmrt.Tanh):
        return np.tanh(h)
    if isinstance(layer, shmrt.GELU):
        if layer.approximate == "tanh":
            return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
        return 0.5 * h * (1 + _erf(h / np.sqrt(2.0)))
    raise NotImplementedError(layer)


def forward(model, x):
    h = np.asarray(x, dtype=np.float32).astype(np.float64)
    for layer in model.layers:
        p = {k: v.astype(np.float64) for k, v in layer.params.items()}
        if isinstance(layer, shmrt.Linear):
            h = h @ p["weight"].T + p.get("bias", 0.0)
        elif isinstance(layer, (shmrt.Softmax, shmrt.LogSoftmax)):
            z = h - h.max(axis=1, keepdims=True)
            lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
            h = z - lse if isinstance(layer, shmrt.LogSoftmax) else np.exp(z - lse)
        elif isinstance(layer, shmrt.ArgMax):
            h = np.argmax(h, axis=1)
        elif isinstance(layer, shmrt.TopK):
            idx = np.argsort(-h, axis=1, kind="stable")[:, :layer.k]
            h = (np.take_along_axis(h, idx, 1), idx)
        else:
            h = act(h, layer)
    return h


def rel_err(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))
