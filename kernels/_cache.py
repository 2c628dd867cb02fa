"""Where Numba caches shmrt's compiled code: a folder named after a hash of
every source file of ``shmrt`` and ``kernels``.

Numba invalidates a cached function only when *its own* file changes, not
when a function it inlines from another file does: after an edit to a
kernel, executor.serve would keep running the old kernel from the cache
(this happened: a changed LSTM cell did not reach the workers).  Keying
the whole cache on all sources makes any change recompile everything, in
the parent and in every worker alike.  Set before any ``@njit(cache=True)``
function is defined; an explicit NUMBA_CACHE_DIR is respected.
"""
import hashlib
import os


_hash = []


def source_hash() -> str:
    """A hash of every source file of ``kernels`` and ``shmrt`` (16 hex digits), computed once."""
    if not _hash:
        here = os.path.dirname(os.path.abspath(__file__))
        h = hashlib.sha1()
        for pkg in (here, os.path.join(os.path.dirname(here), "shmrt")):
            for name in sorted(os.listdir(pkg)):
                if name.endswith(".py"):
                    with open(os.path.join(pkg, name), "rb") as f:
                        h.update(name.encode() + f.read())
        _hash.append(h.hexdigest()[:16])
    return _hash[0]


def configure() -> None:
    import numba
    if os.environ.get("NUMBA_CACHE_DIR") or getattr(numba.config, "_shmrt_cache", False):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (os.path.join(here, "__pycache__"),
                 os.path.join(os.path.expanduser("~"), ".cache", "shmrt")):
        path = os.path.join(base, f"numba-{source_hash()}")
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                numba.config.CACHE_DIR = path
                numba.config._shmrt_cache = True
                return
        except OSError:
            continue
