"""Convolutional layers over [N, C, H, W]: Conv2d, BatchNorm2d, the pools, and Flatten back to [N, F]."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _bias_arg, _param, _positive_int
from shmrt.ir.dense import TopK
from shmrt.ir.norm import BatchNorm1d


def _pair(v, what, layer, minimum=1):
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(t) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < minimum for a in t):
        raise ValueError(f"{layer}: {what} must be an int >= {minimum} or a pair of them, got {v!r}")
    return int(t[0]), int(t[1])


def _out_size(n, k, s, p, d, p_end=None, ceil_mode=False):
    """Output size along one axis: padding p before and p_end (default p) after; in ceil mode the last
    window must start inside the input or the leading padding (PyTorch's and ONNX's rule)."""
    span = n + p + (p if p_end is None else p_end) - d * (k - 1) - 1
    if span < 0:
        return 0
    o = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (o - 1) * s >= n + p:
        o -= 1
    return o


def _pads_arg(padding, pads, layer):
    """(top, left, bottom, right) from PyTorch's symmetric ``padding`` or ONNX's explicit ``pads``
    [top, left, bottom, right] (given in place of padding: then padding must stay 0)."""
    if pads is None:
        ph, pw = _pair(padding, "padding", layer, minimum=0)
        return (ph, pw, ph, pw), False
    t = tuple(pads) if isinstance(pads, (tuple, list)) else None
    if t is None or len(t) != 4 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) or a < 0
                                       for a in t):
        raise ValueError(f"{layer}: pads must be 4 ints >= 0 [top, left, bottom, right], got {pads!r}")
    if _pair(padding, "padding", layer, minimum=0) != (0, 0):
        raise ValueError(f"{layer}: give padding or pads, not both (got padding={padding!r}, pads={pads!r})")
    return tuple(int(a) for a in t), True


def _sym(pads):
    """PyTorch's padding pair where pads are symmetric, else None (asymmetric: only ``pads`` says it)."""
    t, l, b, r = pads
    return (t, l) if (t, l) == (b, r) else None


