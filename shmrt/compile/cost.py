"""The planner's cost model: a program's predicted time at batch n.

Each step is priced by the op module that emits it (compile/ops/) with the
roofline of roofline.py -- the larger of its flops at the machine's GEMM
rate and its bytes at the read bandwidth, both per worker.  Barriers cost
the measured barrier time; a call pays one dispatch.  A worker's time is the sum of its steps, the
program's the slowest worker's.  A pipeline program runs its loop body
once per micro-batch on n / m rows, plus the fill and drain of its stages.

Rates are measured on the runtime's own workers with shmrt's own kernels
(``calibrate``), once per machine, worker count and version of the code,
and kept in the user's cache directory; they are coarse on purpose: the
model ranks plans, and ``autotune=True`` times the real ones where the
ranking is close.
"""
from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

from shmrt.compile.isa import BARRIER, END, LINEAR, MICRO, MICRO_ROWS, NEXT, OP, SIGNAL, WAIT
from shmrt.compile.ops import COSTS
from shmrt.compile.roofline import ROWS_HALF, Rates  # noqa: F401 (Rates: the cost model's rates, re-exported)
from shmrt.exec.executor import micro_batches


def step_us(s, cnt, n, rates) -> float:
    """Predicted microseconds of one step (a program row) for a window of cnt
    rows (batch n): the price its op module gives (compile/ops/); barriers
    cost the measured barrier time; control steps nothing."""
    op = int(s[OP])
    if op == BARRIER.code:
        return rates.barrier_us
    price = COSTS.get(op)
    return price(s, cnt, n, rates) if price is not None else 0.0


