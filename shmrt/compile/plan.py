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
from shmrt.compile.ops import family
from shmrt.compile.ops import output as family_output
from shmrt.compile.ops import scratch as family_scratch
from shmrt.compile import compress
from shmrt.compile.ops import tensors as family_tensors
from shmrt.compile.ops.conv import geometry
from shmrt.compile import several
from shmrt.compile.pipeline import layer_splits, pipeline
from shmrt.compile.values import Program
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
    inputs: tuple = ()  # several inputs: (name, shape, first column, width) of each in the input row
    outputs: tuple = ()  # several outputs: (name, shape, first column, width) of each in the output row
    named_outputs: bool = False  # several outputs come back as a dict (else a tuple)
    lengths: tuple = ()  # (input name, T): inputs that are a recurrent layer's lengths, 1..T (checked per call)
    memory: dict = field(default_factory=dict)  # "peak": program -> arena floats it spans; "pair": the largest
    #                                             input + output of one op at max_batch, floats

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
    index: int  # the position in the graph's nodes of its first member
    layer: L.Layer
    members: list  # every node index this op covers (fused activations, folded BN)
    inputs: list = field(default_factory=list)  # the values it reads (names; aliases resolved)
    in_shapes: list = field(default_factory=list)  # their per-sample shapes as it reads them (before aliases)
    shape: tuple = ()  # its output's per-sample shape (set by build)
    out: str = ""  # the value it writes (its last member's)
    act: int = 0
    fold: tuple = None  # (scale, shift) of a BatchNorm folded into this Linear
    fused: list = field(default_factory=list)  # the layers of members[1:] (explain names them)
    pool: bool = False  # a 2x2, stride-2 MaxPool2d fused into this convolution's epilogue
    fmt: int = 0  # its weights' format (kernels/qformat.py; compress.choose)
    wnote: dict = None  # that format and the relative error it puts on the weights (explain)


def _fusable_pool(prev, l) -> bool:
    """A MaxPool2d(2) right after a stride-1 convolution (and its activation): pooled in the
    convolution's epilogue, from its output rows while they are in cache, instead of a step of its own."""
    return (isinstance(prev.layer, L.Conv2d) and prev.layer.stride == (1, 1) and not prev.pool
            and type(l) is L.MaxPool2d and l.indices is None and l.kernel_size == (2, 2) and l.stride == (2, 2)
            and l.pads == (0, 0, 0, 0) and l.dilation == (1, 1) and not l.ceil_mode)


def _adaptive(l, shape):
    """An adaptive pool as the pool it is over ``shape``: global average, equal windows, or itself
    (PyTorch's uneven windows, planned by the pool family)."""
    if l.output_size == (1, 1) and not l.is_max:
        return L.GlobalAvgPool()
    win = l.window(shape)
    if win is None:
        return l
    return L.MaxPool2d(win[0], stride=win[1]) if l.is_max else L.AvgPool2d(win[0], stride=win[1])


def _fuse(graph, shapes) -> tuple:
    """The graph's nodes as ops (activations, BatchNorm and 2x2 max pools fused into the op before
    them where it is their only reader; Dropout, Flatten and Reshape resolved as aliases of their input),
    and the graph's outputs with aliases resolved."""
    readers = graph.consumers()
    outputs = set(graph.outputs)
    alias, ops, by_out = {}, [], {}
    for i, node in enumerate(graph.nodes):
        l = node.layer
        ins = [alias.get(u, u) for u in node.inputs]
        if isinstance(l, (L.Dropout, L.Flatten, L.Reshape)) or (isinstance(l, L._Rearrange) and
                                                                not l.moves(shapes[node.inputs[0]])):
            alias[node.output] = ins[0]  # identity at inference / a free reshape (or permute of size-1 dims)
            continue
        if isinstance(l, L._AdaptivePool2d):
            l = _adaptive(l, shapes[ins[0]])
        src = node.inputs[0]
        prev = by_out.get(src) if len(ins) == 1 and len(readers.get(src, ())) == 1 and src not in outputs else None
        if prev is not None and prev.out == src and _fuse_into(prev, l):
            prev.members.append(i)
            prev.fused.append(l)
            prev.out = node.output
            by_out[node.output] = prev
            continue
        op = _Op(i, l, [i], ins, [shapes[u] for u in node.inputs], out=node.output)
        ops.append(op)
        by_out[node.output] = op
    return ops, [alias.get(o, o) for o in graph.outputs]


