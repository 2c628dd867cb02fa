"""Transposed convolutions (ConvTranspose2d), split as Conv2d's family splits: batch rows (whole
images), or by model its output channels -- or the output rows of each image when there are fewer
than 2 channels per worker.  Step: CONVT (per image, one GEMM per output phase and group,
kernels/convtranspose.py), on weights packed once into the phases' matrices."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import CONV_GEOM, CONVT
from shmrt.compile.ops.conv import image_slices
from shmrt.compile.roofline import ROWS_HALF, rows
from shmrt.ir import layers as L
from shmrt.kernels.convtranspose import pack, scratch_floats


def geometry(l, in_shape):
    """The CONVT geometry row of layer l over per-sample input shape in_shape."""
    C, H, W = in_shape
    _, OH, OW = l.output_shape(in_shape)
    return (C, H, W, *l.kernel_size, *l.stride, *l.padding, *l.dilation, l.groups, OH, OW)


def conv_transpose(b, op, info):
    """Batch rows (data); output channels, or output rows of each image when there are fewer than 2
    channels per worker (model)."""
    l, i, sc = op.layer, op.index, b.scratch
    Cout, OH, OW = l.output_shape(b.cur_shape)
    geom = geometry(l, b.cur_shape)
    w_off, b_off = b.w(f"{i}.phases"), b.w(f"{i}.bias")
    C, H, W = b.cur_shape
    info["flops"] = 2 * C * (Cout // l.groups) * l.kernel_size[0] * l.kernel_size[1] * H * W
    info["weight_bytes"] = 4 * (l.params["weight"].size + (Cout if b_off >= 0 else 0))
    slices, state, bounds = image_slices(b, info, Cout, OH, OH * OW)
    out = b.outs[i]  # after the barrier, if any: a slot freed before it may be reused
    for w, ((c0, c1), (h0, h1), where) in enumerate(slices):
        b.emit(w, CONVT, x=b.cur_off, x_ld=b.cur_ld, out=out.off, out_ld=out.ld or out.width, w=w_off, b=b_off,
               act=op.act, co0=c0, co1=c1, oh0=h0, oh1=h1, scratch=sc["conv"] + b.wids[w] * sc["conv_per"],
               geom=geom, cout=Cout, scratch_floats=sc["conv_per"], **where)
    info["read_per_worker"] = info["weight_bytes"]
    b.set_cur(out, state, bounds)


def convt_us(s, cnt, n, rates) -> float:
    """The GEMMs' flops at the rate their channel count allows; the image padded (read and written) and
    this worker's part of the output written."""
    r = rows(cnt, s[CONVT.lo], s[CONVT.hi])
    g = s[CONVT.geom:CONVT.geom + CONV_GEOM]
    C, H, W, kh, kw, groups, OH, OW = g[0], g[1], g[2], g[3], g[4], g[11], g[12], g[13]
    co, oh = s[CONVT.co1] - s[CONVT.co0], s[CONVT.oh1] - s[CONVT.oh0]
    per_image = 2.0 * (C // groups) * co * kh * kw * H * W * oh / max(OH, 1)
    moved = 8.0 * C * H * W + 4.0 * co * oh * OW
    return r * (per_image / (rates.gflops * 1e3 * (co / (co + ROWS_HALF))) + moved / (rates.read_gbs * 1e3))


def tensors(op, before) -> dict:
    """The weight (a BatchNorm after it folded in, per output channel, in float64) packed into the
    phases' matrices, and the bias."""
    l = op.layer
    G, (C, Og) = l.groups, l.params["weight"].shape[:2]
    w = l.params["weight"].astype(np.float64)
    bias = l.params["bias"].astype(np.float64) if "bias" in l.params else None
    if op.fold is not None:
        s, sh = op.fold
        w = (w.reshape(G, C // G, Og, *l.kernel_size) * s.reshape(G, 1, Og, 1, 1)).reshape(w.shape)
        bias = (bias if bias is not None else 0.0) * s + sh
    out = {"phases": pack(w.astype(np.float32), geometry(l, before))}
    if bias is not None:
        out["bias"] = np.asarray(bias, np.float32)
    return out


def scratch(op, before) -> int:
    """Floats of scratch one worker needs (the padded image and a phase's GEMM output)."""
    return scratch_floats(geometry(op.layer, before), op.layer.out_channels)


LAYERS = (L.ConvTranspose2d,)
emit = conv_transpose
COSTS = {CONVT.code: convt_us}