def op_us(prog, steps: dict, n: int, rates: Rates, micro: int = 1) -> float:
    """Predicted microseconds of one op of prog at batch n: the slowest of
    its workers' step ranges ({worker: (first, end)}, as the planner records
    them); ops in a pipeline stage run once per micro-batch (at most micro)."""
    m = micro_batches(max(n, 1), micro, MICRO_ROWS)
    return max((sum(m * step_us(prog[w, i], max(n, 1) // m, max(n, 1), rates) for i in range(a, z))
                for w, (a, z) in steps.items()), default=0.0)


def predict_us(prog, n: int, rates: Rates) -> float:
    """Predicted microseconds of one call of program prog [P, steps, ROW] at batch n."""
    if n <= 0:
        return 0.0
    worst, stage_body = 0.0, {}
    for w in range(prog.shape[0]):
        t, i, steps = 0.0, 0, prog[w]
        while steps[i, OP] != END.code:
            s = steps[i]
            if s[OP] == MICRO.code:  # a pipeline stage: its loop body, once per micro-batch
                m = micro_batches(n, int(s[MICRO.most]), int(s[MICRO.rows]))
                j, body = i + 1, 0.0
                while steps[j, OP] != NEXT.code:
                    if steps[j, OP] in (WAIT.code, SIGNAL.code):
                        body += rates.barrier_us / 2
                    else:
                        body += step_us(steps[j], max(n // m, 1), n, rates)
                    j += 1
                stage_body[w] = body
                t += m * body
                i = j + 1
                continue
            t += step_us(s, n, n, rates)
            i += 1
        worst = max(worst, t)
    if stage_body:  # fill and drain: every stage but the slowest waits one body per other stage
        bodies = sorted(stage_body.values())
        worst += sum(bodies[:-1])
    return rates.dispatch_us + worst


# -- calibration -------------------------------------------------------------------

def _cache_path() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "shmrt", "calibration.json")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; what platform knows elsewhere)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine_key() -> str:
    return f"{cpu_model()} x{os.cpu_count()}"


def code_key() -> str:
    """shmrt's version and a hash of the sources of the code that measurements time (the kernels,
    the interpreter, the runtime): an upgrade or an edit never reuses stale timings."""
    from shmrt.kernels._cache import source_hash
    from shmrt.version import __version__
    return f"shmrt {__version__} code {source_hash()}"


def load(path: str) -> dict:
    """A JSON cache file of shmrt's (calibration, autotune), {} if absent or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def store(path: str, key: str, value) -> None:
    """Set key in a JSON cache file, replacing the file atomically; a
    read-only home only means measuring again next time."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = load(path)
        data[key] = value
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass


def _per_worker(cm, n, work, calls=7):
    """Median over calls and workers of work(w) / (the kernel time of worker w
    in a profiled in-place call of n rows), skipping workers given no work."""
    cm.profile(n=n)  # warm: weights into the cache where they fit, code paged in
    vals = []
    for _ in range(calls):
        p = cm.profile(n=n)
        vals += [work(w) / (p.kernel_us[w] * 1e-6) for w in range(p.workers) if work(w) > 0 and p.kernel_us[w] > 0]
    return float(np.median(vals))


def kernel_rates(rt) -> dict:
    """One worker's rates, measured with shmrt's own kernels on rt's own
    workers, all of them computing at once (profiled in-place calls):
    GEMM GFLOP/s at many rows (128 rows per worker, scaled by the cost
    model's r / (r + ROWS_HALF)), read GB/s of a weight slice streamed from memory
    (a 4096 x 4096 model-parallel GEMV), and from the worker's own L2 (a
    weight that fits there, re-read by every worker)."""
    from shmrt.ir import layers as L
    P, rng = rt.workers, np.random.default_rng(0)

    def linear(k, m):
        return L.Sequential([L.Linear(k, m, weight=rng.standard_normal((m, k), np.float32) / 32,
                                      bias=np.zeros(m, np.float32))])

    out = {}
    rows = 128
    with rt.compile(linear(1024, 1024), strategy="data", max_batch=rows * P) as cm:
        cm.input_buffer()[...] = 1.0
        out["gflops"] = _per_worker(cm, rows * P, lambda w: 2.0 * rows * 1024 * 1024) / 1e9 * (rows + ROWS_HALF) / rows
    with rt.compile(linear(4096, 4096), strategy="model", max_batch=1) as cm:
        cm.input_buffer(1)[...] = 1.0
        prog = cm.plan.programs["model"]
        wbytes = [4.0 * sum(int(s[LINEAR.k]) * int(s[LINEAR.m]) for s in prog[w] if s[OP] == LINEAR.code) for w in range(P)]
        out["read_gbs"] = _per_worker(cm, 1, lambda w: wbytes[w]) / 1e9
    k = 512
    m = max(16, min(256, l2_bytes() // 4 // (4 * k)))  # a quarter of the L2 at most
    with rt.compile(linear(k, m), strategy="data", max_batch=P) as cm:
        cm.input_buffer(P)[...] = 1.0
        out["cache_gbs"] = _per_worker(cm, P, lambda w: 4.0 * k * m) / 1e9
    return out


def calibrate(rt) -> Rates:
    """Rates for plans on runtime rt, measured on its workers: the kernel
    rates (kernel_rates), and the pool's own call and barrier costs, on a
    tiny model of 8 Linear layers: a batch-row plan (no barrier) against a
    model-parallel one (a barrier per layer), calls back to back.  Cached
    per machine, worker count, shmrt version and code (code_key)."""
    path = _cache_path()
    key = f"{machine_key()} | {rt.workers} workers | {code_key()}"
    got = load(path).get(key)
    if got:
        return Rates(**{k: got[k] for k in ("gflops", "read_gbs", "cache_gbs", "l2_bytes", "barrier_us",
                                             "dispatch_us")},
                     source=f"measured on this machine on {rt.workers} workers, {got['date']} (cached)")
    rates = kernel_rates(rt)
    from shmrt.ir import layers as L
    tiny = L.Sequential([L.Linear(32, 32, weight=np.eye(32), bias=np.zeros(32)) for _ in range(8)])
    cms = {s: rt.compile(tiny, strategy=s, max_batch=2) for s in ("data", "model")}
    try:
        nb = int(np.sum(cms["model"].plan.programs["model"][0, :, OP] == BARRIER.code))
        ts = {s: [] for s in cms}
        for i in range(150):  # interleaved, so that both see the same machine
            for s, cm in cms.items():
                t = time.perf_counter()
                cm.run_in_place(2)
                if i >= 30:  # warm-up excluded
                    ts[s].append(time.perf_counter() - t)
        t_data, t_model = (float(np.median(ts[s])) * 1e6 for s in ("data", "model"))
    finally:
        for cm in cms.values():
            cm.close()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rates.update(l2_bytes=l2_bytes(), barrier_us=max((t_model - t_data) / max(nb, 1), 1.0), dispatch_us=t_data)
    store(path, key, dict(rates, date=date))
    return Rates(**rates, source=f"measured on this machine on {rt.workers} workers, {date}")


def l2_bytes() -> int:
    """Per-core L2 from sysfs (Linux); the default elsewhere."""
    try:
        for d in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            base = f"/sys/devices/system/cpu/cpu0/cache/{d}"
            with open(f"{base}/level") as f:
                if f.read().strip() != "2":
                    continue
            with open(f"{base}/size") as f:
                size = f.read().strip().upper()
            mult = {"K": 1 << 10, "M": 1 << 20}.get(size[-1], 1)
            return int(size.rstrip("KM")) * mult
    except (OSError, ValueError):
        pass
    return Rates.l2_bytes
