"""Transformer encoders: token embeddings, attention, encoder layers and sequence pooling.

Sequences are batch-first, ``[N, T, D]`` per sample ``(T, D)``; token ids ``[N, T]`` (any integer
dtype), masks ``[N, T]``.  Every layer that takes a mask takes PyTorch's ``key_padding_mask``:
nonzero (True) marks a padding position; ``PaddingMask()`` turns a Hugging Face ``attention_mask``
(1 = a real token) into one.  Padding positions are not computed: their outputs are 0, as
PyTorch's nested-tensor fast path gives; a query whose keys are all masked gets 0 (NaN-free).

Parameters carry PyTorch's names (dotted where PyTorch's are: ``self_attn.in_proj_weight``,
``linear1.weight``, ``layers.0.norm1.bias``), passed as keywords (``**state_dict``).  The planner
runs these layers on packed token rows (shmrt/compile/tokens.py): only real tokens are computed."""
from __future__ import annotations

import copy

import numpy as np

from shmrt.ir.base import Layer, _param, _positive_int, _rng, _vector

ENCODER_ACTS = ("relu", "gelu")


def _seq(shape, who, d=None):
    if len(shape) != 2 or (d is not None and shape[1] != d):
        want = f"(N, T, {d})" if d is not None else "(N, T, D)"
        raise ValueError(f"{who} expects sequences of shape {want}, got (N, {', '.join(map(str, shape))})")
    return tuple(shape)


def _mask_shape(shapes, who, T):
    if len(shapes) > 1 and tuple(shapes[1]) != (T,):
        raise ValueError(f"{who}: key_padding_mask must have shape (N, {T}), got (N, {', '.join(map(str, shapes[1]))})")


def _attn_mask(value, who):
    """A constant [T, T] attention mask as an additive float32 mask (bool: True = not allowed, -inf)."""
    if value is None:
        return None
    m = np.asarray(value)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.dtype.kind not in "biuf":
        raise ValueError(f"{who}: attn_mask must be a square [T, T] bool or float array, got shape {m.shape} "
                         f"dtype {m.dtype}")
    return np.where(m, -np.inf, 0.0).astype(np.float32) if m.dtype == bool else m.astype(np.float32)


