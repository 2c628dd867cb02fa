"""The activations of a transformer graph as labelled views (the ONNX sequence importer, seq_import.py).

Exporters move a transformer's activations through Reshape / Transpose / Gather into heads and back.
The importer follows each activation as a view of a source of token features: per ONNX axis, the
*atoms* it is made of, row-major:

    "N"              the batch                     "T"  the token (query) positions
    "S"              the key positions of attention scores
    Feat(size, stride)  a factor of the source's feature columns: the view's column is
                        offset + sum(index * stride) over its Feat atoms
    Head(size)       the heads of attention scores

A Reshape regroups the atoms (splitting a Feat where a target dim needs part of it: features
[48] -> [3, 16] -> [3, 4, 4]); N, T and S never split, so a Reshape that would cut through the
tokens is refused.  Sizes are checked under every probe, concrete (N, T) pairs that the
importer evaluates shape arithmetic at (so N*4 and T are told apart from a feature size).

A view that is an ordinary token tensor has N / T atoms on every axis but the last, and Feat atoms
on the last: ``token_layout`` gives them.  Its columns (``columns``) index the source's features:
a pending projection x @ W + b takes any selection of them as W's columns; a computed value must
be read in order."""
from __future__ import annotations

import numpy as np

TOKENS = ("N", "T")
FLOATS = (1, 10, 11, 16)                # ONNX float element types
INTS = (2, 3, 4, 5, 6, 7, 9, 12, 13)    # integer types and bool


class Misfit(Exception):
    """A view operation that does not fit the atoms; the importer refuses the node with the message."""


class Feat:
    __slots__ = ("size", "stride")

    def __init__(self, size, stride):
        self.size, self.stride = int(size), int(stride)

    def __repr__(self):
        return f"F{self.size}/{self.stride}"


class Head:
    __slots__ = ("size",)

    def __init__(self, size):
        self.size = int(size)

    def __repr__(self):
        return f"H{self.size}"


class Probe:
    """One concrete (N, T) the shape arithmetic is evaluated at, with the data inputs' values."""
    __slots__ = ("n", "t", "data")

    def __init__(self, n, t):
        self.n, self.t, self.data = int(n), int(t), {}


def size(atom, probe):
    if atom == "N":
        return probe.n
    if atom in ("T", "S"):
        return probe.t
    return atom.size


def axis_size(ax, probe):
    return int(np.prod([size(a, probe) for a in ax], dtype=np.int64))


def describe(ax):
    return "1" if not ax else "*".join(a if isinstance(a, str) else repr(a) for a in ax)


class Src:
    """Token features [N, T, F] (or [N, F] where ``first``): a value of the op list (``name``), or a
    pending projection ``x @ W + b`` of one (x its name, W [Fin, F], b [F] or None), made at ``where``."""
    __slots__ = ("name", "x", "W", "b", "F", "where", "first")

    def __init__(self, name=None, F=None, x=None, W=None, b=None, where="", first=False):
        self.name, self.x, self.W, self.b, self.where, self.first = name, x, W, b, where, bool(first)
        self.F = int(W.shape[1]) if W is not None else int(F)

    @property
    def pending(self):
        return self.name is None


class Act:
    """An activation: kind "tok" (token features of src, a Src), "pos" (a position table: src its
    weight [P, D], rows by position), "scores" / "probs" (attention scores, before / after the softmax:
    src a Scores) or "nan" (IsNaN of probs: src that Act).  scale: a pending scalar factor."""
    __slots__ = ("kind", "src", "axes", "offset", "scale")

    def __init__(self, kind, src, axes, offset=0, scale=1.0):
        self.kind, self.src, self.offset, self.scale = kind, src, int(offset), float(scale)
        self.axes = tuple(tuple(ax) for ax in axes)

    def but(self, axes=None, offset=None, scale=None):
        return Act(self.kind, self.src, self.axes if axes is None else axes,
                   self.offset if offset is None else offset, self.scale if scale is None else scale)

    def shape(self, probe):
        return tuple(axis_size(ax, probe) for ax in self.axes)

    def __repr__(self):
        return f"[{', '.join(describe(ax) for ax in self.axes)}]"


class Probed:
    """A value computed at each probe (vals: one array per probe); deps: the data inputs whose values
    it depends on; src: the input it is (through Cast / Identity), or None; ops: the op types that
    computed it."""
    __slots__ = ("vals", "deps", "src", "ops")

    def __init__(self, vals, deps=frozenset(), src=None, ops=frozenset()):
        self.vals, self.deps, self.src, self.ops = list(vals), frozenset(deps), src, frozenset(ops)


