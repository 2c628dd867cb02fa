"""Every SHMRT_* environment setting, in one place, read once at import.

SHMRT_WORKERS          default worker count (default: physical cores)
SHMRT_SPIN_US          how long a waiter spins before it blocks (default 50;
                       2 when there are more workers than CPUs)
SHMRT_BLOCK_MS         how often a blocked worker wakes to check on its
                       parent (default 100)
SHMRT_CALLER           0: with workers=None, the calling thread does not compute
                       (one worker process per core instead; default 1)
SHMRT_SINGLE_COPY      0: cm(x) copies inputs and outputs through the arena in the
                       calling thread, instead of each worker reading its rows of x
                       and writing its rows of the result (default 1)
SHMRT_PIN              0 disables pinning workers to cores (default 1)
SHMRT_CPUS             the CPUs to pin workers to, in order: worker w gets
                       the w-th, e.g. 0-3,8 (default: the CPUs this process
                       may use, one per physical core first).  A CPU the OS
                       refuses leaves that worker unpinned, with one
                       RuntimeWarning per Runtime naming it and why
SHMRT_START_TIMEOUT_S  how long to wait for workers to start (default 120)
SHMRT_COMPILE_JOBS     processes that compile the kernels on a cold Numba cache
                       (default: 2 when this process may use 2 CPUs or more;
                       1 compiles everything in this process; see warmup.py)
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


def _cpus(name):
    """A CPU list such as "0-3,8" as [0, 1, 2, 3, 8]; None when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    cpus = []
    try:
        for part in raw.split(","):
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi if hi else lo)
            if lo < 0 or hi < lo:
                raise ValueError
            cpus += range(lo, hi + 1)
    except ValueError:
        raise ValueError(f"{name} must list CPU numbers and ranges, such as 0-3,8; got {raw!r}") from None
    return cpus


WORKERS = _num("SHMRT_WORKERS", None, int)
SPIN_US = _num("SHMRT_SPIN_US", None)
BLOCK_MS = _num("SHMRT_BLOCK_MS", 100.0)
PIN = os.environ.get("SHMRT_PIN", "1") not in ("0", "false", "no")
SINGLE_COPY = os.environ.get("SHMRT_SINGLE_COPY", "1") not in ("0", "false", "no")
CALLER = os.environ.get("SHMRT_CALLER", "1") not in ("0", "false", "no")
CPUS = _cpus("SHMRT_CPUS")
START_TIMEOUT_S = _num("SHMRT_START_TIMEOUT_S", 120.0)
COMPILE_JOBS = _num("SHMRT_COMPILE_JOBS", None, int)

# Set in every worker before numpy is imported: the pool is the only parallelism.
SINGLE_THREAD_ENV = {k: "1" for k in (
    "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")}
