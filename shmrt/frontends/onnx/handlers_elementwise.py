"""Handlers of elementwise ops on the stream: activations, and arithmetic with a constant (folded
into the previous layer's bias, or a per-feature scale and shift)."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.folding import compact
from shmrt.frontends.onnx.layout import B, View, fmt
from shmrt.ir import layers as L


class ElementwiseOps:
    """Relu, Sigmoid, Tanh, SiLU, HardSwish, HardSigmoid, LeakyRelu, Clip, Max / Min with a constant, CastLike, Gelu; Add, Sub, Mul, Div with a
    constant; BatchNormalization."""

    def _act(self, node, idx, ins, layer):
        v = self.stream(node, idx, ins[0])
        self.chain.emit(layer, self.ir)
        return View(v.shape, v.src, self.chain.version)

    def op_Relu(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.ReLU())

    def op_Sigmoid(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.Sigmoid())

    def op_Tanh(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.Tanh())

    def op_SiLU(self, node, idx, ins, a):  # rewrite_silu's node for Sigmoid(x) * x
        return self._act(node, idx, ins, L.SiLU())

    def op_HardSwish(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.Hardswish())

    def op_HardSigmoid(self, node, idx, ins, a):
        """max(0, min(1, alpha * x + beta)): PyTorch's Hardsigmoid where alpha is 1/6 and beta 0.5 (what its
        exporter writes), else shmrt.HardSigmoid(alpha, beta)."""
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        if abs(alpha - 1 / 6) <= 1e-6 and beta == 0.5:
            return self._act(node, idx, ins, L.Hardsigmoid())
        if not (np.isfinite(alpha) and np.isfinite(beta)):
            self.fail(node, idx, f"attributes alpha={alpha!r}, beta={beta!r}: expected finite numbers")
        return self._act(node, idx, ins, L.HardSigmoid(alpha, beta))

    def op_Clip(self, node, idx, ins, a):
        """min(max(x, min), max): ReLU6 for [0, 6] (how PyTorch exports it), ReLU for [0, inf), else
        shmrt.Hardtanh(min, max) (a missing bound: -inf / inf); bounds as constant inputs (opset 11 on)
        or attributes (before)."""
        def bound(k, attr):
            v = ins[k] if len(ins) > k else None
            if isinstance(v, View):
                self.fail(node, idx, f"input {k} ({attr}) depends on the model input; expected a constant")
            if v is None:
                return a.get(attr)
            v = np.asarray(v, dtype=np.float64)
            if v.size != 1:
                self.fail(node, idx, f"input {k} ({attr}) has shape {v.shape}; expected a scalar")
            return float(v.reshape(-1)[0])
        lo, hi = bound(1, "min"), bound(2, "max")
        if lo == 0.0 and hi == 6.0:
            return self._act(node, idx, ins, L.ReLU6())
        if lo == 0.0 and (hi is None or hi == np.inf):
            return self._act(node, idx, ins, L.ReLU())
        lo = -np.inf if lo is None else lo
        hi = np.inf if hi is None else hi
        if np.isnan(lo) or np.isnan(hi):
            self.fail(node, idx, f"Clip to [{lo}, {hi}]: expected bounds that are numbers, not NaN")
        return self._act(node, idx, ins, L.Hardtanh(lo, hi))

    def _bound(self, node, idx, ins, lower):
        """Max / Min of the stream and one constant scalar: Hardtanh with that bound on one side
        (ReLU for Max with 0)."""
        if len(ins) != 2 or sum(isinstance(v, View) for v in ins) != 1:
            self.fail(node, idx, f"{node.op_type} of {len(ins)} inputs, {sum(isinstance(v, View) for v in ins)} from the "
                                 f"model input: expected the model input and one constant")
        k = 0 if isinstance(ins[0], View) else 1
        c = np.asarray(ins[1 - k], dtype=np.float64)
        if c.size != 1 or np.isnan(c).any():
            self.fail(node, idx, f"input {1 - k} has shape {c.shape}: expected one number (a scalar bound)")
        c = float(c.reshape(-1)[0])
        v = [ins[k]]
        if lower and c == 0.0:
            return self._act(node, idx, v, L.ReLU())
        return self._act(node, idx, v, L.Hardtanh(c, np.inf) if lower else L.Hardtanh(-np.inf, c))

    def op_Max(self, node, idx, ins, a):
        return self._bound(node, idx, ins, True)

    def op_Min(self, node, idx, ins, a):
        return self._bound(node, idx, ins, False)

    def op_CastLike(self, node, idx, ins, a):
        """CastLike(value, like): a constant given the stream's type (float32; what ONNX function bodies
        write for their constants), or the stream cast like a float value (unchanged)."""
        if not isinstance(ins[0], View):
            return np.asarray(ins[0], dtype=np.float32)
        like = ins[1] if len(ins) > 1 else None
        if not isinstance(like, View) and np.asarray(like).dtype.kind != "f":
            self.fail(node, idx, f"casts the model input like a value of dtype {np.asarray(like).dtype}; expected a "
                                 f"float type (shmrt computes in float32)")
        return ins[0]

    def op_LeakyRelu(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.LeakyReLU(negative_slope=float(a.get("alpha", 0.01))))

    def op_Gelu(self, node, idx, ins, a):
        appr = a.get("approximate", "none")
        if appr not in ("none", "tanh"):
            self.fail(node, idx, f"attribute approximate={appr!r} is not supported ('none' or 'tanh')")
        return self._act(node, idx, ins, L.GELU(approximate=appr))

    def _affine(self, node, idx, ins, op):
        vk = 0 if isinstance(ins[0], View) else 1
        if isinstance(ins[1 - vk], View):
            return self.binary_views(node, idx, ins, op)
        v = self.ordered(node, idx, ins[vk])
        c = np.asarray(ins[1 - vk], dtype=np.float64)
        r = len(v.shape)
        if c.ndim > r:
            self.fail(node, idx, f"constant of shape {c.shape} broadcasts beyond the activation {fmt(v.shape)}")
        cc = compact(c).reshape((1,) * (r - c.ndim) + compact(c).shape)
        # which ONNX axis carries the per-feature (per-channel) values?
        if not self.identical(v):
            self.fail(node, idx, f"elementwise {op} with a constant needs a batch-first activation, got ONNX shape "
                                 f"{fmt(v.shape)}")
        feat_ax = [k for k, s in enumerate(v.src) if s == 1]
        varying = [k for k in range(r) if cc.shape[k] != 1]
        if any(k not in feat_ax for k in varying) or len(self.ir) not in (1, 3) or (op == "Div" and vk == 1):
            return self._constant_operand(node, idx, v, c, op, vk)
        n = self.ir[0]
        vec = cc.reshape(-1) if varying else np.full(n, cc.reshape(-1)[0])
        if vec.shape != (n,):
            self.fail(node, idx, f"constant of shape {c.shape} does not match {n} features/channels")
        if op in ("Add", "Sub"):
            scale, shift = np.ones(n), (vec if op == "Add" else -vec)
            if op == "Sub" and vk == 1:
                scale, shift = -np.ones(n), vec
            last = self.chain.producer()  # folded into it only where nothing else reads its output
            if isinstance(last, (L.Linear, L.Conv2d)) and np.all(scale == 1) and self.uses[node.input[vk]] == 1:
                b = last.params.get("bias")
                last.params["bias"] = ((b.astype(np.float64) if b is not None else 0) + shift).astype(np.float32)
                self.chain.changed()
                return View(v.shape, v.src, self.chain.version)
        else:
            scale, shift = (vec if op == "Mul" else 1.0 / vec), np.zeros(n)
        cls = L.BatchNorm1d if len(self.ir) == 1 else L.BatchNorm2d
        self.chain.emit(cls(n, eps=0.0, weight=scale, bias=shift), self.ir)
        return View(v.shape, v.src, self.chain.version)

    def _constant_operand(self, node, idx, v, c, op, vk):
        """activation <op> constant (constant <op> activation where vk is 1) with the constant broadcast
        over each sample: a layer that holds it (one sample's worth, in shmrt's layout)."""
        r = len(v.shape)
        cc = c.reshape((1,) * (r - c.ndim) + c.shape)
        if cc.shape[0] != 1 or any(n % B == 0 for n in v.shape[1:]):
            self.fail(node, idx, f"{op} with a constant of shape {c.shape} on ONNX shape {fmt(v.shape)}: the constant "
                                 f"varies along the batch axis; expected one value per sample position")
        try:
            full = np.broadcast_to(cc, (1,) + tuple(v.shape[1:]))
        except ValueError:
            self.fail(node, idx, f"constant of shape {c.shape} does not broadcast to ONNX shape {fmt(v.shape)}")
        self.chain.emit(getattr(L, op)(constant=full.reshape(self.ir), reverse=vk == 1), self.ir)
        return View(v.shape, v.src, self.chain.version)

    def op_Add(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Add")

    def op_Sub(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Sub")

    def op_Mul(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Mul")

    def op_Div(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Div")

    def op_BatchNormalization(self, node, idx, ins, a):
        if a.get("training_mode", 0):
            self.fail(node, idx, "attribute training_mode=1 is not supported (inference only)")
        if any(o for o in node.output[1:]):
            self.fail(node, idx, "the running mean/var outputs are not supported (inference only)")
        v = self.ordered(node, idx, ins[0])
        if not self.identical(v) or len(self.ir) not in (1, 3) or len(v.shape) not in (2, 4):
            self.fail(node, idx, f"needs [N, C] or [N, C, H, W], got ONNX shape {fmt(v.shape)}")
        n = self.ir[0]
        p = [self.vec(node, idx, k, n, w) for k, w in ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var"))]
        cls = L.BatchNorm1d if len(self.ir) == 1 else L.BatchNorm2d
        self.chain.emit(cls(n, eps=a.get("epsilon", 1e-5), weight=p[0], bias=p[1], running_mean=p[2], running_var=p[3]),
                  self.ir)
        return View(v.shape, v.src, self.chain.version)
