"""The stream and its layout.

Every ONNX value is either a numpy constant or a *view* of the one dynamic tensor, the stream.  A
view records its ONNX shape (the batch axis carries the sentinel ``B`` so that Shape/Gather/Concat/
Reshape arithmetic folds) and, per ONNX axis, which axis of shmrt's batch-first activation it is
(or None for an inserted size-1 axis).  The activation itself (its per-sample shape, the layers so
far) is the importer's ``Chain``; a view made at an older chain version is an earlier activation."""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L

B = 1_000_003          # the batch-size sentinel in folded shape arithmetic (a prime)


class View:
    """The stream as one ONNX value: its ONNX shape (``B`` at the batch axis),
    for each ONNX axis the shmrt axis it is (0 = batch) or None (a size-1
    axis of ONNX only), the chain version it was made at, and (for a
    recurrent layer's Y_h) the index of the layer whose last step it is."""

    __slots__ = ("shape", "src", "version", "last_of")

    def __init__(self, shape, src, version, last_of=None):
        self.shape, self.src, self.version, self.last_of = tuple(shape), tuple(src), version, last_of


class Poison:
    """An output that is refused only if something uses it (LSTM's Y_c): the refusal's message."""

    def __init__(self, msg):
        self.msg = msg


def fmt(shape):
    """A folded shape for a message: the batch sentinel (and its multiples) shown as N."""
    def one(n):
        return "N" if n == B else f"{n // B}*N" if n and n % B == 0 else str(n)
    return "[" + ", ".join(one(n) for n in shape) + "]"


class Layout:
    """Reading node inputs as constants or as the stream, and checking the stream's layout."""

    def get(self, node, idx, k):
        if k >= len(node.input) or not node.input[k]:
            return None
        name = node.input[k]
        if name not in self.values:
            self.fail(node, idx, f"input {name!r} is not produced by any earlier node, initializer or graph input "
                                 f"(the graph is not topologically sorted, or uses an unsupported construct)")
        return self.values[name]

    def const(self, node, idx, k, what):
        v = self.get(node, idx, k)
        if isinstance(v, View):
            self.fail(node, idx, f"{what} (input {k}) must be a constant (an initializer or folded at load time); "
                                 f"it depends on the model input")
        return v

    def vec(self, node, idx, k, n, what):
        c = np.asarray(self.const(node, idx, k, what), dtype=np.float64)
        if c.size == 1:
            return np.full(n, c.reshape(-1)[0])
        c = np.squeeze(c)
        if c.shape != (n,):
            self.fail(node, idx, f"{what} must hold {n} values (one per feature), got shape {np.shape(c)}")
        return c

    def axis(self, node, idx, ax, r, what="axis"):
        """An axis (attribute or input value) of an input of rank r, as 0..r-1; refused if out of range."""
        if not -r <= int(ax) < r:
            self.fail(node, idx, f"{what} {int(ax)} is out of range for an input of rank {r} (expected {-r}..{r - 1})")
        return int(ax) % r

    def stream(self, node, idx, v):
        """Resolve a view for an op that computes on it: it must be the newest stream."""
        if v.last_of is not None:
            v = self.last_state(v)
        self.chain.switch(v.version)  # an earlier activation (a branch, a skip connection): read it
        return v

    def ordered(self, node, idx, v):
        """The stream view v, in shmrt's own axis order: where its axes are the activation's in another
        order (a Transpose that moved data, not only size-1 axes), a Permute is emitted and the view
        becomes the new activation as it lies.  A view whose batch axis is not first is left as it is."""
        v = self.stream(node, idx, v)
        if self.identical(v) or not v.shape or v.shape[0] != B or v.src[0] != 0:
            return v
        axes = [s for s in v.src[1:] if s is not None]
        r = len(self.ir)
        missing = [k for k in range(1, r + 1) if k not in axes]
        if len(set(axes)) != len(axes) or any(not 1 <= s <= r for s in axes) or any(self.ir[k - 1] != 1
                                                                                     for k in missing):
            return v
        perm = [0] + axes + missing
        self.chain.emit(L.Permute(*perm), tuple(self.ir[k - 1] for k in perm[1:]))
        return View(v.shape, [None if s is None else perm.index(s) for s in v.src], self.chain.version)

    def last_state(self, v):
        """A recurrent layer's Y_h (the view ``v``, its last step) as a view of an activation: the
        layer returns only its last step when it is the last layer and nothing reads its sequence
        (Y); else Flatten + Select of the last step's columns read the sequence, [N, T*H] -> [N, H]."""
        seen = self.last_states
        if v.version not in seen:
            self.chain.switch(v.version)
            if v.last_of != len(self.chain.layers) - 1 or v.last_of in self.seq_used \
                    or not self.chain.take_last_step():
                T, H = self.chain.shape
                self.chain.emit(L.Flatten(), (T * H,))
                self.chain.emit(L.Select(slice((T - 1) * H, T * H)), (H,))
            seen[v.version] = self.chain.version
        return View(v.shape, v.src, seen[v.version])

    def take_last_step(self, node, idx):
        if not self.chain.take_last_step():
            self.fail(node, idx, "taking the last time step needs a recurrent layer right before it")

    def full(self):
        return (B,) + tuple(self.ir)

    def identical(self, v):
        """The view is the shmrt activation's memory in the same order, batch first."""
        order = [s for s, n in zip(v.src, v.shape) if s is not None and n != 1 or s == 0]
        if not order or order[0] != 0 or v.shape[0] != B:
            return False
        return order == sorted(order) and len(set(order)) == len(order)

    def dense(self, node, idx, v):
        """The view as a [N, F] matrix (inserting shmrt.Flatten if the IR is not rank 1)."""
        v = self.ordered(node, idx, v)
        if len(v.shape) != 2 or not self.identical(v):
            self.fail(node, idx, f"needs a [batch, features] input in batch-first order, got ONNX shape "
                                 f"{fmt(v.shape)} (shmrt layout {fmt(self.full())})")
        if len(self.ir) != 1:
            self.chain.emit(L.Flatten(), (int(np.prod(self.ir)),))
        v = View(v.shape, (0, 1), self.chain.version)
        return v

    def image(self, node, idx, v):
        v = self.ordered(node, idx, v)
        if len(v.shape) != 4 or v.src != (0, 1, 2, 3) or len(self.ir) != 3:
            self.fail(node, idx, f"needs an [N, C, H, W] input, got ONNX shape {fmt(v.shape)} "
                                 f"(shmrt layout {fmt(self.full())}); 1-D/3-D inputs are not supported")
        return v
