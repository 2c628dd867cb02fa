"""Arrays in shared memory from the start: ``shmrt.empty`` and ``shmrt.asarray``.

A reader that fills a buffer itself (``f.readinto(buf)``, a camera, a
queue) can fill one of these instead of a private numpy array: the
workers map the same pages, so ``cm(x)`` on it moves nothing -- where each
worker's rows are its own (a data-parallel plan), every participant reads
its rows of x where they are; otherwise the workers copy their rows once,
as for any array (compile/io.py).

Lifetime: a buffer lives as long as the array returned and every view of
it, like ``np.empty``'s memory.  Its name is removed from /dev/shm when it
is created's owner process frees it, when that process exits, and by the
next ``Runtime()`` if the process is killed outright (parallel/reclaim.py).
Workers map a buffer the first time a call uses it and unmap it when the
buffer is freed (at their next command).
"""
from __future__ import annotations

import itertools
import threading
import weakref

import numpy as np

from shmrt.parallel.store import Segment

_ids = itertools.count(1)
_lock = threading.Lock()
_live = {}  # buffer id -> (segment, start address, nbytes)


def empty(shape, dtype=np.float32) -> np.ndarray:
    """An uninitialised array of ``shape`` and ``dtype`` in shared memory (see the module's notes)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(v) for v in shape)
    if any(v < 0 for v in shape):
        raise ValueError(f"shape must be non-negative sizes, got {shape}")
    if dtype.kind not in "biuf":
        raise TypeError(f"expected a numeric dtype (float, int or bool), got {dtype}")
    count = int(np.prod(shape))
    seg = Segment.create(max(count * dtype.itemsize, 64))
    arr = seg.array(dtype, count).reshape(shape)
    bid = next(_ids)
    with _lock:
        _live[bid] = (seg, arr.ctypes.data if count else 0, count * dtype.itemsize)
    weakref.finalize(arr, _free, bid)
    return arr


def asarray(x, dtype=np.float32) -> np.ndarray:
    """x as an array in shared memory (x itself when it is already one, of that dtype)."""
    if isinstance(x, np.ndarray) and find(x) is not None and x.dtype == np.dtype(dtype) and x.flags.c_contiguous:
        return x
    src = np.asarray(x)
    out = empty(src.shape, dtype)
    out[...] = src
    return out


def find(x):
    """(buffer id, segment name, segment bytes, byte offset of x in it) when x's memory lies in a
    live shmrt buffer, else None."""
    if not isinstance(x, np.ndarray) or x.size == 0:
        return None
    addr = x.ctypes.data
    end = addr + (x.size - 1) * x.itemsize
    with _lock:
        for bid, (seg, start, nbytes) in _live.items():
            if start <= addr and end < start + nbytes:
                return bid, seg.name, seg.nbytes, addr - start
    return None


def start(bid) -> int:
    """The address of buffer bid's first byte in this process."""
    with _lock:
        return _live[bid][1]


def live() -> set:
    with _lock:
        return set(_live)


def _free(bid):
    with _lock:
        got = _live.pop(bid, None)
    if got is not None:
        got[0].close()