def kind_text(v):
    if not isinstance(v, Act):
        return "a constant" if isinstance(v, np.ndarray) else "shape or mask arithmetic"
    return {"tok": "token features", "pos": "a position table", "scores": "attention scores",
            "probs": "attention weights (after the Softmax)", "nan": "IsNaN of attention weights"}[v.kind]


def transpose(act, perm):
    r = len(act.axes)
    perm = list(range(r))[::-1] if perm is None else [int(p) for p in perm]
    if sorted(p % r if r else p for p in perm) != list(range(r)):
        raise Misfit(f"perm {perm} is not a permutation of the {r} axes")
    return act.but(axes=[act.axes[p % r] for p in perm])


def unsqueeze(act, axes):
    r = len(act.axes) + len(axes)
    if len({a % r for a in axes}) != len(axes) or any(not -r <= a < r for a in axes):
        raise Misfit(f"axes {list(axes)} do not fit an output of rank {r}")
    new = set(a % r for a in axes)
    it = iter(act.axes)
    return act.but(axes=[() if k in new else next(it) for k in range(r)])


def squeeze(act, axes, probes):
    r = len(act.axes)
    if axes is None:
        axes = [k for k, ax in enumerate(act.axes) if all(axis_size(ax, p) == 1 for p in probes)]
    axes = {int(a) % r for a in axes}
    for a in axes:
        if any(axis_size(act.axes[a], p) != 1 for p in probes):
            raise Misfit(f"axis {a} ({describe(act.axes[a])}) is not of size 1")
    return act.but(axes=[ax for k, ax in enumerate(act.axes) if k not in axes])


def reshape(act, dims, probes):
    """act regrouped to the target ``dims`` (per target axis, its size under each probe): the atoms,
    row-major, taken in order into each target axis; a Feat atom is split where a target axis takes
    part of it; N, T and S are never split."""
    atoms = [a for ax in act.axes for a in ax if not (isinstance(a, Feat) and a.size == 1)]
    out, i = [], 0
    for d in dims:
        d = np.asarray(d, dtype=np.int64)
        grp, cur = [], np.ones(len(probes), dtype=np.int64)
        while not np.array_equal(cur, d):
            if i == len(atoms):
                raise Misfit(f"the target shape {_fmt_dims(dims)} does not regroup the axes {act!r}")
            a = atoms[i]
            s = np.array([size(a, p) for p in probes], dtype=np.int64)
            nxt = cur * s
            if np.all(d % nxt == 0):
                grp.append(a)
                cur, i = nxt, i + 1
                continue
            r = d // np.maximum(cur, 1)
            if isinstance(a, Feat) and np.all(d % cur == 0) and len(set(r.tolist())) == 1 and r[0] > 1 \
                    and a.size % int(r[0]) == 0:
                r = int(r[0])
                grp.append(Feat(r, a.stride * (a.size // r)))
                atoms[i] = Feat(a.size // r, a.stride)
                cur = cur * r
                continue
            what = "the tokens" if isinstance(a, str) else repr(a)
            raise Misfit(f"the target shape {_fmt_dims(dims)} cuts through {what} of the axes {act!r}")
        out.append(tuple(grp))
    if i != len(atoms):
        raise Misfit(f"the target shape {_fmt_dims(dims)} leaves {atoms[i:]} of the axes {act!r}")
    return act.but(axes=out)


def _fmt_dims(dims):
    return "[" + ", ".join("/".join(str(int(v)) for v in sorted(set(np.asarray(d).tolist()))) for d in dims) + "]"


def feats(act):
    """Every Feat atom of act, in axis order."""
    return [a for ax in act.axes for a in ax if isinstance(a, Feat)]


def columns(act, order):
    """The source columns of act's features, as an int array shaped by the atoms ``order`` (row-major)."""
    cols = np.full((), act.offset, dtype=np.int64)
    for a in order:
        cols = cols[..., None] + np.arange(a.size, dtype=np.int64) * a.stride
    return cols


def token_layout(act):
    """(token axes, feature atoms) of an ordinary token tensor: N / T atoms on every axis but the last
    (each of N and T at most once), Feat atoms on the last; None if act is not one."""
    if act.kind != "tok" or not act.axes:
        return None
    head, last = act.axes[:-1], act.axes[-1]
    toks = [a for ax in head for a in ax]
    if any(a not in TOKENS for a in toks) or len(set(toks)) != len(toks) or "N" not in toks:
        return None
    if any(not isinstance(a, Feat) for a in last) or len(feats(act)) != len(last):
        return None
    return head, list(last)
