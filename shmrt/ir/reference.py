"""An independent numpy forward pass of a model: the float64 yardstick of every test, and in float32
the benchmark's "numpy in one process" peer.

Plain numpy, straight from each layer's parameters and PyTorch's equations:
it shares nothing with the planner or the kernels, so a mistake in either
shows as a difference.  The algorithms are the fast ones numpy offers,
because the benchmark times this function as a peer: a convolution is one
matrix product over the input's windows (im2col), a recurrent layer
projects every step's input in one product before the loop over steps,
and a non-overlapping pool is a reshape.  In float64 they are as exact as
the step-by-step forms.

One rule per layer family, in ``_RULES`` (looked up along the class's MRO,
so a subclass with a rule of its own, BatchNorm2d, finds its own first);
activations are looked up by their ``act`` name in ``_ACTS``.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shmrt.ir import layers as L
from shmrt.ir.reference_seq import SEQUENCE_RULES

_erf = np.vectorize(math.erf)  # numpy has no erf; float64 out, cast back to the pass's dtype


def forward(model, x, dtype=np.float64):
    """``model`` (a Sequential or a Graph) applied to ``x``, computed in ``dtype``.  The input is
    rounded to float32 first, as shmrt receives it; the parameters are float32, widened to ``dtype``.
    A graph of several inputs takes a list (or a dict by input name) and returns a tuple of its
    outputs when it has several (a dict when its outputs are named)."""
    widen = np.dtype(dtype) != np.float32  # else the parameters are used as they are (the rules never write them)

    def run(layer, *hs):
        p = {k: v.astype(dtype) for k, v in layer.params.items()} if widen else layer.params
        return (_BY_TYPE.get(type(layer)) or _rule(layer))(layer, p, *hs)

    def cast(a):
        return np.asarray(a, dtype=np.float32).astype(dtype, copy=False)

    if not isinstance(model, L.Graph):
        h = cast(x)
        for layer in model.layers:
            h = run(layer, h)
        return h
    names = [n for n, _ in model.inputs]
    xs = [x[n] for n in names] if isinstance(x, dict) else list(x) if isinstance(x, (list, tuple)) else [x]
    vals = {n: cast(a) for n, a in zip(names, xs)}
    for node in model.nodes:
        vals[node.output] = run(node.layer, *(vals[u] for u in node.inputs))
    outs = [vals[o] for o in model.outputs]
    if model.named_outputs:
        return dict(zip(model.outputs, outs))
    return outs[0] if len(outs) == 1 else tuple(outs)


_BY_TYPE = {}  # type(layer) -> its rule, found once: the bench times forward on 24-layer models at batch 1


def _rule(layer):
    for cls in type(layer).__mro__:
        if cls in _RULES:
            _BY_TYPE[type(layer)] = _RULES[cls]
            return _RULES[cls]
    raise NotImplementedError(f"the numpy reference has no rule for {layer!r}; expected a layer of "
                              f"{', '.join(sorted(c.__name__ for c in _RULES))}")


# -- activations, by the kernels' names (h, alpha) -> y ----------------------------------

def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


_ACTS = {
    "identity": lambda h, a: h,
    "relu": lambda h, a: np.maximum(h, 0.0),
    "sigmoid": lambda h, a: _sig(h),
    "tanh": lambda h, a: np.tanh(h),
    "gelu": lambda h, a: 0.5 * h * (1 + _erf(h / math.sqrt(2.0)).astype(h.dtype, copy=False)),
    "gelu_tanh": lambda h, a: 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3))),
    "silu": lambda h, a: h / (1.0 + np.exp(-h)),
    "hardswish": lambda h, a: h * np.clip(h + 3.0, 0.0, 6.0) / 6.0,
    "relu6": lambda h, a: np.clip(h, 0.0, 6.0),
    "hardsigmoid": lambda h, a: np.clip(h + 3.0, 0.0, 6.0) / 6.0,
    "leaky_relu": lambda h, a: np.where(h >= 0, h, h * a),
    "hardtanh": lambda h, a: np.minimum(np.maximum(h, a[0]), a[1]),
    "hard_sigmoid": lambda h, a: np.clip(a[0] * h + a[1], 0.0, 1.0),
}


def act(h, layer):
    """The activation ``layer`` applied to ``h``."""
    if not isinstance(layer, L._Elementwise) or layer.act not in _ACTS:
        raise NotImplementedError(f"the numpy reference has no activation for {layer!r}; expected one of "
                                  f"{', '.join(_ACTS)}")
    return _ACTS[layer.act](h, layer.alpha)


# -- dense and row-wise -----------------------------------------------------------------------

def _linear(layer, p, h):
    h = h @ p["weight"].T
    return h + p["bias"] if "bias" in p else h


def _softmax(layer, p, h):
    ax = layer.dim if layer.dim > 0 else h.ndim + layer.dim
    e = np.exp(h - h.max(axis=ax, keepdims=True))
    return e / e.sum(axis=ax, keepdims=True)


def _log_softmax(layer, p, h):
    ax = layer.dim if layer.dim > 0 else h.ndim + layer.dim
    z = h - h.max(axis=ax, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=ax, keepdims=True))


def _topk(layer, p, h):
    nan = np.isnan(h)  # NaN ranks first (as torch.topk), then larger values, then lower indices
    idx = np.lexsort((np.broadcast_to(np.arange(h.shape[1]), h.shape), -np.where(nan, 0, h), ~nan),
                     axis=1)[:, :layer.k]
    return np.take_along_axis(h, idx, 1), idx


def _layer_norm(layer, p, h):
    ax = tuple(range(h.ndim - len(layer.normalized_shape), h.ndim))
    mu = h.mean(axis=ax, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=ax, keepdims=True)
    return (h - mu) / np.sqrt(var + layer.eps) * p["weight"] + p["bias"]


def _trailing_stat(layer, p, h):
    ax = tuple(range(h.ndim - layer.ndim, h.ndim))
    mu = h.mean(axis=ax, keepdims=True)
    y = mu if isinstance(layer, L.Mean) else 1.0 / np.sqrt(((h - mu) ** 2).mean(axis=ax, keepdims=True) + layer.eps)
    return y if layer.keepdim else y.reshape(h.shape[:h.ndim - layer.ndim])


def _batch_norm(layer, p, h):
    """BatchNorm1d over [N, F] and BatchNorm2d over [N, C, H, W]: per feature or channel (axis 1)."""
    sh = (-1,) + (1,) * (h.ndim - 2)
    p = {k: v.reshape(sh) for k, v in p.items()}
    return (h - p["running_mean"]) / np.sqrt(p["running_var"] + layer.eps) * p["weight"] + p["bias"]


# -- recurrent ----------------------------------------------------------------------------------

def recurrent(layer, p, x, lengths=None):
    """PyTorch's equations for RNN / LSTM / GRU, step by step after one input product for all steps;
    lengths [N, 1]: past its length a sample's state stays, its output sequence is 0."""
    N, T, _ = x.shape
    keep = None if lengths is None else np.arange(T)[None, :] >= np.asarray(lengths).reshape(N, 1)  # [N, T]
    H = layer.hidden_size
    seq = x
    for k in range(layer.num_layers):
        Wi, Wh_t = p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"].T
        bi = p.get(f"bias_ih_l{k}", np.zeros(Wi.shape[0], x.dtype))
        bh = p.get(f"bias_hh_l{k}", np.zeros(Wi.shape[0], x.dtype))
        xi = seq @ Wi.T + bi
        if layer.cell != "gru":  # PyTorch GRU's hidden bias sits inside r * (h W_hn + b_hn): it stays in the loop
            xi += bh
        h = np.broadcast_to(p["h0"][k], (N, H)).copy() if "h0" in p else np.zeros((N, H), x.dtype)
        c = np.broadcast_to(p["c0"][k], (N, H)).copy() if "c0" in p else np.zeros((N, H), x.dtype)
        out = np.empty((N, T, H), x.dtype)
        for t in range(T):
            h_was, c_was = h, c
            if layer.cell == "lstm":
                g = xi[:, t] + h @ Wh_t
                i, f, gg, o = g[:, :H], g[:, H:2 * H], g[:, 2 * H:3 * H], g[:, 3 * H:]
                c = _sig(f) * c + _sig(i) * np.tanh(gg)
                h = _sig(o) * np.tanh(c)
            elif layer.cell == "gru":
                hh = h @ Wh_t + bh
                r = _sig(xi[:, t, :H] + hh[:, :H])
                z = _sig(xi[:, t, H:2 * H] + hh[:, H:2 * H])
                n = np.tanh(xi[:, t, 2 * H:] + r * hh[:, 2 * H:])
                h = (1 - z) * n + z * h
            elif layer.cell == "gru_lbr0":  # ONNX linear_before_reset=0: n = tanh(W_in x + W_hn (r * h) + b_in + b_hn)
                hh = h @ Wh_t[:, :2 * H]
                r = _sig(xi[:, t, :H] + hh[:, :H])
                z = _sig(xi[:, t, H:2 * H] + hh[:, H:])
                n = np.tanh(xi[:, t, 2 * H:] + (r * h) @ Wh_t[:, 2 * H:])
                h = (1 - z) * n + z * h
            elif layer.cell in ("rnn_tanh", "rnn_relu"):
                v = xi[:, t] + h @ Wh_t
                h = np.maximum(v, 0.0) if layer.cell == "rnn_relu" else np.tanh(v)
            else:
                raise NotImplementedError(f"the numpy reference has no cell {layer.cell!r} ({layer!r})")
            if keep is not None:
                h, c = np.where(keep[:, t:t + 1], h_was, h), np.where(keep[:, t:t + 1], c_was, c)
                out[:, t] = np.where(keep[:, t:t + 1], 0.0, h)
            else:
                out[:, t] = h
        seq = out
    if getattr(layer, "return_cell_state", False):  # LSTM: the last layer's final cell state
        return c
    return seq if layer.return_sequences else seq[:, -1] if keep is None else h


