"""Linear layers (Megatron's column- and row-parallel split): the three
partitions, the steps they emit (LINEAR, REDUCE) and what those cost.

- batch rows: every worker multiplies its own rows by the whole weight;
- columns: worker w computes output features c0:c1 of every row (reads only
  rows c0:c1 of the weight, writes its own columns of the activation);
- rows: worker w multiplies its input features c0:c1 -- the columns it wrote
  in the layer before, so no barrier between the two -- into its own block
  of partial sums; one barrier; then a reduce-scatter: worker w sums every
  block for output columns d0:d1 and adds bias and activation.
"""
from __future__ import annotations

import numpy as np

from shmrt.compile import compress
from shmrt.compile.isa import FRAC, LINEAR, REDUCE
from shmrt.compile.layout import rows_of, split
from shmrt.compile.roofline import gemm_us, rows
from shmrt.ir import layers as L
from shmrt.kernels import NR
from shmrt.kernels.linear import PACKED_MIN_OUT
from shmrt.kernels.qformat import FLOAT32, panel_floats, panel_scales


def packed(layer) -> bool:
    """Does this Linear run on packed panels (else OpenBLAS on the row-major weight: too few outputs)?"""
    return layer.out_features >= PACKED_MIN_OUT


def split_panels(m: int, P: int) -> list:
    """Boundaries of P ranges of m output columns, each a run of whole panels (multiples of NR but the
    last); a worker may get none when there are fewer panels than workers."""
    units = -(-m // NR)
    return [min(units * p // P * NR, m) for p in range(P)] + [m]


def linear(b, op, info):
    P, l, i = b.P, op.layer, op.index
    k, m = l.in_features, l.out_features
    pk = packed(l)
    fmt = op.fmt if pk else FLOAT32
    w_off, b_off, s_off = b.w(f"{i}.panels" if pk else f"{i}.weight"), b.w(f"{i}.bias"), b.w(f"{i}.scales")
    w_ld = panel_floats(fmt, k) if pk else k  # packed: floats from one panel to the next
    s_ld = panel_scales(fmt, k)
    out = b.outs[i]
    panels = -(-m // NR)
    info["flops"] = 2 * k * m
    info["weight_bytes"] = 4 * ((w_ld + s_ld) * panels if pk else k * m) + 4 * (m if b_off >= 0 else 0)
    fields = dict(packed=pk, fmt=fmt, s_ld=s_ld)
    x_off, x_ld = b.cur_off, b.cur_ld
    if not b.split_model:
        b.need_rows()
        for w in range(P):
            b.emit(w, LINEAR, x=x_off, x_ld=x_ld, x_col=0, k=k, w=w_off, w_ld=w_ld, w_col=0, b=b_off,
                   out=out.off, out_ld=m, out_col=0, m=m, act=op.act, sc=s_off, **fields, **rows_of(w, P))
        info["partition"] = "batch rows"
        info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
        info["read_per_worker"] = info["weight_bytes"]
        b.set_cur(out, "rows")
    elif b.state == "cols" and b.bounds[-1] == k and fmt == FLOAT32:  # compressed: not split by input features
        # row parallel: this worker's input features are the columns it
        # wrote.  The two partial regions alternate: this layer's barrier
        # orders the previous layer's reduce (reads) before the next
        # layer's partial writes into the same region.
        parts = b.parts[b.row_layers % 2]
        b.row_layers += 1
        c = b.bounds
        for w in range(P):
            b.emit(w, LINEAR, x=x_off, x_ld=x_ld, x_col=c[w], k=c[w + 1] - c[w], w=w_off, w_ld=w_ld,
                   w_col=c[w], b=-1, out=parts, out_ld=P * m, out_col=w * m, m=m, act=0, lo=0, hi=FRAC, sc=-1,
                   **fields)
        b.barrier()
        d = split(m, P)
        for w in range(P):
            b.emit(w, REDUCE, parts=parts, P=P, m=m, c0=d[w], c1=d[w + 1], b=b_off, act=op.act, out=out.off,
                   out_ld=m)
        info["partition"] = "rows (input features) + reduce-scatter"
        info["slices"] = [f"in {c[w]}:{c[w + 1]} -> reduce out {d[w]}:{d[w + 1]}" for w in range(P)]
        info["read_per_worker"] = 4 * m * max(c[w + 1] - c[w] for w in range(P))
        info["moved_per_row"] = 4 * P * m * 2  # partials written, then read
        b.set_cur(out, "cols", d)
    else:
        b.need_all()
        g = getattr(l, "col_grain", 0)  # whole attention heads per worker (compile/tokens.py)
        if g and m % g == 0 and (not pk or g % NR == 0):
            c = [m // g * p // P * g for p in range(P)] + [m]
        else:
            c = split_panels(m, P) if pk else split(m, P)
        for w in range(P):  # columns c0:c1: panels from c0 // NR on (c0 a multiple of NR), or rows of W
            b.emit(w, LINEAR, x=x_off, x_ld=x_ld, x_col=0, k=k, w=w_off + (c[w] // NR * w_ld if pk else c[w] * k),
                   w_ld=w_ld, w_col=0, b=b_off + c[w] if b_off >= 0 else -1, out=out.off, out_ld=m, out_col=c[w],
                   m=c[w + 1] - c[w], act=op.act, lo=0, hi=FRAC, sc=s_off + c[w] // NR * s_ld if s_off >= 0 else -1,
                   **fields)
        info["partition"] = "columns (output features)"
        info["slices"] = [f"out {c[w]}:{c[w + 1]}" for w in range(P)]
        info["read_per_worker"] = info["weight_bytes"] * max(c[w + 1] - c[w] for w in range(P)) // max(m, 1)
        b.set_cur(out, "cols", c)


def linear_us(s, cnt, n, rates) -> float:
    r, k, m = rows(cnt, s[LINEAR.lo], s[LINEAR.hi]), s[LINEAR.k], s[LINEAR.m]
    wb = 4.0 * (s[LINEAR.w_ld] + s[LINEAR.s_ld]) * m / NR if s[LINEAR.packed] else 4.0 * k * m  # in its format
    return gemm_us(2.0 * r * k * m, wb, 4.0 * r * (k + m), r, rates) if r > 0 else 0.0


def reduce_us(s, cnt, n, rates) -> float:
    """Reads P partial blocks and writes one, for its columns of every row."""
    return 4.0 * n * (s[REDUCE.c1] - s[REDUCE.c0]) * (s[REDUCE.P] + 1) / (rates.read_gbs * 1e3)


def folded(op) -> dict:
    """weight and bias of a Linear or Conv2d, with a BatchNorm folded into them (op.fold) applied in float64."""
    l = op.layer
    w = l.params["weight"].astype(np.float64)
    b = l.params["bias"].astype(np.float64) if "bias" in l.params else None
    if op.fold is not None:
        s, sh = op.fold
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b = (b if b is not None else 0.0) * s + sh
    out = {"weight": w.astype(np.float32)}
    if b is not None:
        out["bias"] = np.asarray(b, np.float32)
    return out


def tensors(op, before) -> dict:
    """The folded weight, packed into panels once in its format (the only copy the workers read; compressed:
    with its scales beside), and the bias."""
    t = folded(op)
    if packed(op.layer):
        w = t.pop("weight")
        got, run = compress.pack_weight(w, op.fmt, compress.own_scales(op, "weight"))
        t.update(got)
        compress.note(op, [(w, run)])
    return t


LAYERS = (L.Linear,)
emit = linear
COSTS = {LINEAR.code: linear_us, REDUCE.code: reduce_us}