class Conv2d(Layer):
    """2-D convolution over [N, C, H, W]; weight [out, in/groups, kh, kw] (PyTorch's)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, weight=None, *, pads=None):
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
        self.pads, _ = _pads_arg(padding, pads, name)  # (top, left, bottom, right); pads: ONNX's, may be asymmetric
        self.padding = _sym(self.pads)  # PyTorch's pair, None where the padding is asymmetric
        kh, kw = self.kernel_size
        fan_in = self.in_channels // self.groups * kh * kw
        self.params["weight"] = _param(weight, (self.out_channels, self.in_channels // self.groups, kh, kw),
                                       "weight", name, fan_in)
        bias = _bias_arg(bias)
        if bias is not False:
            self.params["bias"] = _param(bias, (self.out_channels,), "bias", name, fan_in)

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.in_channels}, H, W), "
                             f"got (N, {', '.join(map(str, shape))})")
        t, l, b, r = self.pads
        oh = _out_size(shape[1], self.kernel_size[0], self.stride[0], t, self.dilation[0], b)
        ow = _out_size(shape[2], self.kernel_size[1], self.stride[1], l, self.dilation[1], r)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input {shape[1]}x{shape[2]} is too small for the kernel (output {oh}x{ow})")
        return (self.out_channels, oh, ow)

    def config(self):
        c = {k: getattr(self, k) for k in ("in_channels", "out_channels", "kernel_size", "stride", "dilation",
                                            "groups")}
        if self.padding is not None:
            c["padding"] = self.padding
        else:
            c["pads"] = list(self.pads)
        if "bias" not in self.params:
            c["bias"] = False
        return c

    def __repr__(self):
        pad = f"padding={self.padding}" if self.padding is not None else f"pads={self.pads}"
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, {pad}, dilation={self.dilation}, groups={self.groups})")


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


class _Pool2d(Layer):
    """MaxPool2d / AvgPool2d.  ``padding`` is PyTorch's (symmetric, at most half the kernel); ``pads``
    [top, left, bottom, right] is ONNX's explicit form, given in place of padding (ONNX import): it may be
    asymmetric and larger than half the kernel.  ``self.pads`` always holds the four; ``self.padding``
    is PyTorch's pair, None where the padding is asymmetric."""
    is_max = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, count_include_pad=True,
                 pads=None):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride if stride is not None else kernel_size, "stride", name)
        self.dilation = _pair(dilation, "dilation", name)
        self.pads, explicit = _pads_arg(padding, pads, name)
        self.padding = _sym(self.pads)
        if not explicit and any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding must be at most half the kernel size, got {padding!r} for "
                             f"kernel_size={self.kernel_size} (PyTorch's rule; ONNX's larger pads go through pads=)")
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects inputs of shape (N, C, H, W), got (N, {', '.join(map(str, shape))})")
        t, l, b, r = self.pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        oh = _out_size(shape[1], kh, sh, t, dh, b, self.ceil_mode)
        ow = _out_size(shape[2], kw, sw, l, dw, r, self.ceil_mode)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input {shape[1]}x{shape[2]} is too small for the window")
        if self.is_max or not self.count_include_pad:  # a window of padding only has no value to give
            for n, o, k, s, d, p, axis in ((shape[1], oh, kh, sh, dh, t, "row"), (shape[2], ow, kw, sw, dw, l, "column")):
                for q in range(o):
                    if not any(0 <= q * s - p + i * d < n for i in range(k)):
                        raise ValueError(f"{self!r}: over input {shape[1]}x{shape[2]}, output {axis} {q}'s window "
                                         f"lies wholly in the padding; expected every window to hold an input value")
        return (shape[0], oh, ow)

    def config(self):
        c = {"kernel_size": self.kernel_size, "stride": self.stride}
        if self.padding is not None and all(2 * p <= k for p, k in zip(self.padding, self.kernel_size)):
            c["padding"] = self.padding
        else:
            c["pads"] = list(self.pads)
        if self.ceil_mode:
            c["ceil_mode"] = True
        return c

    def __repr__(self):
        pad = f"padding={self.padding}" if self.padding is not None else f"pads={self.pads}"
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, {pad}"
                + (", ceil_mode=True)" if self.ceil_mode else ")"))


class MaxPool2d(_Pool2d):
    """PyTorch's MaxPool2d (NaN propagates: a window holding one gives NaN).  ``indices`` is ONNX
    MaxPool's second output Indices, returned with the values as a ``(values, indices)`` pair (as
    TopK's), so the layer must be the model's last: int64, the flat index into the whole input
    [N, C, H, W] of each window's max, the batch row counted -- "row": n*C*H*W + c*H*W + h*W + w
    (storage_order=0), "col": n*C*H*W + c*H*W + w*H + h (storage_order=1).  Only input positions can
    be the max (never padding); ties go to the first in scan order, a NaN window to its first NaN.
    PyTorch's return_indices (per-plane indices) is not supported."""
    is_max = True

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False, ceil_mode=False, *,
                 pads=None, indices=None):
        if return_indices:
            raise ValueError("MaxPool2d: return_indices=True is not supported (PyTorch's per-plane indices); "
                             "expected False (ONNX's flat Indices: indices='row' or 'col')")
        if indices not in (None, "row", "col"):
            raise ValueError(f"MaxPool2d: indices must be None, 'row' or 'col' (ONNX's storage_order 0 or 1), "
                             f"got {indices!r}")
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, True, pads)
        self.indices = indices

    def config(self):
        c = dict(super().config(), dilation=self.dilation)
        if self.indices is not None:
            c["indices"] = self.indices
        return c


def returns_indices(layer) -> bool:
    """A layer that returns (values, indices) and so must be a model's last: TopK, or a MaxPool2d with
    ONNX's Indices."""
    return isinstance(layer, TopK) or (isinstance(layer, MaxPool2d) and layer.indices is not None)


