"""Planning: model IR -> per-worker programs over one weight store and arena.

A plan is data: the tensors to pack, the arena layout (float32 offsets,
sized for max_batch), and one program per strategy -- an int64 table per
worker (executor.py documents the step format).  Nothing here runs.

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

from shmrt.kernels.conv import scratch_floats as conv_scratch_floats

from shmrt.ir import layers as L
from shmrt.parallel.control import barrier_line
from shmrt.compile.isa import (ACT, AFFINE, ARGMAX, BARRIER, CELLS, CONV, END, FRAC, GAP, GATHER, LAYERNORM, LINEAR,
                               MICRO, MICRO_ROWS, NEXT, POOL, RECUR, REDUCE, ROW, SIGNAL, SOFTMAX, TOPK, WAIT, act_code,
                               encode)
from shmrt.parallel.store import align
from shmrt.parallel.sync import LINE

STRATEGIES = ("auto", "data", "model", "hybrid", "pipeline")
# hybrid, without a cost model (no rates): layers whose parameters are at
# least this large are split by model (columns/rows, hidden units), the
# rest by batch rows.  With rates, each layer takes the split the cost
# model predicts cheaper for it at max_batch.
HYBRID_MODEL_BYTES = 1 << 20
# pipeline: at most this many micro-batches per stage per call, of at least
# MICRO_ROWS rows each (each micro-batch reads the stage's weights again)
MICRO_PER_STAGE = 4


def _hybrid_by_size(op) -> bool:
    """Without rates: does the hybrid plan split this op by model (else by batch rows)?"""
    l = op.layer
    if isinstance(l, (L.Linear, L._Recurrent)):
        return 4 * sum(v.size for v in l.params.values()) >= HYBRID_MODEL_BYTES
    return isinstance(l, (L._Pool2d, L.GlobalAvgPool))  # pools follow a channel split where there is one


def split(total: int, parts: int, grain: int = 16) -> list:
    """Boundaries of ``parts`` near-equal ranges of ``total``; multiples of
    ``grain`` (a cache line of float32) where every part can have one."""
    if total >= grain * parts:
        units = total // grain
        return [units * p // parts * grain for p in range(parts)] + [total]
    return [total * p // parts for p in range(parts + 1)]


@dataclass
class Output:
    kind: str  # "dense" | "argmax" | "topk"
    off: int
    width: int  # features per row
    idx_off: int = -1
    shape: tuple = ()  # per-sample shape
    ld: int = 0  # row stride (0: width)


@dataclass
class Plan:
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
        self._auto = {}

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


def _fuse(model) -> list:
    ops = []
    for i, l in enumerate(model.layers):
        prev = ops[-1] if ops else None
        if isinstance(l, (L.Dropout, L.Flatten)):
            continue  # identity at inference / a free reshape
        if prev is not None and isinstance(prev.layer, (L.Linear, L.Conv2d)) and prev.act == 0:
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


def _fused_name(l) -> str:
    """A layer fused into the one before it: "ReLU", "GELU(approximate='tanh')", "BatchNorm2d(4) folded"."""
    name = repr(l).removesuffix("()")
    return f"{name} folded" if isinstance(l, L.BatchNorm1d) else name


def _tensors(ops) -> dict:
    """Every float32 tensor the programs read, by name (folds applied)."""
    t = {}
    for op in ops:
        i, l = op.index, op.layer
        if isinstance(l, (L.Linear, L.Conv2d)):
            w = l.params["weight"].astype(np.float64)
            b = l.params["bias"].astype(np.float64) if "bias" in l.params else None
            if op.fold is not None:
                s, sh = op.fold
                w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
                b = (b if b is not None else 0.0) * s + sh
            t[f"{i}.weight"] = w.astype(np.float32)
            if b is not None:
                t[f"{i}.bias"] = np.asarray(b, np.float32)
        elif isinstance(l, L._Affine):
            s, sh = l.affine()
            t[f"{i}.scale"], t[f"{i}.shift"] = s.astype(np.float32), sh.astype(np.float32)
        elif isinstance(l, L.LayerNorm):
            t[f"{i}.weight"], t[f"{i}.bias"] = l.params["weight"], l.params["bias"]
            t[f"{i}.eps"] = np.array([l.eps], np.float32)
        elif isinstance(l, L._Elementwise) and l.alpha is not None:
            t[f"{i}.alpha"] = np.array([l.alpha], np.float32)
        else:
            for k, v in l.params.items():
                t[f"{i}.{k}"] = v
    return t


class _Arena:
    def __init__(self):
        self.size = 0

    def alloc(self, n: int) -> int:
        off, self.size = self.size, self.size + align(max(int(n), 1))
        return off


def _conv_geom(l, in_shape, out_shape):
    """conv2d's geometry row (kernels/conv.py) for layer l."""
    (C, H, W), (_, OH, OW) = in_shape, out_shape
    return (C, H, W, *l.kernel_size, *l.stride, *l.padding, *l.dilation, l.groups, OH, OW)


