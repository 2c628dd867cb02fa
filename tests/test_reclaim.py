"""reclaim_stale(): segments left by SIGKILLed shmrt processes are removed, and
nothing else is -- real processes and real /dev/shm segments, no mocks."""
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shmrt.parallel.reclaim import reclaim_message, reclaim_stale
from shmrt.parallel.store import Segment

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="/dev/shm and /proc are Linux's")

SHM = "/dev/shm"
NO_PID = 9_999_999  # above PID_MAX_LIMIT (2**22): never a live process


def shm_name(pid):
    return f"shmrt_{pid}_{secrets.token_hex(8)}"


def make(name, data=b"shmrt-test"):
    path = os.path.join(SHM, name)
    with open(path, "xb") as f:
        f.write(data)
    return path


def remove(*paths):
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def proc_stat(pid):
    """(ppid, pgrp, state) from /proc/<pid>/stat, or None when the pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[2]), fields[0].decode()


def descendants(root):
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (st := proc_stat(int(d))) is not None:
            table[int(d)] = st
    found, grew = {root}, True
    while grew:
        grew = False
        for pid, (ppid, _, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    found.discard(root)
    return {pid: table[pid] for pid in found}


def wait_gone(pids, timeout=10.0):
    """Until every pid is gone or a zombie (dead, waiting for init to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((st := proc_stat(pid)) is None or st[2] in "ZX" for pid in pids):
            return
        time.sleep(0.02)
    raise AssertionError(f"still running: {[pid for pid in pids if proc_stat(pid)]}")


def start(code):
    """A Python child leading its own process group; returns it after it prints 'ready'."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        proc.wait()
        pytest.fail(f"child did not start: {line!r}")
    return proc, line.split()[1:]


def test_segments_of_a_killed_process_group_are_reclaimed():
    proc, _ = start("""
        import time
        import shmrt
        rt = shmrt.Runtime(workers=1)
        cm = rt.compile(shmrt.Sequential([shmrt.Linear(8, 8)]), max_batch=4)
        print("ready", flush=True)
        time.sleep(60)
    """)
    prefix = f"shmrt_{proc.pid}_"
    left = []
    try:
        tree = descendants(proc.pid)  # resource tracker, worker template, worker
        assert tree, "the runtime started no helper process"
        escaped = [pid for pid, (_, pgrp, _) in tree.items() if pgrp != proc.pid]
        assert not escaped, f"processes outside the runtime's process group: {escaped}"
        os.killpg(proc.pid, signal.SIGKILL)  # all at once: nobody gets to unlink
        proc.wait(10)
        wait_gone(list(tree))
        left = [n for n in os.listdir(SHM) if n.startswith(prefix)]
        assert len(left) >= 2, f"the killed runtime left no segments to reclaim: {left}"
        size = sum(os.stat(os.path.join(SHM, n)).st_size for n in left)
        count, freed = reclaim_stale()
        assert [n for n in os.listdir(SHM) if n.startswith(prefix)] == []
        assert count >= len(left) and freed >= size > 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        remove(*(os.path.join(SHM, n) for n in os.listdir(SHM) if n.startswith(prefix)))


def test_segments_of_the_current_process_are_kept():
    seg = Segment.create(4096)
    path = os.path.join(SHM, seg.name)
    unmapped = make(shm_name(os.getpid()))
    try:
        assert seg.name.startswith(f"shmrt_{os.getpid()}_")
        for p in (path, unmapped):  # even when they look older than this process
            os.utime(p, (time.time() - 10 ** 6,) * 2)
        reclaim_stale()
        assert os.path.exists(path) and os.path.exists(unmapped)
    finally:
        seg.close()
        remove(unmapped)
    assert not os.path.exists(path)


def test_pid_reuse_rule():
    sleeper = subprocess.Popen(["sleep", "30"])
    kept = make(shm_name(os.getppid()))  # its pid's holder (pytest's parent) started before it
    reused = make(shm_name(sleeper.pid))
    try:
        # made "an hour ago": 'sleep', started just now, holds a recycled pid and is not its creator
        os.utime(reused, (time.time() - 3600,) * 2)
        reclaim_stale()
        assert os.path.exists(kept)
        assert not os.path.exists(reused)
        assert sleeper.poll() is None  # the process itself is left alone
    finally:
        sleeper.kill()
        sleeper.wait()
        remove(kept, reused)


def test_a_segment_its_process_still_maps_is_kept_whatever_its_time():
    proc, (path,) = start(f"""
        import mmap, os, secrets, time
        path = "{SHM}/shmrt_%d_%s" % (os.getpid(), secrets.token_hex(8))
        with open(path, "xb") as f:
            f.write(bytes(4096))
        with open(path, "r+b") as f:
            m = mmap.mmap(f.fileno(), 0)
        os.utime(path, (time.time() - 3600,) * 2)  # looks older than this process
        print("ready", path, flush=True)
        time.sleep(30)
    """)
    try:
        reclaim_stale()
        assert os.path.exists(path)
    finally:
        proc.kill()
        proc.wait()
        remove(path)


def test_names_that_do_not_match_exactly_are_never_touched():
    hex16 = secrets.token_hex(8)
    odd = [f"shmrt_{NO_PID}_xyz", f"shmrtx_{NO_PID}_{hex16}", f"shmrt_{NO_PID}_{hex16.upper()}Z",
           f"shmrt_{NO_PID}_{hex16}0", f"shmrt_{NO_PID}_{hex16[:15]}", f"shmrt_0{NO_PID}_{hex16}",
           f"shmrt_{NO_PID}_{hex16}.tmp", f"xshmrt_{NO_PID}_{hex16}", f"shmrt__{hex16}"]
    paths = [make(n) for n in odd]
    link = os.path.join(SHM, shm_name(NO_PID))
    target = make(shm_name(NO_PID) + "_target")
    stale = make(shm_name(NO_PID), b"x" * 1000)  # the control: an exact name of a dead pid goes
    paths += [target, link, stale]
    try:
        os.symlink(target, link)  # not a regular file: skipped
        count, freed = reclaim_stale()
        assert all(os.path.lexists(p) for p in paths[:-1])
        assert not os.path.exists(stale)
        assert count >= 1 and freed >= 1000
    finally:
        remove(*paths)


def test_nothing_to_do_without_the_directory():
    assert reclaim_stale(os.path.join(SHM, "shmrt-no-such-dir-" + secrets.token_hex(4))) == (0, 0)


def test_reclaim_message():
    assert reclaim_message(0, 0) is None
    msg = reclaim_message(11, 350_200_000)
    assert msg == ("shmrt: removed 11 shared-memory segments (350.2 MB) left by shmrt processes that no "
                   "longer exist")
    assert "1 shared-memory segment (4.1 kB)" in reclaim_message(1, 4096)
    assert "(2.5 GB)" in reclaim_message(3, 2_500_000_000)
    assert "(512 B)" in reclaim_message(2, 512)
