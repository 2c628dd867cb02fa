"""Why the MLP's data plan loses to its model plan at batch 256 on 2 workers:
python bench/gemm_rows.py   (with shmrt installed, or PYTHONPATH=.)

One thread of OpenBLAS, the per-worker shapes of the bench's MLP
(1024-4096-4096-1024): a data worker multiplies 128 rows by all the
weights, a model worker 256 rows by half of them (columns).  Same flops;
fewer rows amortise OpenBLAS's packing of the weights worse.
"""
import numpy as np
from threadpoolctl import threadpool_limits

from shmrt.compile.tune import timeit

rng = np.random.default_rng(0)
W = [rng.standard_normal((o, i), dtype=np.float32) for i, o in [(1024, 4096), (4096, 4096), (4096, 1024)]]


def run(rows, half):
    x = rng.standard_normal((rows, 1024), dtype=np.float32)

    def forward():
        h = x
        for w in W:
            part = h @ (w[: w.shape[0] // 2] if half else w).T
            h = np.concatenate([part, part], 1) if half else part

    return np.median(timeit(forward, 7, warmup=0)) * 1e3


with threadpool_limits(1):
    for _ in range(2):
        print(f"data: 128 rows x all weights {run(128, False):.1f} ms; "
              f"model: 256 rows x half the weights {run(256, True):.1f} ms")
