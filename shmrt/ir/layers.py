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

from shmrt.kernels.recurrent import CELLS, GATES

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
    """An activation: act names the kernels' function (shmrt.kernels.activations.ACT_NAMES);
    alpha is its one parameter where it has one (fused into the layer before only when None)."""
    act = "identity"
    alpha = None


class ReLU(_Elementwise):
    act = "relu"


class Sigmoid(_Elementwise):
    act = "sigmoid"


class Tanh(_Elementwise):
    act = "tanh"


class GELU(_Elementwise):
    """GELU; approximate='none' (erf, exact) or 'tanh', as in PyTorch."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.act = "gelu" if approximate == "none" else "gelu_tanh"

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


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

    def __repr__(self):
        return f"LeakyReLU(negative_slope={self.negative_slope!r})"


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
            if isinstance(l, (ArgMax, TopK)):
                raise ValueError(f"Sequential: {l!r} must be the last layer, found at position {i}")
        self.layers = layers
        self._input_shape = None
        if input_shape is not None:
            shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
            if (shape is None or not 1 <= len(shape) <= 3 or any(
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in shape)):
                raise ValueError(f"Sequential: input_shape must be (F,), (T, F) or (C, H, W) with positive ints, "
                                 f"got {input_shape!r}")
            self._input_shape = tuple(int(v) for v in shape)
        self.classes = None
        if classes is not None:
            labels = np.asarray(classes)
            if labels.ndim != 1 or labels.size < 2 or labels.dtype.kind not in "iubUSf":
                raise ValueError(f"Sequential: classes must be a 1-D list of at least 2 labels (numbers or "
                                 f"strings), got {classes!r}")
            self.classes = labels
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
        uncompressed .npz); ``shmrt.load(path)`` reads it back bit-exact.  See shmrt/native.py."""
        from shmrt.ir import native
        native.save(self, path)

    def __iter__(self):
        return iter(self.layers)

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return "Sequential([\n" + "".join(f"  {l!r},\n" for l in self.layers) + "])"


# -- preprocessing and normalisation ------------------------------------------

def _features_shape(self, shape):
    """output_shape of layers over exactly ``self.features`` features: the same shape."""
    if tuple(shape) != (self.features,):
        raise ValueError(f"{self!r} expects inputs of shape (N, {self.features}), "
                         f"got (N, {', '.join(map(str, shape))})")
    return shape


def _vector(value, n, name, layer, default):
    if value is None:
        return np.full(n, default, np.float32)
    return _param(value, (n,), name, layer, 1)


class _Affine(Layer):
    """y = x * scale + shift per feature; ``affine()`` gives (scale, shift) in float64."""

    features: int

    def _vectors(self, **arrays):
        """Per-feature parameters: the first fixes the feature count."""
        name = type(self).__name__
        first_name, first = next(iter(arrays.items()))
        first = np.asarray(first)
        if first.ndim != 1 or first.size == 0:
            raise ValueError(f"{name}: {first_name} must be a non-empty 1-D array, got shape {first.shape}")
        self.features = first.size
        for k, v in arrays.items():
            self.params[k] = _param(v, (self.features,), k, name, 1)

    def input_shape(self):
        return (self.features,)

    output_shape = _features_shape


class Standardize(_Affine):
    """Preprocessing: y = (x - mean) / std, per feature (scikit-learn's StandardScaler)."""

    def __init__(self, mean, std):
        super().__init__()
        self._vectors(mean=mean, std=std)
        if np.any(self.params["std"] == 0) or not np.all(np.isfinite(self.params["std"])):
            raise ValueError("Standardize: std must be finite and non-zero for every feature")

    def affine(self):
        s = 1.0 / self.params["std"].astype(np.float64)
        return s, -self.params["mean"].astype(np.float64) * s

    def __repr__(self):
        return f"Standardize({self.features} features)"


class MinMaxScale(_Affine):
    """Preprocessing: y = (x - min) / (max - min), per feature (to [0, 1])."""

    def __init__(self, min, max):
        super().__init__()
        self._vectors(min=min, max=max)
        if np.any(self.params["max"] <= self.params["min"]):
            raise ValueError("MinMaxScale: max must be greater than min for every feature")

    def affine(self):
        lo, hi = self.params["min"].astype(np.float64), self.params["max"].astype(np.float64)
        s = 1.0 / (hi - lo)
        return s, -lo * s

    def __repr__(self):
        return f"MinMaxScale({self.features} features)"


