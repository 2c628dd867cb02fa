"""What isolation shmrt gives: private segments with unguessable names, weights the workers cannot
write, model files that are never unpickled, and segments another user cannot open."""
import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

import shmrt
import test_lifecycle as lc
from models import small_mlp

pytestmark = lc.pytestmark
NAME = re.compile(r"^shmrt_(\d+)_([0-9a-f]{16})$")


@pytest.fixture(scope="module")
def placed():
    with shmrt.Runtime(workers=2) as rt, rt.compile(small_mlp(), strategy="model", max_batch=8) as cm:
        cm(np.ones((2, 64), np.float32))
        yield rt, cm


def segments_of(rt, cm):
    return {"control": rt.pool.seg.name, "weights": cm.weights.segment.name, "arena": cm._arena_seg.name}


def test_segments_are_private_with_unguessable_names(placed):
    rt, cm = placed
    names = segments_of(rt, cm)
    assert set(names.values()) <= lc.shm_segments(os.getpid())
    for what, name in names.items():
        m = NAME.match(name)
        assert m and int(m.group(1)) == os.getpid(), name  # 64 random bits after the pid
        mode = os.stat(f"/dev/shm/{name}").st_mode
        assert stat.S_IMODE(mode) == 0o600, (what, oct(mode))
        assert os.stat(f"/dev/shm/{name}").st_uid == os.geteuid()
    with shmrt.Runtime(workers=0) as other, other.compile(small_mlp(), max_batch=8) as cm2:
        assert cm2.weights.segment.name not in names.values()


def test_workers_map_the_weights_read_only(placed):
    rt, cm = placed
    names = segments_of(rt, cm)
    for pid in rt.pids():
        with open(f"/proc/{pid}/maps") as f:
            perms = {line.split()[-1].rsplit("/", 1)[-1]: line.split()[1] for line in f if "shmrt_" in line}
        assert perms[names["weights"]] == "r--s", perms  # PROT_READ: a stray write faults
        assert perms[names["arena"]] == "rw-s" and perms[names["control"]] == "rw-s", perms


WRITE_THROUGH_A_WORKER_MAPPING = """
import ctypes, sys
import numpy as np
from shmrt.parallel.store import Segment
seg = Segment(sys.argv[1], int(sys.argv[2]), create=False, readonly=True)  # as a worker attaches the weights
flat = np.frombuffer(seg.buf, dtype=np.float32)
print("read", float(flat[0]), flush=True)
ctypes.memset(flat.ctypes.data, 0, 4)  # native code ignoring numpy's read-only flag
print("wrote", flush=True)
"""


def test_a_native_write_to_the_weights_faults(placed):
    rt, cm = placed
    seg = cm.weights.segment
    before = cm.weights.flat.copy()
    r = subprocess.run([sys.executable, "-c", WRITE_THROUGH_A_WORKER_MAPPING, seg.name, str(seg.nbytes)],
                       capture_output=True, text=True, env=lc.child_env(), timeout=120)
    assert "read" in r.stdout and "wrote" not in r.stdout, (r.stdout, r.stderr)
    assert r.returncode == -11, r  # SIGSEGV
    assert np.array_equal(cm.weights.flat, before)


def open_as(uid, path):
    """Try to open ``path`` read-only in a forked child running as ``uid``: 'opened' or 'denied'."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only makes system calls, then _exits
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                os.close(os.open(path, os.O_RDONLY))
                os.write(w, b"opened")
            except PermissionError:
                os.write(w, b"denied")
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r, "rb") as f:
        return f.read().decode()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="switching user needs root")
def test_another_user_cannot_attach(placed):
    rt, cm = placed
    for name in segments_of(rt, cm).values():
        assert open_as(65534, f"/dev/shm/{name}") == "denied", name  # nobody
    assert open_as(0, f"/dev/shm/{cm.weights.segment.name}") == "opened"  # the check itself can succeed


def test_no_loader_can_unpickle():
    """The sources never call a pickle loader (every model file format is read as data)."""
    root = os.path.join(lc.ROOT, "shmrt")
    bad = re.compile(r"pickle\.loads?\(|allow_pickle\s*=\s*True|torch\.load\(|joblib\.load|dill\.")
    hits = []
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name)) as f:
                hits += [f"{name}:{i}: {line.strip()}" for i, line in enumerate(f, 1) if bad.search(line)]
    assert not hits, hits
