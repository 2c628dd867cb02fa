"""Sequential, the model type every loader produces, and the fitted regressions built as one."""
from __future__ import annotations

import numpy as np

from shmrt.ir import native
from shmrt.ir.base import Layer, check_classes
from shmrt.ir.conv import returns_indices
from shmrt.ir.dense import ArgMax, Linear, Sigmoid, Softmax, TopK, _Elementwise, _RowWise


class Sequential(Layer, register=False):
    """A chain of layers; the model type every loader produces.

    input_shape: the per-sample input shape (batch excluded), when the first
    layers do not fix it (a CNN's (C, H, W), a recurrent model's (T, F));
    loaders set it from the source.  classes: the class labels of a
    classifier whose output is one probability per class, in that order:
    ``CompiledModel.predict`` then returns labels and ``predict_proba`` the
    probabilities (scikit-learn's meaning).  output_1d: ``predict`` returns
    ``[N]`` instead of ``[N, 1]`` (a single-target regressor)."""

    def __init__(self, layers, input_shape=None, classes=None, output_1d=False):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer, got an empty list")
        for i, l in enumerate(layers):
            if not isinstance(l, Layer) or isinstance(l, Sequential):
                raise TypeError(f"Sequential: item {i} must be a shmrt layer, got {type(l).__name__}")
        for i, l in enumerate(layers[:-1]):
            if isinstance(l, (ArgMax, TopK)) or returns_indices(l):
                raise ValueError(f"Sequential: {l!r} must be the last layer (it returns indices), found at "
                                 f"position {i}")
        self.layers = layers
        self._input_shape = None
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
            if (shape is None or not 1 <= len(shape) <= 3 or any(
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in shape)):
                raise ValueError(f"Sequential: input_shape must be (F,), (T, F) or (C, H, W) with positive ints, "
                                 f"got {input_shape!r}")
            self._input_shape = tuple(int(v) for v in shape)
        self.classes = check_classes(classes, "Sequential")
        self.output_1d = bool(output_1d)

    def input_shape(self):
        if self._input_shape is not None:
            return self._input_shape
        for l in self.layers:
            s = l.input_shape()
            if s is not None:
                return s
            if not isinstance(l, (_Elementwise, _RowWise)):
                return None
        return None

    def shapes(self, in_shape):
        """Per-layer output shapes for a given input shape (batch excluded)."""
        out, s = [], tuple(in_shape)
        for l in self.layers:
            s = tuple(l.output_shape(s))
            out.append(s)
        return out

    def save(self, path) -> None:
        """Write the model to ``path``: ``.safetensors`` by that suffix, else shmrt's native file (an
        uncompressed .npz); ``shmrt.load(path)`` reads it back bit-exact.  See shmrt/ir/native.py."""
        native.save(self, path)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Sequential([\n" + "".join(f"  {l!r},\n" for l in self.layers) + "])"


# native.py imports no layer module (the layers import it, to save and to register): it rebuilds a
# model read from a file with the class registered here.
native.register_model(Sequential)


def linear_regression(coef, intercept=0.0):
    """A fitted linear regression (coef [F] or [targets, F]) as a model."""
    coef = np.asarray(coef, dtype=np.float64)
    coef2 = coef[None, :] if coef.ndim == 1 else coef
    if coef2.ndim != 2:
        raise ValueError(f"linear_regression: coef must be [F] or [targets, F], got shape {coef.shape}")
    b = np.broadcast_to(np.asarray(intercept, dtype=np.float64), (coef2.shape[0],))
    return Sequential([Linear(coef2.shape[1], coef2.shape[0], weight=coef2, bias=b)])


def logistic_regression(coef, intercept=0.0):
    """A fitted logistic regression: binary (coef [F] or [1, F]) -> Sigmoid
    probability of the positive class; multiclass ([C, F]) -> Softmax."""
    model = linear_regression(coef, intercept)
    head = Sigmoid() if model.layers[0].out_features == 1 else Softmax()
    return Sequential([model.layers[0], head])
