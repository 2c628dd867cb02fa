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
    """Add, Sub, Mul, Div of two activations; Concat."""

    def operand(self, node, idx, v, k):
        """(value name, per-sample shape) of the activation view v, input k of node."""
        v = self.stream(node, idx, v)
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
