"""torch's dynamically quantized modules (``torch.ao.quantization.quantize_dynamic``): their int8 weights
and scales, as shmrt's IR carries them.

- ``torch.ao.nn.quantized.dynamic.Linear``: ``m.weight()`` is a quantized tensor.  qint8 with zero point 0
  (torch's default weight observers are symmetric), one scale per tensor (per_tensor_*) or per output row
  (per_channel_* along axis 0): a shmrt.Linear whose weight is q * scale in float32, with
  ``layer.quant = {"weight": (q int8 [out, in], scale float32 [out])}``.  Other zero points or dtypes:
  the exact float32 values the weight dequantizes to, no ``quant``.  dtype=torch.float16: the float16
  weights as float32 (exact), no ``quant``.
- ``torch.ao.nn.quantized.dynamic.LSTM`` / ``GRU``: the packed weights read back with the module's
  ``get_weight()`` / ``get_bias()`` (its packed cell parameters unpacked), each layer's weight_ih / weight_hh
  with ``quant`` as above (PyTorch's gate order already).

What differs from the peer: torch rounds each activation tensor at run time to 7-bit unsigned integers
(x86 / fbgemm's reduce_range: 127 steps between min(x, 0) and max(x, 0); an LSTM's input once for the
whole sequence, its h at every step); shmrt computes with the activation as it is (weights="int8" rounds
it per row instead).
"""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L


def quantized_table():
    """The dynamically quantized module classes shmrt reads, to their kinds (empty without torch.ao)."""
    try:
        from torch.ao.nn.quantized import dynamic as nnqd
    except ImportError:  # pragma: no cover - a torch without torch.ao
        return {}
    return {nnqd.Linear: "qlinear", nnqd.LSTM: "qrnn", nnqd.GRU: "qrnn"}


QUANTIZED_MODULES = ("torch.ao.quantization.quantize_dynamic's Linear, LSTM and GRU (qint8 or float16 weights; "
                     "the recurrent ones as nn.LSTM / nn.GRU above)")


class QuantizedModules:
    """call_module nodes of dynamically quantized modules."""

    def qweight(self, node, w, name):
        """(float32 weight, (q, scale) or None) of a torch weight: quantized (see the module docstring)
        or a float tensor (float16 dynamic quantization)."""
        torch = self.torch
        if not w.is_quantized:
            return self.param(node, w, name), None
        q = w.int_repr().cpu().numpy()
        scheme = w.qscheme()
        if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
            scale = np.full(q.shape[0], w.q_scale(), np.float32)
            zp = np.full(q.shape[0], w.q_zero_point(), np.int64)
        elif scheme in (torch.per_channel_affine, torch.per_channel_symmetric) and w.q_per_channel_axis() == 0:
            scale = w.q_per_channel_scales().cpu().numpy().astype(np.float32)
            zp = w.q_per_channel_zero_points().cpu().numpy().astype(np.int64)
        else:
            axis = f" along axis {w.q_per_channel_axis()}" if scheme in (
                torch.per_channel_affine, torch.per_channel_symmetric) else ""
            raise self.fail(node, f"{name} is quantized with qscheme {scheme}{axis}; expected one scale per tensor or "
                                  f"per output row (per_channel along axis 0)")
        if q.ndim != 2:
            raise self.fail(node, f"{name} of shape {list(q.shape)}: expected a 2-D weight [rows, columns]")
        if w.dtype == torch.qint8 and not np.any(zp):
            q = np.ascontiguousarray(q, dtype=np.int8)
            return q.astype(np.float32) * scale[:, None], (q, scale)
        return (q.astype(np.int64) - zp[:, None]).astype(np.float32) * scale[:, None], None

    def mod_qlinear(self, node, m, kind):
        self.take(node, node.args[0])
        w, quant = self.qweight(node, m.weight(), "weight")
        b = m.bias()
        layer = self.make(node, L.Linear, m.in_features, m.out_features,
                          bias=False if b is None else self.param(node, b, "bias"), weight=w)
        if quant is not None:
            layer.quant = {"weight": quant}
        self.emit(node, layer, rank=2)

    def mod_qrnn(self, node, m, kind):
        self.take(node, node.args[0])
        if not m.batch_first:
            raise self.fail(node, "batch_first=False is not supported; shmrt's layout is batch-first "
                                  "[N, T, F]: build it with batch_first=True")
        if m.bidirectional:
            raise self.fail(node, "bidirectional=True is not supported; only one direction")
        weights, biases = m.get_weight(), m.get_bias()
        kw = dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers, bias=bool(m.bias))
        quant = {}
        for k in range(m.num_layers):
            for g in ("ih", "hh"):
                name = f"weight_{g}_l{k}"
                kw[name], q = self.qweight(node, weights[name], name)
                if q is not None:
                    quant[name] = q
                if m.bias:
                    kw[f"bias_{g}_l{k}"] = self.param(node, biases[f"bias_{g}_l{k}"], f"bias_{g}_l{k}")
        cls = {"LSTM": L.LSTM, "GRU": L.GRU}.get(m.mode)
        if cls is None:
            raise self.fail(node, f"mode {m.mode!r}: expected a quantized LSTM or GRU")
        self.rnn_layer(node, cls, kw, m.num_layers, quant)
