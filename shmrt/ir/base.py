"""The layer base class, its serialisation hooks, and the parameter helpers every layer uses.

A layer is data: its hyper-parameters, its parameters (float32 numpy arrays
under PyTorch's names) and its output shape for a given input shape.  The
planner (compile/plan.py) decides how each layer is split across workers;
layers know nothing of workers or kernels.

Shapes exclude the batch dimension: a dense activation ``[N, F]`` has shape
``(F,)``.  A parameter left out gets a seeded random initialisation, drawn
like PyTorch's default (uniform in +-1/sqrt(fan_in)); ``shmrt.manual_seed``
makes it reproducible.

Serialisation lives with each class: ``config()`` gives its constructor
arguments other than the parameter arrays, ``from_config`` calls the
constructor back, and every public layer class of shmrt.ir registers itself
with the file format (native.py) as it is defined, so that a new layer is
saved and loaded with no list to extend anywhere else.
"""
from __future__ import annotations

import itertools

import numpy as np

from shmrt.ir import native

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


def _vector(value, n, name, layer, default):
    """A per-feature float32 parameter of n values; ``default`` everywhere if value is None."""
    if value is None:
        return np.full(n, default, np.float32)
    return _param(value, (n,), name, layer, 1)


def _positive_int(v, what, layer):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{layer}: {what} must be a positive int, got {v!r}")
    return int(v)


def _features_shape(self, shape):
    """output_shape of layers over exactly ``self.features`` features: the same shape."""
    if tuple(shape) != (self.features,):
        raise ValueError(f"{self!r} expects inputs of shape (N, {self.features}), "
                         f"got (N, {', '.join(map(str, shape))})")
    return shape


def _bias_arg(bias):
    """A constructor's bias argument as a parameter value: None (random), an array, or False (no bias)."""
    if bias is True:
        return None
    if bias is False or bias is None:
        return False
    return bias


def check_classes(classes, who):
    """A classifier's labels as a 1-D array (None stays None); refused unless 2 or more numbers or strings."""
    if classes is None:
        return None
    labels = np.asarray(classes)
    if labels.ndim != 1 or labels.size < 2 or labels.dtype.kind not in "iubUSf":
        raise ValueError(f"{who}: classes must be a 1-D list of at least 2 labels (numbers or strings), "
                         f"got {classes!r}")
    return labels


class Value:
    """A tensor of a graph being written: ``shmrt.Input(shape)``, or a layer called on values."""
    __slots__ = ("layer", "inputs", "shape", "name")

    def __init__(self, layer=None, inputs=(), shape=None, name=None):
        self.layer, self.inputs, self.shape, self.name = layer, tuple(inputs), shape, name

    def __repr__(self):
        what = "Input" if self.layer is None else f"{type(self.layer).__name__} output"
        return f"<shmrt value {self.name or '?'}: {what}>"


def call(layer, args):
    """``layer(*values)``: a new Value (Layer.__call__)."""
    if not args or not all(isinstance(a, Value) for a in args):
        got = ", ".join(type(a).__name__ for a in args) or "nothing"
        raise TypeError(f"{layer!r} was called on {got}: a layer is called on graph values (shmrt.Input(...) "
                        f"or another layer's output) to write a shmrt.Graph; to run a model, compile it "
                        f"(rt.compile(model)) or use shmrt.run(model, x)")
    return Value(layer, args)


class Layer:
    """Base: ``params`` maps PyTorch names to float32 arrays."""

    params: dict

    def __init_subclass__(cls, register=True, **kw):
        """shmrt's public layer classes register with the file format under their class name; a
        subclass defined outside shmrt.ir is not registered, so a model holding one is refused by save."""
        super().__init_subclass__(**kw)
        if register and not cls.__name__.startswith("_") and cls.__module__.startswith("shmrt.ir."):
            native.register(cls)

    def __init__(self):
        self.params = {}

    def output_shape(self, shape: tuple) -> tuple:
        return shape

    def __call__(self, *values):
        """The layer applied to graph values (shmrt.Input, another layer's output): a new value of a
        shmrt.Graph being written."""
        return call(self, values)

    def input_shape(self):
        """The input shape this layer fixes, or None if it takes any."""
        return None

    def config(self) -> dict:
        """The constructor's arguments other than the parameter arrays, as JSON values (the file's
        record of this layer; ``from_config`` reads them back)."""
        return {}

    @classmethod
    def from_config(cls, config: dict, params: dict):
        """The layer a file's record describes: ``config`` from ``config()``, ``params`` its arrays."""
        return cls(**config, **params)

    def __repr__(self):
        return f"{type(self).__name__}()"
