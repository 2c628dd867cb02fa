"""Model IR: layers with PyTorch's parameter names and shapes, and Sequential.

A layer is data: its hyper-parameters, its parameters (float32 numpy arrays
under PyTorch's names) and its output shape for a given input shape.  The
planner (plan.py) decides how each layer is split across workers; layers
know nothing of workers or kernels.

Shapes exclude the batch dimension: a dense activation ``[N, F]`` has shape
``(F,)``.  A parameter left out gets a seeded random initialisation, drawn
like PyTorch's default (uniform in +-1/sqrt(fan_in)); ``shmrt.manual_seed``
makes it reproducible.
"""
from __future__ import annotations

import itertools

import numpy as np

_seed_counter = itertools.count()
_base_seed = [0]


def manual_seed(seed: int) -> None:
    """Seed the initialisation of parameters left out of layer constructors."""
    global _seed_counter
    _base_seed[0] = int(seed)
    _seed_counter = itertools.count()


def _rng():
    return np.random.default_rng([_base_seed[0], next(_seed_counter)])


def _param(value, shape, name, layer, fan_in):
    """A float32 parameter of exactly ``shape``; random if value is None."""
    if value is None:
        bound = 1.0 / np.sqrt(max(fan_in, 1))
        return _rng().uniform(-bound, bound, size=shape).astype(np.float32)
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{layer}: {name} must be a real numeric array (cast to float32), got dtype {arr.dtype}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{layer}: {name} must have shape {tuple(shape)}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _positive_int(v, what, layer):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, got {v!r}")
    return int(v)


class Layer:
    """Base: ``params`` maps PyTorch names to float32 arrays."""

    params: dict

    def __init__(self):
        self.params = {}

    def output_shape(self, shape: tuple) -> tuple:
        return shape

    def input_shape(self):
        """The input shape this layer fixes, or None if it takes any."""
        return None

    def __repr__(self):
        return f"{type(self).__name__}()"


class Linear(Layer):
    """y = x @ weight.T + bias; weight [out_features, in_features]."""

    def __init__(self, in_features, out_features, bias=True, weight=None):
        super().__init__()
        name = f"Linear({in_features}, {out_features})"
        self.in_features = _positive_int(in_features, "in_features", name)
        self.out_features = _positive_int(out_features, "out_features", name)
        self.params["weight"] = _param(weight, (self.out_features, self.in_features), "weight", name,
                                       self.in_features)
        if bias is True:
            bias = None
        elif bias is False or bias is None:
            bias = False
        if bias is not False:
            self.params["bias"] = _param(bias, (self.out_features,), "bias", name, self.in_features)

    def input_shape(self):
        return (self.in_features,)

    def output_shape(self, shape):
        if tuple(shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.in_features}), "
                             f"got (N, {', '.join(map(str, shape))})")
        return (self.out_features,)

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'bias' in self.params})"


class _Elementwise(Layer):
    act: int = 0


class ReLU(_Elementwise):
    act = 1


class Sigmoid(_Elementwise):
    act = 2


class Tanh(_Elementwise):
    act = 3


class GELU(_Elementwise):
    """GELU; approximate='none' (erf, exact) or 'tanh', as in PyTorch."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.act = 4 if approximate == "none" else 5

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class _RowWise(Layer):
    """Layers that need a whole feature row (the last axis)."""

    def __init__(self, dim=-1):
        super().__init__()
        if dim not in (-1, 1):
            raise ValueError(f"{type(self).__name__}: only dim=-1 (the feature axis) is supported, got {dim!r}")
        self.dim = dim


class Softmax(_RowWise):
    pass


class LogSoftmax(_RowWise):
    pass


class ArgMax(_RowWise):
    """Index of the largest feature per row (the first one on ties); int64 output."""

    def output_shape(self, shape):
        return ()


class TopK(_RowWise):
    """The k largest features per row, descending: returns (values, indices)."""

    def __init__(self, k, dim=-1):
        super().__init__(dim)
        self.k = _positive_int(k, "k", "TopK")

    def output_shape(self, shape):
        if shape[-1] < self.k:
            raise ValueError(f"TopK(k={self.k}) needs at least {self.k} features, got {shape[-1]}")
        return (self.k,)

    def __repr__(self):
        return f"TopK(k={self.k})"


class Sequential(Layer):
    """A chain of layers; the model type every loader produces."""

    def __init__(self, layers):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer, got an empty list")
        for i, l in enumerate(layers):
            if not isinstance(l, Layer) or isinstance(l, Sequential):
                raise TypeError(f"Sequential: item {i} must be a shmrt layer, got {type(l).__name__}")
        for i, l in enumerate(layers[:-1]):
            if isinstance(l, (ArgMax, TopK)):
                raise ValueError(f"Sequential: {l!r} must be the last layer, found at position {i}")
        self.layers = layers

    def input_shape(self):
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

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Sequential([\n" + "".join(f"  {l!r},\n" for l in self.layers) + "])"
