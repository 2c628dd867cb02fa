"""What one call costs around its kernels (issue 15), on this machine.

    python bench/call_cost.py [--json PATH]

Prints, for Runtime() (workers=None), in one process:
- a tiny model (Linear 16->16) called back to back with cm(x): us per call (median of 5 rounds)
- coordination (dispatch + barrier waits + return, shmrt.profile) of CNN and MLP at batch 1 (p50, p90)
- logreg, 1,000,000 rows x 64 passed as an ordinary numpy array to cm(x): ms per call, and the
  profile's copy share
- idle CPU: the runtime's processes' CPU time over 1 s, starting 200 ms after the last call
Run it twice (before / after a change) back to back: this VM's speed drifts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import psutil

import shmrt
from shmrt.bench.workloads import WORKLOADS


def med_us(fn, n, rounds=5):
    out = []
    for _ in range(rounds):
        fn()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append((time.perf_counter() - t) / n * 1e6)
    return float(np.median(out)), float(min(out)), float(max(out))


def coordination(cm, x, reps=200):
    cm.profile(x)
    ps = [cm.profile(x) for _ in range(reps)]
    c = [p.coordination_us for p in ps]
    k = [p.kernel_us[p.critical] for p in ps]
    return dict(p50=float(np.median(c)), p90=float(np.percentile(c, 90)), kernel_p50=float(np.median(k)))


def idle_cpu(rt):
    procs = [psutil.Process(p) for p in rt.pids()]
    tp = rt.template_pid()
    if tp:
        procs.append(psutil.Process(tp))
    time.sleep(0.2)
    me = psutil.Process()
    c0 = sum(sum(p.cpu_times()[:2]) for p in procs) + sum(me.cpu_times()[:2])
    time.sleep(1.0)
    c1 = sum(sum(p.cpu_times()[:2]) for p in procs) + sum(me.cpu_times()[:2])
    return (c1 - c0) / 1.0 * 100


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    res = {}
    t0 = time.perf_counter()
    with shmrt.Runtime() as rt:
        res["workers"] = rt.workers
        res["pids"] = len(rt.pids())
        tiny = rt.compile(shmrt.Sequential([shmrt.Linear(16, 16)]), max_batch=4)
        x1 = np.ones((1, 16), np.float32)
        res["tiny_us"] = med_us(lambda: tiny(x1), 2000)
        for name in ("cnn", "mlp"):
            wl = WORKLOADS[name]()
            cm = rt.compile(wl.model, max_batch=wl.max_batch, input_shape=wl.input_shape)
            x = np.random.default_rng(0).standard_normal((1, *wl.input_shape)).astype(np.float32)
            res[f"{name}_b1_coordination"] = coordination(cm, x, 100 if name == "mlp" else 300)
            cm.close()
        wl = WORKLOADS["logreg"]()
        cm = rt.compile(wl.model, max_batch=1_000_000, input_shape=(64,))
        x = np.random.default_rng(1).standard_normal((1_000_000, 64)).astype(np.float32)
        res["logreg_cm_ms"] = [v / 1000 for v in med_us(lambda: cm(x), 3)]
        p = cm.profile(x)
        res["logreg_copy_share"] = (p.copy_in_us + p.copy_out_us) / p.total_us
        res["idle_cpu_percent"] = idle_cpu(rt)
    res["wall_s"] = time.perf_counter() - t0
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
