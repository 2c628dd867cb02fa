"""Dense layers over [N, F]: Linear, the activations, and the row-wise layers (softmax, argmax, top-k, layer norm)."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _bias_arg, _param, _positive_int


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


def _finite(v, what, layer, inf=False):
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or np.isnan(v) \
            or not (inf or np.isfinite(v)):
        raise ValueError(f"{layer}: {what} must be a {'' if inf else 'finite '}number, got {v!r}")
    return float(v)


class Hardtanh(_Elementwise):
    """min(max(x, min_val), max_val), as PyTorch's nn.Hardtanh (torch.clamp with both bounds; an
    infinite bound: one side only); where min_val > max_val every output is max_val (ONNX Clip's
    min(max(x, min), max))."""
    act = "hardtanh"

    def __init__(self, min_val=-1.0, max_val=1.0):
        super().__init__()
        self.min_val = _finite(min_val, "min_val", "Hardtanh", inf=True)
        self.max_val = _finite(max_val, "max_val", "Hardtanh", inf=True)
        self.alpha = (self.min_val, self.max_val)

    def config(self):
        return {"min_val": self.min_val, "max_val": self.max_val}


class HardSigmoid(_Elementwise):
    """max(0, min(1, alpha * x + beta)), ONNX's HardSigmoid (PyTorch's nn.Hardsigmoid is
    alpha=1/6, beta=0.5: shmrt.Hardsigmoid)."""
    act = "hard_sigmoid"

    def __init__(self, alpha=0.2, beta=0.5):
        super().__init__()
        self.alpha = (_finite(alpha, "alpha", "HardSigmoid"), _finite(beta, "beta", "HardSigmoid"))

    def config(self):
        return {"alpha": self.alpha[0], "beta": self.alpha[1]}


ACTIVATIONS = (ReLU, Sigmoid, Tanh, GELU, SiLU, Hardswish, LeakyReLU, ReLU6, Hardsigmoid, Hardtanh)


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
    """Index of the largest value along the last dim (torch.argmax(x, dim=-1)): one per row of
    [N, F], per (n, t) of [N, T, F], ...; the first one on ties, the last with ONNX's
    select_last_index=True; int64 output of the input's shape without its last dim."""

    def __init__(self, dim=-1, select_last_index=False):
        super().__init__(dim)
        self.select_last_index = bool(select_last_index)

    def output_shape(self, shape):
        if self.dim == 1 and len(shape) > 1:
            raise ValueError(f"{self!r}: dim=1 of inputs of shape (N, {', '.join(map(str, shape))}) is not the last "
                             f"dim; expected dim=-1")
        return tuple(shape[:-1])

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


def _trailing(shape, what, layer):
    """normalized_shape / dim as a tuple of positive sizes."""
    if isinstance(shape, (tuple, list)):
        if not shape:
            raise ValueError(f"{layer}: {what} must name at least one dimension, got {shape!r}")
        return tuple(_positive_int(v, what, layer) for v in shape)
    return (_positive_int(shape, what, layer),)


class LayerNorm(_RowWise):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the trailing dims ``normalized_shape``
    (an int: the last dim), as PyTorch's nn.LayerNorm; weight and bias have shape normalized_shape."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, weight=None, bias=None):
        super().__init__()
        self.normalized_shape = _trailing(normalized_shape, "normalized_shape", "LayerNorm")
        self.features = int(np.prod(self.normalized_shape))  # floats normalised together
        self.eps = float(eps)
        name = f"LayerNorm({self._shape_arg()})"
        for k, v, d in (("weight", weight, 1.0), ("bias", bias, 0.0)):
            v = v if elementwise_affine else None
            if v is not None and np.shape(v) == (self.features,):  # flat: as ONNX and shmrt before 2026-12 give it
                v = np.reshape(v, self.normalized_shape)
            self.params[k] = (np.full(self.normalized_shape, d, np.float32) if v is None else
                              _param(v, self.normalized_shape, k, name, 1))

    def _shape_arg(self):
        s = self.normalized_shape
        return s[0] if len(s) == 1 else list(s)

    def output_shape(self, shape):
        k = len(self.normalized_shape)
        if len(shape) < k or tuple(shape[len(shape) - k:]) != self.normalized_shape:
            raise ValueError(f"{self!r} expects inputs of shape (N, ..., {', '.join(map(str, self.normalized_shape))}), "
                             f"got (N, {', '.join(map(str, shape))})")
        return tuple(shape)

    def config(self):
        return {"normalized_shape": self._shape_arg(), "eps": self.eps}

    def __repr__(self):
        return f"LayerNorm({self._shape_arg()}, eps={self.eps})"


