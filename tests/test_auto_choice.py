"""The cost model's choice against a measurement: for a small MLP, CNN and
LSTM at batch 1 and at a large batch, the plan ``auto`` picks is measured
within 1.3x of the fastest fixed plan.

A benchmark-style check, kept tolerant of a loaded 2-core machine: every
fixed plan is timed in place (no copies) in rounds, in a fresh random order
each round, and compared by medians; a comparison that fails is measured
again, up to three times in all, since a real misranking fails every time
while a burst of load from elsewhere does not repeat.
"""
import random
import time

import numpy as np
import pytest

import shmrt
from models import rnd

TOLERANCE = 1.3
FIXED = ("data", "model", "hybrid", "pipeline")


def mlp():
    shmrt.manual_seed(40)
    return shmrt.Sequential([shmrt.Linear(256, 1024), shmrt.ReLU(), shmrt.Linear(1024, 1024), shmrt.ReLU(),
                             shmrt.Linear(1024, 10)]), (256,)


def cnn():
    shmrt.manual_seed(41)
    return shmrt.Sequential([shmrt.Conv2d(3, 16, 3, padding=1), shmrt.ReLU(), shmrt.MaxPool2d(2),
                             shmrt.Conv2d(16, 32, 3, padding=1), shmrt.ReLU(), shmrt.MaxPool2d(2), shmrt.Flatten(),
                             shmrt.Linear(32 * 4 * 4, 64), shmrt.ReLU(), shmrt.Linear(64, 10)]), (3, 16, 16)


def lstm():
    shmrt.manual_seed(42)
    return shmrt.Sequential([shmrt.LSTM(32, 256, return_sequences=False), shmrt.Linear(256, 10)]), (16, 32)


def measure(cms, n, rounds=7, calls=5):
    """Median seconds of a call of n rows per compiled model, interleaved in random order."""
    times = {s: [] for s in cms}
    keys = list(cms)
    for cm in cms.values():
        cm.run_in_place(n)
    for _ in range(rounds):
        random.shuffle(keys)
        for s in keys:
            for _ in range(calls):
                t = time.perf_counter()
                cms[s].run_in_place(n)
                times[s].append(time.perf_counter() - t)
    return {s: float(np.median(v)) for s, v in times.items()}


@pytest.mark.parametrize("make, batches", [(mlp, (1, 128)), (cnn, (1, 64)), (lstm, (1, 32))],
                         ids=["mlp", "cnn", "lstm"])
def test_auto_within_tolerance_of_the_fastest_plan(rt, make, batches):
    model, shape = make()
    top = max(batches)
    auto = rt.compile(model, strategy="auto", max_batch=top, input_shape=shape)
    cms = {s: rt.compile(model, strategy=s, max_batch=top, input_shape=shape) for s in FIXED}
    try:
        for cm in (auto, *cms.values()):
            cm.input_buffer(top)[...] = rnd(top, *shape, seed=1)
        for n in batches:
            chosen = auto.plan.strategy_for("auto", n)
            assert chosen in cms, chosen
            for attempt in range(3):
                t = measure(cms, n)
                fastest = min(t, key=t.get)
                ratio = t[chosen] / t[fastest]
                print(f"{make.__name__} batch {n}: auto chose {chosen} ({t[chosen] * 1e6:,.0f} us), fastest "
                      f"{fastest} ({t[fastest] * 1e6:,.0f} us): {ratio:.2f}x; all: "
                      + ", ".join(f"{s} {v * 1e6:,.0f}" for s, v in sorted(t.items(), key=lambda kv: kv[1])))
                if ratio <= TOLERANCE:
                    break
            assert ratio <= TOLERANCE, (f"{make.__name__} at batch {n}: auto's plan {chosen!r} took {ratio:.2f}x "
                                        f"the fastest ({fastest!r}) in 3 measurements; predicted (us): "
                                        f"{auto.plan.predictions(n)}")
    finally:
        for cm in (auto, *cms.values()):
            cm.close()
