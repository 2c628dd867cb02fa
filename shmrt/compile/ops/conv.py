"""Convolutions: batch rows (whole images), or by model its output channels
-- or the output rows of each image when there are fewer than 2 channels
per worker.  Step: CONV (im2col + GEMM per image, kernels/conv.py)."""
from __future__ import annotations

from shmrt.compile.isa import CONV, CONV_GEOM, FRAC
from shmrt.compile.layout import rows_of, split
from shmrt.compile.ops.dense import folded
from shmrt.compile.roofline import ROWS_HALF, rows
from shmrt.ir import layers as L


def geometry(l, in_shape, out_shape):
    """conv2d's geometry row (kernels/conv.py) for layer l."""
    (C, H, W), (_, OH, OW) = in_shape, out_shape
    return (C, H, W, *l.kernel_size, *l.stride, *l.pads[:2], *l.dilation, l.groups, OH, OW)  # bottom, right: by OH, OW


def image_slices(b, info, Cout, OH, per_channel, pairs=False, spatial="spatial"):
    """How a layer over whole images splits, as (slices, state, bounds): batch rows (data); by model
    its Cout output channels (per_channel output floats each), or the OH output rows of each image
    (in pairs: a fused 2x2 pool) when there are fewer than 2 channels per worker.  A slice is
    ((c0, c1), (h0, h1), rows)."""
    P = b.P
    if not b.split_model:
        b.need_rows()
        info["partition"] = "batch rows (whole images)"
        info["slices"] = [f"images {w}/{P}..{w + 1}/{P}" for w in range(P)]
        return [((0, Cout), (0, OH), rows_of(w, P)) for w in range(P)], ("rows" if P > 1 else "all"), None
    b.need_all()
    if Cout >= 2 * P:
        c = split(Cout, P, grain=1)
        info["partition"] = "output channels"
        info["slices"] = [f"channels {c[w]}:{c[w + 1]}" for w in range(P)]
        return [((c[w], c[w + 1]), (0, OH), dict(lo=0, hi=FRAC)) for w in range(P)], "cols", [v * per_channel for v in c]
    r = [2 * v for v in split(OH // 2, P, grain=1)] if pairs else split(OH, P, grain=1)
    info["partition"] = f"output rows of each image ({spatial})"
    info["slices"] = [f"rows {r[w]}:{r[w + 1]}" for w in range(P)]
    return [((0, Cout), (r[w], r[w + 1]), dict(lo=0, hi=FRAC)) for w in range(P)], "spatial", None


def conv(b, op, info):
    """Batch rows (data); output channels, or output rows of each image when
    there are fewer than 2 channels per worker (model)."""
    l, i, sc = op.layer, op.index, b.scratch
    C, H, W = b.cur_shape
    Cout, OH, OW = l.output_shape(b.cur_shape)  # the convolution's own output; out: pooled when op.pool
    geom = geometry(l, b.cur_shape, (Cout, OH, OW))
    PH, PW = (OH // 2, OW // 2) if op.pool else (OH, OW)
    w_off, b_off = b.w(f"{i}.weight"), b.w(f"{i}.bias")
    K = C // l.groups * l.kernel_size[0] * l.kernel_size[1]
    info["flops"] = 2 * Cout * OH * OW * K
    info["weight_bytes"] = 4 * (Cout * K + (Cout if b_off >= 0 else 0))
    halo = (l.kernel_size[0] - 1) * l.dilation[0]
    slices, state, bounds = image_slices(b, info, Cout, OH, PH * PW, pairs=op.pool,
                                         spatial=f"spatial; input halo {halo} rows")
    out = b.outs[i]  # after the barrier, if any: a slot freed before it may be reused
    for w, ((c0, c1), (h0, h1), where) in enumerate(slices):
        b.emit(w, CONV, x=b.cur_off, x_ld=b.cur_ld, out=out.off, out_ld=out.ld or out.width, w=w_off, b=b_off,
               act=op.act, co0=c0, co1=c1, oh0=h0, oh1=h1, scratch=sc["conv"] + b.wids[w] * sc["conv_per"],
               geom=geom, cout=Cout, scratch_floats=sc["conv_per"], pool=op.pool, **where)
    info["read_per_worker"] = info["weight_bytes"]
    b.set_cur(out, state, bounds)


def conv_us(s, cnt, n, rates) -> float:
    """im2col: about K floats written per output pixel, read back by the GEMM."""
    r = rows(cnt, s[CONV.lo], s[CONV.hi])
    g = s[CONV.geom:CONV.geom + CONV_GEOM]
    K = g[0] // g[11] * g[3] * g[4]
    co, oh = s[CONV.co1] - s[CONV.co0], s[CONV.oh1] - s[CONV.oh0]
    per_image = 2.0 * co * oh * g[13] * K
    return r * (per_image / (rates.gflops * 1e3 * (co / (co + ROWS_HALF))) + 8.0 * K * oh * g[13] / (rates.read_gbs * 1e3))


def tensors(op, before) -> dict:
    return folded(op)


LAYERS = (L.Conv2d,)
emit = conv
COSTS = {CONV.code: conv_us}