def _rows_of(w, P):
    return w * FRAC // P, (w + 1) * FRAC // P


def _rows(w, P) -> dict:
    """Worker w's batch rows of P, as a step's lo and hi fields."""
    lo, hi = _rows_of(w, P)
    return dict(lo=lo, hi=hi)


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
    tensors = _tensors(ops)
    for op in ops:
        before = shapes[op.index - 1] if op.index > 0 else in_shape
        if isinstance(op.layer, L.Select):
            tensors[f"{op.index}.index"] = op.layer.resolve(before[0]).astype(np.float32)
        elif isinstance(op.layer, L.BatchNorm2d):  # per channel -> per feature of [C, H, W]
            hw = before[1] * before[2]
            for k in ("scale", "shift"):
                tensors[f"{op.index}.{k}"] = np.repeat(tensors[f"{op.index}.{k}"], hw)
    woff, off = {}, 0
    for name, arr in tensors.items():
        woff[name] = off
        off += align(arr.size)

    # One arena layout for every strategy: the input, each op's output,
    # recurrent scratch, and the partial sums of row-parallel layers.
    arena = _Arena()
    in_w = int(np.prod(in_shape))
    input_off = arena.alloc(maxb * in_w)
    outs = {}
    for op in ops:
        shape = shapes[op.members[-1]]
        width = int(np.prod(shape)) if shape else 1
        l = op.layer
        if isinstance(l, L.ArgMax):
            outs[op.index] = Output("argmax", arena.alloc(2 * maxb), 1, shape=())
        elif isinstance(l, L.TopK):
            outs[op.index] = Output("topk", arena.alloc(maxb * l.k), l.k, arena.alloc(2 * maxb * l.k), (l.k,))
        elif isinstance(l, L._Recurrent):
            T, H = in_shape[0], l.hidden_size
            seqs = [arena.alloc(maxb * T * H) for _ in range(l.num_layers)]
            o = Output("dense", seqs[-1], T * H, shape=(T, H))
            if not l.return_sequences:
                o = Output("dense", seqs[-1] + (T - 1) * H, H, shape=(H,), ld=T * H)
            o.seqs = seqs
            outs[op.index] = o
        else:
            outs[op.index] = Output("dense", arena.alloc(maxb * width), width, shape=tuple(shape))
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
        per = max(conv_scratch_floats(_conv_geom(op.layer, i, o), o[0]) for op, i, o in convs)
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
            b = _Builder(s, P, woff, outs, parts, scratch, inp, splits=splits)
            for op in ops:
                b.add(op)
            built[s] = b.finish()
        return built[s]

    splits = None
    if P > 1 and rates is not None and set(names) & {"hybrid", "pipeline"}:
        splits = _layer_splits(ops, whole("data"), whole("model"), maxb, rates)
    programs, explain = {}, {}
    for s in names:
        if s == "pipeline":
            programs[s], explain[s] = _pipeline(ops, P, woff, outs, parts, scratch, inp, counters[s][0], splits)
        else:
            programs[s], explain[s] = whole(s, splits)
    output = outs[ops[-1].index] if ops else Output("dense", input_off, in_w, shape=in_shape)
    if output.kind == "dense" and not output.ld and int(np.prod(shapes[-1])) == output.width:
        output.shape = tuple(shapes[-1])  # e.g. a trailing Flatten
    return Plan(P, maxb, in_shape, tensors, woff, arena.size, input_off, output, programs, explain, counters, rates)


