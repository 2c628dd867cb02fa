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
  c0:c1 -- exactly the columns it wrote in the column layer before, so no
  barrier between the two -- into its own partial-sum block; one barrier;
  then a reduce-scatter: worker w sums every block for output columns d0:d1
  and adds bias and activation.
Activations follow their producer's partition (fused into the Linear or
the reduce where they directly follow one).  Row-wise layers (Softmax,
ArgMax, TopK) need whole rows: a barrier, then a batch-row split.
A barrier stands only where data crosses workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import layers as L
from .executor import (ACT, ARGMAX, BARRIER, END, FRAC, LINEAR, REDUCE, ROW, SOFTMAX, TOPK)
from .store import align
from .control import BARRIER as BARRIER_LINE

STRATEGIES = ("auto", "data", "model")


def split(total: int, parts: int, grain: int = 16) -> list:
    """Boundaries of ``parts`` near-equal ranges of ``total``; multiples of
    ``grain`` (a cache line of float32) where every part can have one."""
    if total >= grain * parts:
        units = total // grain
        b = [units * p // parts * grain for p in range(parts)] + [total]
    else:
        b = [total * p // parts for p in range(parts + 1)]
    return b


def _fuse(model):
    """(layer index, layer, fused activation code) with activations merged
    into the Linear right before them."""
    ops = []
    for i, l in enumerate(model.layers):
        if isinstance(l, L._Elementwise) and ops and isinstance(ops[-1][1], L.Linear) and ops[-1][2] == 0:
            ops[-1] = (ops[-1][0], ops[-1][1], l.act, ops[-1][3] + [i])
        else:
            ops.append((i, l, 0, [i]))
    return ops


@dataclass
class Output:
    kind: str  # "dense" | "argmax" | "topk"
    off: int
    width: int
    idx_off: int = -1


@dataclass
class Plan:
    workers: int
    max_batch: int
    in_features: int
    tensors: dict
    woff: dict  # tensor name -> float32 offset in the weight store
    arena_floats: int
    input_off: int
    output: Output
    programs: dict  # strategy -> int64 [workers, steps, ROW]
    model_max_batch: int  # largest n the "model" program serves
    explain_rows: dict = field(default_factory=dict)  # strategy -> list of dicts

    def strategy_for(self, strategy: str, n: int) -> str:
        if strategy != "auto":
            return strategy
        return "model" if n <= self.model_max_batch and self.workers > 1 else "data"

    def program_index(self, name: str) -> int:
        return list(self.programs).index(name)


class _Arena:
    def __init__(self):
        self.size = 0

    def alloc(self, n: int) -> int:
        off, self.size = self.size, self.size + align(max(int(n), 1))
        return off


def _rows_of(w, P):
    return w * FRAC // P, (w + 1) * FRAC // P


# Auto: at most this many rows per worker go through the model-parallel
# program; above it, batch-row splitting wins (measured in the bench).
AUTO_MODEL_ROWS_PER_WORKER = 2


def build(model, workers: int, strategy: str = "auto", max_batch: int = 256, input_shape=None) -> Plan:
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
    in_shape = tuple(input_shape) if input_shape is not None else model.input_shape()
    if in_shape is None:
        raise ValueError("cannot infer the input shape of this model (it starts with no Linear): "
                         "pass input_shape=(features,) to compile")
    if len(in_shape) != 1:
        raise ValueError(f"only dense [N, F] inputs are supported so far, got input_shape={in_shape}")
    shapes = model.shapes(in_shape)

    tensors, woff, off = {}, {}, 0
    for i, l in enumerate(model.layers):
        for pname, arr in l.params.items():
            name = f"{i}.{pname}"
            tensors[name], woff[name] = arr, off
            off += align(arr.size)

    # One arena layout for every strategy: the input, each layer's output,
    # and the partial sums of row-parallel layers.
    arena = _Arena()
    input_off = arena.alloc(maxb * in_shape[0])
    ops = _fuse(model)
    outs = {}
    for i, l, act, _ in ops:
        if isinstance(l, L._Elementwise):
            continue  # in place
        width = shapes[i][0] if shapes[i] else 1
        if isinstance(l, L.ArgMax):
            outs[i] = Output("argmax", arena.alloc(2 * maxb), 1)
        elif isinstance(l, L.TopK):
            outs[i] = Output("topk", arena.alloc(maxb * l.k), l.k, arena.alloc(2 * maxb * l.k))
        else:
            outs[i] = Output("dense", arena.alloc(maxb * width), width)
    if strategy == "data" or P == 1:
        model_maxb = 0
    elif strategy == "model":
        model_maxb = maxb
    else:
        model_maxb = min(maxb, AUTO_MODEL_ROWS_PER_WORKER * P)
    widest = max([l.out_features for _, l, _, _ in ops if isinstance(l, L.Linear)] + [1])
    # two partial-sum regions, alternated by consecutive row-parallel layers
    parts = [arena.alloc(model_maxb * P * widest) for _ in range(2)] if model_maxb else [-1, -1]

    names = {"auto": ["data", "model"] if P > 1 else ["data"], "data": ["data"], "model": ["model"]}[strategy]
    programs, explain = {}, {}
    for s in names:
        prog, rows = _program(s, ops, shapes, in_shape, P, woff, input_off, outs, parts)
        programs[s], explain[s] = prog, rows
    last = ops[-1][0]
    while last not in outs:  # trailing activations write in place
        last -= 1
    output = outs[last] if last >= 0 else Output("dense", input_off, in_shape[0])
    return Plan(P, maxb, in_shape[0], tensors, woff, arena.size, input_off, output, programs,
                model_maxb, explain)


def _program(strategy, ops, shapes, in_shape, P, woff, input_off, outs, parts):
    steps = [[] for _ in range(P)]
    rows_info = []

    def emit(w, *vals):
        r = np.zeros(ROW, np.int64)
        r[:len(vals)] = vals
        steps[w].append(r)

    def barrier():
        for w in range(P):
            emit(w, BARRIER, BARRIER_LINE, P)
        nonlocal_state["barriers"] += 1

    nonlocal_state = {"barriers": 0, "row_layers": 0}
    # where the current activation is: its buffer and who wrote which part
    cur_off, cur_w = input_off, in_shape[0]
    state, bounds = "all", None  # "all" | "rows" (batch split) | "cols" (column split, bounds)
    all_rows = (0, FRAC)
    for idx, (i, l, act, members) in enumerate(ops):
        b0 = nonlocal_state["barriers"]
        info = {"layers": members, "layer": repr(l) + (f" + act {act}" if act else ""), "partition": "", "slices": []}
        nxt = ops[idx + 1][1] if idx + 1 < len(ops) else None
        if isinstance(l, L.Linear):
            k, m = l.in_features, l.out_features
            w_off, b_off = woff[f"{i}.weight"], woff.get(f"{i}.bias", -1)
            out = outs[i]
            info["flops"] = 2 * k * m
            info["weight_bytes"] = 4 * (k * m + (m if b_off >= 0 else 0))
            if strategy == "data" or P == 1:
                for w in range(P):
                    emit(w, LINEAR, cur_off, cur_w, 0, k, w_off, k, 0, b_off, out.off, m, 0, m, act, *_rows_of(w, P))
                info["partition"] = "batch rows"
                info["slices"] = [f"rows {_frac(w, P)}" for w in range(P)]
                info["read_per_worker"] = info["weight_bytes"]
                state = "rows"
            elif state == "cols" and bounds is not None and bounds[-1] == k:
                # row parallel: this worker's input features = the columns it wrote.
                # Alternate the two partial regions: the barrier of this layer
                # orders the previous layer's reduce (reads) before the next
                # layer's partial writes into the same region.
                parts_off = parts[nonlocal_state["row_layers"] % 2]
                nonlocal_state["row_layers"] += 1
                for w in range(P):
                    c0, c1 = bounds[w], bounds[w + 1]
                    emit(w, LINEAR, cur_off, cur_w, c0, c1 - c0, w_off, k, c0, -1, parts_off, P * m, w * m, m, 0, *all_rows)
                barrier()
                d = split(m, P)
                for w in range(P):
                    emit(w, REDUCE, parts_off, P, 0, m, d[w], d[w + 1], b_off, act, out.off, m)
                info["partition"] = "rows (input features) + reduce-scatter"
                info["slices"] = [f"in {bounds[w]}:{bounds[w + 1]} -> reduce out {d[w]}:{d[w + 1]}" for w in range(P)]
                info["read_per_worker"] = 4 * m * max(bounds[w + 1] - bounds[w] for w in range(P))
                info["moved_per_row"] = 4 * P * m * 2  # partials written, then read
                state, bounds = "cols", d
            else:
                if state != "all":
                    barrier()
                c = split(m, P)
                for w in range(P):
                    c0, c1 = c[w], c[w + 1]
                    emit(w, LINEAR, cur_off, cur_w, 0, k, w_off + c0 * k, k, 0, b_off + c0 if b_off >= 0 else -1,
                         out.off, m, c0, c1 - c0, act, *all_rows)
                info["partition"] = "columns (output features)"
                info["slices"] = [f"out {c[w]}:{c[w + 1]}" for w in range(P)]
                info["read_per_worker"] = 4 * k * max(c[w + 1] - c[w] for w in range(P))
                state, bounds = "cols", c
            cur_off, cur_w = out.off, m
        elif isinstance(l, L._Elementwise):
            if state == "cols":
                for w in range(P):
                    emit(w, ACT, cur_off, cur_w, bounds[w], bounds[w + 1] - bounds[w], l.act, *all_rows)
                info["partition"] = "columns (follows producer)"
                info["slices"] = [f"cols {bounds[w]}:{bounds[w + 1]}" for w in range(P)]
            else:
                for w in range(P):
                    emit(w, ACT, cur_off, cur_w, 0, cur_w, l.act, *_rows_of(w, P))
                info["partition"] = "batch rows"
                info["slices"] = [f"rows {_frac(w, P)}" for w in range(P)]
                state = "rows" if P > 1 else state
            info["flops"] = cur_w
        else:  # row-wise: needs whole rows
            if strategy != "data" and state != "all" and P > 1 and state != "rows":
                barrier()
            elif strategy != "data" and state == "rows" and P > 1:
                pass  # each worker owns whole rows already
            out = outs[i]
            for w in range(P):
                r = _rows_of(w, P)
                if isinstance(l, (L.Softmax, L.LogSoftmax)):
                    emit(w, SOFTMAX, cur_off, cur_w, cur_w, out.off, cur_w, int(isinstance(l, L.LogSoftmax)), *r)
                elif isinstance(l, L.ArgMax):
                    emit(w, ARGMAX, cur_off, cur_w, cur_w, out.off, *r)
                else:
                    emit(w, TOPK, cur_off, cur_w, cur_w, l.k, out.off, out.idx_off, *r)
            info["partition"] = "batch rows (whole feature rows)"
            info["slices"] = [f"rows {_frac(w, P)}" for w in range(P)]
            info["flops"] = 4 * cur_w
            cur_off, cur_w = out.off, out.width
            state = "rows"
        info["barriers"] = nonlocal_state["barriers"] - b0
        rows_info.append(info)
    for w in range(P):
        emit(w, END)
    n = max(len(s) for s in steps)
    prog = np.zeros((P, n, ROW), np.int64)
    for w in range(P):
        prog[w, :len(steps[w])] = steps[w]
    return prog, rows_info


def _frac(w, P):
    return f"{w}/{P}..{w + 1}/{P}"
