"""Every SHMRT_* environment setting, in one place, read once at import.

SHMRT_WORKERS          default worker count (default: physical cores)
SHMRT_SPIN_US          how long a waiter spins before it blocks (default 50;
                       2 when there are more workers than CPUs)
SHMRT_BLOCK_MS         how often a blocked worker wakes to check on its
                       parent (default 100)
SHMRT_PIN              0 disables pinning workers to cores (default 1)
SHMRT_START_TIMEOUT_S  how long to wait for workers to start (default 120)
"""
import os


def _num(name, default, cast=float):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return v


WORKERS = _num("SHMRT_WORKERS", None, int)
SPIN_US = _num("SHMRT_SPIN_US", None)
BLOCK_MS = _num("SHMRT_BLOCK_MS", 100.0)
PIN = os.environ.get("SHMRT_PIN", "1") not in ("0", "false", "no")
START_TIMEOUT_S = _num("SHMRT_START_TIMEOUT_S", 120.0)

# Set in every worker before numpy is imported: the pool is the only parallelism.
SINGLE_THREAD_ENV = {k: "1" for k in (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}
