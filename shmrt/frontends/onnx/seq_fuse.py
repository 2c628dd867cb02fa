"""The ONNX sequence importer's op list turned into a shmrt.Graph of transformer layers.

seq_import.py reads an exported transformer into a list of token-level ops (``Op``): embed (a
table row per token id), pos (learned position embeddings added), add, addc (a constant row
added), ln (LayerNorm), linear (x @ W + b), act (gelu / relu / tanh), attn (softmax(q kᵀ scale +
key padding mask) v over heads, with its q / k / v projections) and first (the first token).
shmrt runs Linear on token sequences only inside its encoder layers, so every attention is
matched here with the ops around it as one nn.TransformerEncoderLayer, post-norm (norm1(x +
sa(x)), norm2(x + ff(x))) or pre-norm (x + sa(norm1(x)), x + ff(norm2(x))), its q, k and v
weights concatenated into in_proj_weight in that order, as shmrt/frontends/torch/hf.py builds
BERT; a scale other than 1/sqrt(head_dim) is folded into the query weights.  Consecutive layers
of one configuration become one TransformerEncoder.  An attention that fits no layer, and a
Linear on token features outside one, are refused, naming the ONNX node they come from and what
did not fit."""
from __future__ import annotations

import math

import numpy as np

from shmrt.frontends.onnx.errors import UnsupportedONNX
from shmrt.ir import layers as L
from shmrt.ir.transformer import ENCODER_ACTS

SCALE_TOL = 1e-6  # a scale this close to 1/sqrt(head_dim) is the encoder layer's own


class Op:
    """One token-level op: ``out = kind(*ins)`` with parameters p; ``where`` names its ONNX node."""
    __slots__ = ("kind", "ins", "out", "p", "where")

    def __init__(self, kind, ins, out, p, where):
        self.kind, self.ins, self.out, self.p, self.where = kind, list(ins), out, p, where

    def __repr__(self):
        return f"{self.out} = {self.kind}({', '.join(self.ins)})"


class NoLayer(Exception):
    """An attention op that does not fit an encoder layer, and why."""


class _Layer:
    __slots__ = ("x", "out", "members", "config", "params", "mask", "where")

    def __init__(self, x, out, members, config, params, mask, where):
        self.x, self.out, self.members, self.config, self.params = x, out, members, config, params
        self.mask, self.where = mask, where


def _f32(a):
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