class AvgPool2d(_Pool2d):
    """PyTorch's AvgPool2d (divisor_override=None); ``pads`` and ``dilation`` are ONNX's AveragePool
    extensions (PyTorch's has neither): the divisor counts the window's taps inside the image, or
    inside the padded image with count_include_pad."""
    is_max = False

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None, *, pads=None, dilation=1):
        if divisor_override is not None:
            raise ValueError(f"AvgPool2d: divisor_override={divisor_override!r} is not supported; only None")
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode, count_include_pad, pads)

    def config(self):
        c = dict(super().config(), count_include_pad=self.count_include_pad)
        if self.dilation != (1, 1):
            c["dilation"] = self.dilation
        return c


class GlobalAvgPool(Layer):
    """[N, C, H, W] -> [N, C]: the mean of each channel."""

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"GlobalAvgPool expects inputs of shape (N, C, H, W), "
                             f"got (N, {', '.join(map(str, shape))})")
        return (shape[0],)


class Flatten(Layer):
    """[N, ...] -> [N, prod(...)]; free (the layout is already row-major)."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        if (start_dim, end_dim) != (1, -1):
            raise ValueError(f"Flatten: only start_dim=1, end_dim=-1 is supported, got ({start_dim}, {end_dim})")

    def output_shape(self, shape):
        return (int(np.prod(shape)),)


class Reshape(Layer):
    """[N, ...] -> [N, *shape] with the same elements in the same order (the batch axis stays); free:
    the planner reads the producer's memory under the new shape.  shape may hold one -1."""

    def __init__(self, *shape):
        super().__init__()
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        if not 1 <= len(shape) <= 3 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or
                                           (v < 1 and v != -1) for v in shape) or list(shape).count(-1) > 1:
            raise ValueError(f"Reshape: shape must be 1 to 3 positive sizes (one may be -1), batch excluded, "
                             f"got {shape!r}")
        self.shape = tuple(int(v) for v in shape)

    def output_shape(self, shape):
        n = int(np.prod(shape))
        known = int(np.prod([v for v in self.shape if v != -1]))
        out = tuple(n // known if v == -1 else v for v in self.shape)
        if int(np.prod(out)) != n:
            raise ValueError(f"{self!r}: cannot reshape (N, {', '.join(map(str, shape))}) ({n} values a sample) to "
                             f"(N, {', '.join(map(str, self.shape))})")
        return out

    def config(self):
        return {"shape": list(self.shape)}

    @classmethod
    def from_config(cls, config, params):
        return cls(*config["shape"])

    def __repr__(self):
        return f"Reshape{self.shape}"


class Upsample(Layer):
    """[N, C, H, W] -> [N, C, OH, OW] (PyTorch's nn.Upsample / F.interpolate; ONNX's Resize): size=(OH, OW),
    or scale_factor s (a number or a pair; OH = floor(H * s), and s maps the coordinates).  mode "nearest"
    or "bilinear".  PyTorch's defaults: nearest takes the source pixel floor(o / s); bilinear samples at
    the half-pixel centres (edges clamped), or with align_corners=True at aligned corners.  ONNX's
    other forms: coordinate_transformation_mode "half_pixel", "pytorch_half_pixel", "align_corners",
    "asymmetric" or "half_pixel_symmetric" (half_pixel centred where the length in * scale is rounded), and for nearest nearest_mode "floor", "ceil", "round_prefer_floor", "round_prefer_ceil"."""

    CTMS = ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric")
    NEAREST = ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil")

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None,
                 coordinate_transformation_mode=None, nearest_mode=None):
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
        if (size is None) == (scale_factor is None):
            raise ValueError(f"Upsample: give exactly one of size and scale_factor, got size={size!r}, "
                             f"scale_factor={scale_factor!r}")
        if mode == "nearest" and align_corners:
            raise ValueError("Upsample: align_corners applies to mode='bilinear' only")
        ctm = coordinate_transformation_mode
        if ctm is not None and ctm not in self.CTMS:
            raise ValueError(f"Upsample: coordinate_transformation_mode must be one of {self.CTMS}, got {ctm!r}")
        if nearest_mode is not None and (nearest_mode not in self.NEAREST or mode != "nearest"):
            raise ValueError(f"Upsample: nearest_mode (mode='nearest' only) must be one of {self.NEAREST}, got "
                             f"{nearest_mode!r}")
        self.size = None if size is None else _pair(size, "size", "Upsample")
        sf = None
        if scale_factor is not None:
            t = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
            if len(t) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                                  or not np.isfinite(v) or v <= 0 for v in t):
                raise ValueError(f"Upsample: scale_factor must be a positive number or a pair of them, got "
                                 f"{scale_factor!r}")
            sf = tuple(int(v) if float(v) == int(v) else float(v) for v in t)
        self.scale_factor, self.mode, self.align_corners = sf, mode, bool(align_corners)
        self._onnx = ctm is not None  # ONNX's coordinates: with scales, the resized length is in * scale, unrounded
        self.coordinate_transformation_mode = ctm or (
            "asymmetric" if mode == "nearest" else "align_corners" if align_corners else "half_pixel")
        self.nearest_mode = nearest_mode or ("floor" if mode == "nearest" else None)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects inputs of shape (N, C, H, W), got (N, {', '.join(map(str, shape))})")
        out = self.size if self.size is not None else tuple(int(np.floor(n * s + 1e-9)) for n, s in
                                                            zip(shape[1:], self.scale_factor))
        if min(out) < 1:
            raise ValueError(f"{self!r}: input {shape[1]}x{shape[2]} gives an empty output {out[0]}x{out[1]}")
        return (shape[0], *out)

    def taps(self, n_in, n_out, axis):
        """Per output index along spatial axis ``axis`` (0: rows, 1: columns), float64 arrays (i0, i1, w):
        the output is x[i0] * (1 - w) + x[i1] * w (nearest: i1 = i0, w = 0)."""
        scale = self.scale_factor[axis] if self.scale_factor is not None else n_out / n_in
        length = n_in * scale if self._onnx else n_out  # the resized length the coordinates divide by
        o = np.arange(n_out, dtype=np.float64)
        ctm = self.coordinate_transformation_mode
        if ctm == "align_corners":
            src = o * (n_in - 1) / (length - 1) if length != 1 else np.zeros(n_out)
        elif ctm == "asymmetric":
            src = o / scale
        elif ctm == "pytorch_half_pixel" and length <= 1:
            src = np.zeros(n_out)
        elif ctm == "half_pixel_symmetric":  # ONNX: the input's centre maps to the output canvas's centre
            src = n_in / 2 * (1 - n_out / length) + (o + 0.5) / scale - 0.5
        else:
            src = (o + 0.5) / scale - 0.5
        if self.mode == "nearest":
            nm = self.nearest_mode
            i0 = {"floor": np.floor(src), "ceil": np.ceil(src), "round_prefer_floor": np.ceil(src - 0.5),
                  "round_prefer_ceil": np.floor(src + 0.5)}[nm]
            i0 = np.clip(i0, 0, n_in - 1)
            return i0, i0, np.zeros(n_out)
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    def config(self):
        return {"size": None if self.size is None else list(self.size),
                "scale_factor": None if self.scale_factor is None else list(self.scale_factor),
                "mode": self.mode, "align_corners": self.align_corners,
                "coordinate_transformation_mode": self.coordinate_transformation_mode if self._onnx else None,
                "nearest_mode": self.nearest_mode}

    def __repr__(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        default = "asymmetric" if self.mode == "nearest" else "align_corners" if self.align_corners else \
            "half_pixel"
        extra = "" if self.coordinate_transformation_mode == default else \
            f", coordinate_transformation_mode={self.coordinate_transformation_mode!r}"
        if self.nearest_mode not in (None, "floor"):
            extra += f", nearest_mode={self.nearest_mode!r}"
        return f"Upsample({what}, mode={self.mode!r}" + (", align_corners=True" if self.align_corners else "") + extra + ")"