# -- convolutional ------------------------------------------------------------------------------

def _windows(x, layer, fill):
    """[N, C, OH, OW, kh, kw]: the windows of ``layer`` (kernel, stride, pads [top, left, bottom, right],
    dilation; a pool's ceil mode) over the [N, C, H, W] input padded with ``fill``, the bottom and right
    as far as the last window reaches (a view: no copy beyond the padding)."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    t, l, _, _ = layer.pads
    _, OH, OW = layer.output_shape(x.shape[1:])
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    bottom, right = max((OH - 1) * sh + eh - x.shape[2] - t, 0), max((OW - 1) * sw + ew - x.shape[3] - l, 0)
    xp = np.pad(x, ((0, 0), (0, 0), (t, bottom), (l, right)), constant_values=fill) if t or l or bottom or right else x
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))
    return win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :OH, :OW]


def _taps(n, o, k, s, d, p0, p1, include_pad):
    """Per output index along one axis: how many of its window's taps lie inside the input (or inside
    the padded input [-p0, n + p1) when include_pad: PyTorch's and ONNX's divisor in ceil mode)."""
    lo, hi = (-p0, n + p1) if include_pad else (0, n)
    return np.array([sum(lo <= q * s - p0 + i * d < hi for i in range(k)) for q in range(o)], np.float64)


def conv2d(layer, p, x):
    """im2col: one tensordot of the windows with the weight per group."""
    win = _windows(x, layer, 0.0)
    w, G = p["weight"], layer.groups
    Cg, Og = x.shape[1] // G, layer.out_channels // G
    ys = [np.tensordot(win[:, g * Cg:(g + 1) * Cg], w[g * Og:(g + 1) * Og], axes=([1, 4, 5], [1, 2, 3]))
          for g in range(G)]  # each [N, OH, OW, Og]
    y = (ys[0] if G == 1 else np.concatenate(ys, axis=3)).transpose(0, 3, 1, 2)
    if "bias" in p:
        y = y + p["bias"].reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y)


def conv_transpose2d(layer, p, x):
    """The scatter form: each kernel tap (ky, kx) adds x @ w[:, :, ky, kx] (per group) into every
    stride-th output pixel from (ky dh, kx dw) of the uncropped output, which is then cropped by the
    padding (output_padding: zero rows and columns past the end, before the bias)."""
    N, C, H, W = x.shape
    G, Cout = layer.groups, layer.out_channels
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    _, OH, OW = layer.output_shape(x.shape[1:])
    FH, FW = max((H - 1) * sh + (kh - 1) * dh + 1, ph + OH), max((W - 1) * sw + (kw - 1) * dw + 1, pw + OW)
    full = np.zeros((N, G, Cout // G, FH, FW), x.dtype)
    xg = x.reshape(N, G, C // G, H, W)
    w = p["weight"].reshape(G, C // G, Cout // G, kh, kw)
    for ky in range(kh):
        for kx in range(kw):
            full[:, :, :, ky * dh:ky * dh + (H - 1) * sh + 1:sh, kx * dw:kx * dw + (W - 1) * sw + 1:sw] += np.einsum(
                "ngchw,gco->ngohw", xg, w[:, :, :, ky, kx])
    y = full.reshape(N, Cout, FH, FW)[:, :, ph:ph + OH, pw:pw + OW]
    if "bias" in p:
        y = y + p["bias"].reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y)


def pool2d(layer, x):
    """MaxPool2d / AvgPool2d; a non-overlapping unpadded window (the common 2x2 stride 2) as a reshape."""
    (kh, kw), is_max = layer.kernel_size, isinstance(layer, L.MaxPool2d)
    if (layer.stride == (kh, kw) and layer.pads == (0, 0, 0, 0) and layer.dilation == (1, 1)
            and not layer.ceil_mode):
        N, C, H, W = x.shape
        tiles = x[:, :, :H // kh * kh, :W // kw * kw].reshape(N, C, H // kh, kh, W // kw, kw)
        return tiles.max(axis=(3, 5)) if is_max else tiles.mean(axis=(3, 5))
    if is_max:
        return _windows(x, layer, -np.inf).max(axis=(4, 5))
    _, _, H, W = x.shape
    _, OH, OW = layer.output_shape(x.shape[1:])
    (sh, sw), (dh, dw), (t, l, b, r) = layer.stride, layer.dilation, layer.pads
    rows = _taps(H, OH, kh, sh, dh, t, b, layer.count_include_pad)
    cols = _taps(W, OW, kw, sw, dw, l, r, layer.count_include_pad)
    return _windows(x, layer, 0.0).sum(axis=(4, 5)) / np.outer(rows, cols)


def _binary(layer, p, a, b=None):
    """NumPy broadcasting of the per-sample shapes (the batch axis is never broadcast); b None: the
    layer's constant (before a where the layer is reversed)."""
    if b is None:
        b = np.asarray(p["constant"], np.float64)[None]
        if layer.reverse:
            a, b = b, a
    r = max(a.ndim, b.ndim)
    a, b = (v.reshape(v.shape[:1] + (1,) * (r - v.ndim) + v.shape[1:]) for v in (a, b))
    return {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}[layer.op](a, b)


