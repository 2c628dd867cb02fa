"""One module per family of layers: how each layer splits across workers,
the instruction-set steps it emits (by field name, shmrt/compile/isa.py),
what each of those steps costs, the tensors it packs into the weight store
and, where it is not a dense [N, width], its output buffer.  The planner
finds a layer's family here; adding an op means its IR class (shmrt/ir),
its family here, its kernel and interpreter branch (kernels/,
exec/executor.py), and its float64 reference.

A family module declares:
  LAYERS   the IR classes it plans (subclasses included)
  emit(builder, op, info)         the steps of op on every worker
  COSTS    {isa code: price(step, rows, n, rates)} in microseconds
  tensors(op, input shape) -> {name: float32 array}   (optional: default, the layer's params)
  output(op, shape, model input shape, max_batch, arena) -> Output | None   (optional: dense)
  scratch(op, input shape) -> floats of per-worker scratch its steps need   (optional: none)"""
from __future__ import annotations

import numpy as np

from shmrt.compile.layout import Output
from shmrt.compile.ops import attention, conv, convtranspose, dense, featurewise, merge, pool, recurrent, rowwise

FAMILIES = (dense, featurewise, rowwise, recurrent, conv, pool, merge, convtranspose, attention)
_BY_CLASS = {cls: fam for fam in FAMILIES for cls in fam.LAYERS}
COSTS = {code: fn for fam in FAMILIES for code, fn in fam.COSTS.items()}


def family(layer):
    """The family module of layer's class (or of its nearest registered base), or None."""
    for cls in type(layer).__mro__:
        if cls in _BY_CLASS:
            return _BY_CLASS[cls]
    return None


def emitter_for(layer):
    fam = family(layer)
    return fam.emit if fam is not None else None


def tensors(op, before) -> dict:
    """{name: float32 array} op packs into the weight store; before: its input's per-sample shape."""
    fam = family(op.layer)
    hook = getattr(fam, "tensors", None)
    return hook(op, before) if hook is not None else dict(op.layer.params)


def scratch(op, before) -> int:
    """Floats of per-worker scratch op's steps need (the "conv" region, shared by every op); before: its
    input's per-sample shape."""
    hook = getattr(family(op.layer), "scratch", None)
    return hook(op, before) if hook is not None else 0


def output(op, shape, in_shape, maxb, arena) -> Output:
    """op's output buffer in the arena: its family's, or a dense [max_batch, width] one."""
    hook = getattr(family(op.layer), "output", None)
    got = hook(op, shape, in_shape, maxb, arena) if hook is not None else None
    if got is not None:
        return got
    width = int(np.prod(shape)) if shape else 1
    return Output("dense", arena.alloc(maxb * width), width, shape=tuple(shape))
