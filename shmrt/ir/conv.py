"""Convolutional layers over [N, C, H, W]: Conv2d, BatchNorm2d, the pools, and Flatten back to [N, F]."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _bias_arg, _param, _positive_int
from shmrt.ir.norm import BatchNorm1d


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
        bias = _bias_arg(bias)
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

    def config(self):
        c = {k: getattr(self, k) for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                            "dilation", "groups")}
        if "bias" not in self.params:
            c["bias"] = False
        return c

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups})")


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

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"


class MaxPool2d(_Pool2d):
    is_max = True

    def config(self):
        return dict(super().config(), dilation=self.dilation)


class AvgPool2d(_Pool2d):
    is_max = False

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, count_include_pad)

    def config(self):
        return dict(super().config(), count_include_pad=self.count_include_pad)


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
    """[N, C, H, W] -> [N, C, H * s, W * s] (PyTorch's nn.Upsample / F.interpolate with an integer
    scale_factor, or size=(OH, OW)): mode "nearest" (the source pixel floor(o * H / OH)) or
    "bilinear" (align_corners False: the half-pixel centres, edges clamped; or True)."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        super().__init__()
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Upsample: mode must be 'nearest' or 'bilinear', got {mode!r}")
        if (size is None) == (scale_factor is None):
            raise ValueError(f"Upsample: give exactly one of size and scale_factor, got size={size!r}, "
                             f"scale_factor={scale_factor!r}")
        if mode == "nearest" and align_corners:
            raise ValueError("Upsample: align_corners applies to mode='bilinear' only")
        self.size = None if size is None else _pair(size, "size", "Upsample")
        sf = None
        if scale_factor is not None:
            t = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
            if len(t) != 2 or any(float(v) != int(v) or int(v) < 1 for v in t):
                raise ValueError(f"Upsample: scale_factor must be a positive integer or a pair of them, got "
                                 f"{scale_factor!r}")
            sf = (int(t[0]), int(t[1]))
        self.scale_factor, self.mode, self.align_corners = sf, mode, bool(align_corners)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects inputs of shape (N, C, H, W), got (N, {', '.join(map(str, shape))})")
        if self.size is not None:
            return (shape[0], *self.size)
        return (shape[0], shape[1] * self.scale_factor[0], shape[2] * self.scale_factor[1])

    def config(self):
        return {"size": None if self.size is None else list(self.size),
                "scale_factor": None if self.scale_factor is None else list(self.scale_factor),
                "mode": self.mode, "align_corners": self.align_corners}

    def __repr__(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"Upsample({what}, mode={self.mode!r}" + (", align_corners=True)" if self.align_corners else ")")
