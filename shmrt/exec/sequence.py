"""Calling a sequence model: pack the real tokens of a batch into token rows, run the token plan,
unpack (compile/tokens.py explains the token rows).

``cm(input_ids, attention_mask)``, ``cm({"input_ids": ..., ...})``: every input [N, L] (ids, any
integer dtype; masks, any numeric or bool dtype) or [N, L, F] (floats), with any L up to
max_seq_len -- the sequence length is a property of the call, the plan is the same.  Outputs: a
sequence [N, L, D] (0 at padding positions), FirstToken / MaskedMeanPool [N, D] (0 for a sequence
without a real token).  Packing and unpacking are the calling thread's (numpy, a pass over the ids
and one over the outputs); everything between runs on the workers."""
from __future__ import annotations

import numpy as np

from shmrt.compile import plan as planner
from shmrt.compile.tokens import META_COLS, is_sequence_model, lower
from shmrt.ir import layers as L

_REFUSED = {"c": "complex", "O": "object", "U": "string", "S": "bytes", "M": "datetime", "m": "timedelta",
            "V": "structured"}


def is_sequence(model) -> bool:
    return isinstance(model, L.Graph) and is_sequence_model(model)


def compile_sequence(rt, model, strategy, max_batch, max_seq_len, compiled, weights=None):
    """rt.compile of a sequence model: its token plan for max_batch sequences of max_seq_len tokens,
    placed by ``compiled`` (the runtime's CompiledModel class)."""
    if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer))
                                    or max_seq_len < 1):
        raise ValueError(f"max_seq_len must be a positive int (the longest sequence a call may pass), got "
                         f"{max_seq_len!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    given = [s[0] for _, s in model.inputs if s is not None and len(s) <= 2]  # (T,) ids or masks, (T, F) features
    spec = lower(model, max(given) if given else max_seq_len or 0)
    if max_seq_len is None or spec.prelude is not None:
        max_seq_len = spec.T if max_seq_len is None else max_seq_len
    if max_seq_len > spec.T or (spec.prelude is not None and max_seq_len != spec.T):
        raise ValueError(f"max_seq_len must be a positive int up to the inputs T = {spec.T} (the longest sequence "
                         f"a call may pass{'; its tokens come from a fixed-size input' if spec.prelude else ''}), "
                         f"got {max_seq_len!r}")
    P = max(rt.workers, 1)
    rates = rt.rates() if P > 1 and strategy in ("auto", "hybrid") else None
    plan = planner.build(spec.graph, P, strategy, int(max_batch) * int(max_seq_len), None, rates, weights)
    inner = compiled(rt, plan, strategy)
    try:
        pre = None if spec.prelude is None else compiled(rt, planner.build(spec.prelude, P, strategy, int(max_batch),
                                                                           None, rates, weights), strategy)
    except BaseException:
        inner.close()
        raise
    return SequenceModel(inner, spec, int(max_batch), int(max_seq_len), pre)


class SequenceModel:
    """A compiled sequence model (rt.compile of a graph with Embedding / attention layers)."""

    def __init__(self, inner, spec, max_batch, max_seq_len, prelude=None):
        self.inner, self.spec, self.prelude = inner, spec, prelude
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.runtime, self.strategy = inner.runtime, inner.strategy
        self.plan = inner.plan
        self._cols = {name: (c, w) for name, _, c, w in inner.plan.inputs}
        shapes = spec.graph.shapes([(META_COLS,)] + [(f,) for _, f in spec.columns])
        self._widths = {v: int(np.prod(shapes[v])) for _, _, v in spec.outputs}

    def _inputs(self, xs):
        names = self.spec.inputs
        if len(xs) == 1 and isinstance(xs[0], dict):
            got = xs[0]
            unknown = set(got) - set(names)
            if unknown or any(n not in got for n in names if n != self.spec.mask):
                raise TypeError(f"expected the inputs {names} by name (the mask may be left out: every token "
                                f"real), got {sorted(got)}")
            return {n: got[n] for n in names if n in got}
        if len(xs) != len(names) and not (len(xs) == len(names) - 1 and self.spec.mask == names[-1]):
            raise TypeError(f"this model takes the inputs {names}: cm(x1, x2, ...) or cm({{name: x}}), got {len(xs)}")
        return dict(zip(names, xs))

    def __call__(self, *xs):
        got = self._inputs(xs)
        arrs, shape, single, pre_one = {}, None, None, False
        if self.prelude is not None:  # the samples' part first (ViT's patches): its outputs are token features
            pre = [name for name, _ in self.spec.prelude.inputs]
            pre_one = np.ndim(got[pre[0]]) == len(self.spec.prelude.inputs[0][1])
            ys = self.prelude(*(got.pop(n) for n in pre))
            ys = ys if isinstance(ys, tuple) else (ys,)
            got.update({v: (y[None] if pre_one else y) for v, y in zip(self.spec.prelude.outputs, ys)})
        for name, x in got.items():
            x = np.asarray(x)
            if x.dtype.kind in _REFUSED:
                raise TypeError(f"input {name!r}: expected a real numeric array (N, L), got dtype {x.dtype}")
            if name in self.spec.vocab and x.dtype.kind not in "iub":
                raise TypeError(f"input {name!r}: token ids must be integers (any integer dtype), got {x.dtype}")
            feats = dict(self.spec.columns).get(name, 1)
            x = x.reshape(x.shape + (1,)) if feats == 1 and name != self.spec.mask else x
            nd = 2 if name == self.spec.mask else 3
            one = x.ndim == nd - 1
            if one:
                x = x[None]
            if single is not None and one != single:
                raise ValueError(f"input {name!r}: a single sample among batched inputs; expected one batch axis "
                                 f"for all or none")
            single = one
            if x.ndim != nd or (nd == 3 and x.shape[2] != feats):
                want = "(N, L)" if feats == 1 else f"(N, L, {feats})"
                raise ValueError(f"input {name!r}: expected shape {want} with L <= max_seq_len={self.max_seq_len}, "
                                 f"got {np.shape(got[name])}")
            if shape is None:
                shape = x.shape[:2]
            if x.shape[:2] != shape or not 1 <= shape[1] <= self.max_seq_len:
                raise ValueError(f"input {name!r}: shape {np.shape(got[name])}; expected (N, L) like the other inputs "
                                 f"{tuple(shape)} with 1 <= L <= max_seq_len={self.max_seq_len}")
            arrs[name] = x
        n, Ln = shape
        m = arrs.get(self.spec.mask)
        keep = np.ones((n, Ln), bool) if m is None else (m != 0) == self.spec.keep
        outs = [self._chunk(arrs, keep, s, min(n, s + self.max_batch)) for s in range(0, n, self.max_batch)]
        res = [np.concatenate([o[k] for o in outs]) for k in range(len(self.spec.outputs))]
        if single or pre_one:
            res = [r[0] for r in res]
        if self.spec.named_outputs:
            return {name: r for (name, _, _), r in zip(self.spec.outputs, res)}
        return res[0] if len(res) == 1 else tuple(res)

    def _chunk(self, arrs, keep, s, e):
        keep = keep[s:e]
        b, t = np.nonzero(keep)
        counts = keep.sum(1)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        ntok = b.size
        plan = self.inner.plan
        row = np.empty((ntok, int(plan.in_features)), np.float32)
        c, _ = self._cols["_meta"]
        row[:, c], row[:, c + 1], row[:, c + 2] = t, starts[b], counts[b]
        for name, f in self.spec.columns:
            x = arrs[name][s:e][b, t]
            if name in self.spec.vocab and ntok:
                bad = np.flatnonzero((x < 0) | (x >= self.spec.vocab[name]))
                if bad.size:
                    k = int(bad[0])
                    raise ValueError(f"input {name!r}: token id {x.reshape(ntok, -1)[k, 0].item()} at sample "
                                     f"{s + int(b[k])}, position {int(t[k])} is out of range; expected "
                                     f"0..{self.spec.vocab[name] - 1}")
            c, w = self._cols[name]
            row[:, c:c + w] = x.reshape(ntok, w)
        y = self.inner._call_rows(row, False) if ntok else None
        toks = {}
        if y is not None:
            from shmrt.exec.calls import split
            parts = split(plan, y) if plan.outputs else (y,)
            toks = dict(zip(self.spec.graph.outputs, parts))
        res, N, L = [], e - s, keep.shape[1]
        has = counts > 0
        for _, kind, v in self.spec.outputs:
            D = self._widths[v]
            yt = toks.get(v, np.zeros((0, D), np.float32)).reshape(ntok, D)
            if kind == "seq":
                o = np.zeros((N, L, D), np.float32)
                o[b, t] = yt
            else:
                o = np.zeros((N, D), np.float32)
                if kind == "first":
                    o[has] = yt[starts[has]]
                elif has.any():
                    o[has] = np.add.reduceat(yt, starts[has], axis=0) / counts[has, None]
            res.append(o)
        return res

    def explain(self, batch=None) -> str:
        """The token plan's explain() at ``batch`` token rows (default: max_batch full sequences)."""
        n = self.max_batch * self.max_seq_len if batch is None else int(batch) * self.max_seq_len
        head = (f"sequence model: {self.max_batch} sequences of up to {self.max_seq_len} tokens, run as packed token "
                f"rows (padding is never computed); the plan below at {n} token rows\n")
        return head + self.inner.explain(min(n, self.inner.max_batch))

    def close(self) -> None:
        self.inner.close()
        if self.prelude is not None:
            self.prelude.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return (f"<shmrt.CompiledModel (sequence) strategy={self.strategy!r} max_seq_len={self.max_seq_len} "
                f"workers={self.plan.workers}>")