class BatchNorm1d(_Affine):
    """Inference BatchNorm over features: folded into a Linear right before it
    at compile time, otherwise a per-feature affine step."""

    def __init__(self, num_features, eps=1e-5, weight=None, bias=None, running_mean=None, running_var=None):
        super().__init__()
        self.features = _positive_int(num_features, "num_features", type(self).__name__)
        self.eps = float(eps)
        n, name = self.features, f"{type(self).__name__}({num_features})"
        self.params["weight"] = _vector(weight, n, "weight", name, 1.0)
        self.params["bias"] = _vector(bias, n, "bias", name, 0.0)
        self.params["running_mean"] = _vector(running_mean, n, "running_mean", name, 0.0)
        self.params["running_var"] = _vector(running_var, n, "running_var", name, 1.0)
        if np.any(self.params["running_var"] < 0):
            raise ValueError(f"{name}: running_var must be >= 0")

    def affine(self):
        p = {k: v.astype(np.float64) for k, v in self.params.items()}
        s = p["weight"] / np.sqrt(p["running_var"] + self.eps)
        return s, p["bias"] - p["running_mean"] * s

    def __repr__(self):
        return f"BatchNorm1d({self.features})"


class Select(Layer):
    """Preprocessing: keep the features ``indices`` (a list of ints, or a slice)."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices
        if not isinstance(indices, slice):
            idx = np.asarray(indices)
            if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
                raise ValueError(f"Select: indices must be a slice or a non-empty 1-D list of ints, got {indices!r}")

    def resolve(self, features):
        if isinstance(self.indices, slice):
            idx = np.arange(features)[self.indices]
        else:
            idx = np.asarray(self.indices, dtype=np.int64)
            bad = idx[(idx < -features) | (idx >= features)]
            if bad.size:
                raise ValueError(f"Select: index {int(bad[0])} is out of range for {features} features")
            idx = idx % features
        if idx.size == 0:
            raise ValueError(f"Select({self.indices!r}) selects no feature out of {features}")
        return idx

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"Select works on dense [N, F] inputs, got (N, {', '.join(map(str, shape))})")
        return (self.resolve(shape[0]).size,)

    def __repr__(self):
        return f"Select({self.indices!r})"


class Dropout(Layer):
    """Identity at inference (kept so that models move in unchanged)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p!r}")
        self.p = p


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

    def __repr__(self):
        return f"LayerNorm({self.features}, eps={self.eps})"


# -- recurrent layers ------------------------------------------------------------

class _Recurrent(Layer):
    """RNN / LSTM / GRU, batch-first [N, T, F] -> [N, T, H] (return_sequences)
    or [N, H] (the last step).  PyTorch's names: weight_ih_l{k} [G*H, F_k],
    weight_hh_l{k} [G*H, H], bias_ih_l{k}, bias_hh_l{k}; gates i, f, g, o
    (LSTM) and r, z, n (GRU).  h0 / c0: optional initial state
    [num_layers, H], the same for every sequence (zeros if left out)."""

    cell = "rnn_tanh"  # the kernels' name of the cell (shmrt.kernels.recurrent.CELLS)

    @property
    def mode(self) -> int:
        """The cell's code: 0 RNN tanh, 1 RNN relu, 2 LSTM, 3 GRU."""
        return CELLS.index(self.cell)

    @property
    def gates(self) -> int:
        return GATES[self.mode]

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=True,
                 return_sequences=True, h0=None, c0=None, **params):
        super().__init__()
        name = f"{type(self).__name__}({input_size}, {hidden_size})"
        self.input_size = _positive_int(input_size, "input_size", name)
        self.hidden_size = H = _positive_int(hidden_size, "hidden_size", name)
        self.num_layers = _positive_int(num_layers, "num_layers", name)
        if batch_first is not True:
            raise ValueError(f"{name}: only batch_first=True ([N, T, F]) is supported, got {batch_first!r}")
        self.return_sequences = bool(return_sequences)
        self.bias = bool(bias)
        G = self.gates
        known = set()
        for k in range(self.num_layers):
            fin = self.input_size if k == 0 else H
            for pname, shape in ((f"weight_ih_l{k}", (G * H, fin)), (f"weight_hh_l{k}", (G * H, H))) + (
                    ((f"bias_ih_l{k}", (G * H,)), (f"bias_hh_l{k}", (G * H,))) if self.bias else ()):
                self.params[pname] = _param(params.get(pname), shape, pname, name, H)
                known.add(pname)
        extra = set(params) - known
        if extra:
            raise TypeError(f"{name}: unexpected parameter(s) {sorted(extra)}; expected some of {sorted(known)}")
        if h0 is not None:
            self.params["h0"] = _param(h0, (self.num_layers, H), "h0", name, 1)
        if c0 is not None:
            if self.cell != "lstm":
                raise ValueError(f"{name}: c0 is for LSTM only")
            self.params["c0"] = _param(c0, (self.num_layers, H), "c0", name, 1)

    def output_shape(self, shape):
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ValueError(f"{self!r} expects inputs of shape (N, T, {self.input_size}), "
                             f"got (N, {', '.join(map(str, shape))})")
        return (shape[0], self.hidden_size) if self.return_sequences else (self.hidden_size,)

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"return_sequences={self.return_sequences})")


