"""The first result: how long a fresh interpreter takes from ``import shmrt`` to its first answer."""
from __future__ import annotations

import os
import subprocess
import sys

FIRST = """
import time, sys
t0 = time.perf_counter()
import numpy as np
import shmrt
t1 = time.perf_counter()
with shmrt.Runtime() as rt:
    cm = rt.compile(shmrt.Sequential([shmrt.Linear(64, 256), shmrt.ReLU(), shmrt.Linear(256, 10), shmrt.Softmax()]),
                    max_batch=64)
    cm(np.ones((4, 64), np.float32))
    t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_result_s(cold: bool) -> dict:
    """A fresh interpreter: import shmrt, then Runtime() + compile + first result, in seconds; with a
    warm Numba cache (the second of two runs), or a cold one (an empty cache folder)."""
    import tempfile
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if cold:
            env["NUMBA_CACHE_DIR"] = cache
        for _ in range(1 if cold else 2):
            r = subprocess.run([sys.executable, "-c", FIRST], env=env, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        return dict(error=r.stderr.strip()[-300:])
    imp, first = map(float, r.stdout.split()[-2:])
    return dict(import_s=imp, first_result_s=first)
