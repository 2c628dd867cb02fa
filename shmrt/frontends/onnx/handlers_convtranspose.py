"""The handler of ConvTranspose (2-D): strides, pads (asymmetric too: shmrt's layer crops pads[start]
and takes the difference as output_padding), dilations, group, output_padding, output_shape, auto_pad."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.layout import B, View
from shmrt.ir import layers as L


class ConvTransposeOps:
    """ConvTranspose."""

    def op_ConvTranspose(self, node, idx, ins, a):
        W = np.asarray(self.const(node, idx, 1, "W"), dtype=np.float32)
        if W.ndim != 4:
            self.fail(node, idx, f"only 2-D ConvTranspose is supported (W of rank 4, [C, M/group, kH, kW]), got W of "
                                 f"shape {W.shape} ({W.ndim - 2}-D: 1-D and 3-D transposed convolutions are not "
                                 f"supported)")
        self.image(node, idx, ins[0])
        C, Og, kh, kw = W.shape
        k = (kh, kw)
        if list(a.get("kernel_shape", k)) != list(k):
            self.fail(node, idx, f"attribute kernel_shape={a['kernel_shape']} does not match W {W.shape}")
        g = a.get("group", 1)
        if C != self.ir[0] or g < 1 or C % g:
            self.fail(node, idx, f"W {W.shape} with group={g} does not match {self.ir[0]} input channels")
        s, d = tuple(a.get("strides", [1, 1])), tuple(a.get("dilations", [1, 1]))
        op = tuple(a.get("output_padding", [0, 0]))
        if not len(s) == len(d) == len(op) == 2 or min(*s, *d) < 1:
            self.fail(node, idx, f"strides {list(s)}, dilations {list(d)}, output_padding {list(op)}: expected two "
                                 f"ints each (2-D), strides and dilations >= 1")
        hw = self.ir[1:]
        full = [s[i] * (hw[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 for i in range(2)]  # before any padding
        auto = a.get("auto_pad", "NOTSET")
        if auto not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            self.fail(node, idx, f"attribute auto_pad={auto!r} is not supported")
        out = a.get("output_shape")
        if out is None and auto in ("SAME_UPPER", "SAME_LOWER"):
            out = [hw[0] * s[0], hw[1] * s[1]]
        if out is not None:
            out = list(out)[-2:]
            if len(out) != 2 or min(out) < 1:
                self.fail(node, idx, f"attribute output_shape={a.get('output_shape')}: expected the output's H and W")
            # ONNX's rule (and its reference): the total padding split, the odd one at the end unless SAME_UPPER
            tot = [full[i] - out[i] for i in range(2)]
            start = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in tot]
            end = [tot[i] - start[i] for i in range(2)]
        elif auto == "VALID":
            start = end = [0, 0]
        else:
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                self.fail(node, idx, f"attribute pads={p}: expected 4 values [top, left, bottom, right] (2-D)")
            start, end = p[:2], p[2:]
        if min(start) < 0:
            self.fail(node, idx, f"padding at the start {start} (from pads, output_shape or auto_pad) is negative; "
                                 f"expected >= 0")
        crop = tuple(op[i] + start[i] - end[i] for i in range(2))  # output_padding of a symmetric crop of start
        bias = self.const(node, idx, 2, "B") if len(ins) > 2 and ins[2] is not None else False
        try:
            layer = L.ConvTranspose2d(C, Og * g, k, stride=s, padding=tuple(start), output_padding=crop, groups=g,
                                      dilation=d, bias=bias, weight=W)
            ir = layer.output_shape(self.ir)
        except ValueError as e:
            self.fail(node, idx, str(e))
        self.chain.emit(layer, ir)
        return View((B,) + ir, (0, 1, 2, 3), self.chain.version)
