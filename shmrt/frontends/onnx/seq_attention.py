"""The ONNX sequence importer's products and attention (a mixin of seq_import.SeqImport).

MatMul / Gemm of token features by a constant weight is a *pending projection*: x @ W + b kept
as the weight until something reads its columns (a later Add of a constant is its bias; Gathers
and Slices into heads or q / k / v select its columns).  A MatMul of two activations is attention's:

    scores = q [.., heads, T, head_dim] @ kᵀ [.., heads, head_dim, T]    (q, k: projections)
    scores * c / c  (Mul / Div by constants: the scale)
    scores + mask   (or Where(mask, scores, -big)): a key padding mask computed from one input
    weights = Softmax(scores) over the keys  [Where(IsNaN(weights), 0, weights) allowed]
    out = weights @ v [.., heads, T, head_dim]  -> the attention op, heads side by side h-major

q, k and v pair their heads and the batch axis by atom, whatever the exporter's Reshapes and
Transposes (seq_views.py); each one's columns are put in h-major order by reordering its
projection's weight.  The mask is checked at every probe against the input it comes from: the
same for every head and query, 0 at real tokens and at most -1e4 (or -inf) at padding, where real
is either ``input != 0`` (a Hugging Face attention_mask) or ``input == 0`` (a PyTorch
key_padding_mask).  A constant mask (causal, attn_mask) is refused."""
from __future__ import annotations

import copy

import numpy as np

from shmrt.frontends.onnx.seq_views import (Act, Feat, Head, Probed, Src, columns, feats, kind_text, size,
                                            token_layout)

BIG = -1e4  # a mask value at most this is "not allowed" (transformers: finfo.min or -10000; torch: -inf)


class Sel:
    """Columns ``cols`` (h-major) of a source of token features, times ``scale``."""
    __slots__ = ("src", "cols", "scale")

    def __init__(self, src, cols, scale=1.0):
        self.src, self.cols, self.scale = src, cols, float(scale)


class Scores:
    """Attention scores q kᵀ * scale over H heads of head_dim dh; mask: (input name, keep) or None."""
    __slots__ = ("q", "k", "H", "dh", "scale", "mask", "where")

    def __init__(self, q, k, H, dh, scale, where):
        self.q, self.k, self.H, self.dh, self.scale, self.mask, self.where = q, k, H, dh, scale, None, where


