"""Planning: model IR -> per-worker programs over one weight store and arena.

A plan is data: the tensors to pack, the arena layout (float32 offsets,
sized for max_batch), and one program per strategy -- an int64 table per
worker, in the instruction set of isa.py.  Nothing here runs.  The
builder (builder.py) writes the programs layer by layer; each layer's
partition and steps come from its op module (ops/); pipeline.py cuts
stages and chooses the hybrid plan's per-layer split.

Partitions, named after what they split:
- batch rows   (data parallel): every worker runs every layer on its own
  rows; weights are shared, never copied; no barrier at all.
- columns      (model parallel, Megatron's ColumnParallelLinear): worker w
  computes output features c0:c1 of every row -- it reads only rows c0:c1
  of the weight, and writes its own columns of the shared activation.
- rows         (RowParallelLinear): worker w multiplies its input features
  c0:c1 -- exactly the columns it wrote in the layer before, so no barrier
  between the two -- into its own partial-sum block; one barrier; then a
  reduce-scatter: worker w sums every block for output columns d0:d1 and
  adds bias and activation.  Its output is split by columns again, so the
  next Linear is row-parallel too (one barrier per Linear).
- hidden units (recurrent layers): worker w owns the gate rows of hidden
  units u0:u1, computes them from the full h(t-1), writes its units of h(t);
  one barrier per time step.
Activations and per-feature affine layers follow their producer's
partition (fused into the Linear or the reduce where they directly follow
one).  Row-wise layers (Softmax, ArgMax, TopK, LayerNorm, Select) need
whole rows: a barrier, then a batch-row split.  A barrier stands only where
data crosses workers.  BatchNorm right after a Linear is folded into it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shmrt.compile.builder import Builder
from shmrt.compile.isa import act_code
from shmrt.compile.io import with_io
from shmrt.compile.layout import Arena, Output
from shmrt.compile.ops import output as family_output
from shmrt.compile.ops import tensors as family_tensors
from shmrt.compile.ops.conv import geometry
from shmrt.compile.pipeline import layer_splits, pipeline
from shmrt.ir import layers as L
from shmrt.kernels.conv import scratch_floats as conv_scratch_floats
from shmrt.parallel.store import align
from shmrt.parallel.sync import LINE

STRATEGIES = ("auto", "data", "model", "hybrid", "pipeline")


@dataclass(frozen=True)
class Plan:
    """Immutable: autotune gives a new plan with its ``tuned`` choices
    (dataclasses.replace); the one cache inside, of auto's predicted choice
    per batch size, memoises a function of the rest."""

    workers: int
    max_batch: int
    in_shape: tuple
    tensors: dict
    woff: dict  # tensor name -> float32 offset in the weight store
    arena_floats: int
    input_off: int
    output: Output
    programs: dict  # strategy -> int64 [workers, steps, ROW]
    explain_rows: dict = field(default_factory=dict)  # strategy -> list of dicts
    counters: dict = field(default_factory=dict)  # strategy -> (arena offset, words) to zero before each call
    rates: object = None  # cost.Rates the plans were chosen and are predicted with (None: defaults)
    tuned: dict = field(default_factory=dict)  # batch size -> program, measured (autotune=True)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.in_shape))

    def strategy_for(self, strategy: str, n: int) -> str:
        """The program that runs a call of n rows: the one named, or for
        "auto" the measured choice (autotune) or the predicted fastest."""
        if strategy != "auto":
            return strategy
        if len(self.programs) == 1:
            return next(iter(self.programs))
        if self.tuned:
            return self.tuned[min(self.tuned, key=lambda b: (abs(np.log2(b) - np.log2(max(n, 1))), b))]
        got = self._auto.get(n)
        if got is None:
            got = self._auto[n] = min(self.predictions(n).items(), key=lambda kv: kv[1])[0]
        return got

    def predictions(self, n: int) -> dict:
        """Predicted microseconds of a call of n rows, per program (cost.py)."""
        from shmrt.compile.cost import Rates, predict_us
        rates = self.rates or Rates()
        return {name: predict_us(prog, n, rates) for name, prog in self.programs.items()}

    def __post_init__(self):
        object.__setattr__(self, "_auto", {})

    def program_index(self, name: str) -> int:
        return list(self.programs).index(name)


@dataclass
class _Op:
    index: int  # the layer's position in the model
    layer: L.Layer
    members: list  # every layer index this op covers (fused activations, folded BN)
    act: int = 0
    fold: tuple = None  # (scale, shift) of a BatchNorm folded into this Linear
    fused: list = field(default_factory=list)  # the layers of members[1:] (explain names them)
    pool: bool = False  # a 2x2, stride-2 MaxPool2d fused into this convolution's epilogue


def _fusable_pool(prev, l) -> bool:
    """A MaxPool2d(2) right after a stride-1 convolution (and its activation): pooled in the
    convolution's epilogue, from its output rows while they are in cache, instead of a step of its own."""
    return (isinstance(prev.layer, L.Conv2d) and prev.layer.stride == (1, 1) and not prev.pool
            and type(l) is L.MaxPool2d and l.kernel_size == (2, 2) and l.stride == (2, 2)
            and l.padding == (0, 0) and l.dilation == (1, 1))


