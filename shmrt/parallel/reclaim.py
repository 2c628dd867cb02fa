"""Reclaiming shared-memory segments left by shmrt processes that were killed.

POSIX shared memory cannot clean itself up: a segment is a name in /dev/shm
that lives until someone unlinks it or the machine reboots.  shmrt unlinks
its segments in ``close()``, from ``atexit``, from multiprocessing's resource
tracker and from the workers when their parent goes (see store.py), but
when every process of a runtime is SIGKILLed at once (a process-group kill,
the OOM killer taking a cgroup) nobody is left to do it.  Long-lived
shared-memory servers (PostgreSQL, Plasma) handle this the same way:
whoever starts next reclaims the leftovers of its own kind.

A segment is named ``shmrt_<creator pid>_<16 hex>``.  It is removed only when
it is a regular file of the current user, its name matches that pattern
exactly, and its creator is gone, which must survive pid reuse:

- no process has that pid, or
- the process holding that pid started more than SLACK_S seconds after the
  segment was created (the earliest of its st_mtime and st_ctime), so it
  cannot be the creator.  The slack absorbs /proc/stat's whole-second
  ``btime``; every doubt (unreadable /proc entry, clock) means keep.

The current process's segments are never touched, nor those of a process
that still maps the segment (/proc/<pid>/maps), whatever the clocks say.
"""
from __future__ import annotations

import os
import re
import stat
import sys

from shmrt.parallel.launch import stat_fields

NAME = re.compile(r"shmrt_([1-9][0-9]*)_[0-9a-f]{16}")
SLACK_S = 2.0


def _boot_time() -> float | None:
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _start_time(pid: int, btime: float, hz: int) -> float | None:
    """Wall-clock start of ``pid``; None when no such process exists.
    Raises OSError when /proc cannot say (the caller then keeps the segment)."""
    fields = stat_fields(pid)
    return None if fields is None else btime + int(fields[19]) / hz  # field 22: starttime


def _maps(pid: int, path: str) -> bool:
    try:
        with open(f"/proc/{pid}/maps", "rb") as f:
            return os.fsencode(path) in f.read()
    except OSError:
        return False


def reclaim_stale(directory: str = "/dev/shm") -> tuple[int, int]:
    """Unlink the current user's shmrt segments whose creator no longer exists.
    Returns (segments removed, bytes freed).  Never raises."""
    if not sys.platform.startswith("linux") or not os.path.isdir(directory):
        return 0, 0
    btime = _boot_time()
    try:
        hz = os.sysconf("SC_CLK_TCK")
        entries = list(os.scandir(directory))
    except (OSError, ValueError):
        return 0, 0
    if btime is None or hz <= 0:
        return 0, 0
    me, uid, count, freed = os.getpid(), os.getuid(), 0, 0
    for entry in entries:
        m = NAME.fullmatch(entry.name)
        if m is None or int(m.group(1)) == me:
            continue
        pid, path = int(m.group(1)), os.path.join(directory, entry.name)
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue
            started = _start_time(pid, btime, hz)
            if started is not None and (started <= min(st.st_mtime, st.st_ctime) + SLACK_S
                                        or _maps(pid, path)):
                continue  # the creator, or possibly the creator: keep
            os.unlink(path)
        except (OSError, ValueError, IndexError):
            continue  # vanished meanwhile, not ours to remove, or /proc could not say
        count, freed = count + 1, freed + st.st_size
    return count, freed


def reclaim_message(count: int, nbytes: int) -> str | None:
    """One log line for what reclaim_stale() did; None when it removed nothing."""
    if count == 0:
        return None
    size = next((f"{nbytes / d:.1f} {u}" for d, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")) if nbytes >= d),
                f"{nbytes} B")
    noun = "segment" if count == 1 else "segments"
    return f"shmrt: removed {count} shared-memory {noun} ({size}) left by shmrt processes that no longer exist"
