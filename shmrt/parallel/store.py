"""Shared segments: the weight store, the activation arena, the control block.

Lifecycle (who creates, who writes, who unlinks, when):

- The parent process (the one that made the ``Runtime``) creates every
  segment, with a random name (``shmrt_<pid>_<16 hex>``) and mode 0600.
  It owns them and unlinks them in ``close()``; the Python objects also
  unlink from ``atexit`` and, if the parent is killed outright, from
  multiprocessing's resource tracker (a separate process that outlives it)
  and from the workers, which unlink every segment they know when they see
  their parent gone.  Unlinking twice is harmless.
- Workers attach by name.  They open the segment with shm_open + mmap and
  never register it with multiprocessing's resource tracker: on Python
  3.11/3.12 the tracker of an attaching process unlinks the segment or
  reports it as leaked when that process exits, and unregistering after
  registering corrupts the creator's entry (CPython gh-82300).
- Weights are written once, by the parent, before any worker attaches.
  Workers map them read-only (O_RDONLY, PROT_READ: even a stray native
  write faults), and every process sees them through read-only numpy views
  (a write raises ``ValueError: assignment destination is read-only``).
- The activation arena and the control block are written by everyone, in
  the disjoint slices the plan hands out.

All offsets are in float32 elements and 64-byte aligned (16 floats), so
every tensor starts on its own cache line.
"""
from __future__ import annotations

import mmap
import os
import secrets
import sys
from multiprocessing import resource_tracker, shared_memory

import numpy as np

ALIGN = 16  # float32 elements per 64 bytes


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def new_name() -> str:
    return f"shmrt_{os.getpid()}_{secrets.token_hex(8)}"


class Segment:
    """One shared-memory segment, created (owner) or attached by name."""

    def __init__(self, name: str, nbytes: int, create: bool, readonly: bool = False):
        self.name, self.nbytes, self.owner = name, int(nbytes), create
        self._shm = self._mmap = None
        size = max(self.nbytes, 64)
        if sys.platform == "win32":  # no resource tracker there; the OS frees unused sections
            self._shm = shared_memory.SharedMemory(name=name, create=create, size=size if create else 0)
            self.buf = self._shm.buf
            return
        import _posixshmem
        ro = readonly and not create  # the creator writes the contents first
        flags = (os.O_RDONLY if ro else os.O_RDWR) | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open("/" + name, flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
                # the tracker (a separate process) unlinks it if this process is killed
                resource_tracker.register("/" + name, "shared_memory")
            self._mmap = mmap.mmap(fd, size, access=mmap.ACCESS_READ if ro else mmap.ACCESS_WRITE)
        except BaseException:
            if create:
                _posixshmem.shm_unlink("/" + name)
            raise
        finally:
            os.close(fd)
        self.buf = memoryview(self._mmap)

    @classmethod
    def create(cls, nbytes: int) -> "Segment":
        return cls(new_name(), nbytes, True)

    def array(self, dtype, count: int | None = None, offset_bytes: int = 0) -> np.ndarray:
        dtype = np.dtype(dtype)
        if count is None:
            count = (self.nbytes - offset_bytes) // dtype.itemsize
        return np.frombuffer(self.buf, dtype=dtype, count=count, offset=offset_bytes)

    def close(self) -> None:
        """Drop this process's mapping (once no numpy view uses it); the owner
        also unlinks the name, so the memory goes when the last process unmaps."""
        buf, self.buf = getattr(self, "buf", None), None
        for obj in (buf, self._mmap, self._shm):
            if obj is None:
                continue
            try:
                obj.release() if obj is buf else obj.close()
            except BufferError:
                pass  # numpy views are still alive: the mapping goes with the last of them
        self._mmap = None
        if self.owner:
            self.owner = False
            unlink(self.name, self._shm, registered=True)
        self._shm = None


def unlink(name: str, shm=None, registered: bool = False) -> None:
    """Remove a segment name; a name already gone is fine.  ``registered``:
    this process registered it with the resource tracker (it created it)."""
    try:
        if shm is not None:
            shm.unlink()
        elif sys.platform != "win32":
            import _posixshmem
            _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass  # a worker that saw its parent go, or the other owner, removed it first
    if registered and shm is None and sys.platform != "win32":
        # Always, even when the name was gone: a registration left behind makes the tracker
        # report a "leaked" segment at exit and fail to unlink it again (gh-82300's symptom).
        resource_tracker.unregister("/" + name, "shared_memory")


class WeightStore:
    """All parameters of a model packed into one segment, plus the manifest.

    manifest: name -> (dtype str, shape tuple, offset in float32 elements).
    """

    def __init__(self, segment: Segment, manifest: dict):
        self.segment, self.manifest = segment, manifest
        flat = segment.array(np.float32)
        flat.flags.writeable = False
        self.flat = flat

    @classmethod
    def pack(cls, tensors: dict) -> "WeightStore":
        manifest, off = {}, 0
        for name, t in tensors.items():
            t = np.ascontiguousarray(t, dtype=np.float32)
            manifest[name] = ("float32", tuple(t.shape), off)
            off += align(max(t.size, 1))
        seg = Segment.create(max(off, ALIGN) * 4)
        flat = seg.array(np.float32)
        for name, t in tensors.items():
            _, shape, o = manifest[name]
            flat[o:o + int(np.prod(shape, dtype=np.int64))] = np.asarray(t, dtype=np.float32).ravel()
        del flat
        return cls(seg, manifest)

    @classmethod
    def attach(cls, name: str, nbytes: int, manifest: dict) -> "WeightStore":
        """A worker's view: the pages are mapped read-only (PROT_READ), so no write can reach them."""
        return cls(Segment(name, nbytes, create=False, readonly=True), manifest)

    def view(self, name: str) -> np.ndarray:
        if name not in self.manifest:
            raise KeyError(f"no tensor {name!r} in the weight store; it holds {', '.join(self.manifest)}")
        _, shape, off = self.manifest[name]
        return self.flat[off:off + int(np.prod(shape, dtype=np.int64))].reshape(shape)

    @property
    def nbytes(self) -> int:
        return self.segment.nbytes
