"""Dense layers over [N, F]: Linear, the activations, and the row-wise layers (softmax, argmax, top-k, layer norm)."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _bias_arg, _features_shape, _param, _positive_int, _vector


class Linear(Layer):
    """y = x @ weight.T + bias; weight [out_features, in_features]."""

    def __init__(self, in_features, out_features, bias=True, weight=None):
        super().__init__()
        name = f"Linear({in_features}, {out_features})"
        self.in_features = _positive_int(in_features, "in_features", name)
        self.out_features = _positive_int(out_features, "out_features", name)
        self.params["weight"] = _param(weight, (self.out_features, self.in_features), "weight", name,
                                       self.in_features)
        bias = _bias_arg(bias)
        if bias is not False:
            self.params["bias"] = _param(bias, (self.out_features,), "bias", name, self.in_features)

    def input_shape(self):
        return (self.in_features,)

    def output_shape(self, shape):
        if tuple(shape) != (self.in_features,):
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.in_features}), "
                             f"got (N, {', '.join(map(str, shape))})")
        return (self.out_features,)

    def config(self):
        c = {"in_features": self.in_features, "out_features": self.out_features}
        if "bias" not in self.params:
            c["bias"] = False
        return c

    def __repr__(self):
        return f"Linear({self.in_features}, {self.out_features}, bias={'bias' in self.params})"


# -- activations ---------------------------------------------------------------------

class _Elementwise(Layer):
    """An activation: act names the kernels' function (shmrt.kernels.activations.ACT_NAMES);
    alpha is its one parameter where it has one (fused into the layer before only when None).
    The class is named as PyTorch's module (nn.<name>), and ``fn`` (default: act) as its function
    (F.<fn>), with config()'s keys as their keyword arguments: the torch importer reads them off
    ACTIVATIONS, so an activation added here is importable from torch with no change there."""
    act = "identity"
    fn = None
    alpha = None

    def __repr__(self):
        """As the user wrote it: ``ReLU()``, ``GELU(approximate='tanh')``, ``LeakyReLU(negative_slope=0.2)``."""
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.config().items())})"


class ReLU(_Elementwise):
    act = "relu"


class Sigmoid(_Elementwise):
    act = "sigmoid"


class Tanh(_Elementwise):
    act = "tanh"


class GELU(_Elementwise):
    """GELU; approximate='none' (erf, exact) or 'tanh', as in PyTorch."""
    fn = "gelu"

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.act = "gelu" if approximate == "none" else "gelu_tanh"

    def config(self):
        return {"approximate": self.approximate}


class SiLU(_Elementwise):
    """x * sigmoid(x) (also called swish), as PyTorch's nn.SiLU."""
    act = "silu"


class Hardswish(_Elementwise):
    """x * relu6(x + 3) / 6, as PyTorch's nn.Hardswish."""
    act = "hardswish"


class LeakyReLU(_Elementwise):
    """x where x >= 0, else negative_slope * x, as PyTorch's nn.LeakyReLU."""
    act = "leaky_relu"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float, np.floating, np.integer)) \
                or not np.isfinite(negative_slope):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = self.alpha = float(negative_slope)

    def config(self):
        return {"negative_slope": self.negative_slope}


class ReLU6(_Elementwise):
    """min(max(x, 0), 6), as PyTorch's nn.ReLU6."""
    act = "relu6"


class Hardsigmoid(_Elementwise):
    """relu6(x + 3) / 6, as PyTorch's nn.Hardsigmoid."""
    act = "hardsigmoid"


ACTIVATIONS = (ReLU, Sigmoid, Tanh, GELU, SiLU, Hardswish, LeakyReLU, ReLU6, Hardsigmoid)


# -- row-wise layers -------------------------------------------------------------------

class _RowWise(Layer):
    """Layers that need a whole feature row (the last axis)."""

    def __init__(self, dim=-1):
        super().__init__()
        if dim not in (-1, 1):
            raise ValueError(f"{type(self).__name__}: only dim=-1 (the feature axis) is supported, got {dim!r}")
        self.dim = dim

    def config(self):
        return {"dim": self.dim}


class Softmax(_RowWise):
    """PyTorch's nn.Softmax(dim): over any dim but the batch (dim 0); -1, the last, by default."""

    def __init__(self, dim=-1):
        Layer.__init__(self)
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim == 0:
            raise ValueError(f"{type(self).__name__}: dim must be a non-zero int (dim 0 is the batch), got {dim!r}")
        self.dim = int(dim)

    def split(self, shape):
        """(outer, m, inner): the per-sample ``shape`` as [outer, m, inner] with dim the middle one."""
        r = len(shape)
        a = self.dim - 1 if self.dim > 0 else r + self.dim
        if not 0 <= a < r:
            raise ValueError(f"{self!r}: dim {self.dim} is out of range for inputs of shape "
                             f"(N, {', '.join(map(str, shape))}); expected 1..{r} or -{r}..-1")
        return int(np.prod(shape[:a])), int(shape[a]), int(np.prod(shape[a + 1:]))

    def output_shape(self, shape):
        self.split(shape)
        return shape

    def __repr__(self):
        return f"{type(self).__name__}()" if self.dim == -1 else f"{type(self).__name__}(dim={self.dim})"


class LogSoftmax(Softmax):
    pass


class ArgMax(_RowWise):
    """Index of the largest feature per row (the first one on ties; the last with ONNX's
    select_last_index=True); int64 output."""

    def __init__(self, dim=-1, select_last_index=False):
        super().__init__(dim)
        self.select_last_index = bool(select_last_index)

    def output_shape(self, shape):
        return ()

    def config(self):
        return {"dim": self.dim, **({"select_last_index": True} if self.select_last_index else {})}


class TopK(_RowWise):
    """The k largest features per row, descending: returns (values, indices)."""

    def __init__(self, k, dim=-1):
        super().__init__(dim)
        self.k = _positive_int(k, "k", "TopK")

    def output_shape(self, shape):
        if shape[-1] < self.k:
            raise ValueError(f"TopK(k={self.k}) needs at least {self.k} features, got {shape[-1]}")
        return (self.k,)

    def config(self):
        return {"k": self.k, "dim": self.dim}

    def __repr__(self):
        return f"TopK(k={self.k})"


class LayerNorm(_RowWise):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the feature axis."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, weight=None, bias=None):
        super().__init__()
        if isinstance(normalized_shape, (tuple, list)):
            if len(normalized_shape) != 1:
                raise ValueError(f"LayerNorm: only the last axis can be normalised, got {normalized_shape!r}")
            normalized_shape = normalized_shape[0]
        self.features = _positive_int(normalized_shape, "normalized_shape", "LayerNorm")
        self.eps = float(eps)
        name = f"LayerNorm({self.features})"
        self.params["weight"] = _vector(weight if elementwise_affine else None, self.features, "weight", name, 1.0)
        self.params["bias"] = _vector(bias if elementwise_affine else None, self.features, "bias", name, 0.0)

    output_shape = _features_shape

    def config(self):
        return {"normalized_shape": self.features, "eps": self.eps}

    def __repr__(self):
        return f"LayerNorm({self.features}, eps={self.eps})"