class RNN(_Recurrent):
    """Elman RNN: h = act(x W_ih^T + b_ih + h W_hh^T + b_hh); nonlinearity 'tanh' or 'relu'."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.cell = "rnn_tanh" if nonlinearity == "tanh" else "rnn_relu"
        super().__init__(input_size, hidden_size, num_layers, **kw)


class LSTM(_Recurrent):
    cell = "lstm"


class GRU(_Recurrent):
    cell = "gru"


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


# -- convolutional layers -------------------------------------------------------

def _pair(v, what, layer, minimum=1):
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(t) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < minimum for a in t):
        raise ValueError(f"{layer}: {what} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


def _out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


class Conv2d(Layer):
    """2-D convolution over [N, C, H, W]; weight [out, in/groups, kh, kw] (PyTorch's)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, weight=None):
        super().__init__()
        name = f"Conv2d({in_channels}, {out_channels}, {kernel_size})"
        self.in_channels = _positive_int(in_channels, "in_channels", name)
        self.out_channels = _positive_int(out_channels, "out_channels", name)
        self.groups = _positive_int(groups, "groups", name)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{name}: in_channels and out_channels must be divisible by groups={groups}")
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride, "stride", name)
        self.dilation = _pair(dilation, "dilation", name)
        if padding == "valid":
            padding = 0
        elif padding == "same":
            if self.stride != (1, 1):
                raise ValueError(f"{name}: padding='same' needs stride 1, got stride={stride!r}")
            tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            if any(t % 2 for t in tot):
                raise ValueError(f"{name}: padding='same' with an even effective kernel is not supported")
            padding = (tot[0] // 2, tot[1] // 2)
        self.padding = _pair(padding, "padding", name, minimum=0)
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        self.params["weight"] = _param(weight, (self.out_channels, self.in_channels // self.groups, kh, kw),
                                       "weight", name, fan_in)
        if bias is True:
            bias = None
        elif bias is False or bias is None:
            bias = False
        if bias is not False:
            self.params["bias"] = _param(bias, (self.out_channels,), "bias", name, fan_in)

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.in_channels}, H, W), "
                             f"got (N, {', '.join(map(str, shape))})")
        oh = _out_size(shape[1], self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        ow = _out_size(shape[2], self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input {shape[1]}x{shape[2]} is too small for the kernel (output {oh}x{ow})")
        return (self.out_channels, oh, ow)

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups})")


class _Pool2d(Layer):
    is_max = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride if stride is not None else kernel_size, "stride", name)
        self.padding = _pair(padding, "padding", name, minimum=0)
        self.dilation = _pair(dilation, "dilation", name)
        if ceil_mode:
            raise ValueError(f"{name}: ceil_mode=True is not supported")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding must be at most half the kernel size, got {padding!r}")
        self.count_include_pad = bool(count_include_pad)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects inputs of shape (N, C, H, W), got (N, {', '.join(map(str, shape))})")
        oh = _out_size(shape[1], self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        ow = _out_size(shape[2], self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input {shape[1]}x{shape[2]} is too small for the window")
        return (shape[0], oh, ow)

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class MaxPool2d(_Pool2d):
    is_max = True


class AvgPool2d(_Pool2d):
    is_max = False

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, count_include_pad)


class GlobalAvgPool(Layer):
    """[N, C, H, W] -> [N, C]: the mean of each channel."""

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"GlobalAvgPool expects inputs of shape (N, C, H, W), got (N, {', '.join(map(str, shape))})")
        return (shape[0],)


class Flatten(Layer):
    """[N, ...] -> [N, prod(...)]; free (the layout is already row-major)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        if (start_dim, end_dim) != (1, -1):
            raise ValueError(f"Flatten: only start_dim=1, end_dim=-1 is supported, got ({start_dim}, {end_dim})")

    def output_shape(self, shape):
        return (int(np.prod(shape)),)


class BatchNorm2d(BatchNorm1d):
    """Inference BatchNorm over channels of [N, C, H, W]: folded into a Conv2d
    right before it, otherwise a per-channel affine step."""

    def input_shape(self):
        return None

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.features:
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.features}, H, W), "
                             f"got (N, {', '.join(map(str, shape))})")
        return shape

    def __repr__(self):
        return f"BatchNorm2d({self.features})"
