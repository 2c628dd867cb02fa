"""Layers of several activations: Add, Sub, Mul, Div (NumPy broadcasting of the per-sample shapes),
and Concat along one axis; and AdaptiveAvgPool2d.  They appear in graph models (shmrt.Graph):
a residual ``Add``, a squeeze-and-excitation ``Mul`` of [N, C, H, W] by [N, C, 1, 1], DenseNet's
and Inception's channel ``Concat``.  Shapes exclude the batch; every operand has the batch."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _positive_int


class _Merge(Layer):
    """A layer of ``arity`` activations (None: two or more): ``output_shape(*shapes)``."""
    arity = 2

    def check_arity(self, shapes):
        if (self.arity is not None and len(shapes) != self.arity) or len(shapes) < 2:
            want = f"{self.arity}" if self.arity is not None else "2 or more"
            raise ValueError(f"{self!r} takes {want} inputs, got {len(shapes)}")


class _Binary(_Merge):
    """out = a <op> b, with NumPy broadcasting of the per-sample shapes (the batch is never broadcast).
    With ``constant`` (an array of a per-sample shape, batch excluded) the layer takes one activation a
    and computes a <op> constant, or constant <op> a with ``reverse=True``; the result keeps a's shape."""
    op = "add"

    def __init__(self, constant=None, reverse=False):
        super().__init__()
        self.reverse = bool(reverse)
        if constant is not None:
            c = np.asarray(constant)
            if c.dtype.kind not in "fiub" or c.ndim > 3:
                raise ValueError(f"{type(self).__name__}: constant must be a real array of at most 3 dims (a "
                                 f"per-sample shape), got dtype {c.dtype}, shape {c.shape}")
            self.params["constant"] = np.ascontiguousarray(c, dtype=np.float32)
            self.arity = 1
        elif self.reverse:
            raise ValueError(f"{type(self).__name__}: reverse=True needs a constant")

    @property
    def constant(self):
        return self.params.get("constant")

    def check_arity(self, shapes):
        if self.constant is None:
            return super().check_arity(shapes)
        if len(shapes) != 1:
            raise ValueError(f"{self!r} with a constant takes 1 input, got {len(shapes)}")

    def output_shape(self, *shapes):
        self.check_arity(shapes)
        if self.constant is not None:
            c, s = self.constant.shape, tuple(shapes[0])
            try:
                out = tuple(int(v) for v in np.broadcast_shapes(s, c))
            except ValueError:
                out = None
            if out != s:
                raise ValueError(f"{self!r}: a constant of shape {c} does not broadcast to inputs (N, "
                                 f"{', '.join(map(str, s))}) (NumPy rules, the input's shape kept)")
            return s
        try:
            return tuple(int(v) for v in np.broadcast_shapes(*(tuple(s) for s in shapes)))
        except ValueError:
            raise ValueError(f"{self!r}: operand shapes (N, {', '.join(map(str, shapes[0]))}) and "
                             f"(N, {', '.join(map(str, shapes[1]))}) do not broadcast (NumPy rules: "
                             f"trailing sizes equal or 1)") from None

    def config(self):
        return {"reverse": True} if self.reverse else {}

    def __repr__(self):
        if self.constant is None:
            return f"{type(self).__name__}()"
        return f"{type(self).__name__}(constant of shape {self.constant.shape}{', reverse=True' if self.reverse else ''})"


class Add(_Binary):
    op = "add"


class Sub(_Binary):
    op = "sub"


class Mul(_Binary):
    op = "mul"


class Div(_Binary):
    op = "div"


BINARY_OPS = ("add", "sub", "mul", "div")


class Concat(_Merge):
    """Concatenation along ``dim`` (PyTorch's torch.cat: the batch is dim 0, so dim=1 is channels or
    features; negative counts from the end).  Every other size must match."""
    arity = None

    def __init__(self, dim=1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim == 0:
            raise ValueError(f"Concat: dim must be a non-zero int (dim 0 is the batch), got {dim!r}")
        self.dim = int(dim)

    def axis(self, rank):
        """The per-sample axis (batch excluded) of dim for per-sample shapes of ``rank`` dims."""
        a = self.dim - 1 if self.dim > 0 else rank + self.dim
        if not 0 <= a < rank:
            raise ValueError(f"{self!r}: dim {self.dim} is out of range for inputs of shape (N, {rank} dims)")
        return a

    def output_shape(self, *shapes):
        self.check_arity(shapes)
        shapes = [tuple(s) for s in shapes]
        if len({len(s) for s in shapes}) != 1:
            raise ValueError(f"{self!r}: inputs of different ranks {[len(s) + 1 for s in shapes]}")
        a = self.axis(len(shapes[0]))
        rest = {s[:a] + s[a + 1:] for s in shapes}
        if len(rest) != 1:
            raise ValueError(f"{self!r}: inputs must match in every dim but {self.dim}, got "
                             + ", ".join(f"(N, {', '.join(map(str, s))})" for s in shapes))
        s0 = shapes[0]
        return s0[:a] + (sum(s[a] for s in shapes),) + s0[a + 1:]

    def config(self):
        return {"dim": self.dim}

    def __repr__(self):
        return f"Concat(dim={self.dim})"


class _AdaptivePool2d(Layer):
    """[N, C, H, W] -> [N, C, oh, ow] over PyTorch's windows: output cell i covers rows
    floor(i * H / oh) .. ceil((i + 1) * H / oh) (uneven, possibly overlapping, where oh does not divide H)."""
    is_max = False

    def __init__(self, output_size=1):
        super().__init__()
        name = type(self).__name__
        t = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size, output_size)
        if len(t) != 2:
            raise ValueError(f"{name}: output_size must be an int or a pair, got {output_size!r}")
        self.output_size = tuple(_positive_int(v, "output_size", name) for v in t)

    def output_shape(self, shape):
        if len(shape) != 3:
            raise ValueError(f"{self!r} expects inputs of shape (N, C, H, W), got (N, {', '.join(map(str, shape))})")
        return (shape[0], *self.output_size)

    def window(self, shape):
        """(kernel, stride) of the equal windows this pool takes over ``shape``, or None for PyTorch's
        uneven windows (an output size that does not divide the input's)."""
        (_, H, W), (oh, ow) = shape, self.output_size
        if H % oh or W % ow:
            return None
        return (H // oh, W // ow), (H // oh, W // ow)

    def config(self):
        return {"output_size": list(self.output_size)}

    def __repr__(self):
        return f"{type(self).__name__}(output_size={self.output_size})"


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Planned as a global average pool for output 1x1, as an AvgPool2d where the output size divides
    the input's, else as PyTorch's uneven windows."""
    is_max = False


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """The max over PyTorch's adaptive windows (return_indices=False only)."""
    is_max = True

    def __init__(self, output_size=1, return_indices=False):
        if return_indices:
            raise ValueError("AdaptiveMaxPool2d: return_indices=True is not supported (the values only)")
        super().__init__(output_size)
