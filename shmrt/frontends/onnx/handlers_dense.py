"""Handlers of the layers with weights or windows: Gemm and MatMul (Linear), Conv, pooling."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.layout import B, View, fmt
from shmrt.ir import layers as L


class DenseOps:
    """Gemm, MatMul, Conv, MaxPool, AveragePool, GlobalAveragePool."""

    def op_Gemm(self, node, idx, ins, a):
        if not isinstance(ins[0], View) or isinstance(ins[1], View):
            self.fail(node, idx, "only A = the activation and B = a constant weight are supported")
        if a.get("transA", 0) != 0:  # A^T: a view with its two axes swapped (batch-first only if A was [K, N])
            v = ins[0]
            if len(v.shape) != 2:
                self.fail(node, idx, f"transA=1 needs a 2-D A, got ONNX shape {fmt(v.shape)}")
            ins = [View(v.shape[::-1], v.src[::-1], v.version, v.last_of)] + list(ins[1:])
        W = np.asarray(self.const(node, idx, 1, "B"), dtype=np.float64)
        if W.ndim != 2:
            self.fail(node, idx, f"weight B must be 2-D, got shape {W.shape}")
        W = W if a.get("transB", 0) else W.T
        W = W * a.get("alpha", 1.0)
        self.dense(node, idx, ins[0])
        out, fin = W.shape
        if self.ir != (fin,):
            self.fail(node, idx, f"weight expects {fin} input features, the activation has {self.ir}")
        bias = None
        if len(ins) > 2 and ins[2] is not None:
            C = np.asarray(self.const(node, idx, 2, "C"), dtype=np.float64)
            try:
                bias = np.broadcast_to(C, (1, out)).reshape(out) * a.get("beta", 1.0)
            except ValueError:
                self.fail(node, idx, f"bias C of shape {C.shape} is not one value per output feature ({out})")
        self.chain.emit(L.Linear(fin, out, weight=W, bias=bias if bias is not None else False), (out,))
        return View((B, out), (0, 1), self.chain.version)

    def op_MatMul(self, node, idx, ins, a):
        if isinstance(ins[0], View) and isinstance(ins[1], View):
            self.fail(node, idx, f"a product of two activations (ONNX shapes {fmt(ins[0].shape)} @ {fmt(ins[1].shape)}: "
                                 f"both depend on the model input) is not supported yet; MatMul is supported as the "
                                 f"activation @ a constant weight")
        if not isinstance(ins[0], View):
            self.fail(node, idx, "a constant @ the activation is not supported; MatMul is supported as the "
                                 "activation @ a constant weight")
        W = np.asarray(self.const(node, idx, 1, "B"), dtype=np.float64)
        if W.ndim != 2:
            self.fail(node, idx, f"weight must be 2-D, got shape {W.shape}")
        self.dense(node, idx, ins[0])
        fin, out = W.shape
        if self.ir != (fin,):
            self.fail(node, idx, f"weight expects {fin} input features, the activation has {self.ir}")
        self.chain.emit(L.Linear(fin, out, weight=W.T, bias=False), (out,))
        return View((B, out), (0, 1), self.chain.version)

    def _pads(self, node, idx, a, k, s, d, hw):
        if not len(k) == len(s) == len(d) == 2 or min(*k, *s, *d) < 1:
            self.fail(node, idx, f"kernel {list(k)}, strides {list(s)}, dilations {list(d)}: expected two ints >= 1 "
                                 f"each (2-D)")
        auto = a.get("auto_pad", "NOTSET")
        if auto == "VALID":
            return (0, 0, 0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            if a.get("ceil_mode", 0):
                self.fail(node, idx, f"attribute auto_pad={auto} with ceil_mode=1 is not supported (ONNX leaves the "
                                     f"pair undefined); expected ceil_mode=0 or explicit pads")
            head, tail = [], []
            for i in range(2):  # output ceil(n / s); the odd one of the total at the end (UPPER) or start (LOWER)
                out = -(-hw[i] // s[i])
                tot = max((out - 1) * s[i] + d[i] * (k[i] - 1) + 1 - hw[i], 0)
                small, big = tot // 2, tot - tot // 2
                head.append(small if auto == "SAME_UPPER" else big)
                tail.append(big if auto == "SAME_UPPER" else small)
            return (head[0], head[1], tail[0], tail[1])
        if auto != "NOTSET":
            self.fail(node, idx, f"attribute auto_pad={auto!r} is not supported")
        p = a.get("pads", [0, 0, 0, 0])
        if len(p) != 4 or min(p) < 0:
            self.fail(node, idx, f"attribute pads={p}: expected 4 ints >= 0 [top, left, bottom, right] (2-D)")
        return tuple(int(v) for v in p)

    def op_Conv(self, node, idx, ins, a):
        self.image(node, idx, ins[0])
        W = np.asarray(self.const(node, idx, 1, "W"), dtype=np.float32)
        if W.ndim != 4:
            self.fail(node, idx, f"only 2-D convolution is supported (W of rank 4), got W of shape {W.shape}")
        O, Cg, kh, kw = W.shape
        if a.get("kernel_shape", [kh, kw]) != [kh, kw]:
            self.fail(node, idx, f"attribute kernel_shape={a['kernel_shape']} does not match W {W.shape}")
        g = a.get("group", 1)
        s = tuple(a.get("strides", [1, 1]))
        dl = tuple(a.get("dilations", [1, 1]))
        pads = self._pads(node, idx, a, (kh, kw), s, dl, self.ir[1:])
        C = self.ir[0]
        if Cg * g != C:
            self.fail(node, idx, f"W {W.shape} with group={g} does not match {C} input channels")
        bias = self.const(node, idx, 2, "B") if len(ins) > 2 and ins[2] is not None else False
        layer = L.Conv2d(C, O, (kh, kw), stride=s, pads=pads, dilation=dl, groups=g, bias=bias, weight=W)
        ir = layer.output_shape(self.ir)  # the layer's own checks refuse (see bugs())
        self.chain.emit(layer, ir)
        return View((B,) + ir, (0, 1, 2, 3), self.chain.version)

    def _pool(self, node, idx, ins, a, is_max):
        self.image(node, idx, ins[0])
        ind = node.output[1] if len(node.output) > 1 and node.output[1] in self.consumed else ""
        if ind in self.node_inputs:
            self.fail(node, idx, f"its Indices output {ind!r} feeds another node; Indices is supported only as a "
                                 f"graph output (shmrt returns (Y, Indices) as TopK's (values, indices)), expected "
                                 f"Indices read by no node")
        if ind and not is_max:  # (AveragePool has no second output: check_node refuses it first)
            self.fail(node, idx, f"output {ind!r}: only MaxPool has Indices")
        order = a.get("storage_order", 0)
        if order not in (0, 1):
            self.fail(node, idx, f"attribute storage_order={order}: expected 0 (row-major) or 1 (column-major)")
        k = tuple(a["kernel_shape"])
        if len(k) != 2:
            self.fail(node, idx, f"only 2-D pooling is supported, got kernel_shape={list(k)}")
        s = tuple(a.get("strides", [1, 1]))
        dl = tuple(a.get("dilations", [1, 1]))
        pads = self._pads(node, idx, a, k, s, dl, self.ir[1:])
        ceil = bool(a.get("ceil_mode", 0))
        if is_max:
            layer = L.MaxPool2d(k, stride=s, dilation=dl, ceil_mode=ceil, pads=pads,
                                indices=("col" if order else "row") if ind else None)
        else:
            layer = L.AvgPool2d(k, stride=s, ceil_mode=ceil, count_include_pad=bool(a.get("count_include_pad", 0)),
                                pads=pads, dilation=dl)
        ir = layer.output_shape(self.ir)  # the layer's own checks refuse (see bugs())
        self.chain.emit(layer, ir)
        y = View((B,) + ir, (0, 1, 2, 3), self.chain.version)
        if not ind:
            return y
        self.topk_outputs = (node.output[0], ind)  # a graph output: (Y, Indices) as TopK's pair (finish())
        return [y, View((B,) + ir, (0, 1, 2, 3), self.chain.version)]

    def op_MaxPool(self, node, idx, ins, a):
        return self._pool(node, idx, ins, a, True)

    def op_AveragePool(self, node, idx, ins, a):
        return self._pool(node, idx, ins, a, False)

    def op_ReduceMean(self, node, idx, ins, a):
        """The mean over axes after the batch: over an image's spatial axes (x.mean((2, 3))) global
        average pooling, else shmrt.Mean over the trailing dims (a Permute first moves other axes there)."""
        axes = a.get("axes")
        if axes is None and len(ins) > 1 and ins[1] is not None:
            axes = self.const(node, idx, 1, "axes").reshape(-1).tolist()
        v = self.ordered(node, idx, ins[0])
        r, keep = len(v.shape), a.get("keepdims", 1)
        if not axes and a.get("noop_with_empty_axes", 0):
            self.fail(node, idx, "axes are empty with noop_with_empty_axes=1: the identity; expected axes to reduce")
        axes = sorted(set(self.axis(node, idx, k, r) for k in (axes or range(r))))
        if 0 in axes:
            self.fail(node, idx, f"ReduceMean over axes {axes} of ONNX shape {fmt(v.shape)} is not supported: "
                                 f"axis 0 is the batch; expected axes after it")
        if r == 4 and axes == [2, 3] and v.src == (0, 1, 2, 3) and len(self.ir) == 3:
            C = self.ir[0]
            self.chain.emit(L.GlobalAvgPool(), (C,))
            if keep:
                return View((B, C, 1, 1), (0, 1, None, None), self.chain.version)
            return View((B, C), (0, 1), self.chain.version)
        oshape, rest = v.shape, [k for k in range(1, r) if k not in axes]
        v, src_of, t = self.move_last(node, idx, v, axes, "ReduceMean")
        k = self.trailing(node, idx, v, t[0], "ReduceMean")
        lead = tuple(self.ir[:len(self.ir) - k])
        if not lead:  # every axis of the activation reduced: the kept axes are all size 1
            src_of = dict.fromkeys(rest)
        self.chain.emit(L.Mean(tuple(range(-k, 0)), keepdim=not lead), lead or (1,) * k)
        kept = [kk for kk in range(1, r) if keep or kk not in axes]
        shape = (B,) + tuple(1 if kk in axes else oshape[kk] for kk in kept)
        src = (0,) + tuple(src_of.get(kk) for kk in kept)
        return View(shape, src, self.chain.version)

    def op_GlobalAveragePool(self, node, idx, ins, a):
        self.image(node, idx, ins[0])
        C = self.ir[0]
        self.chain.emit(L.GlobalAvgPool(), (C,))
        return View((B, C, 1, 1), (0, 1, None, None), self.chain.version)
