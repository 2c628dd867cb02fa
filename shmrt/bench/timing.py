"""Timing shared by the benchmark's runners (harness.py, encoders.py): the modes' repetitions,
the interleaved timing of several implementations, and the relative error of the numeric check."""
from __future__ import annotations

import time

import numpy as np

from shmrt.compile.tune import timeit


def rel_err(y, ref) -> float:
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def interleaved(impls, x, rounds, min_time, rng, pause):
    """Per-call seconds of each Impl: ``rounds`` rounds, each running every
    Impl for a stretch (at least one call and min_time / rounds seconds) in
    a fresh random order, so that neither drift nor position favours one.
    A warm-up call each first; ``pause`` seconds after each stretch of an
    impl whose threads spin on after a call (OpenBLAS, onnxruntime)."""
    times = {k: [] for k in impls}
    for impl, _ in impls.values():
        with impl.scope():
            impl.run(x)
    keys = list(impls)
    for _ in range(rounds):
        rng.shuffle(keys)
        for k in keys:
            impl, spins = impls[k]
            with impl.scope():
                times[k] += list(timeit(lambda: impl.run(x), 1, min_time / rounds, warmup=0))
            if spins:
                time.sleep(pause)
    return {k: np.array(v) for k, v in times.items()}


MODES = {  # rounds, seconds per implementation per batch, profiled calls, seconds of profiling
    "quick": (2, 0.1, 3, 0.1),
    "default": (5, 0.4, 5, 0.2),
    "full": (5, 1.5, 15, 1.0),
}