class _Builder:
    """Emits one strategy's per-worker programs, layer by layer, tracking
    where the current activation is and which worker wrote which part:
    "all" (complete for everyone), "rows" (each worker its own batch rows),
    "cols" (each worker its own feature columns, ``bounds``)."""

    def __init__(self, strategy, P, woff, outs, parts, scratch, inp, wids=None, bline=None, splits=None):
        self.strategy, self.P, self.woff, self.outs = strategy, P, woff, outs
        self.parts, self.scratch = parts, scratch
        self.wids = list(wids) if wids is not None else list(range(P))  # global worker ids (per-worker scratch)
        self.bline = barrier_line(P) if bline is None else bline  # this group's barrier
        self.splits = splits  # hybrid: op index -> split by model
        self.steps = [[] for _ in range(P)]
        self.rows = []
        self.cur_off, self.cur_ld, self.cur_w, self.cur_shape = inp.off, inp.ld or inp.width, inp.width, inp.shape
        self.state, self.bounds = "all", None
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
        self.cur_off, self.cur_ld, self.cur_w, self.cur_shape = out.off, out.ld or out.width, out.width, out.shape
        self.state, self.bounds = state, bounds

    # -- layers ------------------------------------------------------------
    def add(self, op: _Op):
        b0 = self.barriers
        before = [len(st) for st in self.steps]
        l = op.layer
        if self.strategy == "hybrid":
            self.split_model = self.P > 1 and (self.splits[op.index][0] if self.splits else _hybrid_by_size(op))
        # "layer": as the user wrote it, "Linear(784, 256, bias=True) + ReLU"; "short": "Linear + ReLU"
        info = {"layers": op.members, "layer": " + ".join([repr(l)] + [_fused_name(f) for f in op.fused]),
                "short": " + ".join(type(f).__name__ for f in [l, *op.fused]), "partition": "", "slices": [],
                "flops": 0}
        if isinstance(l, L.Linear):
            self.linear(op, info)
        elif isinstance(l, (L._Elementwise, L._Affine)):
            self.featurewise(op, info)
        elif isinstance(l, L._Recurrent):
            self.recurrent(op, info)
        elif isinstance(l, L.Conv2d):
            self.conv(op, info)
        elif isinstance(l, (L._Pool2d, L.GlobalAvgPool)):
            self.pool(op, info)
        else:
            self.rowwise(op, info)
        info["barriers"] = self.barriers - b0
        if self.strategy == "hybrid" and self.P > 1:
            info["why"] = (f"split by {'model' if self.split_model else 'batch rows'}: " +
                           (self.splits[op.index][1] if self.splits else
                            f"parameters {'>=' if self.split_model else '<'} {HYBRID_MODEL_BYTES >> 20} MiB"))
        info["steps"] = {self.wids[w]: (before[w], len(self.steps[w])) for w in range(self.P)}
        info["workers"] = f"workers {self.wids[0]}..{self.wids[-1]}" if self.P > 1 else f"worker {self.wids[0]}"
        self.rows.append(info)

    def linear(self, op, info):
        P, l, i = self.P, op.layer, op.index
        k, m = l.in_features, l.out_features
        w_off, b_off = self.w(f"{i}.weight"), self.w(f"{i}.bias")
        out = self.outs[i]
        info["flops"] = 2 * k * m
        info["weight_bytes"] = 4 * (k * m + (m if b_off >= 0 else 0))
        x_off, x_ld = self.cur_off, self.cur_ld
        if not self.split_model:
            self.need_rows()
            for w in range(P):
                self.emit(w, LINEAR, x=x_off, x_ld=x_ld, x_col=0, k=k, w=w_off, w_ld=k, w_col=0, b=b_off, out=out.off,
                          out_ld=m, out_col=0, m=m, act=op.act, **_rows(w, P))
            info["partition"] = "batch rows"
            info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
            info["read_per_worker"] = info["weight_bytes"]
            self.set_cur(out, "rows")
        elif self.state == "cols" and self.bounds[-1] == k:
            # row parallel: this worker's input features are the columns it
            # wrote.  The two partial regions alternate: this layer's barrier
            # orders the previous layer's reduce (reads) before the next
            # layer's partial writes into the same region.
            parts = self.parts[self.row_layers % 2]
            self.row_layers += 1
            c = self.bounds
            for w in range(P):
                self.emit(w, LINEAR, x=x_off, x_ld=x_ld, x_col=c[w], k=c[w + 1] - c[w], w=w_off, w_ld=k, w_col=c[w],
                          b=-1, out=parts, out_ld=P * m, out_col=w * m, m=m, act=0, lo=0, hi=FRAC)
            self.barrier()
            d = split(m, P)
            for w in range(P):
                self.emit(w, REDUCE, parts=parts, P=P, m=m, c0=d[w], c1=d[w + 1], b=b_off, act=op.act, out=out.off,
                          out_ld=m)
            info["partition"] = "rows (input features) + reduce-scatter"
            info["slices"] = [f"in {c[w]}:{c[w + 1]} -> reduce out {d[w]}:{d[w + 1]}" for w in range(P)]
            info["read_per_worker"] = 4 * m * max(c[w + 1] - c[w] for w in range(P))
            info["moved_per_row"] = 4 * P * m * 2  # partials written, then read
            self.set_cur(out, "cols", d)
        else:
            self.need_all()
            c = split(m, P)
            for w in range(P):
                self.emit(w, LINEAR, x=x_off, x_ld=x_ld, x_col=0, k=k, w=w_off + c[w] * k, w_ld=k, w_col=0,
                          b=b_off + c[w] if b_off >= 0 else -1, out=out.off, out_ld=m, out_col=c[w],
                          m=c[w + 1] - c[w], act=op.act, lo=0, hi=FRAC)
            info["partition"] = "columns (output features)"
            info["slices"] = [f"out {c[w]}:{c[w + 1]}" for w in range(P)]
            info["read_per_worker"] = 4 * k * max(c[w + 1] - c[w] for w in range(P))
            self.set_cur(out, "cols", c)

    def featurewise(self, op, info):
        """Activations and per-feature affines follow the producer's partition."""
        P, l, i = self.P, op.layer, op.index
        if self.state == "spatial":
            self.need_rows()
        out = self.outs[i]
        W = self.cur_w
        for w in range(P):
            if self.state == "cols":
                c0, cw, rows = self.bounds[w], self.bounds[w + 1] - self.bounds[w], dict(lo=0, hi=FRAC)
            else:
                c0, cw, rows = 0, W, _rows(w, P)
            if isinstance(l, L._Affine):
                self.emit(w, AFFINE, x=self.cur_off, x_ld=self.cur_ld, col=c0, width=cw, scale=self.w(f"{i}.scale"),
                          shift=self.w(f"{i}.shift"), out=out.off, out_ld=W, **rows)
            else:
                self.emit(w, ACT, x=self.cur_off, x_ld=self.cur_ld, col=c0, width=cw, act=act_code(l.act), out=out.off, out_ld=W,
                          alpha=self.w(f"{i}.alpha"), **rows)
        if self.state == "cols":
            info["partition"] = "columns (follows producer)"
            info["slices"] = [f"cols {self.bounds[w]}:{self.bounds[w + 1]}" for w in range(P)]
            self.set_cur(out, "cols", self.bounds)
        else:
            info["partition"] = "batch rows"
            info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
            self.set_cur(out, "rows" if P > 1 else "all")
        info["flops"] = 2 * W

    def rowwise(self, op, info):
        P, l, i = self.P, op.layer, op.index
        self.need_rows()
        out = self.outs[i]
        x, ld, W = self.cur_off, self.cur_ld, self.cur_w
        for w in range(P):
            r = _rows(w, P)
            if isinstance(l, (L.Softmax, L.LogSoftmax)):
                self.emit(w, SOFTMAX, x=x, x_ld=ld, width=W, out=out.off, out_ld=W, log=int(isinstance(l, L.LogSoftmax)),
                          **r)
            elif isinstance(l, L.ArgMax):
                self.emit(w, ARGMAX, x=x, x_ld=ld, width=W, out=out.off, **r)
            elif isinstance(l, L.TopK):
                self.emit(w, TOPK, x=x, x_ld=ld, width=W, k=l.k, values=out.off, indices=out.idx_off, **r)
            elif isinstance(l, L.LayerNorm):
                self.emit(w, LAYERNORM, x=x, x_ld=ld, width=W, weight=self.w(f"{i}.weight"), bias=self.w(f"{i}.bias"),
                          eps=self.w(f"{i}.eps"), out=out.off, **r)
            elif isinstance(l, L.Select):
                self.emit(w, GATHER, x=x, x_ld=ld, index=self.w(f"{i}.index"), out=out.off, width=out.width, **r)
            else:
                raise NotImplementedError(f"no plan for {l!r}")
        info["partition"] = "batch rows (whole feature rows)"
        info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
        info["flops"] = 5 * W
        self.set_cur(out, "rows" if P > 1 else "all")

    def recurrent(self, op, info):
        P, l, i, sc = self.P, op.layer, op.index, self.scratch
        out = self.outs[i]
        T = self.cur_w // l.input_size
        H = l.hidden_size
        x_off = self.cur_off
        split_units = self.split_model
        if split_units:
            self.need_all()
        u = split(H, P) if split_units else None
        for k in range(l.num_layers):
            F = l.input_size if k == 0 else H
            h0 = self.w(f"{i}.h0") + k * H if f"{i}.h0" in self.woff else -1
            c0 = self.w(f"{i}.c0") + k * H if f"{i}.c0" in self.woff else -1
            for w in range(P):
                u0, u1 = (u[w], u[w + 1]) if split_units else (0, H)
                rows = dict(lo=0, hi=FRAC) if split_units else _rows(w, P)
                self.emit(w, RECUR, x=x_off, T=T, F=F, out=out.seqs[k], H=H, w_ih=self.w(f"{i}.weight_ih_l{k}"),
                          w_hh=self.w(f"{i}.weight_hh_l{k}"), b_ih=self.w(f"{i}.bias_ih_l{k}"),
                          b_hh=self.w(f"{i}.bias_hh_l{k}"), h0=h0, c0=c0, u0=u0, u1=u1, gates=sc["gates"],
                          gate_stride=sc["gstride"], aux=sc["aux"], hinit=sc["hinit"], mode=CELLS.index(l.cell),
                          parties=P if split_units else 1, line=self.bline, **rows)
            if split_units:
                self.barriers += T + 1
            x_off = out.seqs[k]
        G = l.gates
        info["flops"] = 2 * G * H * (l.input_size + H + (l.num_layers - 1) * 2 * H) * T
        info["weight_bytes"] = 4 * sum(v.size for v in l.params.values())
        if split_units:
            info["partition"] = f"hidden units, one barrier per time step ({T} steps x {l.num_layers} layer(s))"
            info["slices"] = [f"units {u[w]}:{u[w + 1]}" for w in range(P)]
            info["read_per_worker"] = info["weight_bytes"] // P
            self.set_cur(out, "all")
        else:
            info["partition"] = "batch rows (whole sequences)"
            info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
            info["read_per_worker"] = info["weight_bytes"]
            self.set_cur(out, "rows" if P > 1 else "all")

    def conv(self, op, info):
        """Batch rows (data); output channels, or output rows of each image when
        there are fewer than 2 channels per worker (model)."""
        P, l, i, sc = self.P, op.layer, op.index, self.scratch
        out = self.outs[i]
        C, H, W = self.cur_shape
        Cout, OH, OW = out.shape
        geom = _conv_geom(l, self.cur_shape, out.shape)
        w_off, b_off = self.w(f"{i}.weight"), self.w(f"{i}.bias")
        K = C // l.groups * l.kernel_size[0] * l.kernel_size[1]
        info["flops"] = 2 * Cout * OH * OW * K
        info["weight_bytes"] = 4 * (Cout * K + (Cout if b_off >= 0 else 0))
        if not self.split_model:
            self.need_rows()
            slices = [((0, Cout), (0, OH), _rows_of(w, P)) for w in range(P)]
            info["partition"] = "batch rows (whole images)"
            info["slices"] = [f"images {w}/{P}..{w + 1}/{P}" for w in range(P)]
            state, bounds = ("rows" if P > 1 else "all"), None
        elif Cout >= 2 * P:
            self.need_all()
            c = split(Cout, P, grain=1)
            slices = [((c[w], c[w + 1]), (0, OH), (0, FRAC)) for w in range(P)]
            info["partition"] = "output channels"
            info["slices"] = [f"channels {c[w]}:{c[w + 1]}" for w in range(P)]
            state, bounds = "cols", [v * OH * OW for v in c]
        else:
            self.need_all()
            r = split(OH, P, grain=1)
            slices = [((0, Cout), (r[w], r[w + 1]), (0, FRAC)) for w in range(P)]
            halo = (l.kernel_size[0] - 1) * l.dilation[0]
            info["partition"] = f"output rows of each image (spatial; input halo {halo} rows)"
            info["slices"] = [f"rows {r[w]}:{r[w + 1]}" for w in range(P)]
            state, bounds = "spatial", None
        for w, ((c0, c1), (h0, h1), rows) in enumerate(slices):
            self.emit(w, CONV, x=self.cur_off, x_ld=self.cur_ld, out=out.off, out_ld=out.width, w=w_off, b=b_off,
                      act=op.act, co0=c0, co1=c1, oh0=h0, oh1=h1, lo=rows[0], hi=rows[1],
                      scratch=sc["conv"] + self.wids[w] * sc["conv_per"], geom=geom, cout=Cout,
                      scratch_floats=sc["conv_per"])
        info["read_per_worker"] = info["weight_bytes"]
        self.set_cur(out, state, bounds)

    def pool(self, op, info):
        """Pooling is per channel: it follows a channel split, else batch rows."""
        P, l, i = self.P, op.layer, op.index
        out = self.outs[i]
        C, H, W = self.cur_shape
        hw = H * W
        follow = self.split_model and self.state == "cols" and all(b % hw == 0 for b in self.bounds)
        if not follow:
            self.need_rows()
        cb = [b // hw for b in self.bounds] if follow else None
        ohw = 1 if isinstance(l, L.GlobalAvgPool) else out.shape[1] * out.shape[2]
        for w in range(P):
            c0, c1 = (cb[w], cb[w + 1]) if follow else (0, C)
            rows = dict(lo=0, hi=FRAC) if follow else _rows(w, P)
            if isinstance(l, L.GlobalAvgPool):
                self.emit(w, GAP, x=self.cur_off, x_ld=self.cur_ld, out=out.off, out_ld=out.width, hw=hw, c0=c0, c1=c1,
                          **rows)
            else:
                geom = (C, H, W, *l.kernel_size, *l.stride, *l.padding, *l.dilation, out.shape[1], out.shape[2])
                self.emit(w, POOL, x=self.cur_off, x_ld=self.cur_ld, out=out.off, out_ld=out.width, c0=c0, c1=c1,
                          is_max=int(l.is_max), count_include_pad=int(l.count_include_pad), geom=geom, **rows)
        info["flops"] = C * hw
        if follow:
            info["partition"] = "channels (follows producer)"
            info["slices"] = [f"channels {cb[w]}:{cb[w + 1]}" for w in range(P)]
            self.set_cur(out, "cols", [c * ohw for c in cb])
        else:
            info["partition"] = "batch rows (whole images)"
            info["slices"] = [f"images {w}/{P}..{w + 1}/{P}" for w in range(P)]
            self.set_cur(out, "rows" if P > 1 else "all")

    def finish(self):
        for w in range(self.P):
            self.emit(w, END)
        n = max(len(s) for s in self.steps)
        prog = np.zeros((self.P, n, ROW), np.int64)
        for w in range(self.P):
            prog[w, :len(self.steps[w])] = self.steps[w]
        return prog, self.rows


def _stage_costs(ops, woff, outs, parts, scratch, inp):
    """Per op, a relative cost for balancing stages: flops per row, plus
    weight bytes (read once per micro-batch) at 4 flops a byte."""
    b = _Builder("data", 1, woff, outs, parts, scratch, inp)
    costs = []
    for op in ops:
        b.add(op)
        r = b.rows[-1]
        costs.append(r.get("flops", 0) + 4 * r.get("weight_bytes", 0) / 16)
    return costs


def _balance(costs, groups):
    """Cut costs (in order) into len(groups) consecutive non-empty stages,
    minimising the largest cost / group size (exhaustive DP; few ops)."""
    n, S = len(costs), len(groups)
    pre = np.concatenate([[0.0], np.cumsum(costs)])
    best = {(0, 0): (0.0, [])}
    for s in range(S):
        nxt = {}
        for (i, _), (worst, cuts) in best.items():
            for j in range(i + 1, n - (S - s - 1) + 1):
                w = max(worst, (pre[j] - pre[i]) / groups[s])
                if (j, s + 1) not in nxt or w < nxt[(j, s + 1)][0]:
                    nxt[(j, s + 1)] = (w, cuts + [j])
        best = nxt
    return best[(n, S)][1]


def _layer_splits(ops, data, model, maxb, rates):
    """Per op, whether the hybrid plan splits it by model: the cheaper, at
    max_batch rows, of its steps in the batch-row plan and in the
    model-parallel plan ((program, explain rows) each) as the cost model
    prices them (barriers included)."""
    from shmrt.compile.cost import op_us
    out = {}
    for op, rd, rm in zip(ops, data[1], model[1]):
        t_model, t_data = (op_us(prog, r["steps"], maxb, rates) for prog, r in ((model[0], rm), (data[0], rd)))
        out[op.index] = (t_model < t_data, f"predicted at batch {maxb}: {t_model:.1f} us by model "
                                           f"(as the model plan splits it: {rm['partition']}), {t_data:.1f} us "
                                           f"by batch rows")
    return out


def _pipeline(ops, P, woff, outs, parts, scratch, inp, counters_off, splits=None):
    """Stages of consecutive ops, each on its own group of workers, split
    within the group as the hybrid plan splits (large layers by model, with
    the group's own barrier); micro-batches flow from stage to stage,
    each stage counting the micro-batches it finished (executor: MICRO,
    WAIT, SIGNAL, NEXT).  A micro-batch's rows have their own place in
    every activation, so a stage never waits for room, only for data."""
    S = min(P if P <= 3 else P // 2, len(ops))  # from 4 workers on, groups of 2 or more
    groups = [P // S + (1 if s < P % S else 0) for s in range(S)]
    cuts = _balance(_stage_costs(ops, woff, outs, parts, scratch, inp), groups)
    steps = [[] for _ in range(P)]
    rows, first, start, cur = [], 0, 0, inp
    for s, (size, end) in enumerate(zip(groups, cuts)):
        wids = list(range(first, first + size))
        b = _Builder("hybrid", size, woff, outs, parts, scratch, cur, wids, barrier_line(P, s), splits)
        for op in ops[start:end]:
            b.add(op)
        head_len = 2 if s > 0 else 1
        for r in b.rows:
            r["workers"] = f"stage {s}: " + r["workers"]
            r["steps"] = {w: (a + head_len, z + head_len) for w, (a, z) in r["steps"].items()}
            r["micro"] = MICRO_PER_STAGE * S
        rows += b.rows
        for local, w in enumerate(wids):
            head = [encode(MICRO, most=MICRO_PER_STAGE * S, counters=counters_off, workers=P, rows=MICRO_ROWS)]
            if s > 0:
                head.append(encode(WAIT, first=first - groups[s - 1], producers=groups[s - 1]))
            tail = ([encode(SIGNAL, worker=w)] if s < S - 1 else []) + [encode(NEXT), encode(END)]
            steps[w] += head + b.steps[local] + tail
        cur = Output("dense", b.cur_off, b.cur_w, shape=b.cur_shape, ld=b.cur_ld if b.cur_ld != b.cur_w else 0)
        first, start = first + size, end
    n = max(len(x) for x in steps)
    prog = np.zeros((P, n, ROW), np.int64)
    for w in range(P):
        prog[w, :len(steps[w])] = steps[w]
    return prog, rows
