"""Compile every Numba function a worker uses, in the parent, before any
worker starts: workers then load machine code from Numba's on-disk cache
instead of each compiling it (seconds per process).  Runs once per process.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import types

_done = []


def compile_all() -> None:
    if _done:
        return
    from . import control as C
    from . import layers as L
    from . import plan as planner
    from .executor import run_in_process, serve
    from .store import Segment, WeightStore
    from .sync import barrier, wait_change

    dense = L.Sequential([L.Standardize(np.zeros(3), np.ones(3)), L.Linear(3, 5), L.BatchNorm1d(5), L.ReLU(),
                          L.Linear(5, 4), L.Tanh(), L.Linear(4, 4), L.Sigmoid(), L.GELU(), L.LayerNorm(4),
                          L.Softmax(), L.LogSoftmax(), L.TopK(2)])
    tail = L.Sequential([L.Select([0, 2]), L.Dropout(), L.Linear(2, 4), L.MinMaxScale(np.zeros(4), np.ones(4)),
                         L.ArgMax()])
    seq = L.Sequential([L.LSTM(3, 4), L.GRU(4, 4), L.RNN(4, 4, return_sequences=False), L.Linear(4, 2)])
    cnn = L.Sequential([L.Conv2d(2, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2d(2),
                        L.Conv2d(4, 2, 3, groups=2), L.BatchNorm2d(2), L.AvgPool2d(2, 1), L.GlobalAvgPool(),
                        L.Flatten(), L.Linear(2, 3)])
    for m, shape, strategies in ((dense, None, ("data", "model")), (tail, (3,), ("data", "model")),
                                 (seq, (5, 3), ("data",)), (cnn, (2, 8, 8), ("data", "model"))):
        for strategy in strategies:
            p = planner.build(m, 2, strategy, 4, shape)
            w = WeightStore.pack(p.tensors)
            arena = np.zeros(p.arena_floats, np.float32)
            arena[p.input_off:p.input_off + 3 * p.in_features] = 0.5
            run_in_process(p.programs[strategy], w.flat, arena, 3)
            progs = np.ascontiguousarray(p.programs[strategy][None])
            w_type = numba.typeof(w.flat)
            w.segment.close()
    seg = Segment.create(4096)
    try:
        ctrl = seg.array(np.int32, 1024)
        i64 = types.int64
        serve.compile((numba.typeof(ctrl), i64, i64, numba.typeof(progs), w_type, numba.typeof(arena),
                       i64, i64, i64, i64, i64))
        ctrl[C.GEN] = 1
        wait_change(ctrl, C.GEN, 0, C.GEN_SLEEP, C.ZERO, 0, 0, 0)
        barrier(ctrl, C.BARRIER, 1, C.ABORT, 0, 0, 0)
        C.call(ctrl, C.OP_NOP, 0, 0, 0, 0, 0, 0)
        C.wait_done(ctrl, 0, 0, 0)
        C.finish(ctrl, 0, 0)
        C.set_word(ctrl, C.ABORT, 0)
        C.get_word(ctrl, C.ABORT)
        del ctrl
    finally:
        seg.close()
    _done.append(True)
