"""The numpy reference's rules for the transformer layers (shmrt/ir/transformer.py): embeddings,
attention, encoder layers and sequence pooling, from PyTorch's equations.

Part of reference.py's forward pass (its ``_RULES`` takes ``SEQUENCE_RULES``); a rule is
``(layer, params, *inputs) -> output`` with the parameters already widened to the pass's dtype.
The semantics are the IR's, which are PyTorch's where PyTorch defines them: masks are
key_padding_masks (nonzero: padding); a layer given one writes 0 at every padding position (as
the nested-tensor fast path does); a query with no key left to attend to (every key masked by
padding, causality or attn_mask) gets an attention of 0 before the output projection, as
torch's softmax over an all -inf row does in MultiheadAttention (where no NaN comes out).
Nothing here is shared with the planner or the kernels: a difference from them is a bug in one.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from shmrt.ir import transformer as T


def _pad(mask):
    """A key_padding_mask (any numeric or bool dtype) as bool [N, T], True at padding; None stays None."""
    return None if mask is None else np.asarray(mask) != 0


def _zero_padding(y, pad):
    """y [N, T, ...] with the rows at padding positions set to 0."""
    return y if pad is None else np.where(pad.reshape(pad.shape + (1,) * (y.ndim - 2)), 0.0, y).astype(y.dtype)


def _layer_norm(h, w, b, eps):
    mu = h.mean(axis=-1, keepdims=True)
    var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
    return (h - mu) / np.sqrt(var + eps) * w + b


def _act(h, name):
    if name == "relu":
        return np.maximum(h, 0.0)
    if name == "gelu":  # exact: 0.5 x (1 + erf(x / sqrt(2))), as nn.GELU() and the encoder's "gelu"
        return 0.5 * h * (1.0 + erf(h / math.sqrt(2.0)))
    raise NotImplementedError(f"the numpy reference has no encoder activation {name!r}; expected one of "
                              f"{T.ENCODER_ACTS}")


def attention(q, k, v, num_heads, pad=None, is_causal=False, attn_mask=None, scale=None):
    """softmax(Q Kᵀ scale + mask) V per head, heads side by side in the features of q, k, v
    [N, T, H*d]; pad: bool [N, T], True at padding keys; attn_mask: additive [>=T, >=T] (its top
    left T x T used; -inf: not allowed).  A query row with no allowed key gives 0."""
    N, Tq, D = q.shape
    d = D // num_heads

    def heads(a):  # [N, T, H*d] -> [N, H, T, d]
        return a.reshape(N, Tq, num_heads, d).transpose(0, 2, 1, 3)

    s = heads(q) @ heads(k).transpose(0, 1, 3, 2) * (1.0 / math.sqrt(d) if scale is None else scale)
    if attn_mask is not None:
        s = s + attn_mask[:Tq, :Tq]
    if is_causal:
        s = np.where(np.tri(Tq, dtype=bool), s, -np.inf)
    if pad is not None:
        s = np.where(pad[:, None, None, :], -np.inf, s)
    top = s.max(axis=-1, keepdims=True)
    empty = np.isneginf(top)  # no allowed key: weights 0 rather than exp(-inf - -inf) = NaN
    e = np.exp(s - np.where(empty, 0.0, top))
    w = np.where(empty, 0.0, e / np.where(empty, 1.0, e.sum(axis=-1, keepdims=True)))
    return (w @ heads(v)).transpose(0, 2, 1, 3).reshape(N, Tq, D)


def self_attention(p, prefix, x, num_heads, pad, is_causal):
    """PyTorch's MultiheadAttention(x, x, x): the in-projection (q, k, v stacked in in_proj_weight),
    attention, the out-projection; parameters ``<prefix>in_proj_weight`` and so on (no biases
    when bias=False)."""
    qkv = x @ p[prefix + "in_proj_weight"].T
    if prefix + "in_proj_bias" in p:
        qkv = qkv + p[prefix + "in_proj_bias"]
    q, k, v = np.split(qkv, 3, axis=-1)
    a = attention(q, k, v, num_heads, pad, is_causal, p.get("attn_mask"))
    y = a @ p[prefix + "out_proj.weight"].T
    return y + p[prefix + "out_proj.bias"] if prefix + "out_proj.bias" in p else y


def encoder_layer(layer, p, x, pad):
    """nn.TransformerEncoderLayer in eval mode: norm_first x + sa(norm1(x)), x + ff(norm2(x)); else
    norm1(x + sa(x)), norm2(x + ff(x)); ff(x) = linear2(activation(linear1(x)))."""
    def norm(i, h):
        return _layer_norm(h, p[f"norm{i}.weight"], p[f"norm{i}.bias"], layer.layer_norm_eps)

    def sa(h):
        return self_attention(p, "self_attn.", h, layer.nhead, pad, layer.is_causal)

    def ff(h):
        h = h @ p["linear1.weight"].T
        h = _act(h + p["linear1.bias"] if "linear1.bias" in p else h, layer.activation)
        h = h @ p["linear2.weight"].T
        return h + p["linear2.bias"] if "linear2.bias" in p else h

    if layer.norm_first:
        x = x + sa(norm(1, x))
        x = x + ff(norm(2, x))
    else:
        x = norm(1, x + sa(x))
        x = norm(2, x + ff(x))
    return _zero_padding(x, pad)


def _embedding(layer, p, ids):
    """weight[ids]; an id that is not an integer in [0, num_embeddings) is refused, naming it."""
    ids = np.asarray(ids)
    idx = ids.astype(np.int64)
    bad = (idx != ids) | (idx < 0) | (idx >= layer.num_embeddings)
    if bad.any():
        raise ValueError(f"{layer!r}: id {ids[bad].flat[0]:g} is out of range; expected integers in "
                         f"[0, {layer.num_embeddings})")
    return p["weight"][idx]


def _sdpa(layer, p, q, k, v, mask=None):
    pad = _pad(mask)
    return _zero_padding(attention(q, k, v, layer.num_heads, pad, layer.is_causal, p.get("attn_mask"), layer.scale),
                         pad)


def _mha(layer, p, x, mask=None):
    pad = _pad(mask)
    return _zero_padding(self_attention(p, "", x, layer.num_heads, pad, layer.is_causal), pad)


def _encoder(layer, p, x, mask=None):
    """The layers in turn (each reads its parameters ``layers.<i>.<name>``), then the final norm."""
    pad = _pad(mask)
    for i, sub in enumerate(layer.layers):
        own = f"layers.{i}."
        x = encoder_layer(sub, {k[len(own):]: v for k, v in p.items() if k.startswith(own)}, x, pad)
    if layer.norm is not None:
        x = _zero_padding(_layer_norm(x, p["norm.weight"], p["norm.bias"], layer.norm.eps), pad)
    return x


def _first_token(layer, p, x, mask=None):
    """x[n, t] at the first real position t of each sequence (0 without a mask); 0 if there is none."""
    if mask is None:
        return x[:, 0]
    real = ~_pad(mask)
    first = x[np.arange(x.shape[0]), real.argmax(axis=1)]
    return np.where(real.any(axis=1)[:, None], first, 0.0).astype(x.dtype)


def _masked_mean(layer, p, x, mask=None):
    """The mean over real positions (over all without a mask); 0 where a sequence has none."""
    if mask is None:
        return x.mean(axis=1)
    real = (~_pad(mask)).astype(x.dtype)
    count = real.sum(axis=1)[:, None]
    return (x * real[:, :, None]).sum(axis=1) / np.maximum(count, 1.0)


SEQUENCE_RULES = {
    T.Embedding: _embedding,
    T.PositionalEmbedding: lambda l, p, x: x + p["weight"][:x.shape[1]],
    T.ScaledDotProductAttention: _sdpa,
    T.MultiheadAttention: _mha,
    T.TransformerEncoderLayer: lambda l, p, x, mask=None: encoder_layer(l, p, x, _pad(mask)),
    T.TransformerEncoder: _encoder,
    T.PaddingMask: lambda l, p, m: (np.asarray(m) == 0).astype(m.dtype),
    T.FirstToken: _first_token,
    T.MaskedMeanPool: _masked_mean,
}
