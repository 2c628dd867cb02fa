"""Pooling (MaxPool2d, AvgPool2d, the adaptive pools' uneven windows, GlobalAvgPool) and resizing (Upsample): per
channel, so it follows a channel split where there is one, else takes batch
rows.  Steps: POOL, GAP, RESIZE."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import FRAC, GAP, POOL, POOL_GEOM, RESIZE
from shmrt.compile.layout import Output, rows_of, split
from shmrt.compile.roofline import rows
from shmrt.ir import layers as L


def pool(b, op, info):
    """Pooling is per channel: it follows a channel split, else batch rows."""
    P, l, i = b.P, op.layer, op.index
    C, H, W = b.cur_shape
    hw = H * W
    follow = b.split_model and b.state == "cols" and all(v % hw == 0 for v in b.bounds)
    cb = [v // hw for v in b.bounds] if follow else None
    if b.split_model and b.state == "all" and P > 1:  # complete for everyone: each worker its share of channels
        follow, cb = True, split(C, P, grain=1)
    if not follow:
        b.need_rows()
    out = b.outs[i]  # after the barrier, if any: a slot freed before it may be reused
    ohw = 1 if isinstance(l, L.GlobalAvgPool) else out.shape[1] * out.shape[2]  # output floats per channel
    for w in range(P):
        c0, c1 = (cb[w], cb[w + 1]) if follow else (0, C)
        where = dict(lo=0, hi=FRAC) if follow else rows_of(w, P)
        if isinstance(l, L.Upsample):
            b.emit(w, RESIZE, x=b.cur_off, x_ld=b.cur_ld, out=out.off, out_ld=out.ld or out.width, c0=c0, c1=c1,
                   geom=(C, H, W, out.shape[1], out.shape[2]), bilinear=int(l.mode == "bilinear"),
                   taps=b.w(f"{i}.taps"), **where)
        elif isinstance(l, L.GlobalAvgPool):
            b.emit(w, GAP, x=b.cur_off, x_ld=b.cur_ld, out=out.off, out_ld=out.ld or out.width, hw=hw, c0=c0, c1=c1,
                   **where)
        elif isinstance(l, L._AdaptivePool2d):  # uneven windows (the even ones are planned as a _Pool2d)
            geom = (C, H, W, 0, 0, 1, 1, 0, 0, 1, 1, out.shape[1], out.shape[2], 0, 0)
            b.emit(w, POOL, x=b.cur_off, x_ld=b.cur_ld, out=out.off, out_ld=out.ld or out.width, c0=c0, c1=c1,
                   is_max=int(l.is_max), count_include_pad=0, geom=geom, adaptive=1, indices=-1, col_major=0,
                   **where)
        else:
            t, left, bottom, right = l.pads
            geom = (C, H, W, *l.kernel_size, *l.stride, t, left, *l.dilation, out.shape[1], out.shape[2], bottom,
                    right)
            b.emit(w, POOL, x=b.cur_off, x_ld=b.cur_ld, out=out.off, out_ld=out.ld or out.width, c0=c0, c1=c1,
                   is_max=int(l.is_max), count_include_pad=int(l.count_include_pad), geom=geom, adaptive=0,
                   indices=out.idx_off if out.kind == "maxpool" else -1,
                   col_major=int(L.returns_indices(l) and l.indices == "col"), **where)
    info["flops"] = C * hw
    if follow:
        info["partition"] = "channels (follows producer)" if b.state == "cols" else "channels"
        info["slices"] = [f"channels {cb[w]}:{cb[w + 1]}" for w in range(P)]
        b.set_cur(out, "cols", [c * ohw for c in cb])
    else:
        info["partition"] = "batch rows (whole images)"
        info["slices"] = [f"images {w}/{P}..{w + 1}/{P}" for w in range(P)]
        b.set_cur(out, "rows" if P > 1 else "all")


def output(op, shape, in_shape, maxb, arena):
    """A MaxPool2d with ONNX's Indices: its values and int64 indices (a call's rows of n add
    n * C*H*W to its indices: ``idx_step``); the rest a dense [N, width]."""
    l = op.layer
    if not L.returns_indices(l):
        return None
    width = int(np.prod(shape))
    return Output("maxpool", arena.alloc(maxb * width), width, arena.alloc(2 * maxb * width), tuple(shape),
                  idx_step=int(np.prod(in_shape)))


def pool_us(s, cnt, n, rates) -> float:
    g = s[POOL.geom:POOL.geom + POOL_GEOM]
    return 4.0 * rows(cnt, s[POOL.lo], s[POOL.hi]) * (s[POOL.c1] - s[POOL.c0]) * g[1] * g[2] * 2 / (rates.read_gbs * 1e3)


def gap_us(s, cnt, n, rates) -> float:
    return 4.0 * rows(cnt, s[GAP.lo], s[GAP.hi]) * (s[GAP.c1] - s[GAP.c0]) * s[GAP.hw] / (rates.read_gbs * 1e3)


def resize_us(s, cnt, n, rates) -> float:
    g = s[RESIZE.geom:RESIZE.geom + 5]
    return 8.0 * rows(cnt, s[RESIZE.lo], s[RESIZE.hi]) * (s[RESIZE.c1] - s[RESIZE.c0]) * g[3] * g[4] / (rates.read_gbs * 1e3)


def tensors(op, before) -> dict:
    """An Upsample's source tables (its taps over rows, then columns: i0, i1, w each), float32."""
    l = op.layer
    if not isinstance(l, L.Upsample):
        return dict(l.params)
    _, H, W = before
    _, OH, OW = l.output_shape(tuple(before))
    return {"taps": np.concatenate([*l.taps(H, OH, 0), *l.taps(W, OW, 1)]).astype(np.float32)}


LAYERS = (L._Pool2d, L._AdaptivePool2d, L.GlobalAvgPool, L.Upsample)
emit = pool
COSTS = {POOL.code: pool_us, GAP.code: gap_us, RESIZE.code: resize_us}
