"""The ONNX sequence importer's ops on activations that re-label them (Reshape, Transpose, Gather,
Slice, Split, ... : seq_views.py's atoms) or compute on token features one token at a time
(LayerNormalization, GELU, ReLU, Tanh); a mixin of seq_import.SeqImport."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.errors import UnsupportedONNX
from shmrt.frontends.onnx.folding import reshape_target, slices
from shmrt.frontends.onnx.seq_views import (FLOATS, Act, Feat, Misfit, Probed, Src, describe, kind_text, reshape,
                                            squeeze, transpose, unsqueeze)


class Baked(UnsupportedONNX):
    """A Reshape whose constant target fixes the sequence length at ``t`` (the traced length); convert()
    reads the graph again with T fixed there."""

    def __init__(self, t, where):
        super().__init__(f"{where}: the target shape fixes the sequence length at {t}")
        self.t, self.where = t, where


class ViewOps:
    def view(self, node, idx, f, *args):
        try:
            return f(*args)
        except Misfit as e:
            self.fail(node, idx, str(e))

    def on_Shape(self, node, idx, ins, a):
        s, e = a.get("start", 0), a.get("end", None)
        return Probed([np.array(ins[0].shape(p), dtype=np.int64)[s:e] for p in self.probes], ops={"Shape"})

    def on_Identity(self, node, idx, ins, a):
        return ins[0]

    def on_Dropout(self, node, idx, ins, a):
        if len(node.output) > 1 and node.output[1] in self.read:
            self.fail(node, idx, "its mask output is read; shmrt's inference drops nothing")
        return [ins[0], None]

    def on_Cast(self, node, idx, ins, a):
        if a.get("to") not in FLOATS:
            self.fail(node, idx, f"casts the activations to type {a.get('to')}; expected a float type")
        return ins[0]

    def on_Transpose(self, node, idx, ins, a):
        return self.view(node, idx, transpose, ins[0], a.get("perm"))

    def on_Unsqueeze(self, node, idx, ins, a):
        axes = a.get("axes") if len(ins) < 2 or ins[1] is None else self.per_probe(node, idx, ins[1], "axes")[0]
        if axes is None:
            self.fail(node, idx, "no axes (input 1 or attribute) to unsqueeze")
        return self.view(node, idx, unsqueeze, ins[0], [int(v) for v in axes])

    def on_Squeeze(self, node, idx, ins, a):
        axes = a.get("axes") if len(ins) < 2 or ins[1] is None else self.per_probe(node, idx, ins[1], "axes")[0]
        return self.view(node, idx, squeeze, ins[0], None if axes is None else [int(v) for v in axes], self.probes)

    def on_Reshape(self, node, idx, ins, a):
        act, targets = ins[0], self.per_probe(node, idx, ins[1], "the target shape")
        try:
            dims = [reshape_target(act.shape(p), list(t), a.get("allowzero", 0)) for p, t in zip(self.probes, targets)]
        except ValueError as e:
            self.baked_length(node, idx, act, targets)
            self.fail(node, idx, f"the target shape does not fit the input: {e}")
        if len({len(d) for d in dims}) != 1:
            self.fail(node, idx, "the target shape's rank changes with the sizes")
        return self.view(node, idx, reshape, act, [list(d) for d in zip(*dims)], self.probes)

    def baked_length(self, node, idx, act, targets):
        """Raise Baked if the target shapes hold every size but the sequence length, fixed at one value:
        the length the input's T axis would need for the element counts to agree at every probe."""
        toks = [u for ax in act.axes for u in ax if u in ("T", "S")]
        if self.static_t is not None or len(toks) != 1 or any(0 in t or -1 in t for t in targets):
            return
        ts = set()
        for p, t in zip(self.probes, targets):
            have, want = int(np.prod(act.shape(p))), int(np.prod(t))
            ts.add(want * p.t // have if want * p.t % have == 0 else 0)
        if len(ts) == 1 and min(ts) >= 1:
            raise Baked(ts.pop(), self.where(node, idx))

    def on_Flatten(self, node, idx, ins, a):
        act = ins[0]
        ax = self.axis(node, idx, a.get("axis", 1), len(act.axes) + 1)
        dims = [[int(np.prod(act.shape(p)[:ax])), int(np.prod(act.shape(p)[ax:]))] for p in self.probes]
        return self.view(node, idx, reshape, act, [list(d) for d in zip(*dims)], self.probes)

    def on_Gather(self, node, idx, ins, a):
        act, i = ins[0], self.scalar(ins[1])
        if not isinstance(act, Act) or isinstance(ins[1], Act) or i is None or np.ndim(_first(ins[1])) != 0:
            self.fail(node, idx, "gathers from the activations by indices other than one constant scalar; expected "
                                 "a selection of heads / q, k, v (a constant index on a feature axis) or of the first "
                                 "token")
        ax = self.axis(node, idx, a.get("axis", 0), len(act.axes))
        atoms, i = act.axes[ax], int(i)
        if act.kind == "tok" and len(atoms) == 1 and isinstance(atoms[0], Feat):
            f = atoms[0]
            if not -f.size <= i < f.size:
                self.fail(node, idx, f"index {i} is out of range for axis {ax} of size {f.size}")
            return act.but(axes=act.axes[:ax] + act.axes[ax + 1:], offset=act.offset + (i % f.size) * f.stride)
        if act.kind == "tok" and atoms == ("T",) and i == 0:
            t = self.tokens(node, idx, act, "the input")
            name = self.emit("first", [t.src.name], self.where(node, idx))
            F = t.src.F
            return Act("tok", Src(name=name, F=F, first=True), t.axes[:ax] + t.axes[ax + 1:])
        self.fail(node, idx, f"selects index {i} of axis {ax} ({describe(atoms)}) of {kind_text(act)} with axes "
                             f"{act!r}; expected a feature axis (heads, q / k / v) or the first token (index 0 of T)")

    def on_Slice(self, node, idx, ins, a):
        act = ins[0]
        parts = [None] + [self.per_probe(node, idx, v, "a Slice bound") if v is not None else None for v in ins[1:]]
        axes, offset = list(act.axes), act.offset
        cuts = {}
        for p, probe in enumerate(self.probes):
            shape = act.shape(probe)
            try:
                sl = slices(shape, [None] + [v[p] if v is not None else None for v in parts[1:]])
            except ValueError as e:
                self.fail(node, idx, str(e))
            for k, (s, n) in enumerate(zip(sl, shape)):
                r = s.indices(n)
                if r != (0, n, 1):
                    cuts.setdefault(k, set()).add(r)
        for k, rs in cuts.items():
            ax = axes[k]
            if not (len(rs) == 1 and len(ax) == 1 and isinstance(ax[0], Feat) and next(iter(rs))[2] == 1):
                self.fail(node, idx, f"slices axis {k} ({describe(ax)}) of axes {act!r}; expected a slice of a "
                                     f"feature axis (step 1)")
            start, stop, _ = next(iter(rs))
            if stop <= start:
                self.fail(node, idx, f"an empty slice of axis {k}")
            axes[k] = (Feat(stop - start, ax[0].stride),)
            offset += start * ax[0].stride
        return act.but(axes=axes, offset=offset)

    def on_Split(self, node, idx, ins, a):
        act = ins[0]
        k = self.axis(node, idx, a.get("axis", 0), len(act.axes))
        ax = act.axes[k]
        if act.kind != "tok" or len(ax) != 1 or not isinstance(ax[0], Feat):
            self.fail(node, idx, f"splits axis {k} ({describe(ax)}) of {act!r}; expected a feature axis")
        f, n = ax[0], len(node.output)
        if len(ins) > 1 and ins[1] is not None:
            sizes = [int(v) for v in self.per_probe(node, idx, ins[1], "split")[0]]
        elif "split" in a:
            sizes = [int(v) for v in a["split"]]
        else:
            step = -(-f.size // n)
            sizes = [min(step, f.size - step * j) for j in range(n)]
        if sum(sizes) != f.size or len(sizes) != n or min(sizes) < 1:
            self.fail(node, idx, f"split sizes {sizes} do not split an axis of {f.size} into {n} parts")
        outs, start = [], 0
        for s in sizes:
            outs.append(act.but(axes=act.axes[:k] + ((Feat(s, f.stride),),) + act.axes[k + 1:],
                                offset=act.offset + start * f.stride))
            start += s
        return outs

    # -- ops on activations: token features --------------------------------------------------------------
    def on_LayerNormalization(self, node, idx, ins, a):
        if any(o in self.read for o in node.output[1:]):
            self.fail(node, idx, "its Mean / InvStdDev outputs are read; expected only the normalised output")
        t = self.tokens(node, idx, ins[0], "the input")
        F = t.src.F
        if a.get("axis", -1) not in (-1, len(t.axes) - 1):
            self.fail(node, idx, f"axis={a.get('axis')}: expected the last axis (the features)")

        def vec(v, what, fill):
            if v is None:
                return np.full(F, fill, np.float32)
            if not isinstance(v, np.ndarray) or v.size not in (1, F):
                self.fail(node, idx, f"{what} must be a constant of {F} values")
            return np.broadcast_to(v.reshape(-1), (F,)).astype(np.float32)
        w, b = vec(ins[1], "scale", 1.0), vec(ins[2] if len(ins) > 2 else None, "bias", 0.0)
        name = self.emit("ln", [t.src.name], self.where(node, idx), w=w, b=b, eps=a.get("epsilon", 1e-5))
        return Act("tok", Src(name=name, F=F, first=t.src.first), t.axes)

    def unary(self, node, idx, act, fn):
        t = self.tokens(node, idx, act, "the input")
        name = self.emit("act", [t.src.name], self.where(node, idx), fn=fn)
        return Act("tok", Src(name=name, F=t.src.F, first=t.src.first), t.axes)

    def on_Gelu(self, node, idx, ins, a):
        return self.unary(node, idx, ins[0], "gelu" if a.get("approximate", "none") == "none" else "gelu_tanh")

    def on_Relu(self, node, idx, ins, a):
        return self.unary(node, idx, ins[0], "relu")

    def on_Tanh(self, node, idx, ins, a):
        return self.unary(node, idx, ins[0], "tanh")


def _first(v):
    return v.vals[0] if isinstance(v, Probed) else v
