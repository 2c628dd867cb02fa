"""Handlers of ops that re-label the stream (Transpose, Reshape, Squeeze, ...) or select from it
(Gather, Slice): they make a new view and emit a layer only where the data must move."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.folding import reshape_target, slices
from shmrt.frontends.onnx.layout import B, View, fmt
from shmrt.ir import layers as L


class ShapeOps:
    """Identity, Dropout, Cast, Shape, Size, Transpose, Squeeze, Unsqueeze, Reshape, Flatten, Gather, Slice,
    Split."""

    def op_Identity(self, node, idx, ins, a):
        return ins[0]

    def op_Dropout(self, node, idx, ins, a):
        if len(ins) > 2 and ins[2] is not None:
            tm = self.const(node, idx, 2, "training_mode")
            if np.any(tm):
                self.fail(node, idx, "training_mode=True is not supported (inference only)")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, idx, "the mask output is not supported")
        return ins[0]

    def op_Cast(self, node, idx, ins, a):
        if ins[0].version in self.lens_inputs and a.get("to") in (1, 6, 7, 11):  # sequence lengths: whole numbers
            return ins[0]
        if a.get("to") not in (1, 11):
            self.fail(node, idx, f"Cast of the activation to type {a.get('to')} is not supported "
                                 f"(float32/float64 only: shmrt computes in float32)")
        return ins[0]

    def op_Shape(self, node, idx, ins, a):
        s = np.array(ins[0].shape, dtype=np.int64)
        return s[a.get("start", 0):a.get("end", None)]

    def op_Size(self, node, idx, ins, a):
        self.fail(node, idx, "Size of the input depends on the batch size (not supported)")

    def op_Transpose(self, node, idx, ins, a):
        v = ins[0]
        perm = a.get("perm", list(range(len(v.shape)))[::-1])
        if sorted(perm) != list(range(len(v.shape))):
            self.fail(node, idx, f"attribute perm={perm} is not a permutation of {len(v.shape)} axes")
        return View([v.shape[p] for p in perm], [v.src[p] for p in perm], v.version, v.last_of)

    def op_Squeeze(self, node, idx, ins, a):
        v = ins[0]
        r = len(v.shape)
        if len(ins) > 1 and ins[1] is not None:
            axes = {self.axis(node, idx, t, r, "axes value")
                    for t in np.asarray(self.const(node, idx, 1, "axes")).reshape(-1)}
        else:
            axes = {k for k, n in enumerate(v.shape) if n == 1}
        if any(v.shape[k] != 1 for k in axes):
            self.fail(node, idx, f"squeezes an axis that is not of size 1 (shape {fmt(v.shape)}, axes {sorted(axes)})")
        keep = [k for k in range(r) if k not in axes]
        return View([v.shape[k] for k in keep], [v.src[k] for k in keep], v.version, v.last_of)

    def op_Unsqueeze(self, node, idx, ins, a):
        v = ins[0]
        axes = [int(t) for t in np.asarray(self.const(node, idx, 1, "axes")).reshape(-1)]
        r = len(v.shape) + len(axes)
        axes = sorted(t % r for t in axes)
        shape, src = list(v.shape), list(v.src)
        for t in axes:
            shape.insert(t, 1)
            src.insert(t, None)
        return View(shape, src, v.version, v.last_of)

    def op_Reshape(self, node, idx, ins, a):
        v = ins[0]
        target = [int(t) for t in np.asarray(self.const(node, idx, 1, "shape")).reshape(-1)]
        sb = self.static_batch
        if sb and target and target[0] == sb and v.shape[0] == B:  # exported with a fixed batch size
            target[0] = B
        try:
            shape = reshape_target(v.shape, target, a.get("allowzero", 0))
        except ValueError as e:
            self.fail(node, idx, f"shape {target} does not fit input {fmt(v.shape)}: {e} (a reshape that fixes "
                                 f"the batch size is not supported)")
        return self.relabel(node, idx, v, shape)

    def op_Flatten(self, node, idx, ins, a):
        v = ins[0]
        ax = a.get("axis", 1)
        ax = ax + len(v.shape) if ax < 0 else ax
        shape = (int(np.prod(v.shape[:ax])), int(np.prod(v.shape[ax:])))
        return self.relabel(node, idx, v, shape)

    def relabel(self, node, idx, v, shape):
        """A reshape of the stream: pure squeeze/unsqueeze keeps the axis map; else it must keep memory order."""
        shape = tuple(shape)
        if sum(1 for n in shape if n % B == 0 and n) != 1 or B not in shape:
            self.fail(node, idx, f"reshape to {fmt(shape)} merges or drops the batch axis (only reshapes that keep "
                                 f"the batch axis are supported)")
        old = [(n, s) for n, s in zip(v.shape, v.src) if n != 1]
        new = [n for n in shape if n != 1]
        if [n for n, _ in old] == new:
            it = iter(s for _, s in old)
            return View(shape, [next(it) if n != 1 else None for n in shape], v.version, v.last_of)
        v = self.ordered(node, idx, v)
        if not self.identical(v) or shape[0] != B:
            self.fail(node, idx, f"reshape of ONNX shape {fmt(v.shape)} to {fmt(shape)} changes the memory order "
                                 f"of the batch-first activation (shmrt layout {fmt(self.full())})")
        full = self.full()
        # the new shape's non-unit dims must re-use shmrt's axes, or be the flattening [N, F]
        if [n for n in full if n != 1] == new:
            it = iter(k for k, n in enumerate(full) if n != 1)
            return View(shape, [next(it) if n != 1 else None for n in shape], v.version)
        if len(new) == 2:
            self.chain.emit(L.Flatten(), (int(np.prod(self.ir)),))
            return View(shape, [0 if n == B else (1 if n != 1 else None) for n in shape], self.chain.version)
        if len(shape) > 4:
            self.fail(node, idx, f"reshape to {fmt(shape)}: shmrt activations have at most 3 axes after the batch")
        per = tuple(shape[1:]) or (1,)  # [N] is kept as [N, 1]
        self.chain.emit(L.Reshape(*per), per)  # the same memory under a new shape: free
        return View(shape, tuple(range(len(shape))), self.chain.version)

    def op_Gather(self, node, idx, ins, a):
        v = ins[0]
        if isinstance(ins[1], View):
            self.fail(node, idx, "indices that depend on the model input are not supported")
        ax = self.axis(node, idx, a.get("axis", 0), len(v.shape))
        ind = np.asarray(ins[1]).astype(np.int64)
        n = v.shape[ax]
        if np.any((ind < -n) | (ind >= n)):
            self.fail(node, idx, f"index {ind.tolist()} is out of range for axis {ax} of size {n}")
        ind = np.where(ind < 0, ind + n, ind)
        return self.index(node, idx, v, ax, ind.reshape(-1), ind.ndim == 0)

    def op_Slice(self, node, idx, ins, a):
        v = ins[0]
        for k in range(1, len(ins)):
            if isinstance(ins[k], View):
                self.fail(node, idx, "starts/ends/axes/steps that depend on the model input are not supported")
        try:
            sl = slices(v.shape, ins)
        except ValueError as e:  # _slices' own check
            self.fail(node, idx, str(e))
        out = v
        for ax, s in enumerate(sl):
            r = np.arange(v.shape[ax])[s] if v.shape[ax] != B else None
            if r is None:
                if s != slice(None) and range(B)[s] != range(B):
                    self.fail(node, idx, "slicing the batch axis is not supported")
                continue
            if r.size == v.shape[ax] and np.all(r == np.arange(v.shape[ax])):
                continue
            out = self.index(node, idx, out, ax, r, False)
        return out

    def index(self, node, idx, v, ax, ind, drop):
        """Select positions ``ind`` of axis ``ax``; ``drop`` removes the axis (scalar Gather)."""
        s = v.src[ax]
        if s == 0:
            self.fail(node, idx, "indexing the batch axis is not supported")
        shape, src = list(v.shape), list(v.src)
        if s is None:  # a size-1 ONNX-only axis: index 0
            if drop:
                del shape[ax], src[ax]
            return View(shape, src, v.version, v.last_of)
        v = self.stream(node, idx, v)
        if self.chain.last_recurrent() is not None and len(self.ir) == 2 and s == 1:
            if ind.size != 1 or int(ind[0]) != self.ir[0] - 1:
                self.fail(node, idx, f"selects time steps {ind.tolist()} of {self.ir[0]}; only the last step "
                                     f"(out[:, -1]) is supported")
            self.take_last_step(node, idx)
            newsrc = [None if k == ax else (t if t in (None, 0) else t - 1 if t > 1 else t) for k, t in
                      enumerate(src)]
            shape[ax] = 1
            if drop:
                del shape[ax], newsrc[ax]
            return View(shape, newsrc, self.chain.version)
        if len(self.ir) == 1 and s == 1 and self.identical(v):
            self.chain.emit(L.Select([int(t) for t in ind]), (int(ind.size),))
            shape[ax] = int(ind.size)
            if drop:
                if ind.size != 1:
                    self.fail(node, idx, "internal: scalar gather of several indices")
                del shape[ax], src[ax]
                # a scalar Gather on the features leaves [N]; shmrt keeps [N, 1]
                return View(shape, src, self.chain.version)
            return View(shape, src, self.chain.version)
        v = self.ordered(node, idx, v)
        s, shape, src = v.src[ax], list(v.shape), list(v.src)
        step = np.diff(ind)
        if self.identical(v) and s and ind.size and (ind.size == 1 or (step[0] >= 1 and np.all(step == step[0]))):
            k = int(step[0]) if ind.size > 1 else 1  # a range of the axis: a strided copy
            ir = list(self.ir)
            ir[s - 1] = int(ind.size)
            self.chain.emit(L.Slice(s, int(ind[0]), int(ind[-1]) + 1, k), tuple(ir))
            shape[ax] = int(ind.size)
            if drop:
                del shape[ax], src[ax]
            return View(shape, src, self.chain.version)
        self.fail(node, idx, f"indexing axis {ax} of ONNX shape {fmt(v.shape)} with {ind.tolist()} is not supported "
                             f"(shmrt layout {fmt(self.full())}); supported: the last step of a recurrent output, "
                             f"features of a [N, F] activation, or a range with a positive step")

    def op_Split(self, node, idx, ins, a):
        v = self.ordered(node, idx, ins[0])
        ax = self.axis(node, idx, a.get("axis", 0), len(v.shape))
        n, k = v.shape[ax], len(node.output)
        if v.src[ax] == 0 or n % B == 0:
            self.fail(node, idx, "splitting the batch axis is not supported; expected axis >= 1")
        if len(ins) > 1 and ins[1] is not None:
            sizes = [int(t) for t in np.asarray(self.const(node, idx, 1, "split")).reshape(-1)]
        elif "num_outputs" in a:  # opset 18: pieces of ceil(n / num_outputs), the last smaller
            per = -(-n // int(a["num_outputs"]))
            sizes = [min(per, n - p) for p in range(0, n, per)]
        else:
            sizes = [n // k] * k if n % k == 0 else []
        if len(sizes) != k or sum(sizes) != n or min(sizes) < 1:
            self.fail(node, idx, f"split sizes {sizes or 'equal'} for {k} outputs do not cut axis {ax} of size {n} "
                                 f"(ONNX shape {fmt(v.shape)}); expected {k} positive sizes summing to {n}")
        starts = np.cumsum([0] + sizes)
        return [self.index(node, idx, v, ax, np.arange(starts[j], starts[j + 1]), False) for j in range(k)]
