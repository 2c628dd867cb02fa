"""Quantized ONNX models: weights with their own int8 values and scales, as shmrt's IR carries them.

What is read, and what shmrt makes of it:
- ``DequantizeLinear`` of a constant (QDQ weights; what quant_patterns.py rewrites onnxruntime's dynamic
  quantization into) is folded at load time: y = (q - zero_point) * scale, in float32, as onnxruntime
  computes it.  When q is int8, the zero point 0 and the scale one per tensor or one per output row of
  the Linear (MatMul's W [K, N] along axis 1, Gemm's B along its output axis) or of a recurrent layer's
  gate rows, the layer also gets ``layer.quant = {param: (q int8 [rows, cols], scale float32 [rows])}``
  with ``layer.params[param] == q * scale`` exactly (compiled with weights=None, it runs int8 with these
  scales).  Any other weight (uint8 or a non-zero zero point, a scale per input feature, 4-bit blocks) is
  loaded as the exact float32 values it dequantizes to, with no ``quant``.
- ``DynamicQuantizeLSTM`` (onnxruntime's contrib op, what quantize_dynamic writes for an LSTM): read as
  an LSTM of the dequantized weights (its W [1, F, 4H] and R [1, H, 4H] transposed to ONNX's layout),
  with ``quant`` on weight_ih_l0 / weight_hh_l0 when they are int8 with zero point 0.
- Activations: a ``QuantizeLinear -> DequantizeLinear`` pair on the model's activation (QDQ models from
  quantize_static) is read as the IDENTITY.  shmrt does not round the activation to the file's static
  8-bit grid and does not clip it to the calibrated range: on data inside that range each value differs
  from the peer's by at most half a step (scale / 2) per pair; outside it the peer saturates and shmrt
  does not (tests/test_quantized_loaders.py shows the difference).  A QuantizeLinear whose output goes
  anywhere but such DequantizeLinear nodes (the QOperator format: QLinearMatMul, QGemm, ...) is refused.
- The peers' own run-time rounding of activations (DynamicQuantizeLinear, DynamicQuantizeLSTM's inputs)
  is not reproduced: shmrt computes with the activation as it is (weights="int8" rounds it per row).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from shmrt.frontends.chain import reorder_gates
from shmrt.frontends.onnx.layout import View
from shmrt.ir import layers as L

# the com.microsoft ops the importer reads (quant_patterns.py rewrites DynamicQuantizeMatMul away)
CONTRIB_OPS = frozenset({"DynamicQuantizeLSTM", "DynamicQuantizeMatMul"})

_DYNAMIC = ("onnxruntime's quantize_dynamic pattern: DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W, x_zp[, "
            "W_zp]) with a constant W -> Cast(to=FLOAT) -> Mul by Mul(x_scale, W_scale) with a constant W_scale "
            "(ConvInteger likewise, with one W_scale), each intermediate value read by that next node only")
_QOPERATOR = ("the QOperator format (integer ops between QuantizeLinear and DequantizeLinear) is not supported; "
              "expected float ops on DequantizeLinear'd weights (QDQ: quantize_static(..., "
              "quant_format=QuantFormat.QDQ)) or onnxruntime's quantize_dynamic output")


class QWeight(NamedTuple):
    """A constant's int8 values and float32 scales: ``scale`` has one value (per tensor) or one per
    index of ``axis`` of ``q``; the constant is exactly q * scale (zero point 0)."""
    q: np.ndarray
    scale: np.ndarray
    axis: int | None


class QuantOps:
    """DequantizeLinear folding with its int8 record, quant attached to Linear and recurrent layers,
    DynamicQuantizeLSTM, activation QDQ pairs; refusals of the other quantized ops."""

    @property
    def qweights(self):
        """Constant value name -> QWeight, for constants that are int8 values times scales."""
        if "_qweights" not in self.__dict__:
            self._qweights = {}
        return self._qweights

    # -- constants ------------------------------------------------------------------------------
    def fold(self, node, idx, ins):
        if node.op_type == "DequantizeLinear" and node.domain in ("", "ai.onnx"):
            out = self.fold_dequantize(node, idx, ins)
            if out is not None:
                return [out]
        out = super().fold(node, idx, ins)
        src = self.qweights.get(node.input[0]) if node.input else None
        if src is not None and node.op_type in ("Transpose", "Identity") and out and out[0] is not None:
            perm = self.attrs(node).get("perm", list(range(src.q.ndim))[::-1]) if node.op_type == "Transpose" \
                else list(range(src.q.ndim))
            q = np.transpose(src.q, perm)
            if q.shape == np.shape(out[0]):
                axis = None if src.axis is None else perm.index(src.axis)
                self.qweights[node.output[0]] = QWeight(q, src.scale, axis)
        return out

    def fold_dequantize(self, node, idx, ins):
        """y = (x - zero_point) * scale for an integer x and a scale per tensor or along ``axis``, in
        float32 (recorded in qweights when x is int8 and the zero point 0); None for what onnx's
        reference implementation folds instead (blocked scales, output_dtype, float8 inputs)."""
        a = self.attrs(node)
        x, s = np.asarray(ins[0]), np.asarray(ins[1])
        zp = np.asarray(ins[2]) if len(ins) > 2 and ins[2] is not None else None
        if x.dtype.kind not in "iu" or s.dtype.kind != "f" or a.get("block_size", 0) or "output_dtype" in a:
            return None
        per_tensor = s.size == 1 and s.ndim <= 1
        axis = a.get("axis", 1)
        if not per_tensor:
            if s.ndim != 1 or x.ndim == 0 or not -x.ndim <= axis < x.ndim or s.shape[0] != x.shape[axis]:
                self.fail(node, idx, f"x_scale of shape {list(s.shape)} for x of shape {list(x.shape)} and "
                                     f"axis={axis}: expected one scale (per tensor) or a 1-D scale of one value per "
                                     f"index of that axis")
            axis %= x.ndim
        if zp is not None and (zp.shape != s.shape or zp.dtype != x.dtype):
            self.fail(node, idx, f"x_zero_point of shape {list(zp.shape)} and dtype {zp.dtype}: expected the "
                                 f"shape of x_scale {list(s.shape)} and the dtype of x ({x.dtype})")
        shape = [1] * x.ndim
        if not per_tensor:
            shape[axis] = s.shape[0]
        sb = s.astype(np.float32).reshape(shape if not per_tensor else ())
        zero = zp is None or not np.any(zp)
        if zero:
            y = x.astype(np.float32) * sb
        else:
            y = (x.astype(np.int64) - zp.astype(np.int64).reshape(sb.shape)).astype(np.float32) * sb
        if zero and x.dtype == np.int8 and s.dtype == np.float32:
            self.qweights[node.output[0]] = QWeight(x, s.reshape(-1).copy(), None if per_tensor else axis)
        return y.astype(s.dtype, copy=False)

    # -- quant on the layers ----------------------------------------------------------------------
    def attach(self, layer, name, qw, out_axis, kind=None):
        """``layer.quant[name]`` from qw when its scales run along the output rows (``out_axis`` of qw.q,
        a 2-D weight) or are one per tensor; recurrent weights' gate blocks moved to PyTorch's order."""
        if qw is None or qw.q.ndim != 2 or (qw.axis is not None and qw.axis != out_axis):
            return  # a scale per input feature: the float weights only
        rows = qw.q if out_axis == 0 else qw.q.T
        scale = np.broadcast_to(qw.scale, (rows.shape[0],)) if qw.axis is None else qw.scale
        if kind is not None:
            rows, scale = reorder_gates(rows, kind), reorder_gates(scale, kind)
        rows = np.ascontiguousarray(rows, dtype=np.int8)
        scale = np.ascontiguousarray(scale, dtype=np.float32)
        w = rows.astype(np.float32) * scale[:, None]
        if not np.array_equal(w, layer.params[name]):  # the layer's weight is the folded one: a bug if not
            raise AssertionError(f"{layer!r}: {name} is not its int8 values times their scales")
        quant = dict(getattr(layer, "quant", None) or {})
        quant[name] = (rows, scale)
        layer.quant = quant

    def op_MatMul(self, node, idx, ins, a):
        out = super().op_MatMul(node, idx, ins, a)
        self.attach(self.emitted(L.Linear), "weight", self.qweights.get(node.input[1]), 1)
        return out

    def op_Gemm(self, node, idx, ins, a):
        out = super().op_Gemm(node, idx, ins, a)
        if a.get("alpha", 1.0) == 1.0:  # W * alpha is no longer q * scale
            self.attach(self.emitted(L.Linear), "weight", self.qweights.get(node.input[1]),
                        0 if a.get("transB", 0) else 1)
        return out

    def emitted(self, cls):
        layer = self.chain.layers[-1]
        if not isinstance(layer, cls):
            raise AssertionError(f"expected a {cls.__name__} emitted last, got {layer!r}")
        return layer

    def op_LSTM(self, node, idx, ins, a):
        return self._qrecurrent(node, idx, ins, a, "LSTM")

    def op_GRU(self, node, idx, ins, a):
        return self._qrecurrent(node, idx, ins, a, "GRU")

    def op_RNN(self, node, idx, ins, a):
        return self._qrecurrent(node, idx, ins, a, "RNN")

    def _qrecurrent(self, node, idx, ins, a, kind):
        before = len(self.chain.layers)
        out = getattr(super(), "op_" + kind)(node, idx, ins, a)
        for k, name in ((1, "weight_ih_l0"), (2, "weight_hh_l0")):
            qw = self.qweights.get(node.input[k])
            if qw is None or qw.q.ndim != 3 or qw.q.shape[0] != 1 or qw.axis == 0:
                continue
            one = QWeight(qw.q[0], qw.scale, None if qw.axis is None else qw.axis - 1)  # [G*H, F]: rows axis 0
            for layer in self.chain.layers[before:]:  # Y, and Y_h / Y_c's layers of the same weights
                if isinstance(layer, L._Recurrent):
                    self.attach(layer, name, one, 0, kind)
        return out

    def op_DynamicQuantizeLSTM(self, node, idx, ins, a):
        """onnxruntime's LSTM of int8/uint8 weights W [1, F, 4H], R [1, H, 4H] (inputs 1, 2) with scales
        and zero points (inputs 8-11) per tensor or per gate row ([1, 4H]); X and h rounded to uint8 at
        run time by the peer, not by shmrt.  Read as ONNX's LSTM of the dequantized weights."""
        helper = self.onnx.helper
        n_in = len(node.input)
        if n_in < 12 or not all(node.input[k] for k in (1, 2, 8, 9, 10, 11)):
            self.fail(node, idx, f"has {n_in} inputs; expected X, W, R, B, sequence_lens, initial_h, initial_c, P, "
                                 f"W_scale, W_zero_point, R_scale, R_zero_point (W, R and the last four given)")
        names, vals = list(node.input[:8]), [ins[0]]
        for k, zk, what in ((1, 9, "W"), (2, 11, "R")):
            q = np.asarray(self.const(node, idx, k, what))
            s = np.asarray(self.const(node, idx, zk - 1, f"{what}_scale"))
            zp = np.asarray(self.const(node, idx, zk, f"{what}_zero_point"))
            if q.ndim != 3 or q.shape[0] != 1 or q.dtype not in (np.int8, np.uint8):
                self.fail(node, idx, f"{what} of shape {list(q.shape)} and dtype {q.dtype}: expected int8 or uint8 "
                                     f"[1, rows, 4 * hidden_size] (one direction)")
            G4 = q.shape[2]
            if s.dtype != np.float32 or s.size not in (1, G4) or zp.shape != s.shape or zp.dtype != q.dtype:
                self.fail(node, idx, f"{what}_scale {list(s.shape)} ({s.dtype}) / {what}_zero_point {list(zp.shape)} "
                                     f"({zp.dtype}): expected float32 scales of one value or one per gate row "
                                     f"[1, {G4}], zero points of that shape and the dtype of {what} ({q.dtype})")
            s = s.reshape(-1)
            zero = not np.any(zp)
            qT = np.ascontiguousarray(np.transpose(q, (0, 2, 1)))  # ONNX's LSTM layout [1, 4H, rows]
            col = s.reshape(1, -1, 1) if s.size > 1 else s.reshape(())
            deq = (qT.astype(np.float32) * col if zero else
                   (qT.astype(np.int64) - zp.astype(np.int64).reshape(col.shape)).astype(np.float32) * col)
            name = f"{node.output[0] or node.name}__shmrt_{what}"
            self.values[name] = deq
            if zero and q.dtype == np.int8:
                self.qweights[name] = QWeight(qT, s.copy(), None if s.size == 1 else 1)
            names[k] = name
        vals += [self.values[names[1]], self.values[names[2]]] + list(ins[3:8])
        lstm = helper.make_node("LSTM", names, list(node.output), name=f"{node.name or 'DynamicQuantizeLSTM'}"
                                f"(DynamicQuantizeLSTM)")
        lstm.attribute.extend(node.attribute)
        return self.op_LSTM(lstm, idx, vals, a)

    # -- activations ------------------------------------------------------------------------------
    def op_QuantizeLinear(self, node, idx, ins, a):
        """A QDQ pair on the activation: the identity (see the module docstring)."""
        users = [n for _, n in self.walk_nodes if node.output[0] in n.input]
        if node.output[0] in self.graph_outputs or not users or any(
                u.op_type != "DequantizeLinear" or u.input[0] != node.output[0] for u in users):
            got = sorted({u.op_type for u in users}) + (["a graph output"] if node.output[0] in self.graph_outputs
                                                         else [])
            self.fail(node, idx, f"its output feeds {', '.join(got) or 'nothing'}: {_QOPERATOR}; a QuantizeLinear of "
                                 f"the activation is read only as a pair with DequantizeLinear (the identity)")
        mine = [self.const(node, idx, k, n) if k < len(node.input) and node.input[k] else None
                for k, n in ((1, "y_scale"), (2, "y_zero_point"))]
        for u in users:
            theirs = [self.values.get(u.input[k]) if k < len(u.input) and u.input[k] else None for k in (1, 2)]
            if any(isinstance(t, View) for t in theirs) or any(
                    (m is None) != (t is None) or (m is not None and not np.array_equal(m, t))
                    for m, t in zip(mine, theirs)):
                self.fail(node, idx, f"DequantizeLinear {u.name or 'unnamed'} after it has another scale or zero "
                                     f"point; expected a QDQ pair of one scale and zero point (read as the identity)")
        self.qdq_pairs.add(node.output[0])
        return ins[0]

    @property
    def qdq_pairs(self):
        if "_qdq_pairs" not in self.__dict__:
            self._qdq_pairs = set()
        return self._qdq_pairs

    def op_DequantizeLinear(self, node, idx, ins, a):
        if node.input[0] not in self.qdq_pairs:
            self.fail(node, idx, "DequantizeLinear of a value computed from the model input is supported only after "
                                 "a QuantizeLinear of the activation (a QDQ pair, read as the identity)")
        return ins[0]

    # -- refusals ---------------------------------------------------------------------------------
    def op_DynamicQuantizeLinear(self, node, idx, ins, a):
        users = sorted({n.op_type for _, n in self.walk_nodes if any(o and o in n.input for o in node.output)})
        self.fail(node, idx, f"its outputs feed {', '.join(users) or 'nothing'} in a way shmrt does not read; "
                             f"expected {_DYNAMIC}")

    def op_MatMulInteger(self, node, idx, ins, a):
        self.fail(node, idx, f"an integer product is read only as part of {_DYNAMIC}")

    op_ConvInteger = op_MatMulInteger

    def op_DynamicQuantizeMatMul(self, node, idx, ins, a):
        self.fail(node, idx, "expected a constant B, B_scale and (if given) B_zero_point and bias: onnxruntime's "
                             "fused quantize_dynamic MatMul of constant weights")

    def op_QLinearMatMul(self, node, idx, ins, a):
        self.fail(node, idx, _QOPERATOR)

    op_QLinearConv = op_QLinearMatMul