def adaptive_pool2d(layer, x):
    """PyTorch's windows: output cell i covers floor(i*H/oh) .. ceil((i+1)*H/oh); the mean or the max."""
    N, C, H, W = x.shape
    oh, ow = layer.output_size
    out = np.empty((N, C, oh, ow), x.dtype)
    for i in range(oh):
        h0, h1 = i * H // oh, -(-(i + 1) * H // oh)
        for j in range(ow):
            w0, w1 = j * W // ow, -(-(j + 1) * W // ow)
            win = x[:, :, h0:h1, w0:w1]
            out[:, :, i, j] = win.max(axis=(2, 3)) if layer.is_max else win.mean(axis=(2, 3))
    return out


def upsample(layer, x):
    """Each output pixel a blend of two source rows and two source columns (the layer's taps)."""
    _, _, H, W = x.shape
    _, OH, OW = layer.output_shape(x.shape[1:])
    r0, r1, wr = layer.taps(H, OH, 0)
    c0, c1, wc = layer.taps(W, OW, 1)
    r0, r1, c0, c1 = (v.astype(np.int64) for v in (r0, r1, c0, c1))
    rows = x[:, :, r0] * (1 - wr)[:, None] + x[:, :, r1] * wr[:, None]
    return rows[:, :, :, c0] * (1 - wc) + rows[:, :, :, c1] * wc


