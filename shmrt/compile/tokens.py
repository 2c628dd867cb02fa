"""Sequence models on packed token rows: a graph over [N, T, D] lowered to a graph over tokens.

A transformer encoder's work is per token (every Linear, LayerNorm, activation and residual Add)
except attention, which mixes the tokens of one sequence.  So shmrt plans it over *token rows*:
the calling thread packs the real tokens of a batch -- padding dropped, each sequence's tokens
contiguous and in order -- into rows [tokens, columns], and the plan's "batch" is those rows.
Each token row carries (pos, start, len) -- its position, its sequence's first row, its
sequence's length -- then its features from each input (an id, a type id, or F floats).  Only
real tokens are computed, whatever the padding, and the sequence length is a property of the
call, not of the plan.  Attention reads a query's keys from its sequence's rows.

``lower(graph, T)`` gives the token graph (layers of shmrt.ir applied to token rows, with two of
its own: _Lookup, a table row per token, and _Attention) and the spec the caller packs and
unpacks by (exec/sequence.py).  MultiheadAttention's in_proj is laid out head-major, [h][q, k,
v][dh], so that a split of its output columns at head boundaries gives each worker whole heads
(Megatron's column-parallel QKV; the out_proj is then row-parallel)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmrt.ir import layers as L
from shmrt.ir.base import Layer

META = "_meta"  # the token-row input (pos, start, len)
META_COLS = 3
_MASKED = (L.MultiheadAttention, L.TransformerEncoderLayer, L.TransformerEncoder, L.MaskedMeanPool)
_TOKENWISE = (L._Elementwise, L.LayerNorm, L.Dropout, L._Binary, L.Linear, L._Affine)


class _Lookup(Layer, register=False):
    """out = weight[int(x[:, 0])] per token row (an id column, or the position of the meta row)."""

    def __init__(self, weight):
        super().__init__()
        self.params["weight"] = weight

    def output_shape(self, shape):
        return (self.params["weight"].shape[1],)

    def __repr__(self):
        return f"Embedding lookup {self.params['weight'].shape[0]}x{self.params['weight'].shape[1]}"


class _Attention(Layer, register=False):
    """Attention over packed token rows: inputs (qkv, meta) head-major fused, or (q, k, v, meta)."""

    def __init__(self, heads, dh, fused, causal, scale, mask, T):
        super().__init__()
        self.heads, self.dh, self.fused, self.causal, self.T = heads, dh, fused, causal, T
        self.scale = 1.0 / np.sqrt(dh) if scale is None else scale
        if mask is not None:
            self.params["attn_mask"] = mask

    @property
    def hs(self):
        """Columns from one head's q to the next's."""
        return 3 * self.dh if self.fused else self.dh

    def output_shape(self, *shapes):
        return (self.heads * self.dh,)

    def __repr__(self):
        return (f"Attention(heads={self.heads}, head_dim={self.dh}{', causal' if self.causal else ''}"
                f"{', attn_mask' if 'attn_mask' in self.params else ''})")


@dataclass
class TokenSpec:
    """What the caller packs and unpacks: the token graph's inputs after META, (name, features);
    the mask input (nonzero: a real token when keep, else padding); each output's (name, kind, token
    value), kind "seq" ([N, L, D], 0 at padding), "first" (the first real token) or "mean"."""
    graph: object
    T: int
    columns: list
    mask: str = None
    keep: bool = False
    outputs: list = field(default_factory=list)
    vocab: dict = field(default_factory=dict)  # id input -> num_embeddings
    named_outputs: bool = False
    inputs: list = field(default_factory=list)  # the model's inputs in call order
    prelude: object = None  # a Graph over samples whose outputs are token columns [N, T, F] (ViT's patches)


def is_sequence_model(graph) -> bool:
    return any(isinstance(n.layer, L.SEQUENCE_LAYERS) for n in graph.nodes)


def _head_major(w, E, H):
    """in_proj rows [q; k; v] (each [E, ...]) reordered to [h][q, k, v][dh]."""
    dh = E // H
    return np.ascontiguousarray(w.reshape((3, H, dh) + w.shape[1:]).swapaxes(0, 1).reshape(w.shape))


class _Lowering:
    def __init__(self, graph, T):
        self.g, self.T = graph, T
        self.nodes, self.kinds = [], {}  # token nodes; sample value -> ("tok", name) | ("first"|"mean", name) | ("mask", input, keep)
        self.masks = set()
        self.cols, self.pre_nodes, self.pre_outs = {}, [], []  # token columns {value: F}; the sample-space prelude
        self.vocab = {}
        self.count = 0

    def new(self, layer, ins, hint):
        self.count += 1
        name = f"{hint}~{self.count}"
        self.nodes.append((layer, list(ins), name))
        return name

    def fail(self, node, what):
        raise NotImplementedError(f"graph node {node.output!r} ({node.layer!r}, op {type(node.layer).__name__}): "
                                  f"{what}")

    def tok(self, node, v):
        kind = self.kinds[v]
        if kind[0] in ("input", "sample") and len(self.shapes[v]) == 2:  # float features per token: columns
            self.cols.setdefault(v, self.shapes[v][1])
            if kind[0] == "sample":
                self.pre_outs.append(v) if v not in self.pre_outs else None
            return v
        if kind[0] != "tok":
            self.fail(node, f"reads {v!r}, a {kind[0]} value; expected a sequence of token features")
        return kind[1]

    def mask_of(self, node, ins, k):
        if len(ins) <= k:
            if not isinstance(node.layer, L.MaskedMeanPool):  # without a mask it pools what was packed
                self.masks.add(None)
            return
        kind = self.kinds[ins[k]]
        if kind[0] == "input":  # a key_padding_mask itself: nonzero marks padding
            kind = ("mask", kind[1], False)
        if kind[0] != "mask":
            self.fail(node, f"its key_padding_mask {ins[k]!r} is computed; expected a graph input of shape "
                            f"(N, T), directly or through PaddingMask")
        self.masks.add(kind[1:])

    def attention(self, node, x, E, H, params, prefix, causal, mask):
        dh = E // H
        w = _head_major(params[prefix + "in_proj_weight"], E, H)
        b = params.get(prefix + "in_proj_bias")
        qkv_l = L.Linear(E, 3 * E, weight=w, bias=_head_major(b, E, H) if b is not None else False)
        qkv_l.col_grain = 3 * dh  # a column split at head boundaries: whole heads per worker
        qkv = self.new(qkv_l, [x], "qkv")
        a = self.new(_Attention(H, dh, True, causal, None, mask, self.T), [qkv, META], "attention")
        ob = params.get(prefix + "out_proj.bias")
        return self.new(L.Linear(E, E, weight=params[prefix + "out_proj.weight"],
                                 bias=ob if ob is not None else False), [a], "attn_out")

    def encoder_layer(self, node, l, x, prefix=""):
        p, D = l.params, l.d_model
        ln = [L.LayerNorm(D, eps=l.layer_norm_eps, weight=p[f"norm{k}.weight"], bias=p[f"norm{k}.bias"]) for k in (1, 2)]

        def sa(h):
            return self.attention(node, h, D, l.nhead, p, "self_attn.", l.is_causal, p.get("attn_mask"))

        def ff(h):
            b1, b2 = p.get("linear1.bias"), p.get("linear2.bias")
            f = self.new(L.Linear(D, l.dim_feedforward, weight=p["linear1.weight"], bias=b1 if b1 is not None else False),
                         [h], "linear1")
            f = self.new(L.GELU() if l.activation == "gelu" else L.ReLU(), [f], l.activation)
            return self.new(L.Linear(l.dim_feedforward, D, weight=p["linear2.weight"],
                                     bias=b2 if b2 is not None else False), [f], "linear2")

        if l.norm_first:
            x = self.new(L.Add(), [x, sa(self.new(ln[0], [x], "norm1"))], "residual1")
            return self.new(L.Add(), [x, ff(self.new(ln[1], [x], "norm2"))], "residual2")
        x = self.new(ln[0], [self.new(L.Add(), [x, sa(x)], "residual1")], "norm1")
        return self.new(ln[1], [self.new(L.Add(), [x, ff(x)], "residual2")], "norm2")

    def node(self, node):
        l, ins = node.layer, list(node.inputs)
        out = node.output
        if not isinstance(l, L.SEQUENCE_LAYERS) and all(self.kinds[u][0] in ("input", "sample") for u in ins):
            self.pre_nodes.append((l, ins, out))  # before the tokens (ViT's patches): a plan over samples
            self.kinds[out] = ("sample", out)
            return
        if isinstance(l, L.PaddingMask):
            kind = self.kinds[ins[0]]
            if kind[0] != "input":
                self.fail(node, "reads a computed value; expected the attention_mask graph input")
            self.kinds[out] = ("mask", kind[1], True)
            return
        if isinstance(l, _MASKED):
            self.mask_of(node, ins, 1)
        if isinstance(l, L.Embedding):
            kind = self.kinds[ins[0]]
            if kind[0] != "input" or len(self.shapes[ins[0]]) != 1:
                self.fail(node, f"reads {ins[0]!r}; expected a graph input of token ids, shape (N, T)")
            self.vocab[kind[1]] = max(self.vocab.get(kind[1], 0), l.num_embeddings)
            self.cols.setdefault(kind[1], 1)
            self.kinds[out] = ("tok", self.new(_Lookup(l.params["weight"]), [kind[1]], "embedding"))
        elif isinstance(l, L.PositionalEmbedding):
            pos = self.new(_Lookup(l.params["weight"]), [META], "positions")
            self.kinds[out] = ("tok", self.new(L.Add(), [self.tok(node, ins[0]), pos], "positional"))
        elif isinstance(l, L.MultiheadAttention):
            self.kinds[out] = ("tok", self.attention(node, self.tok(node, ins[0]), l.embed_dim, l.num_heads, l.params,
                                                     "", l.is_causal, l.params.get("attn_mask")))
        elif isinstance(l, L.ScaledDotProductAttention):
            self.mask_of(node, ins, 3)
            q, k, v = (self.tok(node, u) for u in ins[:3])
            d = self.shapes[ins[0]][1]
            att = _Attention(l.num_heads, d // l.num_heads, False, l.is_causal, l.scale, l.params.get("attn_mask"), self.T)
            self.kinds[out] = ("tok", self.new(att, [q, k, v, META], "sdpa"))
        elif isinstance(l, L.TransformerEncoderLayer):
            self.kinds[out] = ("tok", self.encoder_layer(node, l, self.tok(node, ins[0])))
        elif isinstance(l, L.TransformerEncoder):
            x = self.tok(node, ins[0])
            for sub in l.layers:
                x = self.encoder_layer(node, sub, x)
            if l.norm is not None:
                x = self.new(l.norm, [x], "norm")
            self.kinds[out] = ("tok", x)
        elif isinstance(l, (L.FirstToken, L.MaskedMeanPool)):
            self.kinds[out] = ("first" if isinstance(l, L.FirstToken) else "mean", self.tok(node, ins[0]))
        elif isinstance(l, _TOKENWISE):
            kinds = [self.kinds[u] for u in ins]
            k0 = kinds[0][0]
            if k0 not in ("tok", "first") or any(k[0] != k0 for k in kinds):
                self.fail(node, f"reads {', '.join(ins)} ({', '.join(k[0] for k in kinds)}); expected sequences of "
                                f"token features (or values of the first token), all alike")
            if isinstance(l, L.LayerNorm) and len(l.normalized_shape) != 1:
                self.fail(node, "normalises over more than the feature dim; expected LayerNorm(d_model)")
            self.kinds[out] = (k0, self.new(l, [k[1] for k in kinds], type(l).__name__.lower()))
        else:
            self.fail(node, "is not supported in a sequence model: shmrt runs these over packed token rows, "
                            "where it has Embedding, PositionalEmbedding, MultiheadAttention, "
                            "ScaledDotProductAttention, TransformerEncoder(Layer), LayerNorm, Linear and "
                            "activations on the first token, FirstToken, MaskedMeanPool and element-wise layers")

    def run(self):
        g = self.g
        self.shapes = g.shapes([s if s is not None else (self.T,) for _, s in g.inputs])
        for name, _ in g.inputs:
            self.kinds[name] = ("input", name)
        for node in g.nodes:
            self.node(node)
        masks = self.masks - {None}
        if len(masks) > 1 or (masks and None in self.masks):
            raise NotImplementedError(f"sequence model: its attention layers take different key_padding_masks "
                                      f"{sorted(map(str, self.masks))}; expected one mask input for every layer")
        mask, keep = next(iter(masks)) if masks else (None, False)
        columns = list(self.cols.items())
        Ts = {self.shapes[v][0] for v in self.cols} | ({self.shapes[mask][0]} if mask else set())
        if len(Ts) != 1:
            raise ValueError(f"sequence model: its token inputs {[v for v in self.cols]} have different lengths "
                             f"{sorted(Ts)}; expected one T")
        self.T = Ts.pop()
        for layer, _, _ in self.nodes:
            if isinstance(layer, _Attention):
                layer.T = self.T  # its scratch: the longest sequence
        prelude = None
        if self.pre_nodes:
            used = {u for _, ins, _ in self.pre_nodes for u in ins}
            prelude = L.Graph.from_nodes([(n, s) for n, s in g.inputs if n in used], self.pre_nodes, self.pre_outs)
        outs, tok_outs = [], []
        for o in g.outputs:
            kind = self.kinds[o]
            if kind[0] not in ("tok", "first", "mean"):
                raise NotImplementedError(f"sequence model: output {o!r} is a {kind[0]} value; expected token "
                                          f"features, FirstToken or MaskedMeanPool")
            outs.append((o, "seq" if kind[0] == "tok" else kind[0], kind[1]))
            if kind[1] not in tok_outs:
                tok_outs.append(kind[1])
        inputs = [(META, (META_COLS,))] + [(n, (f,)) for n, f in columns]
        graph = L.Graph.from_nodes(inputs, self.nodes, tok_outs)
        return TokenSpec(graph, self.T, columns, mask, keep, outs, self.vocab, g.named_outputs,
                         [n for n, _ in g.inputs], prelude)


def lower(graph, T: int) -> TokenSpec:
    """The token graph and packing spec of a sequence model (T: the length of inputs given no shape)."""
    return _Lowering(graph, T).run()