def _fuse(model) -> list:
    ops = []
    for i, l in enumerate(model.layers):
        prev = ops[-1] if ops else None
        if isinstance(l, (L.Dropout, L.Flatten)):
            continue  # identity at inference / a free reshape
        if prev is not None and _fusable_pool(prev, l):
            prev.pool = True
            prev.members.append(i)
            prev.fused.append(l)
            continue
        # nothing fuses after a pool: an activation or a BatchNorm applied before the max would differ
        if prev is not None and isinstance(prev.layer, (L.Linear, L.Conv2d)) and prev.act == 0 and not prev.pool:
            if isinstance(l, L._Elementwise) and l.alpha is None:  # fused into the epilogue (it takes no parameter)
                prev.act = act_code(l.act)
                prev.members.append(i)
                prev.fused.append(l)
                continue
            bn = L.BatchNorm1d if isinstance(prev.layer, L.Linear) else L.BatchNorm2d
            width = prev.layer.out_features if isinstance(prev.layer, L.Linear) else prev.layer.out_channels
            if type(l) is bn and prev.fold is None and l.features == width:
                prev.fold = l.affine()
                prev.members.append(i)
                prev.fused.append(l)
                continue
        ops.append(_Op(i, l, [i]))
    return ops


def build(model, workers: int, strategy: str = "auto", max_batch: int = 256, input_shape=None, rates=None) -> Plan:
    """The plan of ``model`` for ``workers`` workers.  rates (cost.Rates):
    the machine's, for the per-layer choices of hybrid plans and pipeline
    stages; without them those follow a size rule."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    if not isinstance(model, L.Sequential):
        if isinstance(model, L.Layer):
            model = L.Sequential([model])
        else:
            raise TypeError(f"expected a shmrt.Sequential (or a layer), got {type(model).__name__}")
    P, maxb = int(workers), int(max_batch)
    in_shape = tuple(int(v) for v in input_shape) if input_shape is not None else model.input_shape()
    if in_shape is None:
        first = model.layers[0]
        hint = (f"(T, {first.input_size}) for a sequence of T steps" if isinstance(first, L._Recurrent)
                else "(features,)")
        raise ValueError(f"cannot infer the input shape of this model: pass input_shape={hint} to compile")
    if len(in_shape) not in (1, 2, 3) or min(in_shape) < 1:
        raise ValueError(f"input_shape must be (F,), (T, F) or (C, H, W) with positive sizes, got {in_shape}")
    shapes = model.shapes(in_shape)
    ops = _fuse(model)
    tensors = {}  # every float32 tensor the programs read, by name "<op index>.<name>" (folds applied)
    for op in ops:
        before = shapes[op.index - 1] if op.index > 0 else in_shape
        tensors.update({f"{op.index}.{k}": v for k, v in family_tensors(op, before).items()})
    woff, off = {}, 0
    for name, arr in tensors.items():
        woff[name] = off
        off += align(arr.size)

    # One arena layout for every strategy: the input, each op's output,
    # recurrent scratch, and the partial sums of row-parallel layers.
    arena = Arena()
    in_w = int(np.prod(in_shape))
    input_off = arena.alloc(maxb * in_w)
    outs = {op.index: family_output(op, shapes[op.members[-1]], in_shape, maxb, arena) for op in ops}
    recs = [op.layer for op in ops if isinstance(op.layer, L._Recurrent)]
    scratch = {}
    if recs:
        T = in_shape[0]
        H = max(r.hidden_size for r in recs)
        G = max(r.gates for r in recs)
        gstride = align(maxb * T * H)  # gate g of step t, row r, unit u: gates + g*gstride + (r*T + t)*H + u
        scratch = {"gates": arena.alloc(G * gstride), "gstride": gstride,
                   "aux": arena.alloc(maxb * H), "hinit": arena.alloc(maxb * H)}
    convs = [(op, shapes[op.index - 1] if op.index > 0 else in_shape, shapes[op.index])
             for op in ops if isinstance(op.layer, L.Conv2d)]
    if convs:  # per worker: conv2d's scratch for the largest convolution
        per = max(conv_scratch_floats(geometry(op.layer, i, o), o[0]) for op, i, o in convs)
        scratch["conv"], scratch["conv_per"] = arena.alloc(P * align(per)), align(per)
    names = [strategy] if strategy != "auto" else (["data", "model", "hybrid", "pipeline"] if P > 1 else ["data"])
    model_maxb = maxb if set(names) & {"model", "hybrid", "pipeline"} else 0
    widest = max([op.layer.out_features for op in ops if isinstance(op.layer, L.Linear)] + [1])
    # two partial-sum regions, alternated by consecutive row-parallel layers
    parts = [arena.alloc(model_maxb * P * widest) for _ in range(2)] if model_maxb else [-1, -1]

    # Slack at the end: a view of rows r0:r1 spans (r1 - r0) whole rows of its
    # leading dimension, even where only some columns of the last row are
    # used (the last step of a sequence, a gate, one worker's partials).
    arena.alloc(max([in_w, P * widest] + [o.ld or o.width for o in outs.values()] +
                    [in_shape[0] * r.hidden_size for r in recs]))

    inp = Output("dense", input_off, in_w, shape=tuple(in_shape))
    counters = {}
    if "pipeline" in names:
        counters["pipeline"] = (arena.alloc(2 * LINE * P), 2 * LINE * P)
    built = {}

    def whole(s, splits=None):
        """The (program, explain rows) of a plan over all workers, built once."""
        if s not in built:
            b = Builder(s, P, woff, outs, parts, scratch, inp, splits=splits)
            for op in ops:
                b.add(op)
            built[s] = b.finish()
        return built[s]

    splits = None
    if P > 1 and rates is not None and set(names) & {"hybrid", "pipeline"}:
        splits = layer_splits(ops, whole("data"), whole("model"), maxb, rates)
    programs, explain = {}, {}
    for s in names:
        if s == "pipeline":
            programs[s], explain[s] = pipeline(ops, P, woff, outs, parts, scratch, inp, counters[s][0], splits)
        else:
            programs[s], explain[s] = whole(s, splits)
    output = outs[ops[-1].index] if ops else Output("dense", input_off, in_w, shape=in_shape)
    if output.kind == "dense" and not output.ld and int(np.prod(shapes[-1])) == output.width:
        output.shape = tuple(shapes[-1])  # e.g. a trailing Flatten
    programs = {s: with_io(p, inp, output) for s, p in programs.items()}
    return Plan(P, maxb, in_shape, tensors, woff, arena.size, input_off, output, programs, explain, counters, rates)
