"""The builder: emits one strategy's per-worker programs, layer by layer.

It tracks where the current activation is and which worker wrote which part
of it, and places a barrier only where data crosses workers; each layer's
own partition and steps come from its op module (shmrt/compile/ops/)."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import BARRIER, END, ROW, encode
from shmrt.compile.layout import Output
from shmrt.compile.ops import emitter_for, family
from shmrt.ir import layers as L
from shmrt.parallel.control import barrier_line

# hybrid, without a cost model (no rates): layers whose parameters are at
# least this large are split by model (columns/rows, hidden units), the
# rest by batch rows.  With rates, each layer takes the split the cost
# model predicts cheaper for it at max_batch.
HYBRID_MODEL_BYTES = 1 << 20


def _hybrid_by_size(op) -> bool:
    """Without rates: does the hybrid plan split this op by model (else by batch rows)?"""
    l = op.layer
    if isinstance(l, (L.Linear, L._Recurrent)):
        return 4 * sum(v.size for v in l.params.values()) >= HYBRID_MODEL_BYTES
    return isinstance(l, (L._Pool2d, L._AdaptivePool2d, L.GlobalAvgPool, L.Upsample))  # these follow a channel split where there is one


def _fused_name(l) -> str:
    """A layer fused into the one before it: "ReLU", "GELU(approximate='tanh')", "BatchNorm2d(4) folded"."""
    name = repr(l).removesuffix("()")
    return f"{name} folded" if isinstance(l, L.BatchNorm1d) else name


class Val:
    """A value while a program is built: its buffer, and who wrote which part of it (a state as
    Builder's: "all", "rows", "cols" with bounds, "spatial")."""
    __slots__ = ("out", "state", "bounds")

    def __init__(self, out, state, bounds=None):
        self.out, self.state, self.bounds = out, state, bounds


class Builder:
    """Emits one strategy's per-worker programs, layer by layer, tracking
    where the current activation is and which worker wrote which part:
    "all" (complete for everyone), "rows" (each worker its own batch rows),
    "cols" (each worker its own feature columns, ``bounds``)."""

    def __init__(self, strategy, P, woff, outs, parts, scratch, inp, wids=None, bline=None, splits=None,
                 inputs=None, vals=None):
        self.strategy, self.P, self.woff, self.outs = strategy, P, woff, outs
        outs.builder = self
        self.parts, self.scratch = parts, scratch
        # every value so far: where it is and who wrote which part (a pipeline stage gets the values of
        # the stages before it, complete)
        self.vals = vals if vals is not None else {
            name: Val(o, "all") for name, o in (inputs if inputs is not None else {"input": inp}).items()}
        self.ins = []
        self.wids = list(wids) if wids is not None else list(range(P))  # global worker ids (per-worker scratch)
        self.bline = barrier_line(P) if bline is None else bline  # this group's barrier
        self.splits = splits  # hybrid: op index -> split by model
        self.steps = [[] for _ in range(P)]
        self.rows = []
        self.set_cur(inp, "all")
        self.barriers = 0
        self.row_layers = 0
        self.split_model = strategy == "model" and P > 1

    # -- emitting ----------------------------------------------------------
    def emit(self, w, op, /, **fields):
        """Worker w's next step: op (an isa op) with every field by name."""
        self.steps[w].append(encode(op, **fields))

    def barrier(self):
        for w in range(self.P):
            self.emit(w, BARRIER, line=self.bline, parties=self.P)
        self.barriers += 1
        self.state, self.bounds = "all", None
        for v in self.vals.values():  # after a barrier, every value is complete for everyone
            v.state, v.bounds = "all", None

    def need_inputs(self, states):
        """A barrier unless every input of the op is in one of ``states`` ("all", "rows", ...)."""
        if self.P > 1 and any(v.state not in states for v in self.ins):
            self.barrier()

    def need_all(self):
        """Every row complete for every worker: a barrier unless already so."""
        if self.P > 1 and self.state != "all":
            self.barrier()
            self.state = "all"

    def need_rows(self):
        """Each worker its own batch rows complete."""
        if self.P > 1 and self.state not in ("all", "rows"):
            self.barrier()
            self.state = "all"

    def w(self, name):
        return self.woff.get(name, -1)

    def set_cur(self, out: Output, state, bounds=None):
        self.cur_out = out
        self.cur_off, self.cur_ld, self.cur_w, self.cur_shape = out.off, out.ld or out.width, out.width, out.shape
        self.state, self.bounds = state, bounds

    # -- layers ------------------------------------------------------------
    def add(self, op):
        """Emit the steps of op (a plan._Op: a layer and what was fused into it) on every worker."""
        b0 = self.barriers
        before = [len(st) for st in self.steps]
        l = op.layer
        if self.strategy == "hybrid":
            self.split_model = self.P > 1 and (self.splits[op.index][0] if self.splits else _hybrid_by_size(op))
        # "layer": as the user wrote it, "Linear(784, 256, bias=True) + ReLU"; "short": "Linear + ReLU"
        info = {"layers": op.members, "layer": " + ".join([repr(l)] + [_fused_name(f) for f in op.fused]),
                "short": " + ".join(type(f).__name__ for f in [l, *op.fused]), "partition": "", "slices": [],
                "flops": 0}
        emit = emitter_for(l)
        if emit is None:
            raise NotImplementedError(f"no plan for {l!r}: no emitter in shmrt.compile.ops for {type(l).__name__}")
        self.ins = [self.vals[v] for v in op.inputs]
        first = self.ins[0]
        self.set_cur(first.out, first.state, first.bounds)
        # by batch rows: every family splits so when not split by model and its inputs are complete by rows
        # a step that reads rows other workers wrote (attention's keys) never counts as a batch-row access:
        # a slot it read is reused only after a barrier (values.py)
        crosses = self.P > 1 and getattr(family(l), "CROSSES_ROWS", False)
        rows_next = self.P == 1 or (not self.split_model and not crosses and
                                    all(v.state in ("rows", "all") for v in self.ins))
        self.outs.rows_next = rows_next
        emit(self, op, info)
        if op.wnote is not None:
            info["weights"] = op.wnote
        rows = self.P == 1 or self.state == "rows"
        assert rows or not rows_next, f"{op.layer!r} was expected to split by batch rows ({self.state})"
        self.vals[op.out] = Val(self.cur_out, self.state, self.bounds)
        self.outs.release(op, rows and not crosses)
        info["barriers"] = self.barriers - b0
        if self.strategy == "hybrid" and self.P > 1:
            info["why"] = (f"split by {'model' if self.split_model else 'batch rows'}: " +
                           (self.splits[op.index][1] if self.splits else
                            f"parameters {'>=' if self.split_model else '<'} {HYBRID_MODEL_BYTES >> 20} MiB"))
        info["steps"] = {self.wids[w]: (before[w], len(self.steps[w])) for w in range(self.P)}
        info["workers"] = f"workers {self.wids[0]}..{self.wids[-1]}" if self.P > 1 else f"worker {self.wids[0]}"
        self.rows.append(info)

    def finish(self):
        for w in range(self.P):
            self.emit(w, END)
        n = max(len(s) for s in self.steps)
        prog = np.zeros((self.P, n, ROW), np.int64)
        for w in range(self.P):
            prog[w, :len(self.steps[w])] = self.steps[w]
        return prog, self.rows
