"""Activations and per-feature affine layers (Standardize, MinMaxScale,
BatchNorm not folded): they follow their producer's partition -- its
columns, or its batch rows -- so they never add a barrier (an activation
right after a Linear or Conv2d is fused into its epilogue instead, by
plan._fuse).  Steps: ACT, AFFINE."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import ACT, AFFINE, FRAC, act_code
from shmrt.compile.layout import rows_of
from shmrt.compile.roofline import streaming_step_us
from shmrt.ir import layers as L


def featurewise(b, op, info):
    """Activations and per-feature affines follow the producer's partition."""
    P, l, i = b.P, op.layer, op.index
    if b.state == "spatial":
        b.need_rows()
    out = b.outs[i]  # after the barrier, if any: a slot freed before it may be reused
    W = b.cur_w
    for w in range(P):
        if b.state == "cols":
            c0, cw, where = b.bounds[w], b.bounds[w + 1] - b.bounds[w], dict(lo=0, hi=FRAC)
        else:
            c0, cw, where = 0, W, rows_of(w, P)
        if isinstance(l, L._Affine):
            b.emit(w, AFFINE, x=b.cur_off, x_ld=b.cur_ld, col=c0, width=cw, scale=b.w(f"{i}.scale"),
                   shift=b.w(f"{i}.shift"), out=out.off, out_ld=out.ld or out.width, **where)
        else:
            b.emit(w, ACT, x=b.cur_off, x_ld=b.cur_ld, col=c0, width=cw, act=act_code(l.act), out=out.off, out_ld=out.ld or out.width,
                   alpha=b.w(f"{i}.alpha"), **where)
    if b.state == "cols":
        info["partition"] = "columns (follows producer)"
        info["slices"] = [f"cols {b.bounds[w]}:{b.bounds[w + 1]}" for w in range(P)]
        b.set_cur(out, "cols", b.bounds)
    else:
        info["partition"] = "batch rows"
        info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
        b.set_cur(out, "rows" if P > 1 else "all")
    info["flops"] = 2 * W


def featurewise_us(s, cnt, n, rates) -> float:
    return streaming_step_us(s, cnt, rates)


def tensors(op, before) -> dict:
    """An affine layer's scale and shift (a BatchNorm2d's per channel repeated over H x W: per
    feature of [C, H, W]); an activation's parameter (LeakyReLU's slope) as alpha."""
    l = op.layer
    if isinstance(l, L._Affine):
        s, sh = (v.astype(np.float32) for v in l.affine())
        if isinstance(l, L.BatchNorm2d):
            s, sh = (np.repeat(v, before[1] * before[2]) for v in (s, sh))
        return {"scale": s, "shift": sh}
    # alpha: one float (LeakyReLU's slope) or two (Hardtanh's min_val, max_val), the kernel's alpha and beta
    return {"alpha": np.array(l.alpha, np.float32).reshape(-1)} if l.alpha is not None else {}


LAYERS = (L._Elementwise, L._Affine)
emit = featurewise
COSTS = {ACT.code: featurewise_us, AFFINE.code: featurewise_us}
