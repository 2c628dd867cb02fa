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
    if isinstance(layer, shmrt.SiLU):
        return h / (1.0 + np.exp(-h))
    if isinstance(layer, shmrt.Hardswish):
        return h * np.clip(h + 3.0, 0.0, 6.0) / 6.0
    if isinstance(layer, shmrt.LeakyReLU):
        return np.where(h >= 0, h, h * layer.negative_slope)
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
            nan = np.isnan(h)  # NaN ranks first (as torch.topk), then larger values, then lower indices
            idx = np.lexsort((np.broadcast_to(np.arange(h.shape[1]), h.shape), -np.where(nan, 0, h), ~nan),
                             axis=1)[:, :layer.k]
            h = (np.take_along_axis(h, idx, 1), idx)
        elif isinstance(layer, shmrt.BatchNorm2d):
            sh = (1, -1, 1, 1)
            h = (h - p["running_mean"].reshape(sh)) / np.sqrt(p["running_var"].reshape(sh) + layer.eps) \
                * p["weight"].reshape(sh) + p["bias"].reshape(sh)
        elif isinstance(layer, (shmrt.Standardize, shmrt.MinMaxScale, shmrt.BatchNorm1d)):
            h = _affine_ref(layer, p, h)
        elif isinstance(layer, shmrt.Select):
            h = h[:, layer.resolve(h.shape[1])]
        elif isinstance(layer, shmrt.Dropout):
            pass
        elif isinstance(layer, shmrt.LayerNorm):
            mu = h.mean(axis=1, keepdims=True)
            var = ((h - mu) ** 2).mean(axis=1, keepdims=True)
            h = (h - mu) / np.sqrt(var + layer.eps) * p["weight"] + p["bias"]
        elif isinstance(layer, (shmrt.RNN, shmrt.LSTM, shmrt.GRU)):
            h = recurrent(layer, p, h)
        elif isinstance(layer, shmrt.Conv2d):
            h = conv2d(layer, p, h)
        elif isinstance(layer, (shmrt.MaxPool2d, shmrt.AvgPool2d)):
            h = pool2d(layer, h)
        elif isinstance(layer, shmrt.GlobalAvgPool):
            h = h.mean(axis=(2, 3))
        elif isinstance(layer, shmrt.Flatten):
            h = h.reshape(h.shape[0], int(np.prod(h.shape[1:])))
        else:
            h = act(h, layer)
    return h


def _affine_ref(layer, p, h):
    if isinstance(layer, shmrt.Standardize):
        return (h - p["mean"]) / p["std"]
    if isinstance(layer, shmrt.MinMaxScale):
        return (h - p["min"]) / (p["max"] - p["min"])
    return (h - p["running_mean"]) / np.sqrt(p["running_var"] + layer.eps) * p["weight"] + p["bias"]


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def recurrent(layer, p, x):
    """PyTorch's equations, step by step, in float64."""
    N, T, _ = x.shape
    H = layer.hidden_size
    seq = x
    for k in range(layer.num_layers):
        Wi, Wh = p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"]
        bi = p.get(f"bias_ih_l{k}", np.zeros(Wi.shape[0]))
        bh = p.get(f"bias_hh_l{k}", np.zeros(Wi.shape[0]))
        h = np.broadcast_to(p["h0"][k], (N, H)).copy() if "h0" in p else np.zeros((N, H))
        c = np.broadcast_to(p["c0"][k], (N, H)).copy() if "c0" in p else np.zeros((N, H))
        out = np.zeros((N, T, H))
        for t in range(T):
            xi = seq[:, t] @ Wi.T + bi
            hh = h @ Wh.T + bh
            if isinstance(layer, shmrt.LSTM):
                i, f, g, o = np.split(xi + hh, 4, axis=1)
                c = _sig(f) * c + _sig(i) * np.tanh(g)
                h = _sig(o) * np.tanh(c)
            elif isinstance(layer, shmrt.GRU):
                xr, xz, xn = np.split(xi, 3, axis=1)
                hr, hz, hn = np.split(hh, 3, axis=1)
                r, z = _sig(xr + hr), _sig(xz + hz)
                n = np.tanh(xn + r * hn)
                h = (1 - z) * n + z * h
            else:
                v = xi + hh
                h = np.maximum(v, 0) if layer.mode == 1 else np.tanh(v)
            out[:, t] = h
        seq = out
    return seq if layer.return_sequences else seq[:, -1]


def rel_err(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    assert y.shape == ref.shape, (y.shape, ref.shape)
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def _windows(x, kh, kw, sh, sw, ph, pw, dh, dw, fill):
    """[N, C, OH, OW, kh, kw] windows of a padded [N, C, H, W] input."""
    N, C, H, W = x.shape
    xp = np.full((N, C, H + 2 * ph, W + 2 * pw), fill)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((N, C, OH, OW, kh, kw))
    for i in range(kh):
        for j in range(kw):
            out[..., i, j] = xp[:, :, i * dh:i * dh + sh * (OH - 1) + 1:sh, j * dw:j * dw + sw * (OW - 1) + 1:sw]
    return out


def conv2d(layer, p, x):
    kh, kw = layer.kernel_size
    win = _windows(x, kh, kw, *layer.stride, *layer.padding, *layer.dilation, 0.0)
    G = layer.groups
    Cg, Og = x.shape[1] // G, layer.out_channels // G
    outs = []
    for g in range(G):
        w = p["weight"][g * Og:(g + 1) * Og]  # [Og, Cg, kh, kw]
        outs.append(np.einsum("nchwij,ocij->nohw", win[:, g * Cg:(g + 1) * Cg], w))
    y = np.concatenate(outs, axis=1)
    return y + p["bias"].reshape(1, -1, 1, 1) if "bias" in p else y


def pool2d(layer, x):
    kh, kw = layer.kernel_size
    if isinstance(layer, shmrt.MaxPool2d):
        return _windows(x, kh, kw, *layer.stride, *layer.padding, *layer.dilation, -np.inf).max(axis=(4, 5))
    win = _windows(x, kh, kw, *layer.stride, *layer.padding, *layer.dilation, 0.0)
    if layer.count_include_pad:
        return win.mean(axis=(4, 5))
    ones = _windows(np.ones_like(x), kh, kw, *layer.stride, *layer.padding, *layer.dilation, 0.0)
    return win.sum(axis=(4, 5)) / ones.sum(axis=(4, 5))