def _fuse_into(prev, l) -> bool:
    """Fold layer l into op prev (its only reader), if it can be: True when done."""
    if _fusable_pool(prev, l):
        prev.pool = True
        return True
    # nothing fuses after a pool: an activation or a BatchNorm applied before the max would differ
    if isinstance(prev.layer, (L.Linear, L.Conv2d, L.ConvTranspose2d, L._Binary)) and prev.act == 0 and not prev.pool:
        if isinstance(l, L._Elementwise) and l.alpha is None:  # fused into the epilogue (it takes no parameter)
            prev.act = act_code(l.act)
            return True
        if isinstance(prev.layer, L._Binary):
            return False
        bn = L.BatchNorm1d if isinstance(prev.layer, L.Linear) else L.BatchNorm2d
        width = prev.layer.out_features if isinstance(prev.layer, L.Linear) else prev.layer.out_channels
        if type(l) is bn and prev.fold is None and l.features == width:
            prev.fold = l.affine()
            return True
    return False


def _as_graph(model):
    if isinstance(model, L.Graph):
        return model
    if isinstance(model, L.Sequential):
        return L.Graph.chain(model)
    if isinstance(model, L.Layer):
        return L.Graph.chain(L.Sequential([model]))
    raise TypeError(f"expected a shmrt.Sequential, a shmrt.Graph (or a layer), got {type(model).__name__}")


# families whose steps write their output with a row stride of its own (out_ld), so that a value may
# sit in a wider slot; and the layers that need their input's rows packed (a recurrent layer's [N, T, F])
_STRIDED = (L.Conv2d, L.ConvTranspose2d, L._Pool2d, L._AdaptivePool2d, L.GlobalAvgPool, L.Upsample, L._Elementwise,
            L._Affine, L._Merge, L._Rearrange)


