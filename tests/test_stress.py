"""Load and time: concurrent callers, a soak of small calls, more workers than cores, idle CPU.

Concurrent callers get serialised calls: a compiled model (and every model
of one Runtime) runs one call at a time, in the order the runtime's lock
grants it; each caller gets its own result array.  The default run is
bounded; the tests marked slow run the full counts
(``python -m pytest -m slow tests/test_stress.py -s`` prints the figures).
"""
import os
import threading
import time

import psutil
import pytest

import shmrt
import test_lifecycle as lc
from models import rnd, small_mlp
from reference import forward as reference, rel_err

pytestmark = lc.pytestmark


# -- concurrency -----------------------------------------------------------------------

def hammer(threads, calls):
    """`threads` threads each make `calls` calls, alternating one compiled model and a second model of the
    same runtime, each thread with its own inputs; every result must be its own reference."""
    shmrt.manual_seed(4)
    a = small_mlp()
    b = shmrt.Sequential([shmrt.Linear(64, 96), shmrt.Tanh(), shmrt.Linear(96, 7), shmrt.LogSoftmax()])
    errors, done = [], [0] * threads
    with shmrt.Runtime(workers=2) as rt:
        cms = [rt.compile(a, strategy="model", max_batch=16), rt.compile(b, strategy="data", max_batch=16)]
        jobs = []
        for t in range(threads):
            x = rnd(1 + t % 5, 64, seed=t)
            jobs.append((x, reference(a, x), reference(b, x)))

        def work(t):
            x, ra, rb = jobs[t]
            try:
                for i in range(calls):
                    use_b = (i + t) % 2
                    y = cms[use_b](x)
                    if rel_err(y, rb if use_b else ra) > 1e-5:
                        errors.append((t, i, "wrong result"))
                        return
                    done[t] += 1
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append((t, repr(e)))

        pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        t0 = time.perf_counter()
        for th in pool:
            th.start()
        for th in pool:
            th.join(300)
        elapsed = time.perf_counter() - t0
        assert not any(th.is_alive() for th in pool), "a caller is stuck: deadlock"
    assert not errors, errors[:5]
    assert done == [calls] * threads
    return elapsed


def test_threads_share_a_model_and_a_runtime():
    elapsed = hammer(8, 100)
    print(f"\n8 threads x 100 calls over 2 models: {8 * 100 / elapsed:,.0f} calls/s, all correct")


@pytest.mark.slow
def test_threads_share_a_model_and_a_runtime_8x1000():
    elapsed = hammer(8, 1000)
    print(f"\n8 threads x 1000 calls over 2 models: {8000 / elapsed:,.0f} calls/s, all correct")


# -- soak ---------------------------------------------------------------------------------

def footprint(rt):
    procs = [psutil.Process()] + [psutil.Process(p) for p in rt.pids()] + [psutil.Process(rt.template_pid())]
    return ([p.memory_info().rss for p in procs], [p.num_fds() for p in procs],
            len(lc.shm_segments(os.getpid())))


def open_fds() -> dict:
    """This process's open file descriptors and what each points at (to name a leak when there is one)."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass
    return out


def soak(calls):
    model = small_mlp()
    x = rnd(1, 64, seed=3)
    ref = reference(model, x)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, strategy="model", max_batch=8) as cm:
        for _ in range(2000):  # warm: allocator pools, numba dispatch caches
            cm(x)
        rss0, fds0, segs0 = footprint(rt)
        named0 = open_fds()
        t0 = time.perf_counter()
        for i in range(calls):
            y = cm(x)
            if i % 50_000 == 0:
                assert rel_err(y, ref) <= 1e-5
        elapsed = time.perf_counter() - t0
        assert rel_err(cm(x), ref) <= 1e-5
        rss1, fds1, segs1 = footprint(rt)
        named1 = open_fds()
    growth = [(b - a) / a for a, b in zip(rss0, rss1)]
    assert fds1 == fds0, (fds0, fds1, {fd: t for fd, t in named1.items() if named0.get(fd) != t})
    assert segs1 == segs0, (segs0, segs1)
    assert max(growth) < 0.01, [f"{g:.2%}" for g in growth]
    return elapsed, growth, rss0, fds0, segs0


def test_soak_small_calls():
    elapsed, growth, rss0, fds0, segs = soak(20_000)
    print(f"\nsoak: 20,000 calls in {elapsed:.1f} s, RSS growth {[f'{g:+.3%}' for g in growth]} "
          f"(parent, workers, template), fds {fds0} constant, {segs} segments constant")


@pytest.mark.slow
def test_soak_a_million_calls():
    elapsed, growth, rss0, fds0, segs = soak(1_000_000)
    print(f"\nsoak: 1,000,000 calls in {elapsed:.1f} s ({elapsed / 1e6 * 1e6:.1f} us/call), RSS growth "
          f"{[f'{g:+.3%}' for g in growth]} of {[f'{r / 2**20:.0f} MiB' for r in rss0]} (parent, workers, "
          f"template), fds {fds0} constant, {segs} segments constant")


# -- more workers than cores ----------------------------------------------------------

def test_four_workers_per_core():
    workers = 4 * (os.cpu_count() or 1)
    shmrt.manual_seed(6)
    model = shmrt.Sequential([shmrt.Linear(256, 512), shmrt.ReLU(), shmrt.Linear(512, 512), shmrt.ReLU(),
                              shmrt.Linear(512, 10), shmrt.Softmax()])
    x = rnd(64, 256, seed=5)
    ref = reference(model, x)
    for count in (os.cpu_count() or 1, workers):  # one per core first, for comparison
        with shmrt.Runtime(workers=count) as rt:
            for strategy in ("data", "model", "pipeline"):
                with rt.compile(model, strategy=strategy, max_batch=64) as cm:
                    assert rel_err(cm(x), ref) <= 1e-5, strategy
                    t0, n = time.perf_counter(), 0
                    while time.perf_counter() - t0 < 0.5:
                        assert rel_err(cm(x), ref) <= 1e-5, strategy
                        n += 1
                    rate = n * x.shape[0] / (time.perf_counter() - t0)
                    print(f"\n{count} workers on {os.cpu_count()} cores, {strategy}: {rate:,.0f} rows/s, correct")


# -- idle ------------------------------------------------------------------------------------

def test_idle_pool_200ms_after_the_last_call():
    """Workers and the template together, measured from 200 ms after the last call."""
    model = small_mlp()
    x = rnd(100, 64)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, strategy="model", max_batch=64) as cm:
        for _ in range(50):
            cm(x)
        time.sleep(0.2)
        procs = [psutil.Process(p) for p in rt.pids()] + [psutil.Process(rt.template_pid())]

        def cpu():
            return sum(t.user + t.system for t in (p.cpu_times() for p in procs))

        rates = []  # clock ticks are 10 ms: the first of three 1 s windows under the limit passes
        for _ in range(3):
            c0, t0 = cpu(), time.monotonic()
            time.sleep(1.0)
            rates.append((cpu() - c0) / (time.monotonic() - t0))
            if rates[-1] < 0.02:
                break
        print(f"\nidle pool: {[f'{r:.2%}' for r in rates]} of a core")
        assert min(rates) < 0.02, rates
