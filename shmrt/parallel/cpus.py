"""Which CPUs the workers run on, and how many workers there are by default."""
from __future__ import annotations

import os

from shmrt import config
from shmrt.parallel import control as C


def compact_cpus(cpus) -> str:
    """CPU numbers as ranges: {0, 1, 2, 3, 8} -> "0-3,8"."""
    runs = []
    for c in sorted(cpus):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def pin_failure(code: int, with_errno: bool = False) -> str:
    """Why a worker's pin failed, from its W_PIN word (< 0: -errno, or PIN_FAILED without one)."""
    if code == C.PIN_FAILED:
        return "refused"
    return f"{os.strerror(-code)} (errno {-code})" if with_errno else os.strerror(-code)


def cpu_order() -> list:
    """CPUs this process may use, one per physical core first, SMT siblings last."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return list(range(os.cpu_count() or 1))
    first, rest, seen = [], [], set()
    for cpu in allowed:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                core = f.read().strip()
        except OSError:
            core = str(cpu)
        (rest if core in seen else first).append(cpu)
        seen.add(core)
    return first + rest


def default_workers() -> int:
    if config.WORKERS:
        return config.WORKERS
    try:
        import psutil
        physical = psutil.cpu_count(logical=False) or 1
    except ImportError:
        physical = os.cpu_count() or 1
    try:
        physical = min(physical, len(os.sched_getaffinity(0)))
    except AttributeError:
        pass
    return max(1, physical)


def scipy_blas_threads(n: int | None):
    """Set the threads of the BLAS that shmrt's kernels call (SciPy's OpenBLAS, through
    Numba) in this process to n; returns the previous count (None: not found, or n is None).
    A computing caller must not fan out BLAS threads onto the workers' cores: measured on
    2 cores, logistic regression in place took 17 ms with one BLAS thread in the caller and
    25-35 ms with OpenBLAS's default of one per core."""
    if n is None:
        return None
    import ctypes
    import re
    try:
        with open("/proc/self/maps") as f:
            libs = sorted(set(re.findall(r"(/\S*scipy\S*openblas\S*\.so\S*)", f.read())))
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_", ""):
            get, put = (getattr(lib, f"{prefix}openblas_{x}_num_threads", None) for x in ("get", "set"))
            if get is not None and put is not None:
                old = int(get())
                put(int(n))
                return old
    return None