class Embedding(Layer):
    """weight[ids]: ids ``[N, T]`` of any integer dtype (out-of-range ids are refused at the call,
    naming the id) -> ``[N, T, embedding_dim]``, as PyTorch's nn.Embedding."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, weight=None):
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings", "Embedding")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim", "Embedding")
        if self.num_embeddings > 1 << 24:
            raise ValueError(f"Embedding: at most {1 << 24} embeddings (ids travel as float32), got {num_embeddings}")
        if padding_idx is not None:
            padding_idx = int(padding_idx)
            if not -self.num_embeddings <= padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be in [-{num_embeddings}, {num_embeddings}), "
                                 f"got {padding_idx}")
            padding_idx %= self.num_embeddings
        self.padding_idx = padding_idx
        shape = (self.num_embeddings, self.embedding_dim)
        if weight is None:
            weight = _rng().standard_normal(shape).astype(np.float32)
            if padding_idx is not None:
                weight[padding_idx] = 0
        self.params["weight"] = _param(weight, shape, "weight", repr(self), 1)

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"{self!r} expects ids of shape (N, T), got (N, {', '.join(map(str, shape))})")
        return (shape[0], self.embedding_dim)

    def config(self):
        return {"num_embeddings": self.num_embeddings, "embedding_dim": self.embedding_dim,
                **({"padding_idx": self.padding_idx} if self.padding_idx is not None else {})}

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim})"


class PositionalEmbedding(Layer):
    """x + weight[t] at position t (learned positional embeddings, added): ``[N, T, D]`` with
    T <= num_positions."""

    def __init__(self, num_positions, embedding_dim, weight=None):
        super().__init__()
        self.num_positions = _positive_int(num_positions, "num_positions", "PositionalEmbedding")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim", "PositionalEmbedding")
        shape = (self.num_positions, self.embedding_dim)
        if weight is None:
            weight = _rng().standard_normal(shape).astype(np.float32)
        self.params["weight"] = _param(weight, shape, "weight", repr(self), 1)

    def output_shape(self, shape):
        _seq(shape, repr(self), self.embedding_dim)
        if shape[0] > self.num_positions:
            raise ValueError(f"{self!r}: sequences of {shape[0]} positions, it has {self.num_positions}")
        return tuple(shape)

    def config(self):
        return {"num_positions": self.num_positions, "embedding_dim": self.embedding_dim}

    def __repr__(self):
        return f"PositionalEmbedding({self.num_positions}, {self.embedding_dim})"


class ScaledDotProductAttention(Layer):
    """softmax(Q Kᵀ · scale + mask) V per head, as F.scaled_dot_product_attention on heads laid out
    side by side: called on (q, k, v[, key_padding_mask]), each ``[N, T, num_heads * head_dim]``.
    scale: default 1/sqrt(head_dim); is_causal: key t' <= query t only; attn_mask: a constant
    [T, T] additive (float) or bool (True = not allowed) mask."""

    def __init__(self, num_heads, is_causal=False, scale=None, attn_mask=None):
        super().__init__()
        self.num_heads = _positive_int(num_heads, "num_heads", "ScaledDotProductAttention")
        self.is_causal = bool(is_causal)
        self.scale = None if scale is None else float(scale)
        m = _attn_mask(attn_mask, "ScaledDotProductAttention")
        if m is not None:
            self.params["attn_mask"] = m

    def head_dim(self, d):
        if d % self.num_heads:
            raise ValueError(f"{self!r}: {d} features do not split into {self.num_heads} heads")
        return d // self.num_heads

    def output_shape(self, q, k=None, v=None, mask=None):
        if k is None or v is None:
            raise ValueError(f"{self!r} is called on (q, k, v[, key_padding_mask])")
        _seq(q, repr(self))
        if tuple(k) != tuple(q) or tuple(v) != tuple(q):
            raise ValueError(f"{self!r}: q, k and v must have one shape, got {q}, {k}, {v}")
        self.head_dim(q[1])
        _mask_shape([q] + ([mask] if mask is not None else []), repr(self), q[0])
        _check_attn_mask(self, q[0])
        return tuple(q)

    def config(self):
        return {"num_heads": self.num_heads, "is_causal": self.is_causal, "scale": self.scale}

    def __repr__(self):
        return f"ScaledDotProductAttention(num_heads={self.num_heads}, is_causal={self.is_causal})"


def _check_attn_mask(layer, T):
    m = layer.params.get("attn_mask")
    if m is not None and m.shape[0] < T:
        raise ValueError(f"{layer!r}: attn_mask is {m.shape[0]}x{m.shape[0]}, sequences have {T} positions")


class MultiheadAttention(Layer):
    """PyTorch's nn.MultiheadAttention for self-attention (``batch_first=True``, ``need_weights=False``):
    called on (x[, key_padding_mask]).  Parameters: in_proj_weight [3E, E], in_proj_bias [3E],
    out_proj.weight [E, E], out_proj.bias [E] (bias=False: none)."""

    def __init__(self, embed_dim, num_heads, bias=True, batch_first=True, is_causal=False, attn_mask=None, **params):
        super().__init__()
        E = self.embed_dim = _positive_int(embed_dim, "embed_dim", "MultiheadAttention")
        self.num_heads = _positive_int(num_heads, "num_heads", "MultiheadAttention")
        if E % self.num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {E} must be divisible by num_heads {num_heads}")
        if batch_first is not True:
            raise ValueError("MultiheadAttention: shmrt's sequences are batch-first; expected batch_first=True")
        self.bias, self.is_causal = bool(bias), bool(is_causal)
        unknown = set(params) - {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
        if unknown:
            raise TypeError(f"MultiheadAttention: unknown parameters {sorted(unknown)}; expected in_proj_weight, "
                            f"in_proj_bias, out_proj.weight, out_proj.bias (separate q/k/v weights: concatenate "
                            f"them into in_proj_weight)")
        name = repr(self)
        if not self.bias and any(params.get(k) is not None for k in ("in_proj_bias", "out_proj.bias")):
            raise TypeError(f"{name}: bias=False, but in_proj_bias / out_proj.bias were given; expected bias=True "
                            f"or no bias arrays")
        self.params["in_proj_weight"] = _param(params.get("in_proj_weight"), (3 * E, E), "in_proj_weight", name, E)
        self.params["out_proj.weight"] = _param(params.get("out_proj.weight"), (E, E), "out_proj.weight", name, E)
        if self.bias:
            self.params["in_proj_bias"] = _vector(params.get("in_proj_bias"), 3 * E, "in_proj_bias", name, 0.0)
            self.params["out_proj.bias"] = _vector(params.get("out_proj.bias"), E, "out_proj.bias", name, 0.0)
        m = _attn_mask(attn_mask, name)
        if m is not None:
            self.params["attn_mask"] = m

    def output_shape(self, x, mask=None):
        _seq(x, repr(self), self.embed_dim)
        _mask_shape([x] + ([mask] if mask is not None else []), repr(self), x[0])
        _check_attn_mask(self, x[0])
        return tuple(x)

    def config(self):
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "bias": self.bias,
                "is_causal": self.is_causal}

    def __repr__(self):
        return f"MultiheadAttention({self.embed_dim}, {self.num_heads})"


_LAYER_PARAMS = ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
                 "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
                 "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")


class TransformerEncoderLayer(Layer):
    """PyTorch's nn.TransformerEncoderLayer (``batch_first=True``; dropout is ignored at inference):
    called on (src[, src_key_padding_mask]).  norm_first: x + sa(norm1(x)), then x + ff(norm2(x));
    else norm1(x + sa(x)), then norm2(x + ff(x)); ff(x) = linear2(activation(linear1(x)))."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=True, norm_first=False, bias=True, is_causal=False, attn_mask=None, **params):
        super().__init__()
        D = self.d_model = _positive_int(d_model, "d_model", "TransformerEncoderLayer")
        self.nhead = _positive_int(nhead, "nhead", "TransformerEncoderLayer")
        F = self.dim_feedforward = _positive_int(dim_feedforward, "dim_feedforward", "TransformerEncoderLayer")
        if D % self.nhead:
            raise ValueError(f"TransformerEncoderLayer: d_model {D} must be divisible by nhead {nhead}")
        if activation not in ENCODER_ACTS:
            raise ValueError(f"TransformerEncoderLayer: activation must be one of {ENCODER_ACTS}, got {activation!r}")
        if batch_first is not True:
            raise ValueError("TransformerEncoderLayer: shmrt's sequences are batch-first; expected batch_first=True")
        self.activation, self.layer_norm_eps = activation, float(layer_norm_eps)
        self.norm_first, self.bias, self.is_causal = bool(norm_first), bool(bias), bool(is_causal)
        self.dropout = float(dropout)
        unknown = set(params) - set(_LAYER_PARAMS)
        if unknown:
            raise TypeError(f"TransformerEncoderLayer: unknown parameters {sorted(unknown)}; expected {_LAYER_PARAMS}")
        name, g = repr(self), params.get
        given = [k for k in _LAYER_PARAMS[1:8:2] if g(k) is not None]  # the four linear biases
        if not self.bias and given:
            raise TypeError(f"{name}: bias=False, but {given} were given; expected bias=True or no bias arrays")
        shapes = {"self_attn.in_proj_weight": ((3 * D, D), D), "self_attn.out_proj.weight": ((D, D), D),
                  "linear1.weight": ((F, D), D), "linear2.weight": ((D, F), F)}
        for k, (shape, fan) in shapes.items():
            self.params[k] = _param(g(k), shape, k, name, fan)
        biases = {"self_attn.in_proj_bias": 3 * D, "self_attn.out_proj.bias": D, "linear1.bias": F, "linear2.bias": D}
        for k, n in biases.items():
            if self.bias:
                self.params[k] = _vector(g(k), n, k, name, 0.0)
        for k in ("norm1", "norm2"):
            self.params[f"{k}.weight"] = _vector(g(f"{k}.weight"), D, f"{k}.weight", name, 1.0)
            self.params[f"{k}.bias"] = _vector(g(f"{k}.bias"), D, f"{k}.bias", name, 0.0)
        m = _attn_mask(attn_mask, name)
        if m is not None:
            self.params["attn_mask"] = m

    output_shape = MultiheadAttention.output_shape

    @property
    def embed_dim(self):
        return self.d_model

    def config(self):
        return {"d_model": self.d_model, "nhead": self.nhead, "dim_feedforward": self.dim_feedforward,
                "dropout": self.dropout, "activation": self.activation, "layer_norm_eps": self.layer_norm_eps,
                "norm_first": self.norm_first, "bias": self.bias, "is_causal": self.is_causal}

    def __repr__(self):
        return (f"TransformerEncoderLayer({self.d_model}, {self.nhead}, dim_feedforward={self.dim_feedforward}, "
                f"activation={self.activation!r}, norm_first={self.norm_first})")


