"""Weight formats at compile time: which format each op runs (``rt.compile(model, weights=...)``), its
weights packed in that format, and the relative error the format puts on them (explain() prints it).

Compressed: every Linear that runs on packed panels (>= PACKED_MIN_OUT outputs) and every RNN / LSTM / GRU
layer.  Everything else stays float32.  weights=None keeps float32 except for layers loaded already
quantized (``layer.quant``: {param: (q int8, scale per output row)}, from ONNX Runtime's or torch's dynamic
quantization), which run INT8 with their own scales; weights="float32" runs those on their dequantized
float weights.
"""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L
from shmrt.kernels import pack
from shmrt.kernels.linear import PACKED_MIN_OUT
from shmrt.kernels.qformat import BF16, FLOAT32, FORMATS, INT8, format_code, pack_format


def compressible(layer) -> bool:
    return (isinstance(layer, L.Linear) and layer.out_features >= PACKED_MIN_OUT) or isinstance(layer, L._Recurrent)


def choose(ops, weights) -> None:
    """Set op.fmt (a kernels.qformat code) on every op."""
    code = None if weights is None else format_code(weights)
    for op in ops:
        op.fmt = FLOAT32
        if not compressible(op.layer):
            continue
        if code is None:
            op.fmt = INT8 if getattr(op.layer, "quant", None) and op.fold is None else FLOAT32
        else:
            op.fmt = code


def own_scales(op, name):
    """(q, scale) of a weight loaded already quantized, when the op runs INT8 on it unchanged (no BatchNorm
    folded into it)."""
    quant = getattr(op.layer, "quant", None) or {}
    return quant.get(name) if op.fmt == INT8 and op.fold is None else None


def pack_weight(w, fmt, own=None):
    """W[m, k] -> ({"panels": ...[, "scales": ...]}, the float32 weight those panels stand for)."""
    if fmt == FLOAT32:
        return {"panels": pack(w)}, np.asarray(w, np.float32)
    return pack_format(w, fmt, own)


def note(op, pairs) -> None:
    """op.wnote: the format and the relative (Frobenius) error of the weights as run, over (given, run) pairs."""
    num = sum(float(np.sum((np.asarray(r, np.float64) - np.asarray(g, np.float64)) ** 2)) for g, r in pairs)
    den = sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g, _ in pairs)
    err = (num / den) ** 0.5 if den > 0 else 0.0
    own = bool(getattr(op.layer, "quant", None)) and op.fmt == INT8 and op.fold is None
    op.wnote = {"format": FORMATS[op.fmt], "rel_err": err, "own_scales": own}


def describe(wnote) -> str:
    """explain()'s words for an op's weights."""
    if wnote["format"] == "float32":
        return "weights: float32"
    how = ("its own int8 scales (loaded quantized)" if wnote["own_scales"] else
           "per-output-channel scales" if wnote["format"] == "int8" else
           "a scale per 32 weights" if wnote["format"] == "int4" else "rounded to nearest even")
    if wnote["own_scales"]:
        return f"weights: int8 with {how}"
    act = "; activations int8 per row at run time" if wnote["format"] in ("int8", "int4") else ""
    return f"weights: {wnote['format']} ({how}), relative error {wnote['rel_err']:.2e} against the float32 weights{act}"


__all__ = ["BF16", "FLOAT32", "INT8", "choose", "compressible", "describe", "note", "own_scales", "pack_weight"]
