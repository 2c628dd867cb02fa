"""autotune=True: time every candidate plan of a compiled model on this
machine at batch sizes 1, 4, 16, ..., max_batch, keep the fastest for each,
and cache the choice per (model structure, input shape, max_batch, workers,
machine, shmrt version and code), so that compiling the same model again is
instant and an upgrade measures again."""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from shmrt.compile.cost import _cache_path, code_key, load, machine_key, store


def timeit(fn, reps: int, min_time: float = 0.0, warmup: int = 1) -> np.ndarray:
    """Per-call seconds: ``warmup`` calls excluded, then ``reps`` calls or
    until ``min_time`` has passed, whichever is later (at most 20 x reps)."""
    for _ in range(warmup):
        fn()
    ts, t_end = [], time.perf_counter() + min_time
    while len(ts) < reps or (time.perf_counter() < t_end and len(ts) < 20 * reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return np.array(ts)


def batch_sizes(max_batch: int) -> list:
    out, b = [], 1
    while b < max_batch:
        out.append(b)
        b *= 4
    return out + [max_batch]


def _key(cm, model) -> str:
    plan = cm.plan
    text = repr([repr(l) for l in model.layers]) + repr((plan.in_shape, plan.max_batch, plan.workers,
                                                          sorted(plan.programs), machine_key(), code_key()))
    return hashlib.sha1(text.encode()).hexdigest()


def _path() -> str:
    return os.path.join(os.path.dirname(_cache_path()), "autotune.json")


def autotune(cm, model, reps: int = 3) -> dict:
    """{batch size: fastest program name} for cm, from the cache or measured."""
    key = _key(cm, model)
    got = load(_path()).get(key)
    if got:
        return {int(b): name for b, name in got.items()}
    rng = np.random.default_rng(0)
    plan = cm.plan
    chosen = {}
    for b in batch_sizes(plan.max_batch):
        cm.input_buffer(b)[...] = rng.standard_normal((b, *plan.in_shape)).astype(np.float32)
        best = None
        for name in plan.programs:
            t = float(np.median(timeit(lambda: cm._run_in_place(b, program=name), reps)))
            if best is None or t < best[0]:
                best = (t, name)
        chosen[b] = best[1]
    store(_path(), key, chosen)
    return chosen
