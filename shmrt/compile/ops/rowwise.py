"""Layers that need whole feature rows (Softmax, LogSoftmax, ArgMax, TopK,
LayerNorm and its statistics Mean / RStd, Select): a barrier unless each worker already holds its rows
complete, then a batch-row split.  Steps: SOFTMAX, ARGMAX, TOPK, LAYERNORM,
GATHER."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import ARGMAX, GATHER, LAYERNORM, SOFTMAX, TOPK
from shmrt.compile.layout import Output, rows_of
from shmrt.compile.roofline import streaming_step_us
from shmrt.ir import layers as L


def rowwise(b, op, info):
    P, l, i = b.P, op.layer, op.index
    b.need_rows()
    out = b.outs[i]
    x, ld, W = b.cur_off, b.cur_ld, b.cur_w
    for w in range(P):
        r = rows_of(w, P)
        if isinstance(l, L.Softmax):  # and LogSoftmax
            _, m, inner = l.split(op.in_shapes[0])
            b.emit(w, SOFTMAX, x=x, x_ld=ld, width=W, out=out.off, out_ld=W, log=int(isinstance(l, L.LogSoftmax)),
                   m=m, inner=inner, **r)
        elif isinstance(l, L.ArgMax):
            b.emit(w, ARGMAX, x=x, x_ld=ld, width=W, out=out.off, last=int(l.select_last_index),
                   m=int(op.in_shapes[0][-1]), **r)
        elif isinstance(l, L.TopK):
            b.emit(w, TOPK, x=x, x_ld=ld, width=W, k=l.k, values=out.off, indices=out.idx_off, **r)
        elif isinstance(l, L.LayerNorm):
            b.emit(w, LAYERNORM, x=x, x_ld=ld, width=W, weight=b.w(f"{i}.weight"), bias=b.w(f"{i}.bias"),
                   eps=b.w(f"{i}.eps"), out=out.off, norm=l.features, stat=0, **r)
        elif isinstance(l, L._TrailingStat):  # one float per group of the trailing dims: no weight, no bias
            e = b.w(f"{i}.eps")
            b.emit(w, LAYERNORM, x=x, x_ld=ld, width=W, weight=e, bias=e, eps=e, out=out.off,
                   norm=l.group(op.in_shapes[0]), stat=1 + int(isinstance(l, L.RStd)), **r)
        elif isinstance(l, L.Select):
            b.emit(w, GATHER, x=x, x_ld=ld, index=b.w(f"{i}.index"), out=out.off, width=out.width, **r)
        else:
            raise NotImplementedError(f"no plan for {l!r}")
    info["partition"] = "batch rows (whole feature rows)"
    info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
    info["flops"] = 5 * W
    b.set_cur(out, "rows" if P > 1 else "all")


def rowwise_us(s, cnt, n, rates) -> float:
    """Reads a row, writes it (or less), with a pass or two over it: 12 bytes a float."""
    return streaming_step_us(s, cnt, rates, read=12.0)


def tensors(op, before) -> dict:
    """LayerNorm's weight, bias and eps; Select's feature indices (resolved against its input width)."""
    l = op.layer
    if isinstance(l, L.LayerNorm):
        return {"weight": l.params["weight"].reshape(-1), "bias": l.params["bias"].reshape(-1),
                "eps": np.array([l.eps], np.float32)}
    if isinstance(l, L._TrailingStat):
        return {"eps": np.array([l.eps], np.float32)}
    if isinstance(l, L.Select):
        # its input as rows of prod(before) features: a Flatten before it is an alias (plan._fuse), so
        # ``before`` may be the shape it flattened, e.g. a recurrent layer's (T, H)
        return {"index": l.resolve(int(np.prod(before))).astype(np.float32)}
    return dict(l.params)


def output(op, shape, in_shape, maxb, arena):
    """ArgMax writes int64 indices (one per group of the last dim); TopK values and int64 indices; the
    rest a dense [N, width]."""
    l = op.layer
    if isinstance(l, L.ArgMax):
        g = int(np.prod(shape))
        return Output("argmax", arena.alloc(2 * maxb * g), g, shape=tuple(shape))
    if isinstance(l, L.TopK):
        return Output("topk", arena.alloc(maxb * l.k), l.k, arena.alloc(2 * maxb * l.k), (l.k,))
    return None


LAYERS = (L.Softmax, L.LogSoftmax, L.ArgMax, L.TopK, L.LayerNorm, L._TrailingStat, L.Select)
emit = rowwise
COSTS = {op.code: rowwise_us for op in (SOFTMAX, ARGMAX, TOPK, LAYERNORM, GATHER)}
