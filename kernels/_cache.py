"""Where Numba caches shmrt's compiled code: a folder named after a hash of
every source file that is compiled (the kernels, and shmrt's exec, parallel
and compile subpackages, walked recursively).

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
import sys

from ._isa import ISA, QISA


_hash = []
# What the compiled code is made of: the kernels, the interpreter and the
# primitives it calls, and the instruction set whose constants Numba folds
# into it.  Frontends, the IR, the runtime's Python and the benchmark are not
# compiled, so editing them keeps the cache.
COMPILED = ("exec", "parallel", "compile", "config.py", "version.py")


def _files(root):
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.join(dirpath, name)


def source_hash() -> str:
    """A hash of every source file of shmrt's kernels and of the shmrt
    subpackages in COMPILED, walked recursively (16 hex digits), computed once."""
    if not _hash:
        here = os.path.dirname(os.path.abspath(__file__))
        shmrt_dir = os.path.dirname(os.path.abspath(sys.modules["shmrt"].__file__))
        h = hashlib.sha1()
        roots = [here] + [os.path.join(shmrt_dir, part) for part in COMPILED]
        for root in roots:
            for path in (_files(root) if os.path.isdir(root) else [root]):
                with open(path, "rb") as f:
                    h.update(os.path.relpath(path, os.path.dirname(root)).encode() + f.read())
        _hash.append(h.hexdigest()[:16])
    return _hash[0]


def configure() -> None:
    import numba
    if os.environ.get("NUMBA_CACHE_DIR") or getattr(numba.config, "_shmrt_cache", False):
        return
    here = os.path.dirname(os.path.abspath(__file__))
    for base in (os.path.join(here, "__pycache__"),
                 os.path.join(os.path.expanduser("~"), ".cache", "shmrt")):
        path = os.path.join(base, f"numba-{source_hash()}-{ISA}-{QISA}")  # the tile's code depends on its ISA
        try:
            os.makedirs(path, exist_ok=True)
            if os.access(path, os.W_OK):
                numba.config.CACHE_DIR = path
                numba.config._shmrt_cache = True
                return
        except OSError:
            continue