class TransformerEncoder(Layer):
    """PyTorch's nn.TransformerEncoder: ``num_layers`` copies of encoder_layer (parameters
    ``layers.<i>.<name>``, as its state_dict), then ``norm`` (a shmrt.LayerNorm, parameters
    ``norm.weight``, ``norm.bias``) if given.  Called on (src[, src_key_padding_mask])."""

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, **params):
        super().__init__()
        from shmrt.ir.dense import LayerNorm
        if not isinstance(encoder_layer, TransformerEncoderLayer):
            raise TypeError(f"TransformerEncoder: encoder_layer must be a shmrt.TransformerEncoderLayer, "
                            f"got {type(encoder_layer).__name__}")
        self.num_layers = _positive_int(num_layers, "num_layers", "TransformerEncoder")
        if norm is not None and not (isinstance(norm, LayerNorm) and norm.normalized_shape == (encoder_layer.d_model,)):
            raise TypeError(f"TransformerEncoder: norm must be None or shmrt.LayerNorm({encoder_layer.d_model}), "
                            f"got {norm!r}")
        known = {f"layers.{i}.{k}" for i in range(self.num_layers) for k in (*_LAYER_PARAMS, "attn_mask")}
        unknown = set(params) - known - {"norm.weight", "norm.bias"}
        if unknown:
            raise TypeError(f"TransformerEncoder: unknown parameters {sorted(unknown)[:4]}; expected layers.<i>.<name> "
                            f"(names as TransformerEncoderLayer's) and norm.weight, norm.bias")
        self.layers = []
        for i in range(self.num_layers):
            own = {k[len(f"layers.{i}."):]: v for k, v in params.items() if k.startswith(f"layers.{i}.")}
            layer = copy.deepcopy(encoder_layer)  # torch copies the layer: the same initial weights in each
            for k, v in own.items():
                if k not in layer.params and k != "attn_mask":
                    raise TypeError(f"TransformerEncoder: layers.{i}.{k} is not a parameter of {layer!r} "
                                    f"(bias={layer.bias}); expected {sorted(layer.params)}")
                if k == "attn_mask":
                    layer.params[k] = _attn_mask(v, repr(layer))
                else:
                    layer.params[k] = _param(v, layer.params[k].shape, k, repr(layer), 1)
            self.layers.append(layer)
        self.norm = None
        if norm is not None:
            self.norm = LayerNorm(encoder_layer.d_model, eps=norm.eps, weight=params.get("norm.weight", norm.params["weight"]),
                                  bias=params.get("norm.bias", norm.params["bias"]))
        self.params = {f"layers.{i}.{k}": v for i, l in enumerate(self.layers) for k, v in l.params.items()}
        if self.norm is not None:
            self.params.update({f"norm.{k}": v for k, v in self.norm.params.items()})

    def output_shape(self, x, mask=None):
        return self.layers[0].output_shape(x, mask) if mask is not None else self.layers[0].output_shape(x)

    @property
    def d_model(self):
        return self.layers[0].d_model

    def config(self):
        return {"encoder_layer": self.layers[0].config(), "num_layers": self.num_layers,
                "norm": None if self.norm is None else {"eps": self.norm.eps}}

    @classmethod
    def from_config(cls, config, params):
        from shmrt.ir.dense import LayerNorm
        layer = TransformerEncoderLayer(**config["encoder_layer"])
        norm = None if config.get("norm") is None else LayerNorm(layer.d_model, eps=config["norm"]["eps"])
        return cls(layer, config["num_layers"], norm=norm, **params)

    def __repr__(self):
        return f"TransformerEncoder({self.layers[0]!r}, num_layers={self.num_layers})"


