"""Handlers of ops that reduce or normalise along axes after the batch: Softmax, ArgMax, TopK, LayerNormalization
(and the helpers that line those axes up with the trailing dims of shmrt's activation)."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.layout import B, View, fmt
from shmrt.ir import layers as L


class RowwiseOps:
    """Softmax, LogSoftmax, ArgMax, TopK, LayerNormalization (with its Mean and InvStdDev)."""

    def _softmax(self, node, idx, ins, a, cls):
        """Softmax over one axis (opset >= 13), any but the batch: the same axis of shmrt's layout."""
        v = self.ordered(node, idx, ins[0])
        ax = self.axis(node, idx, a.get("axis", -1), len(v.shape))
        s = v.src[ax]
        if s == 0 or not self.identical(v):
            self.fail(node, idx, f"attribute axis={a.get('axis', -1)} of ONNX shape {fmt(v.shape)} (shmrt layout "
                                 f"{fmt(self.full())}): expected an axis other than the batch, the input batch-first")
        if s is None:  # a size-1 axis of ONNX only: a softmax over one value
            self.fail(node, idx, f"attribute axis={a.get('axis', -1)} is a size-1 axis of ONNX shape {fmt(v.shape)}; "
                                 f"a softmax over one value is not supported")
        self.chain.emit(cls(dim=s), self.ir)
        return View(v.shape, v.src, self.chain.version)

    def op_Softmax(self, node, idx, ins, a):
        return self._softmax(node, idx, ins, a, L.Softmax)

    def op_LogSoftmax(self, node, idx, ins, a):
        return self._softmax(node, idx, ins, a, L.LogSoftmax)

    def move_last(self, node, idx, v, axes, what):
        """The axes (sorted, after the batch) of the batch-first view v moved last in shmrt's activation
        (a Permute, unless they are last already): (the view as it then lies, {each other axis of v: the
        activation's axis it is, or None}, the moved axes' new positions)."""
        r = len(v.shape)
        rest = [k for k in range(1, r) if k not in axes]
        if axes == list(range(r - len(axes), r)):
            return v, {kk: v.src[kk] for kk in rest}, axes
        if v.src != tuple(range(r)) or len(self.ir) != r - 1:
            self.fail(node, idx, f"{what} over axes {axes} of ONNX shape {fmt(v.shape)} (shmrt layout "
                                 f"{fmt(self.full())}): expected trailing axes, or the input as shmrt holds it")
        perm = [0] + rest + axes
        self.chain.emit(L.Permute(*perm), tuple(self.ir[k - 1] for k in perm[1:]))
        v = View(tuple(v.shape[k] for k in perm), tuple(range(r)), self.chain.version)
        return v, {kk: j for j, kk in enumerate(rest, 1)}, list(range(len(rest) + 1, r))

    def op_ArgMax(self, node, idx, ins, a):
        """Along any axis after the batch (moved last first where it is not): shmrt.ArgMax, one index
        per group of the other axes."""
        v = self.ordered(node, idx, ins[0])
        r = len(v.shape)
        ax = self.axis(node, idx, a.get("axis", 0), r)
        if ax == 0 or not self.identical(v):
            self.fail(node, idx, f"attribute axis={a.get('axis', 0)} of ONNX shape {fmt(v.shape)} (shmrt layout "
                                 f"{fmt(self.full())}) is not supported: expected an axis after the batch axis 0 of "
                                 f"a batch-first input")
        oshape = v.shape
        v, src_of, t = self.move_last(node, idx, v, [ax], "ArgMax")
        if self.trailing(node, idx, v, t[0], "ArgMax") != 1 or self.ir[-1] != v.shape[-1]:
            self.fail(node, idx, f"ArgMax along axis {ax} of ONNX shape {fmt(oshape)}: the axis is not one axis of "
                                 f"shmrt's activation {fmt(self.full())}")
        self.chain.emit(L.ArgMax(select_last_index=bool(a.get("select_last_index", 0))), tuple(self.ir[:-1]))
        kept = [kk for kk in range(1, r) if a.get("keepdims", 1) or kk != ax]
        return View((B,) + tuple(1 if kk == ax else oshape[kk] for kk in kept),
                    (0,) + tuple(src_of.get(kk) for kk in kept), self.chain.version)

    def op_TopK(self, node, idx, ins, a):
        k = self.const(node, idx, 1, "K").reshape(-1)
        if k.size != 1:
            self.fail(node, idx, f"K must hold one value, got {k.tolist()}")
        r = len(ins[0].shape)
        ax = a.get("axis", -1)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis")
        if a.get("largest", 1) != 1:
            self.fail(node, idx, "attribute largest=0 is not supported (shmrt TopK takes the largest)")
        if a.get("sorted", 1) != 1:
            self.fail(node, idx, "attribute sorted=0 is not supported (shmrt TopK sorts descending)")
        self.dense(node, idx, ins[0])
        self.chain.emit(L.TopK(int(k[0])), (int(k[0]),))
        vv = View((B, int(k[0])), (0, 1), self.chain.version)
        vi = View((B, int(k[0])), (0, 1), self.chain.version)
        self.topk_outputs = (node.output[0], node.output[1] if len(node.output) > 1 else "")
        return [vv, vi]

    def trailing(self, node, idx, v, ax, what):
        """The ONNX axes ax.. of the batch-first view v as the trailing k dims of shmrt's activation: k (the
        activation's dims after the last one an ONNX axis before ax is).  Refused where they do not line up."""
        if ax == 0 or not self.identical(v):
            self.fail(node, idx, f"{what} from axis {ax} of ONNX shape {fmt(v.shape)} (shmrt layout "
                                 f"{fmt(self.full())}) is not supported: expected axes after the batch axis 0 of a "
                                 f"batch-first input")
        lead = max([s for s in v.src[1:ax] if s is not None], default=0)
        k = len(self.ir) - lead
        if k < 1 or int(np.prod(self.ir[lead:])) != int(np.prod(v.shape[ax:])) \
                or any(s is not None and s <= lead for s in v.src[ax:]):
            self.fail(node, idx, f"{what} from axis {ax} of ONNX shape {fmt(v.shape)}: the axes do not line up with "
                                 f"trailing dims of shmrt's activation {fmt(self.full())}")
        return k

    def op_LayerNormalization(self, node, idx, ins, a):
        """Over the axes [axis, rank) (the trailing dims: shmrt.LayerNorm's normalized_shape), any axis
        after the batch; Mean and InvStdDev (one per group: shape [d0..d(axis-1), 1, ..., 1]) by
        shmrt.Mean and shmrt.RStd on the same input.  Statistics in float64 whatever stash_type says."""
        v = self.ordered(node, idx, ins[0])
        r = len(v.shape)
        ax = self.axis(node, idx, a.get("axis", -1), r)
        if a.get("stash_type", 1) not in (1, 11):
            self.fail(node, idx, f"attribute stash_type={a.get('stash_type')} is not supported; expected 1 "
                                 f"(float) or 11 (double)")
        k = self.trailing(node, idx, v, ax, "LayerNormalization")
        shape = tuple(self.ir[len(self.ir) - k:])
        onnx_shape = tuple(v.shape[ax:])

        def param(j, what):
            c = np.asarray(self.const(node, idx, j, what), dtype=np.float64)
            try:
                return np.broadcast_to(c, onnx_shape).reshape(shape)
            except ValueError:
                self.fail(node, idx, f"{what} (input {j}) of shape {c.shape} does not broadcast to the normalised "
                                     f"shape {list(onnx_shape)}")
        w = param(1, "Scale")
        b = param(2, "B") if len(ins) > 2 and ins[2] is not None else None
        eps = float(a.get("epsilon", 1e-5))
        before = self.chain.version
        self.chain.emit(L.LayerNorm(list(shape), eps=eps, weight=w, bias=b), self.ir)
        outs = [View(v.shape, v.src, self.chain.version)]
        stat_view = ((B,) + tuple(v.shape[1:ax]) + (1,) * (r - ax), tuple(v.src[:ax]) + (None,) * (r - ax))
        for o, stat in zip(node.output[1:], (L.Mean(tuple(range(-k, 0)), keepdim=True), L.RStd(list(shape), eps))):
            if o and o in self.consumed:
                self.chain.switch(before)
                lead = tuple(self.ir[:len(self.ir) - k])
                self.chain.emit(stat, lead + (1,) * k)
                outs.append(View(*stat_view, self.chain.version))
            else:
                outs.append(None)
        return outs