def _slice(l, h):
    a, start, n = l.window(h.shape[1:])
    idx = [slice(None)] * h.ndim
    idx[a + 1] = slice(start, start + (n - 1) * l.step + 1, l.step)
    return h[tuple(idx)]


_RULES = {
    L.Upsample: lambda l, p, h: upsample(l, h),
    L._Binary: _binary,
    L.Concat: lambda l, p, *hs: np.concatenate(hs, axis=l.axis(hs[0].ndim - 1) + 1),
    L._AdaptivePool2d: lambda l, p, h: adaptive_pool2d(l, h),
    L.Linear: _linear,
    L._Elementwise: lambda l, p, h: act(h, l),
    L.Softmax: _softmax,
    L.LogSoftmax: _log_softmax,
    L.ArgMax: lambda l, p, h: h.shape[-1] - 1 - np.argmax(h[..., ::-1], axis=-1) if l.select_last_index else
    np.argmax(h, axis=-1),
    L.TopK: _topk,
    L.LayerNorm: _layer_norm,
    L._TrailingStat: _trailing_stat,
    L.Standardize: lambda l, p, h: (h - p["mean"]) / p["std"],
    L.MinMaxScale: lambda l, p, h: (h - p["min"]) / (p["max"] - p["min"]),
    L.BatchNorm1d: _batch_norm,  # and BatchNorm2d, its subclass
    L.Select: lambda l, p, h: h[:, l.resolve(h.shape[1])],
    L.Dropout: lambda l, p, h: h,
    L._Recurrent: recurrent,
    L.Conv2d: conv2d,
    L.ConvTranspose2d: conv_transpose2d,
    L._Pool2d: lambda l, p, h: pool2d(l, h),
    L.GlobalAvgPool: lambda l, p, h: h.mean(axis=(2, 3)),
    L.Flatten: lambda l, p, h: h.reshape(h.shape[0], int(np.prod(h.shape[1:]))),
    L.Reshape: lambda l, p, h: h.reshape((h.shape[0],) + l.output_shape(h.shape[1:])),
    L.Permute: lambda l, p, h: h.transpose([0] + [a + 1 for a in l.order(h.ndim - 1)]),
    L.Transpose: lambda l, p, h: h.transpose([0] + [a + 1 for a in l.order(h.ndim - 1)]),
    L.Slice: lambda l, p, h: _slice(l, h),
    **SEQUENCE_RULES,  # embeddings, attention, encoder layers, sequence pooling: reference_seq.py
}
