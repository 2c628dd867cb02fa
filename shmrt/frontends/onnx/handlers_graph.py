"""Handlers of ops that join activations: Add, Sub, Mul, Div of two activations (a residual, a
squeeze-and-excitation gate), and Concat along a non-batch axis.  Each operand is a view of some
earlier activation (the importer's chain switches to it); where the view's per-sample shape is not
its activation's own (global pooling's [N, C, 1, 1] over shmrt's [N, C]), a free Reshape node gives
it that shape first."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.layout import B, View, fmt
from shmrt.ir import layers as L


class GraphOps:
    """Add, Sub, Mul, Div of two activations; Concat; Resize (an upsampling in a U-Net's expanding path)."""

    def operand(self, node, idx, v, k):
        """(value name, per-sample shape) of the activation view v, input k of node."""
        v = self.ordered(node, idx, v)
        if not self.identical(v) or v.shape[0] != B or any(n % B == 0 for n in v.shape[1:]):
            self.fail(node, idx, f"input {k} of ONNX shape {fmt(v.shape)} is not in batch-first order (shmrt layout "
                                 f"{fmt(self.full())}); expected the batch axis first and the activation's own order")
        shape = tuple(int(n) for n in v.shape[1:])
        if len(shape) > 3:
            self.fail(node, idx, f"input {k} of ONNX shape {fmt(v.shape)}: more than 3 axes after the batch")
        if shape != tuple(self.ir):
            self.chain.emit(L.Reshape(*shape) if shape else L.Reshape(1), shape or (1,))
        return self.chain.current, shape or (1,)

    def binary_views(self, node, idx, ins, op):
        (na, sa), (nb, sb) = (self.operand(node, idx, v, k) for k, v in enumerate(ins[:2]))
        if len(sa) != len(sb):
            self.fail(node, idx, f"operands of ONNX shapes {fmt(ins[0].shape)} and {fmt(ins[1].shape)}: shmrt "
                                 f"broadcasts activations of one rank")
        layer = getattr(L, op)()
        out = layer.output_shape(sa, sb)
        self.chain.emit(layer, out, inputs=[na, nb])
        return View((B,) + out, tuple(range(len(out) + 1)), self.chain.version)

    def op_Concat(self, node, idx, ins, a):
        if any(not isinstance(v, View) for v in ins):
            k = [k for k, v in enumerate(ins) if not isinstance(v, View)]
            self.fail(node, idx, f"input(s) {k} are constants and the others depend on the model input; shmrt "
                                 f"concatenates activations only")
        r = len(ins[0].shape)
        ax = self.axis(node, idx, a.get("axis", 0), r)
        if ax == 0:
            self.fail(node, idx, "concatenation along axis 0 (the batch) is not supported; expected axis >= 1")
        if len(ins) == 1:  # a concatenation of one tensor is that tensor
            return ins[0]
        vals = [self.operand(node, idx, v, k) for k, v in enumerate(ins)]
        layer = L.Concat(dim=ax)
        out = layer.output_shape(*(s for _, s in vals))
        self.chain.emit(layer, out, inputs=[n for n, _ in vals])
        return View((B,) + out, tuple(range(len(out) + 1)), self.chain.version)

    def op_Resize(self, node, idx, ins, a):
        """Resize of [N, C, H, W] over H and W by constant scales or sizes: nearest (any coordinate
        transform, any nearest_mode) or linear (no antialias filter)."""
        self.image(node, idx, ins[0])  # checks the input is an [N, C, H, W] image (and makes it current)
        mode = a.get("mode", "nearest")
        ctm = a.get("coordinate_transformation_mode", "half_pixel")
        nearest = a.get("nearest_mode", "round_prefer_floor") if mode == "nearest" else None
        if mode not in ("nearest", "linear") or ctm not in L.Upsample.CTMS:
            self.fail(node, idx, f"Resize mode={mode!r} with coordinate_transformation_mode={ctm!r} is not supported; "
                                 f"expected nearest or linear with one of {L.Upsample.CTMS}")
        if a.get("antialias", 0):
            self.fail(node, idx, "attribute antialias=1 is not supported (a downsampling filter); expected 0")
        if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            self.fail(node, idx, f"attribute keep_aspect_ratio_policy={a['keep_aspect_ratio_policy']!r} is not "
                                 f"supported; expected 'stretch'")
        sizes = ins[3] if len(ins) > 3 and ins[3] is not None and np.size(ins[3]) else None
        scales = ins[2] if len(ins) > 2 and ins[2] is not None and np.size(ins[2]) else None
        C, H, W = self.ir
        axes = [int(t) % 4 for t in a.get("axes", [0, 1, 2, 3])]
        if sorted(axes) not in ([0, 1, 2, 3], [2, 3]):
            self.fail(node, idx, f"attribute axes={a.get('axes')} is not supported; expected the spatial axes [2, 3]")
        if sizes is not None:
            got = dict(zip(axes, (int(t) for t in np.asarray(self.const(node, idx, 3, "sizes")).reshape(-1))))
            if len(got) != len(axes) or got.get(1, C) != C or got.get(0, B) not in (B, self.static_batch):
                self.fail(node, idx, f"sizes {sorted(got.items())} must keep the batch and the {C} channels")
            kw = {"size": (got[2], got[3])}
        elif scales is not None:
            got = dict(zip(axes, np.asarray(self.const(node, idx, 2, "scales"), np.float64).reshape(-1)))
            if len(got) != len(axes) or got.get(0, 1) != 1 or got.get(1, 1) != 1 or min(got[2], got[3]) <= 0:
                self.fail(node, idx, f"scales {sorted(got.items())} are not supported; expected [1, 1, s, t] with "
                                     f"s, t > 0")
            kw = {"scale_factor": (float(got[2]), float(got[3]))}
        else:
            self.fail(node, idx, "Resize needs constant scales or sizes")
        layer = L.Upsample(mode="nearest" if mode == "nearest" else "bilinear", coordinate_transformation_mode=ctm,
                           nearest_mode=nearest, **kw)
        out = layer.output_shape((C, H, W))
        self.chain.emit(layer, out)
        return View((B,) + out, (0, 1, 2, 3), self.chain.version)
