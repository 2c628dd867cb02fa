"""The machine's ceilings, measured in the benchmark's own run: what the
fastest possible implementation of a workload is bounded by.

- sgemm GFLOP/s at N threads (numpy's BLAS, limited with threadpoolctl):
  the bound for the GEMM-heavy workloads (mlp at large batch, cnn, lstm);
- read GB/s and copy GB/s (read + write counted) at N threads: N Python
  threads each reducing / copying its own chunk of a 256 MiB array (numpy
  releases the GIL in both): the bound for the streaming workloads (logreg
  reads its rows once; mlp at batch 1 reads its weights once).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from shmrt.compile.tune import timeit


def best_time(fn, reps: int) -> float:
    """The fastest of reps calls of fn (after one warm-up), in seconds."""
    return float(timeit(fn, reps).min())


def measure(threads: int, quick: bool = False) -> dict:
    """{'sgemm_gflops', 'read_gbs', 'copy_gbs'} at ``threads`` threads."""
    out = {}
    n = 1024 if quick else 2048
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    from threadpoolctl import threadpool_limits
    with threadpool_limits(threads, user_api="blas"):
        out["sgemm_gflops"] = 2 * n ** 3 / best_time(lambda: a @ a, 3) / 1e9
    size = (64 if quick else 256) << 20
    src = np.ones(size // 4, np.float32)
    dst = np.empty_like(src)
    parts = np.array_split(np.arange(src.size), threads)
    bounds = [(p[0], p[-1] + 1) for p in parts if p.size]
    with ThreadPoolExecutor(threads) as pool:
        def each(fn):
            list(pool.map(lambda b: fn(*b), bounds))
        out["read_gbs"] = size / best_time(lambda: each(lambda s, e: src[s:e].max()), 5) / 1e9
        out["copy_gbs"] = 2 * size / best_time(lambda: each(lambda s, e: np.copyto(dst[s:e], src[s:e])), 5) / 1e9
    return out
