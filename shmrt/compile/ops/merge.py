"""Layers of several activations: Add, Sub, Mul, Div (broadcasting; or of one activation and a
constant) and Concat, and the copies that rearrange one (Permute, Transpose, Slice), as MERGE steps
(kernels/merge.py).  By batch rows; or, split by model, by the output's first per-sample axis
(channels of an image, features of a vector): where both operands of an elementwise op are the
same shape and split by the same columns (a residual Add after two channel-split convolutions),
each worker combines its own columns with no barrier; otherwise a barrier first, then each worker
its share of the channels."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import FRAC, MERGE
from shmrt.compile.layout import rows_of, split
from shmrt.compile.roofline import rows, stream_us
from shmrt.ir import layers as L
from shmrt.kernels.merge import COPY

_OPS = {name: k for k, name in enumerate(L.BINARY_OPS)}  # kernels/merge.py's ADD, SUB, MUL, DIV


def _strides(shape):
    """Row-major strides of a per-sample shape."""
    out, acc = [], 1
    for v in reversed(shape):
        out.append(acc)
        acc *= v
    return out[::-1]


def _geometry(out_shape, operands):
    """(dims, [strides per operand]) over the output's dims, three of them: operand strides by
    broadcasting (0 where an operand's size is 1), the last two merged where every operand allows,
    and size-1 dims inserted after the first (so a same-shape image is (C, 1, H*W))."""
    r = len(out_shape)
    dims = list(out_shape)
    strides = []
    for shape, st in operands:
        shape = (1,) * (r - len(shape)) + tuple(shape)
        st = [0] * (r - len(st)) + list(st)
        strides.append([0 if shape[k] == 1 and dims[k] != 1 else st[k] for k in range(r)])
    while len(dims) > 2 and all(s[-2] == s[-1] * dims[-1] for s in strides):  # dim 0 stays: it is split
        dims[-2:] = [dims[-2] * dims[-1]]
        for s in strides:
            s[-2:] = [s[-1]]
    pad = 3 - len(dims)  # size-1 dims go after dim 0 (which is split): the last, innermost loop stays long
    dims = dims[:1] + [1] * pad + dims[1:]
    strides = [s[:1] + [0] * pad + s[1:] for s in strides]
    return dims, strides


def merge(b, op, info):
    P, l = b.P, op.layer
    oshape = tuple(op.shape)
    inner = int(np.prod(oshape[1:])) if len(oshape) > 1 else 1
    const = None  # (weight offset) of a _Binary's constant operand
    if isinstance(l, L._Binary) and l.constant is not None:
        (a,), (sha,), shb, code = b.ins, op.in_shapes, l.constant.shape, _OPS[l.op]
        dims, (sa, sb, so) = _geometry(oshape, [(sha, _strides(sha)), (shb, _strides(shb)), (oshape, _strides(oshape))])
        parts = [(a, None, 0, 0, dims, sa, sb, so, 0, oshape[0])]
        same, const = tuple(shb) == oshape, b.w(f"{op.index}.constant")
        info["flops"] = int(np.prod(oshape))
    elif isinstance(l, L._Binary):
        (a, bb), (sha, shb), code = b.ins, op.in_shapes, _OPS[l.op]
        dims, (sa, sb, so) = _geometry(oshape, [(sha, _strides(sha)), (shb, _strides(shb)), (oshape, _strides(oshape))])
        parts = [(a, bb, 0, 0, dims, sa, sb, so, 0, oshape[0])]  # (a, b, a offset, out offset, geometry, dim-0 range)
        same = tuple(sha) == tuple(shb) == oshape
        info["flops"] = int(np.prod(oshape))
    elif isinstance(l, L._Rearrange):  # one strided copy: the input read in the output's order
        (v,), (sh,) = b.ins, op.in_shapes
        st = _strides(sh)
        if isinstance(l, L.Slice):
            ax, start, _ = l.window(sh)
            sa, first = list(st), start * st[ax]
            sa[ax] *= l.step
        else:
            sa, first = [st[k] for k in l.order(len(sh))], 0
        dims, (sa, so) = _geometry(oshape, [(oshape, sa), (oshape, _strides(oshape))])
        parts = [(v, v, first, 0, dims, sa, sa, so, 0, oshape[0])]
        code, same = COPY, False
        info["flops"] = 0
    else:  # Concat: a strided copy of each input into its place in the output
        ax = l.axis(len(oshape))
        pos, parts = 0, []
        for v, sh in zip(b.ins, op.in_shapes):
            dims, (sa, so) = _geometry(sh, [(sh, _strides(sh)), (oshape, _strides(oshape))])
            parts.append((v, v, 0, pos * _strides(oshape)[ax], dims, sa, sa, so, 0, sh[0]))
            pos += sh[ax]
        code, same = COPY, False
        info["flops"] = 0
    if any(len(p[4]) > 3 for p in parts):
        raise NotImplementedError(f"{l!r} over {[f'(N, {s})' for s in op.in_shapes]}: the copy needs "
                                  f"{len(parts[0][4])} strided dims; at most 3 are supported (expected inputs "
                                  f"of at most 3 dims besides the batch, or dims that merge)")
    # each worker combines its own columns where every operand is split by the same columns or complete
    split_by = [v.bounds for v in b.ins if v.state == "cols"]
    follow = (b.split_model and same and split_by and all(v.state in ("cols", "all") for v in b.ins)
              and all(bd == split_by[0] for bd in split_by) and all(c % inner == 0 for c in split_by[0]))
    if not b.split_model:
        b.need_inputs(("all", "rows"))
        cb = None
    elif follow:
        cb = [c // inner for c in split_by[0]]
    else:
        b.need_inputs(("all",))
        cb = split(oshape[0], P, grain=1)
    out = b.outs[op.index]  # after the barrier, if any: a slot freed before it may be reused
    for w in range(P):
        where = rows_of(w, P) if cb is None else dict(lo=0, hi=FRAC)
        for a, bb, first, base, dims, sa, sb, so, lo0, hi0 in parts:
            c0, c1 = (lo0, hi0) if cb is None else (max(cb[w], lo0), min(cb[w + 1], hi0))
            if isinstance(l, L.Concat) and cb is not None and l.axis(len(oshape)) == 0:
                off = base // max(_strides(oshape)[0], 1)  # this input's first channel in the output
                c0, c1 = max(cb[w] - off, 0), min(cb[w + 1] - off, hi0)
            if c1 <= c0:
                continue
            b_at = dict(b=const, b_ld=0, b_w=1) if bb is None else dict(b=bb.out.off, b_ld=bb.out.ld or bb.out.width,
                                                                       b_w=0)
            b.emit(w, MERGE, a=a.out.off + first, a_ld=a.out.ld or a.out.width, **b_at, out=out.off + base,
                   out_ld=out.ld or out.width, op=code, d=dims, sa=sa, sb=sb, so=so, c0=c0, c1=c1, act=op.act,
                   swap=int(getattr(l, "reverse", False)), **where)
    if cb is None:
        info["partition"] = "batch rows"
        info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
        b.set_cur(out, "rows" if P > 1 else "all")
    else:
        info["partition"] = "channels (follows its inputs)" if follow else "channels"
        info["slices"] = [f"channels {cb[w]}:{cb[w + 1]}" for w in range(P)]
        b.set_cur(out, "cols", [c * inner for c in cb])


def merge_us(s, cnt, n, rates) -> float:
    """12 bytes per output element (two read, one written): the step's dim-0 share of d."""
    width = (s[MERGE.c1] - s[MERGE.c0]) * s[MERGE.d + 1] * s[MERGE.d + 2]
    return stream_us(rows(cnt, s[MERGE.lo], s[MERGE.hi]), width, rates, 12.0)


LAYERS = (L._Merge, L._Rearrange)
emit = merge
COSTS = {MERGE.code: merge_us}