class AttentionOps:
    # -- products -----------------------------------------------------------------------------------
    def weight(self, node, idx, v, what):
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.ndim != 2:
            self.fail(node, idx, f"{what} must be a constant 2-D float weight, got "
                                 f"{kind_text(v) if not isinstance(v, np.ndarray) else f'shape {v.shape}'}")
        return v

    def on_MatMul(self, node, idx, ins, a):
        x, w = ins
        if isinstance(x, Act) and isinstance(w, Act):
            if x.kind == "tok" and w.kind == "tok":
                return self.scores(node, idx, x, w)
            if x.kind == "probs" and w.kind == "tok":
                return self.attend(node, idx, x, w)
            self.fail(node, idx, f"a product of {kind_text(x)} and {kind_text(w)}; expected attention's queries @ "
                                 f"keysᵀ, or its weights (after the Softmax) @ values")
        if not isinstance(x, Act):
            self.fail(node, idx, "a constant @ the activations is not supported; expected the activations @ a weight")
        return self.project(node, idx, x, self.weight(node, idx, w, "input B"), None)

    def on_Gemm(self, node, idx, ins, a):
        x, w = ins[0], ins[1]
        if not isinstance(x, Act) or a.get("transA", 0):
            self.fail(node, idx, "expected the activations (not transposed, transA=0) times a constant weight")
        W = self.weight(node, idx, w, "input B")
        W = W.T if a.get("transB", 0) else W
        if a.get("alpha", 1.0) != 1.0:
            W = W * a["alpha"]
        b = ins[2] if len(ins) > 2 else None
        if b is not None:
            if not isinstance(b, np.ndarray) or b.size not in (1, W.shape[1]) or (b.ndim == 2 and b.shape[0] != 1):
                self.fail(node, idx, f"input C must be a constant bias of {W.shape[1]} values")
            b = np.broadcast_to(b.reshape(-1), (W.shape[1],)) * a.get("beta", 1.0)
        return self.project(node, idx, x, W, b)

    def project(self, node, idx, x, W, b):
        lay = token_layout(x)
        if lay is None:
            self.fail(node, idx, f"multiplies {kind_text(x)} with axes {x!r} by a weight; expected token features "
                                 f"(the tokens on the leading axes, the features on the last)")
        head, last = lay
        cols = columns(x, last).reshape(-1)
        if len(cols) != W.shape[0]:
            self.fail(node, idx, f"a weight of {W.shape[0]} rows for {len(cols)} features")
        if x.src.pending:  # a projection of a projection: the first one is computed
            name, Wf = self.tokens(node, idx, x, "the input").src.name, W
        else:
            name, Wf = x.src.name, W
            if not np.array_equal(cols, np.arange(x.src.F)):  # read in another order: the weight's rows follow
                Wf = np.zeros((x.src.F, W.shape[1]), dtype=W.dtype)
                Wf[cols] = W
            if x.scale != 1.0:
                Wf = Wf * x.scale
        src = Src(x=name, W=Wf, b=None if b is None else np.asarray(b), where=self.where(node, idx),
                  first=x.src.first)
        return Act("tok", src, head + ((Feat(W.shape[1], 1),),))

    # -- elementwise ------------------------------------------------------------------------------------
    def on_Add(self, node, idx, ins, a):
        x, y = ins
        if isinstance(x, Act) and isinstance(y, Act):
            if x.kind == y.kind == "tok":
                tx, ty = self.tokens(node, idx, x, "input A"), self.tokens(node, idx, y, "input B")
                if tx.axes[:-1] != ty.axes[:-1] or tx.src.F != ty.src.F:
                    self.fail(node, idx, f"adds token features of axes {tx!r} and {ty!r}; expected one layout")
                name = self.emit("add", [tx.src.name, ty.src.name], self.where(node, idx))
                return Act("tok", Src(name=name, F=tx.src.F, first=tx.src.first), tx.axes)
            if {x.kind, y.kind} == {"tok", "pos"}:
                return self.positions(node, idx, *((x, y) if x.kind == "tok" else (y, x)))
            self.fail(node, idx, f"adds {kind_text(x)} and {kind_text(y)}")
        act, other = (x, y) if isinstance(x, Act) else (y, x)
        if act.kind == "scores":
            return self.mask(node, idx, act, other)
        if act.kind == "tok" and isinstance(other, np.ndarray):
            T = self.static_t
            if T is not None and T > 1 and other.ndim >= 2 and other.shape[-2] == T and other.dtype.kind == "f" \
                    and all(s == 1 for s in other.shape[:-2]):  # position embeddings folded at export (a fixed T)
                self.tables.append(T)
                pos = Act("pos", other.reshape(T, -1), [("T",), (Feat(other.shape[-1], 1),)])
                return self.positions(node, idx, act, pos)
            return self.bias(node, idx, act, other)
        row = self.constant_row(act, other)
        if row is not None:  # the same row for every token: a table's row by a constant index (token type 0)
            return self.bias(node, idx, act, row)
        what = "a constant" if isinstance(other, np.ndarray) else (
            f"a value computed from input(s) {sorted(other.deps)}" if other.deps else "a value computed from the sizes")
        self.fail(node, idx, f"adds {what} (ops {', '.join(sorted(getattr(other, 'ops', ()))) or 'none'}) to "
                             f"{kind_text(act)}; expected a projection's bias, a residual, position embeddings or "
                             f"an attention mask")

    def constant_row(self, act, v):
        """The one row [F] a size-only probed value holds at every probe and position, or None."""
        lay = token_layout(act)
        if not isinstance(v, Probed) or v.deps or lay is None:
            return None
        F = len(columns(act, lay[1]).reshape(-1))
        rows = [np.asarray(a) for a in v.vals]
        if any(a.dtype.kind != "f" or a.ndim == 0 or a.shape[-1] != F or a.ndim > len(act.axes) for a in rows):
            return None
        flat = np.concatenate([a.reshape(-1, F) for a in rows])
        return flat[0].copy() if np.all(flat == flat[:1]) else None

    def bias(self, node, idx, act, c):
        lay = token_layout(act)
        F = len(columns(act, lay[1]).reshape(-1)) if lay else 0
        if lay is None or c.size not in (1, F) or any(s != 1 for s in c.shape[:-1]):
            self.fail(node, idx, f"adds a constant of shape {c.shape} to {kind_text(act)} with axes {act!r}; "
                                 f"expected a constant row of its {F} features (a projection's bias)")
        if not act.src.pending:  # a constant row added to computed token features
            t = self.tokens(node, idx, act, "the input")
            row = np.broadcast_to(c.reshape(-1), (F,)).astype(np.float32)
            name = self.emit("addc", [t.src.name], self.where(node, idx), c=row)
            return Act("tok", Src(name=name, F=F, first=t.src.first), t.axes)
        src, cols = act.src, columns(act, lay[1]).reshape(-1)
        b = np.zeros(src.F, np.float64) if src.b is None else np.array(src.b, dtype=np.float64)
        b[cols] += np.broadcast_to(c.reshape(-1), (F,)) / act.scale
        return Act("tok", Src(x=src.x, W=src.W, b=b, where=src.where, first=src.first), act.axes, act.offset,
                   act.scale)

    def positions(self, node, idx, tok, pos):
        t = self.tokens(node, idx, tok, "the token features")
        W = pos.src
        if len(pos.axes) > len(t.axes) or t.axes[-2] != ("T",) or any(pos.axes[:-2]):
            self.fail(node, idx, f"adds position embeddings of axes {pos!r} to token features of axes {t!r}")
        if W.shape[1] != t.src.F:
            self.fail(node, idx, f"position embeddings of {W.shape[1]} features for {t.src.F} features")
        name = self.emit("pos", [t.src.name], self.where(node, idx), W=W)
        return Act("tok", Src(name=name, F=t.src.F), t.axes)

    def on_Mul(self, node, idx, ins, a):
        return self.scaled(node, idx, ins, False)

    def on_Div(self, node, idx, ins, a):
        return self.scaled(node, idx, ins, True)

    def scaled(self, node, idx, ins, div):
        x, y = ins
        if div and not isinstance(x, Act) or isinstance(x, Act) and isinstance(y, Act):
            self.fail(node, idx, f"{'divides' if div else 'multiplies'} two activations, or a constant by the "
                                 f"activations; expected activations times a constant scalar (attention's scale)")
        act, c = (x, y) if isinstance(x, Act) else (y, x)
        s = self.scalar(c)
        if s is None or act.kind not in ("tok", "scores") or s == 0:
            got = f"the scalar {s}" if s is not None else kind_text(c) if not isinstance(c, Probed) else (
                f"a value computed from {sorted(c.deps) or 'the sizes'} by ops {', '.join(sorted(c.ops))}" +
                (" (rotary position embeddings?)" if {"Sin", "Cos"} & c.ops else ""))
            self.fail(node, idx, f"{'divides' if div else 'multiplies'} {kind_text(act)} by {got}; expected token "
                                 f"features or attention scores times a constant scalar")
        return act.but(scale=act.scale / s if div else act.scale * s)

    # -- attention ----------------------------------------------------------------------------------
    def select(self, node, idx, act, order, what):
        cols = columns(act, order).reshape(-1)
        if not act.src.pending and (act.scale != 1.0 and what == "values" or
                                    not np.array_equal(cols, np.arange(act.src.F))):
            self.fail(node, idx, f"the {what} are the features of a computed value read in another order (axes "
                                 f"{act!r}); expected a projection (MatMul by a weight)")
        return Sel(act.src, cols, act.scale if what == "values" else 1.0)

    def scores(self, node, idx, q, k):
        if len(q.axes) != len(k.axes) or len(q.axes) < 3 or q.axes[-2] != ("T",) or k.axes[-1] != ("T",):
            self.fail(node, idx, f"multiplies activations of axes {q!r} @ {k!r}; expected attention's queries "
                                 f"[N, heads, T, head_dim] @ keysᵀ [N, heads, head_dim, T] (in any exporter's "
                                 f"layout)")
        fq, fk = q.axes[-1], k.axes[-2]
        if not (len(fq) == len(fk) == 1 and isinstance(fq[0], Feat) and isinstance(fk[0], Feat)
                and fq[0].size == fk[0].size):
            self.fail(node, idx, f"contracts {q!r} @ {k!r} over axes that are not one head dimension")
        pairs, batch = self.pair(node, idx, q.axes[:-2], k.axes[:-2], lambda u, v: isinstance(u, Feat) and
                                 isinstance(v, Feat) and u.size == v.size, "keys")
        H = pairs[0][0].size if pairs else 1
        qa, ka = [p[0] for p in pairs] + [fq[0]], [p[1] for p in pairs] + [fk[0]]
        if len(feats(q)) != len(qa) or len(feats(k)) != len(ka):
            self.fail(node, idx, f"queries {q!r} or keys {k!r} have features beyond heads x head_dim")
        sc = Scores(self.select(node, idx, q, qa, "queries"), self.select(node, idx, k, ka, "keys"), H,
                    fq[0].size, q.scale * k.scale, self.where(node, idx))
        return Act("scores", sc, [tuple(Head(H) if isinstance(u, Feat) else u for u in ax) for ax in batch] +
                   [("T",), ("S",)])

    def pair(self, node, idx, xs, ys, heads, what):
        """The batch axes of a product: N with N, heads with heads (``heads(u, v)``); at most one head atom."""
        pairs, out = [], []
        for ax, ay in zip(xs, ys):
            if len(ax) != len(ay):
                self.fail(node, idx, f"batch axes {ax} and {ay} do not pair (the {what})")
            for u, v in zip(ax, ay):
                if u == "N" and v == "N":
                    continue
                if not heads(u, v):
                    self.fail(node, idx, f"batch atoms {u!r} and {v!r} do not pair: expected the batch with the "
                                         f"batch and the heads with the heads (the {what})")
                pairs.append((u, v))
            out.append(ax)
        if len(xs) != len(ys) or "N" not in [u for ax in xs for u in ax] or len(pairs) > 1:
            self.fail(node, idx, f"batch axes {xs} and {ys}: expected the batch and at most one heads axis")
        return pairs, out

    def mask(self, node, idx, act, m):
        sc = act.src
        if sc.mask is not None:
            self.fail(node, idx, "a second mask on the attention scores")
        if isinstance(m, np.ndarray):
            if np.all(m == 0):
                return act
            self.fail(node, idx, "adds a constant mask to the attention scores (a causal mask or attn_mask); shmrt "
                                 "imports key padding masks computed from a mask input")
        if len(m.deps) != 1:
            self.fail(node, idx, f"adds a value computed from {sorted(m.deps) or 'the sizes only'} (ops "
                                 f"{', '.join(sorted(m.ops))}) to the attention scores; expected a key padding mask "
                                 f"computed from one mask input")
        name = next(iter(m.deps))
        keep = {True, False}
        for p, probe in enumerate(self.probes):
            row = self.mask_row(node, idx, act, m.vals[p], probe)
            real = probe.data[name] != 0
            keep = {k for k in keep if np.all(row[real == k] == 0) and np.all(row[real != k] <= BIG)}
        if len(keep) != 1:
            self.fail(node, idx, f"the attention mask computed from input {name!r} (ops {', '.join(sorted(m.ops))}) "
                                 f"is not a key padding mask: expected 0 at real tokens and at most {BIG:g} (or -inf) "
                                 f"at padding, real tokens being {name} != 0 or {name} == 0")
        sc = copy.copy(sc)
        sc.mask = (name, keep.pop())
        return Act("scores", sc, act.axes, act.offset, act.scale)

    def mask_row(self, node, idx, act, mp, probe):
        """The mask [N, S] that ``mp`` adds to the scores act at probe, refused unless it is the same for
        every head and query."""
        shape = act.shape(probe)
        try:
            full = np.broadcast_to(np.asarray(mp, dtype=np.float64), shape)
        except ValueError:
            self.fail(node, idx, f"the mask of shape {np.shape(mp)} does not broadcast to the scores' {shape}")
        atoms = [u for ax in act.axes for u in ax]
        full = full.reshape([size(u, probe) for u in atoms])
        heads = [i for i, u in enumerate(atoms) if isinstance(u, Head)]
        order = [atoms.index("N"), atoms.index("T"), atoms.index("S")] + heads
        m = np.transpose(full, order).reshape(probe.n, probe.t, probe.t, -1)
        if not np.array_equal(m, np.broadcast_to(m[:, :1, :, :1], m.shape)):
            self.fail(node, idx, "the attention mask changes with the query position or the head (a causal mask?); "
                                 "shmrt imports key padding masks (one row of allowed keys per sequence)")
        return m[:, 0, :, 0]

    def on_Where(self, node, idx, ins, a):
        c, x, y = ins
        if isinstance(c, Act) and c.kind == "nan" and y is c.src and self.scalar(x) == 0.0:
            return y  # Where(IsNaN(weights), 0, weights): a query with no key left gets 0 (shmrt's own rule)
        if isinstance(c, Probed) and c.deps:
            sx, sy = self.scalar(x), self.scalar(y)
            if isinstance(x, Act) and x.kind == "scores" and sy is not None and sy <= BIG:
                return self.mask(node, idx, x, Probed([np.where(v, 0.0, sy) for v in c.vals], c.deps, None, c.ops))
            if isinstance(y, Act) and y.kind == "scores" and sx is not None and sx <= BIG:
                return self.mask(node, idx, y, Probed([np.where(v, sx, 0.0) for v in c.vals], c.deps, None, c.ops))
        self.fail(node, idx, "a Where on the activations; expected Where(mask, scores, -inf) (a padding mask) or "
                             "Where(IsNaN(weights), 0, weights)")

    def on_IsNaN(self, node, idx, ins, a):
        act = ins[0]
        if act.kind != "probs":
            self.fail(node, idx, f"IsNaN of {kind_text(act)}; expected IsNaN of attention weights")
        return Act("nan", act, act.axes)

    def on_Softmax(self, node, idx, ins, a):
        act = ins[0]
        ax = self.axis(node, idx, a.get("axis", -1), len(act.axes))
        if act.kind != "scores" or act.axes[ax] != ("S",):
            self.fail(node, idx, f"a Softmax over axis {ax} of {kind_text(act)} with axes {act!r}; expected "
                                 f"attention scores over the keys")
        sc = copy.copy(act.src)
        sc.scale *= act.scale
        return Act("probs", sc, act.axes)

    def attend(self, node, idx, p, v):
        sc = p.src
        if len(p.axes) != len(v.axes) or p.axes[-1] != ("S",) or p.axes[-2] != ("T",) or v.axes[-2] != ("T",) or \
                len(v.axes[-1]) != 1 or not isinstance(v.axes[-1][0], Feat):
            self.fail(node, idx, f"multiplies attention weights {p!r} by {v!r}; expected weights [N, heads, T, T] @ "
                                 f"values [N, heads, T, head_dim]")
        pairs, batch = self.pair(node, idx, p.axes[:-2], v.axes[:-2], lambda u, w: isinstance(u, Head) and
                                 isinstance(w, Feat) and u.size == w.size, "values")
        if len(pairs) != (1 if any(isinstance(u, Head) for ax in p.axes for u in ax) else 0):
            self.fail(node, idx, "the values' heads do not pair with the weights' heads")
        dv = v.axes[-1][0]
        order = [w for _, w in pairs] + [dv]
        if len(feats(v)) != len(order):
            self.fail(node, idx, f"values {v!r} have features beyond heads x head_dim")
        vs = self.select(node, idx, v, order, "values")

        def proj(s):
            if not s.src.pending:
                return (s.src.name, None, None)
            W = s.src.W[:, s.cols] * s.scale if s.scale != 1.0 else s.src.W[:, s.cols]
            b = None if s.src.b is None else s.src.b[s.cols] * s.scale
            return (s.src.x, W, b)
        q, k, vv = proj(sc.q), proj(sc.k), proj(vs)
        name = self.emit("attn", sorted({q[0], k[0], vv[0]}), self.where(node, idx), q=q, k=k, v=vv, H=sc.H,
                         dh=sc.dh, dv=dv.size, scale=sc.scale, mask=sc.mask)
        src = Src(name=name, F=sc.H * dv.size)
        return Act("tok", src, [tuple(Feat(u.size, dv.size) if isinstance(u, Head) else u for u in ax) for ax in batch]
                   + [("T",), (Feat(dv.size, 1),)])
