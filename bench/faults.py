"""Failure figures: python bench/faults.py

- kill -9 of a worker during a call: time until the call raises, and the
  next call's time and correctness;
- the parent killed with SIGKILL: time until no worker and no segment of
  it remains;
- close(): time until the same holds.
Run from the repository root (or with shmrt installed).
"""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import psutil

import shmrt
from shmrt.bench.harness import rel_err
from shmrt.bench.workloads import mlp as mlp_workload, numpy_forward


def segments(pid):
    return [f for f in os.listdir("/dev/shm") if f.startswith(f"shmrt_{pid}_")] if os.path.isdir("/dev/shm") else []


def gone_after(pids, creator, limit=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive and not segments(creator):
            return time.monotonic() - t0
        time.sleep(0.01)
    return float("inf")


def kill_worker_during_call(strategy):
    model = mlp_workload().model
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    ref = numpy_forward(model, x, np.float64)
    with shmrt.Runtime(workers=2) as rt:
        cm = rt.compile(model, strategy=strategy, max_batch=256)
        cm(x)
        victim = rt.pids()[0]
        killed = []
        threading.Timer(0.02, lambda: (os.kill(victim, signal.SIGKILL), killed.append(time.monotonic()))).start()
        try:
            for _ in range(1000):
                cm(x)
            raise AssertionError("no call raised after the kill")
        except shmrt.WorkerError as e:
            raised = time.monotonic() - killed[0]
            msg = str(e)
        t0 = time.monotonic()
        y = cm(x)
        nxt = time.monotonic() - t0
        print(f"[{strategy}] kill -9 worker {victim} during a call -> WorkerError after {raised * 1e3:.1f} ms: {msg}")
        print(f"[{strategy}] next call {nxt * 1e3:.1f} ms (restart included), rel err vs float64 {rel_err(y, ref):.1e}")


CHILD = textwrap.dedent("""
    import time, numpy as np, shmrt
    rt = shmrt.Runtime(workers=2)
    cm = rt.compile(shmrt.Sequential([shmrt.Linear(256, 256), shmrt.ReLU()]), max_batch=64)
    cm(np.ones((64, 256)))
    print(*rt.pids(), flush=True)
    while True:
        cm(np.ones((64, 256)))
""")


def kill_parent():
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True, env=env)
    pids = [int(v) for v in p.stdout.readline().split()]
    pids += [c.pid for c in psutil.Process(p.pid).children(recursive=True) if c.pid not in pids]
    time.sleep(0.2)
    print(f"parent {p.pid} with workers {pids[:2]} owns {len(segments(p.pid))} segments; SIGKILL while it calls")
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    print(f"  -> no process and no segment of it left after {gone_after(pids, p.pid) * 1e3:.0f} ms")


def close_cleanup():
    rt = shmrt.Runtime(workers=2)
    cm = rt.compile(shmrt.Sequential([shmrt.Linear(256, 256)]), max_batch=8)
    cm(np.ones((8, 256)))
    pids = rt.pids() + [rt.pool.launcher.proc.pid] if hasattr(rt.pool.launcher, "proc") else rt.pids()
    t0 = time.monotonic()
    rt.close()
    print(f"close() took {(time.monotonic() - t0) * 1e3:.0f} ms; no process and no segment left after "
          f"{gone_after(pids, os.getpid()) * 1e3:.0f} ms more")


if __name__ == "__main__":
    for s in ("data", "model"):
        kill_worker_during_call(s)
    kill_parent()
    close_cleanup()