class _Fuser:
    def __init__(self, ops, outputs):
        self.ops = ops
        self.by_out = {op.out: op for op in ops}
        self.users = {}
        for op in ops:
            for u in dict.fromkeys(op.ins):
                self.users.setdefault(u, []).append(op)
        self.outs = {v for _, v in outputs}

    def only(self, v, kind, what):
        us = self.users.get(v, [])
        if v in self.outs or len(us) != 1 or us[0].kind != kind:
            got = "a graph output" if v in self.outs else ", ".join(f"{u.kind} ({u.where})" for u in us) or "nothing"
            raise NoLayer(f"{what} should be read by one {kind} only; it is read by {got}")
        return us[0]

    def layer(self, A):
        """The encoder layer around attention op A, or NoLayer."""
        p = A.p
        (xq, Wq, bq), (xk, Wk, bk), (xv, Wv, bv) = p["q"], p["k"], p["v"]
        if any(W is None for W in (Wq, Wk, Wv)):
            raise NoLayer("its queries, keys and values are not projections (MatMul by a weight) of the tokens")
        if not xq == xk == xv:
            raise NoLayer("its queries, keys and values are projections of different values (cross-attention); "
                          "expected self-attention")
        D, E = Wq.shape
        if E != D or Wk.shape != (D, E) or Wv.shape != (D, E) or p["dv"] != p["dh"]:
            raise NoLayer(f"q / k / v weights of shapes {Wq.shape}, {Wk.shape}, {Wv.shape} (head dims {p['dh']}, "
                          f"{p['dv']}); expected [{D}, {D}] each, as nn.MultiheadAttention's")
        u = xq
        o = self.only(A.out, "linear", "the attention's output")
        if o.p["W"].shape != (E, D):
            raise NoLayer(f"its output projection has weight {o.p['W'].shape}; expected [{E}, {D}]")
        r1 = self.only(o.out, "add", "the attention's output projection")
        y = r1.ins[1] if r1.ins[0] == o.out else r1.ins[0]
        ln1 = self.by_out.get(u)
        if y == u:
            norm_first = False
            n1 = self.only(r1.out, "ln", "the residual sum after the attention")
            h, us = n1.out, self.users.get(n1.out, [])
            f1 = [op for op in us if op.kind == "linear"]
            if h in self.outs or len(us) != 2 or len(f1) != 1:
                raise NoLayer("the LayerNorm after the attention should be read by the feed-forward block and its "
                              "residual Add only")
            f1 = f1[0]
            norms, members, x = (n1,), [A, o, r1, n1], u
        elif ln1 is not None and ln1.kind == "ln" and ln1.ins[0] == y and self.users.get(u) == [A] \
                and u not in self.outs:
            norm_first = True
            us = self.users.get(r1.out, [])
            ln2 = [op for op in us if op.kind == "ln"]
            if r1.out in self.outs or len(us) != 2 or len(ln2) != 1:
                raise NoLayer("the residual sum after the attention should be read by a LayerNorm and the "
                              "feed-forward block's residual Add only (pre-norm)")
            h = ln2[0].out
            f1 = self.only(h, "linear", "the LayerNorm before the feed-forward block")
            norms, members, x = (ln1, ln2[0]), [ln1, A, o, r1, ln2[0]], y
            h = r1.out
        else:
            raise NoLayer("its output is added to a value that is neither its input (post-norm) nor the input of "
                          "the LayerNorm before it (pre-norm)")
        g = self.only(f1.out, "act", "the feed-forward block's first Linear")
        f2 = self.only(g.out, "linear", "the feed-forward block's activation")
        r2 = self.only(f2.out, "add", "the feed-forward block's second Linear")
        if sorted(r2.ins) != sorted([h, f2.out]):
            raise NoLayer("the feed-forward block's output is not added to its input")
        members += [f1, g, f2, r2]
        out = r2.out
        if not norm_first:
            n2 = self.only(r2.out, "ln", "the residual sum after the feed-forward block")
            norms += (n2,)
            members.append(n2)
            out = n2.out
        fn = g.p["fn"]
        if fn not in ENCODER_ACTS:
            raise NoLayer(f"its feed-forward activation is {fn}; shmrt's encoder layers compute relu or exact gelu")
        eps = {float(n.p["eps"]) for n in norms}
        if len(eps) != 1:
            raise NoLayer(f"its two LayerNorms have different eps {sorted(eps)}; expected one layer_norm_eps")
        F = f1.p["W"].shape[1]
        if f1.p["W"].shape != (D, F) or f2.p["W"].shape != (F, D):
            raise NoLayer(f"feed-forward weights {f1.p['W'].shape}, {f2.p['W'].shape}; expected [{D}, F], [F, {D}]")
        r = float(p["scale"]) * math.sqrt(p["dh"])  # the scale relative to the layer's own 1/sqrt(head_dim)
        if abs(r - 1) > SCALE_TOL:
            Wq = Wq * r
            bq = None if bq is None else bq * r

        def bias(b, n):
            return np.zeros(n, np.float32) if b is None else b
        params = {"self_attn.in_proj_weight": np.concatenate([Wq.T, Wk.T, Wv.T]),
                  "self_attn.in_proj_bias": np.concatenate([bias(bq, D), bias(bk, D), bias(bv, D)]),
                  "self_attn.out_proj.weight": o.p["W"].T, "self_attn.out_proj.bias": bias(o.p["b"], D),
                  "linear1.weight": f1.p["W"].T, "linear1.bias": bias(f1.p["b"], F),
                  "linear2.weight": f2.p["W"].T, "linear2.bias": bias(f2.p["b"], D)}
        for k, n in zip(("norm1", "norm2"), norms):
            params[f"{k}.weight"], params[f"{k}.bias"] = n.p["w"], n.p["b"]
        params = {k: _f32(v) for k, v in params.items()}
        config = dict(d_model=D, nhead=p["H"], dim_feedforward=F, dropout=0.0, activation=fn,
                      layer_norm_eps=eps.pop(), norm_first=norm_first)
        return _Layer(x, out, members, config, params, p["mask"], A.where)

    def follows(self, a, b):
        """Layer b reads layer a's output only, with a's configuration and mask: one TransformerEncoder."""
        ids = {id(m) for m in b.members}
        return (b.x == a.out and a.out not in self.outs and a.config == b.config and a.mask == b.mask
                and all(id(u) in ids for u in self.users.get(a.out, [])))


