"""ConvTranspose2d over [N, C, H, W] (PyTorch's): the gradient of a Conv2d with respect to its input,
the learned upsampling of U-Nets and decoders.  weight [in, out/groups, kh, kw]; the output is

    OH = (H - 1) * sh - 2 ph + dh (kh - 1) + output_padding_h + 1    (and OW alike),

input pixel (iy, ix) adding w[ci, co, ky, kx] * x to output pixel (iy sh - ph + ky dh, ix sw - pw + kx dw).

output_padding is PyTorch's (each smaller than the stride or the dilation); one extension: it may be
negative, fewer rows (columns) at the end -- how the ONNX importer writes pads larger at the end than
at the start (auto_pad=SAME_UPPER), which PyTorch cannot express."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _bias_arg, _param, _positive_int
from shmrt.ir.conv import _pair


def _transposed_size(n, k, s, p, d, op):
    return (n - 1) * s - 2 * p + d * (k - 1) + op + 1


class ConvTranspose2d(Layer):
    """Transposed 2-D convolution over [N, C, H, W]; weight [in, out/groups, kh, kw] (PyTorch's)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, padding_mode="zeros", weight=None):
        super().__init__()
        name = f"ConvTranspose2d({in_channels}, {out_channels}, {kernel_size})"
        self.in_channels = _positive_int(in_channels, "in_channels", name)
        self.out_channels = _positive_int(out_channels, "out_channels", name)
        self.groups = _positive_int(groups, "groups", name)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"{name}: in_channels={in_channels} and out_channels={out_channels} must be divisible "
                             f"by groups={groups}")
        if padding_mode != "zeros":
            raise ValueError(f"{name}: padding_mode={padding_mode!r} is not supported; only 'zeros' (as PyTorch's "
                             f"ConvTranspose2d)")
        if isinstance(padding, str):
            raise ValueError(f"{name}: padding={padding!r}: a transposed convolution takes an int or a pair of "
                             f"them, not a string")
        self.kernel_size = _pair(kernel_size, "kernel_size", name)
        self.stride = _pair(stride, "stride", name)
        self.dilation = _pair(dilation, "dilation", name)
        self.padding = _pair(padding, "padding", name, minimum=0)
        t = tuple(output_padding) if isinstance(output_padding, (tuple, list)) else (output_padding, output_padding)
        if len(t) != 2 or any(isinstance(a, bool) or not isinstance(a, (int, np.integer)) for a in t):
            raise ValueError(f"{name}: output_padding must be an int or a pair of them, got {output_padding!r}")
        self.output_padding = (int(t[0]), int(t[1]))
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op > 0 and op >= s and op >= d:
                raise ValueError(f"{name}: output_padding={output_padding!r} must be smaller than either the stride "
                                 f"{self.stride} or the dilation {self.dilation} (PyTorch's rule)")
        kh, kw = self.kernel_size
        Og = self.out_channels // self.groups
        fan_in = Og * kh * kw  # PyTorch's: the weight's dimension 1 times the kernel
        self.params["weight"] = _param(weight, (self.in_channels, Og, kh, kw), "weight", name, fan_in)
        bias = _bias_arg(bias)
        if bias is not False:
            self.params["bias"] = _param(bias, (self.out_channels,), "bias", name, fan_in)

    def output_shape(self, shape):
        if len(shape) != 3 or shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects inputs of shape (N, {self.in_channels}, H, W), "
                             f"got (N, {', '.join(map(str, shape))})")
        oh, ow = (_transposed_size(shape[1 + a], self.kernel_size[a], self.stride[a], self.padding[a],
                                   self.dilation[a], self.output_padding[a]) for a in range(2))
        if oh < 1 or ow < 1:
            raise ValueError(f"{self!r}: input {shape[1]}x{shape[2]} gives an empty output {oh}x{ow} (the padding "
                             f"{self.padding} crops more than the transposed convolution makes)")
        return (self.out_channels, oh, ow)

    def config(self):
        c = {k: getattr(self, k) for k in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                                            "output_padding", "groups", "dilation")}
        if "bias" not in self.params:
            c["bias"] = False
        return c

    def __repr__(self):
        return (f"ConvTranspose2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, output_padding={self.output_padding}, "
                f"dilation={self.dilation}, groups={self.groups})")
