"""Handlers of ops that reduce or normalise each row of an [N, F] activation over its last axis."""
from __future__ import annotations

from shmrt.frontends.onnx.layout import B, View, fmt
from shmrt.ir import layers as L


class RowwiseOps:
    """Softmax, LogSoftmax, ArgMax, TopK, LayerNormalization."""

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

    def op_ArgMax(self, node, idx, ins, a):
        ax = a.get("axis", 0)
        r = len(ins[0].shape)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis ({r - 1} or -1)")
        self.dense(node, idx, ins[0])
        self.chain.emit(L.ArgMax(select_last_index=bool(a.get("select_last_index", 0))), ())
        if a.get("keepdims", 1):
            return View((B, 1), (0, None), self.chain.version)
        return View((B,), (0,), self.chain.version)

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

    def op_LayerNormalization(self, node, idx, ins, a):
        ax = a.get("axis", -1)
        r = len(ins[0].shape)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis (-1)")
        if any(o and o in self.consumed for o in node.output[1:]):
            self.fail(node, idx, "the Mean/InvStdDev outputs are not supported (only Y may be used)")
        v = self.dense(node, idx, ins[0])
        F = self.ir[0]
        w = self.vec(node, idx, 1, F, "Scale")
        b = self.vec(node, idx, 2, F, "B") if len(ins) > 2 and ins[2] is not None else None
        self.chain.emit(L.LayerNorm(F, eps=a.get("epsilon", 1e-5), weight=w, bias=b), self.ir)
        return View(v.shape, v.src, self.chain.version)
