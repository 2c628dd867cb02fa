"""One module per family of layers: how each layer splits across workers,
the instruction-set steps it emits (by field name, shmrt/compile/isa.py),
and what each of those steps costs.  The builder finds a layer's emitter
here, the cost model a step's price; adding an op means its IR class
(shmrt/ir), its module here, its kernel and interpreter branch (kernels/,
exec/executor.py), and its float64 reference.

Each module declares EMITTERS ({IR class: emit(builder, op, info)}) and
COSTS ({isa code: price(step, rows, n, rates) in microseconds})."""
from __future__ import annotations

from shmrt.compile.ops import conv, dense, featurewise, recurrent, rowwise

FAMILIES = (dense, featurewise, rowwise, recurrent, conv)
EMITTERS = {cls: fn for fam in FAMILIES for cls, fn in fam.EMITTERS.items()}
COSTS = {code: fn for fam in FAMILIES for code, fn in fam.COSTS.items()}


def emitter_for(layer):
    """The emit function of layer's class (or its nearest registered base), or None."""
    for cls in type(layer).__mro__:
        if cls in EMITTERS:
            return EMITTERS[cls]
    return None