class PaddingMask(Layer):
    """A Hugging Face attention_mask (1: a real token, 0: padding) as a key_padding_mask (nonzero:
    padding): ``mask == 0``."""

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"PaddingMask expects a mask of shape (N, T), got (N, {', '.join(map(str, shape))})")
        return tuple(shape)


class FirstToken(Layer):
    """The first real token's features of each sequence, ``[N, T, D] -> [N, D]`` (BERT's [CLS]
    pooling; with right padding, position 0).  A sequence with no real token gives 0."""

    def output_shape(self, shape, mask=None):
        _seq(shape, "FirstToken")
        _mask_shape([shape] + ([mask] if mask is not None else []), "FirstToken", shape[0])
        return (shape[1],)


class MaskedMeanPool(Layer):
    """The mean over the real tokens of each sequence, ``[N, T, D] -> [N, D]`` (sentence embeddings):
    called on (x[, key_padding_mask]).  A sequence with no real token gives 0."""

    def output_shape(self, shape, mask=None):
        _seq(shape, "MaskedMeanPool")
        _mask_shape([shape] + ([mask] if mask is not None else []), "MaskedMeanPool", shape[0])
        return (shape[1],)


SEQUENCE_LAYERS = (Embedding, PositionalEmbedding, ScaledDotProductAttention, MultiheadAttention,
                   TransformerEncoderLayer, TransformerEncoder, PaddingMask, FirstToken, MaskedMeanPool)