def build(ops, inputs, outputs, T):
    """The shmrt.Graph of the op list: inputs [(name, D)] (D None: ids or a mask, [N, T]; else token
    features [N, T, D]); outputs [(ONNX output name, value)]; T the inputs' sequence length."""
    fu = _Fuser(ops, outputs)
    layers, why = {}, {}
    for op in ops:
        if op.kind == "attn":
            try:
                layers[id(op)] = fu.layer(op)
            except NoLayer as e:
                why[id(op)] = str(e)
    member, last = {}, {}
    chosen = list(layers.values())
    for m in chosen:
        for op in m.members:
            member[id(op)] = m
        last[id(m.members[-1])] = m
    runs, run_of = [], {}
    for m in chosen:  # in op order: chain each layer onto the run its input comes from
        prev = next((r for r in runs if fu.follows(r[-1], m)), None)
        if prev is None:
            prev = []
            runs.append(prev)
        prev.append(m)
    for r in runs:
        run_of[id(r[-1])] = r
    masks = {m for op in ops if op.kind == "attn" for m in [op.p["mask"]] if m is not None}
    nodes, kinds = [], {n: "tok" if d else "data" for n, d in inputs}
    padding = {}

    def mask_value(mask):
        if mask is None:
            return []
        name, keep = mask
        if not keep:
            return [name]
        if name not in padding:
            padding[name] = f"{name}~padding"
            nodes.append((L.PaddingMask(), [name], padding[name]))
        return [padding[name]]

    for op in ops:
        if id(op) in member:
            m = member[id(op)]
            if last.get(id(op)) is m and id(m) in run_of:
                run = run_of[id(m)]
                nodes.append((_encoder(run), [run[0].x] + mask_value(m.mask), m.out))
                kinds[m.out] = "tok"
            continue
        if op.kind == "attn":
            raise _refuse(op, f"this attention does not fit a transformer encoder layer: {why[id(op)]}")
        kind = kinds.get(op.ins[0], "tok") if op.ins else "tok"
        layer, ins = _layer(op, kind), list(op.ins)
        if op.kind == "embed":
            kind = "tok"
        elif op.kind == "first":
            kind = "first"
            ins += mask_value(next(iter(masks)) if len(masks) == 1 else None)
        nodes.append((layer, ins, op.out))
        kinds[op.out] = kind
    names = {}
    for o, v in outputs:
        if v in kinds and kinds[v] == "data" or v in dict(inputs):
            raise _refuse(None, f"ONNX graph output {o!r} is a graph input; expected a computed value")
        if v in names:
            raise _refuse(None, f"ONNX graph outputs {names[v]!r} and {o!r} are one value; expected different ones")
        names[v] = o
    nodes = [(layer, [names.get(u, u) for u in ins], names.get(out, out)) for layer, ins, out in nodes]
    shapes = [(n, (T, d) if d else (T,)) for n, d in inputs]
    g = L.Graph.from_nodes(shapes, nodes, [o for o, _ in outputs], named_outputs=len(outputs) > 1)
    g.shapes([s for _, s in shapes])  # every layer's own checks, on the inputs' shapes
    return g


def _refuse(op, msg):
    return UnsupportedONNX(f"{op.where}: {msg}" if op is not None else msg)


def _encoder(run):
    first = run[0]
    layer = L.TransformerEncoderLayer(**first.config, **first.params)
    if len(run) == 1:
        return layer
    params = {f"layers.{i}.{k}": v for i, m in enumerate(run) for k, v in m.params.items()}
    return L.TransformerEncoder(layer, len(run), **params)


def _layer(op, kind):
    p = op.p
    if op.kind == "embed":
        W = _f32(p["W"])
        return L.Embedding(W.shape[0], W.shape[1], weight=W)
    if op.kind == "pos":
        W = _f32(p["W"])
        return L.PositionalEmbedding(W.shape[0], W.shape[1], weight=W)
    if op.kind == "add":
        return L.Add()
    if op.kind == "addc":
        return L.Add(constant=p["c"])
    if op.kind == "ln":
        return L.LayerNorm(len(p["w"]), eps=float(p["eps"]), weight=_f32(p["w"]), bias=_f32(p["b"]))
    if op.kind == "first":
        return L.FirstToken()
    if op.kind == "act":
        return {"gelu": L.GELU, "relu": L.ReLU, "tanh": L.Tanh}[p["fn"]]() if p["fn"] != "gelu_tanh" \
            else L.GELU("tanh")
    if op.kind == "linear":
        if kind != "first":
            raise _refuse(op, "a projection (MatMul by a weight) of token features outside a transformer encoder "
                                "layer is not supported: shmrt runs Linear on token sequences only inside "
                                "TransformerEncoderLayer (attention, then a feed-forward block), and on the "
                                "first token (a pooler)")
        W = _f32(p["W"])
        return L.Linear(W.shape[0], W.shape[1], weight=W.T, bias=_f32(p["b"]) if p["b"] is not None else False)
    raise _refuse(op, f"op {op.kind} has no shmrt layer")
