"""Layers that move an activation's elements without computing: Permute (and Transpose, its
two-axis case) and Slice (a range of one axis; Split is several Slices).  Dims count PyTorch's
way, the batch as dim 0, which these layers never move or cut.  Each is a strided copy
(compile/ops/merge.py, kernels/merge.py's COPY)."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer


def _int(v, what, layer):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{layer}: {what} must be an int, got {v!r}")
    return int(v)


def _dim(d, rank, layer):
    """The per-sample axis (batch excluded) of PyTorch dim ``d`` for a per-sample rank ``rank``."""
    a = d - 1 if d > 0 else rank + d
    if d == 0 or not 0 <= a < rank:
        raise ValueError(f"{layer}: dim {d} is out of range for inputs of shape (N, {rank} dims); expected "
                         f"1..{rank} or -{rank}..-1 (dim 0, the batch, stays where it is)")
    return a


def _fmt(shape):
    return f"(N, {', '.join(map(str, shape))})"


class _Rearrange(Layer):
    """A layer that copies (some of) its input's elements into a new order."""

    def moves(self, shape) -> bool:
        """False where the output is the input's memory as it lies (the planner aliases it)."""
        return True


class Permute(_Rearrange):
    """torch.permute: ``Permute(0, 2, 1)`` turns [N, T, F] into [N, F, T].  ``dims`` is a
    permutation of every dim, batch included, and keeps the batch (dim 0) first."""

    def __init__(self, *dims):
        super().__init__()
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        dims = tuple(_int(d, "every dim", "Permute") for d in dims)
        r = len(dims)
        norm = [d % r if -r <= d < r else None for d in dims]
        if r < 2 or None in norm or sorted(norm) != list(range(r)) or norm[0] != 0:
            raise ValueError(f"Permute: dims must be a permutation of 0..{max(r - 1, 1)} (the batch included) that "
                             f"keeps dim 0 (the batch) first, got {dims!r}")
        self.dims = tuple(norm)

    def order(self, rank):
        """The per-sample axes (batch excluded) in output order."""
        if rank != len(self.dims) - 1:
            raise ValueError(f"{self!r} permutes {len(self.dims)} dims, got inputs of shape (N, {rank} dims)")
        return [d - 1 for d in self.dims[1:]]

    def output_shape(self, shape):
        return tuple(shape[a] for a in self.order(len(shape)))

    def moves(self, shape):
        kept = [a for a in self.order(len(shape)) if shape[a] != 1]
        return kept != sorted(kept)

    def config(self):
        return {"dims": list(self.dims)}

    @classmethod
    def from_config(cls, config, params):
        return cls(*config["dims"])

    def __repr__(self):
        return f"Permute{self.dims}"


class Transpose(_Rearrange):
    """torch.transpose: swaps dims ``dim0`` and ``dim1`` (neither the batch; negative counts from the end)."""

    def __init__(self, dim0, dim1):
        super().__init__()
        self.dim0, self.dim1 = _int(dim0, "dim0", "Transpose"), _int(dim1, "dim1", "Transpose")
        if 0 in (self.dim0, self.dim1):
            raise ValueError(f"Transpose: dim 0 is the batch and stays first, got dims {self.dim0}, {self.dim1}")

    def order(self, rank):
        a, b = _dim(self.dim0, rank, self), _dim(self.dim1, rank, self)
        out = list(range(rank))
        out[a], out[b] = out[b], out[a]
        return out

    output_shape = Permute.output_shape
    moves = Permute.moves

    def config(self):
        return {"dim0": self.dim0, "dim1": self.dim1}

    def __repr__(self):
        return f"Transpose({self.dim0}, {self.dim1})"


class Slice(_Rearrange):
    """x[..., start:stop:step, ...] along ``dim`` (torch.narrow, a Python slice, one output of
    torch.split): Python's rules for negative and out-of-range bounds; step >= 1.  ``chunk=(i, c)``
    instead takes piece i of torch.chunk(x, c, dim) (pieces of ceil(size / c), the last smaller;
    ONNX Split's num_outputs), whatever the size turns out to be."""

    def __init__(self, dim, start=0, stop=None, step=1, chunk=None):
        super().__init__()
        self.dim = _int(dim, "dim", "Slice")
        self.start = _int(start, "start", "Slice")
        self.stop = None if stop is None else _int(stop, "stop", "Slice")
        self.step = _int(step, "step", "Slice")
        if self.dim == 0:
            raise ValueError("Slice: dim 0 is the batch, which is never sliced; expected a dim >= 1 or < 0")
        if self.step < 1:
            raise ValueError(f"Slice: step must be a positive int, got {step!r}")
        self.chunk = None
        if chunk is not None:
            if (not isinstance(chunk, (tuple, list)) or len(chunk) != 2 or
                    not 0 <= _int(chunk[0], "chunk index", "Slice") < _int(chunk[1], "chunk count", "Slice")):
                raise ValueError(f"Slice: chunk must be (index, count) with 0 <= index < count, got {chunk!r}")
            self.chunk = (int(chunk[0]), int(chunk[1]))
            if (self.start, self.stop, self.step) != (0, None, 1):
                raise ValueError(f"Slice: chunk={chunk!r} takes no start, stop or step, got start={start!r}, "
                                 f"stop={stop!r}, step={step!r}")

    def window(self, shape):
        """(per-sample axis, first index, count) over an input of per-sample ``shape``."""
        a = _dim(self.dim, len(shape), self)
        if self.chunk is not None:
            per = -(-shape[a] // self.chunk[1])
            r = range(shape[a])[self.chunk[0] * per:(self.chunk[0] + 1) * per]
        else:
            r = range(shape[a])[slice(self.start, self.stop, self.step)]
        if len(r) == 0:
            raise ValueError(f"{self!r} selects nothing of dim {self.dim} (size {shape[a]}) of inputs {_fmt(shape)}")
        return a, r.start, len(r)

    def output_shape(self, shape):
        a, _, n = self.window(shape)
        return tuple(shape[:a]) + (n,) + tuple(shape[a + 1:])

    def moves(self, shape):
        return self.window(shape)[2] != shape[self.window(shape)[0]]

    def config(self):
        return {"dim": self.dim, "start": self.start, "stop": self.stop, "step": self.step,
                "chunk": None if self.chunk is None else list(self.chunk)}

    def __repr__(self):
        if self.chunk is not None:
            return f"Slice(dim={self.dim}, chunk={self.chunk})"
        return f"Slice(dim={self.dim}, start={self.start}, stop={self.stop}, step={self.step})"