def build(model, workers: int, strategy: str = "auto", max_batch: int = 256, input_shape=None, rates=None,
          weights=None) -> Plan:
    """The plan of ``model`` (a Sequential, a Graph, or one layer) for ``workers`` workers.  rates
    (cost.Rates): the machine's, for the per-layer choices of hybrid plans and pipeline stages;
    without them those follow a size rule.  weights: the weight format (compress.py)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(map(repr, STRATEGIES))}, got {strategy!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, (int, np.integer)) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    graph = _as_graph(model)
    P, maxb = int(workers), int(max_batch)
    ins = several.input_shapes(graph, input_shape)
    graph, out_cols = several.pack_outputs(graph, ins)
    in_cols = several.columns(ins) if len(ins) > 1 else []
    in_w = sum(int(np.prod(s)) for _, s in ins)
    in_shape = ins[0][1] if len(ins) == 1 else (in_w,)  # several inputs: one row of them side by side
    shapes = graph.shapes([s for _, s in ins])
    ops, outputs = _fuse(graph, shapes)
    for op in ops:
        op.shape = shapes[op.out]
        if isinstance(op.layer, L._Recurrent) and len(op.inputs) > 1 and op.inputs[1] not in dict(ins):
            raise NotImplementedError(f"compile: {op.layer!r} reads lengths {op.inputs[1]!r}, a computed value; "
                                      f"expected a graph input of shape (1,) (checked at each call: 1..T)")
    compress.choose(ops, weights)
    tensors = {}  # every float32 tensor the programs read, by name "<op index>.<name>" (folds applied)
    for op in ops:
        tensors.update({f"{op.index}.{k}": v for k, v in family_tensors(op, shapes[op.inputs[0]]).items()})
    woff, off = {}, 0
    for name, arr in tensors.items():
        woff[name] = off
        off += align(arr.size)

    # The fixed part of the arena, one layout for every program: the input, the output, the
    # outputs that are not a plain [N, width] (indices, recurrent sequences), recurrent and
    # convolution scratch, the partial sums of row-parallel layers.  Above it, each program's
    # activation slots (values.py).
    arena = Arena()
    input_off = arena.alloc(maxb * in_w)
    fixed = {}
    for op in ops:
        hook = getattr(family(op.layer), "output", None)
        got = hook(op, shapes[op.out], shapes[op.inputs[0]], maxb, arena) if hook is not None else None
        if got is None and op.out in outputs:
            got = family_output(op, shapes[op.out], shapes[op.inputs[0]], maxb, arena)
        if got is not None:
            fixed[op.index] = got
    readers = {}
    for op in ops:
        for v in op.inputs:
            readers.setdefault(v, []).append(op.layer)
    strided = {op.index: isinstance(op.layer, _STRIDED) and not any(
        isinstance(r, L._Recurrent) for r in readers.get(op.out, ())) for op in ops}
    recs = [(op.layer, shapes[op.inputs[0]][0]) for op in ops if isinstance(op.layer, L._Recurrent)]
    scratch = {}
    if recs:
        T = max(t for _, t in recs)
        H = max(r.hidden_size for r, _ in recs)
        G = max(r.gates for r, _ in recs)
        gstride = align(maxb * T * H)  # gate g of step t, row r, unit u: gates + g*gstride + (r*T + t)*H + u
        scratch = {"gates": arena.alloc(G * gstride), "gstride": gstride,
                   "aux": arena.alloc(maxb * H), "hinit": arena.alloc(maxb * H)}
    convs = [(op, shapes[op.inputs[0]]) for op in ops if isinstance(op.layer, L.Conv2d)]
    per = max([conv_scratch_floats(geometry(op.layer, i, op.layer.output_shape(i)), op.layer.out_channels)
               for op, i in convs] + [family_scratch(op, shapes[op.inputs[0]]) for op in ops] + [0])
    if per:  # per worker: the scratch of the convolution (or other family's step) that needs the most
        scratch["conv"], scratch["conv_per"] = arena.alloc(P * align(per)), align(per)
    names = [strategy] if strategy != "auto" else (["data", "model", "hybrid", "pipeline"] if P > 1 else ["data"])
    crossing = any(getattr(family(op.layer), "CROSSES_ROWS", False) for op in ops)
    if crossing:  # micro-batches of token rows would cut sequences apart
        if strategy == "pipeline":
            raise ValueError("strategy 'pipeline' does not run sequence models (a micro-batch of token rows would "
                             "cut a sequence apart); expected 'auto', 'data', 'model' or 'hybrid'")
        names = [s for s in names if s != "pipeline"]
    model_maxb = maxb if set(names) & {"model", "hybrid", "pipeline"} else 0
    widest = max([op.layer.out_features for op in ops if isinstance(op.layer, L.Linear)] + [1])
    # two partial-sum regions, alternated by consecutive row-parallel layers
    parts = [arena.alloc(model_maxb * P * widest) for _ in range(2)] if model_maxb else [-1, -1]
    counters = {}
    if "pipeline" in names:
        counters["pipeline"] = (arena.alloc(2 * LINE * P), 2 * LINE * P)
    values = Program(ops, shapes, fixed, strided, maxb)
    values.base = arena.size

    inp = Output("dense", input_off, in_w, shape=tuple(in_shape))
    in_vals = ({name: Output("dense", input_off + col, w, shape=shape, ld=in_w) for name, shape, col, w in in_cols}
               if in_cols else {ins[0][0]: inp})
    built, peaks = {}, {}

    def whole(s, splits=None):
        """The (program, explain rows) of a plan over all workers, built once."""
        if s not in built:
            # attention reads rows other workers wrote: a slot it read is free only after a barrier
            slots = values.slots("rows" if P == 1 or (s == "data" and not crossing) else "barrier")
            b = Builder(s, P, woff, slots, parts, scratch, inp, splits=splits, inputs=in_vals)
            for op in ops:
                b.add(op)
            built[s] = b.finish()
            peaks[s] = slots.peak
        return built[s]

    splits = None
    if P > 1 and rates is not None and set(names) & {"hybrid", "pipeline"}:
        splits = layer_splits(ops, whole("data"), whole("model"), maxb, rates)
    programs, explain = {}, {}
    for s in names:
        if s == "pipeline":
            slots = values.slots("none")
            programs[s], explain[s] = pipeline(ops, P, woff, slots, parts, scratch, inp, in_vals, counters[s][0],
                                               splits)
            peaks[s] = slots.peak
        else:
            programs[s], explain[s] = whole(s, splits)
    out_op = [op for op in ops if op.out == outputs[0]]
    output = fixed[out_op[0].index] if out_op else Output("dense", input_off, in_w, shape=in_shape)
    final = shapes[graph.outputs[0]]
    if output.kind == "dense" and not output.ld and int(np.prod(final)) == output.width:
        output.shape = tuple(final)  # e.g. a trailing Flatten
    # Slack at the end: a view of rows r0:r1 spans (r1 - r0) whole rows of its leading dimension,
    # even where only some columns of the last row are used (the last step of a sequence, a gate,
    # one worker's partials).
    arena.alloc(max(peaks.values(), default=0))
    arena.alloc(max([in_w, P * widest] + [o.ld or o.width for o in fixed.values()] +
                    [int(np.prod(shapes[op.out])) for op in ops] + [t * r.hidden_size for r, t in recs]))
    programs = {s: with_io(p, inp, output, direct_ok=not in_cols) for s, p in programs.items()}
    pair = max(int(np.prod(shapes[op.inputs[0]])) + int(np.prod(shapes[op.out])) for op in ops) if ops else in_w
    memory = {"peak": {s: values.base + v for s, v in peaks.items()}, "slots": dict(peaks), "base": values.base,
              "pair": maxb * pair}
    return Plan(P, maxb, in_shape, tensors, woff, arena.size, input_off, output, programs, explain, counters, rates,
                memory=memory, inputs=tuple(in_cols), outputs=tuple(out_cols), named_outputs=graph.named_outputs,
                lengths=tuple(sorted({(op.inputs[1], shapes[op.inputs[0]][0]) for op in ops
                                      if isinstance(op.layer, L._Recurrent) and len(op.inputs) > 1})))