class _TrailingStat(Layer):
    """A statistic over the trailing ``ndim`` dims of each sample, one float per group of them:
    output (..., 1, ..., 1) with keepdim, else the leading dims (at least one)."""

    def __init__(self, ndim, keepdim, eps):
        super().__init__()
        self.ndim = _positive_int(ndim, "the number of trailing dims", type(self).__name__)
        self.keepdim, self.eps = bool(keepdim), float(eps)

    def group(self, shape):
        """Floats per group: the product of the trailing dims."""
        if len(shape) < self.ndim:
            raise ValueError(f"{self!r}: needs inputs of at least {self.ndim} dims after the batch, got "
                             f"(N, {', '.join(map(str, shape))})")
        return int(np.prod(shape[len(shape) - self.ndim:]))

    def output_shape(self, shape):
        self.group(shape)
        lead = tuple(shape[:len(shape) - self.ndim])
        if self.keepdim:
            return lead + (1,) * self.ndim
        if not lead:
            raise ValueError(f"{self!r}: reduces every dim of (N, {', '.join(map(str, shape))}); use keepdim=True")
        return lead


class Mean(_TrailingStat):
    """x.mean(dim, keepdim) over trailing dims, as torch.mean: dim a tuple running to the last dim
    (-1, (-2, -1), (2, 3) of [N, C, H, W], ...); one float per group of those dims."""

    def __init__(self, dim=-1, keepdim=False):
        dims = sorted(int(d) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
        if not dims or any(d == 0 for d in dims) or (all(d < 0 for d in dims) and dims != list(range(-len(dims), 0))) \
                or (all(d > 0 for d in dims) and dims != list(range(dims[0], dims[0] + len(dims)))) \
                or (any(d < 0 for d in dims) and any(d > 0 for d in dims)):
            raise ValueError(f"Mean: dim must be trailing dims after the batch (e.g. -1, (-2, -1), (2, 3) of "
                             f"[N, C, H, W]), got {dim!r}")
        self.dim = tuple(dims)
        super().__init__(len(dims), keepdim, 0.0)

    def group(self, shape):
        if self.dim[0] > 0 and self.dim[-1] != len(shape):
            raise ValueError(f"{self!r}: dims {self.dim} are not the trailing dims of (N, {', '.join(map(str, shape))})")
        return super().group(shape)

    def config(self):
        return {"dim": list(self.dim), "keepdim": self.keepdim}

    def __repr__(self):
        return f"Mean(dim={self.dim}, keepdim={self.keepdim})"


class RStd(_TrailingStat):
    """1 / sqrt(var + eps) over the trailing ``len(normalized_shape)`` dims (biased variance):
    LayerNorm's statistic, the rstd torch.native_layer_norm returns (shape (..., 1, ..., 1)) and
    ONNX LayerNormalization's InvStdDev output."""

    def __init__(self, normalized_shape, eps=1e-5):
        self.normalized_shape = _trailing(normalized_shape, "normalized_shape", "RStd")
        super().__init__(len(self.normalized_shape), True, eps)

    def group(self, shape):
        k = len(self.normalized_shape)
        if tuple(shape[len(shape) - k:]) != self.normalized_shape:
            raise ValueError(f"{self!r} expects inputs of shape (N, ..., {', '.join(map(str, self.normalized_shape))}), "
                             f"got (N, {', '.join(map(str, shape))})")
        return super().group(shape)

    def config(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps}

    def __repr__(self):
        return f"RStd({list(self.normalized_shape)}, eps={self.eps})"
