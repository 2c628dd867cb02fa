"""Starting worker processes: forked from a template, or one exec each.

Why a template: a worker needs numpy, SciPy's BLAS, Numba and the compiled
kernels -- about 70 MB private to each process when each one imports and
loads them itself (measured: 66 MB USS per idle worker).  The template is a
clean, single-threaded ``python -m shmrt.worker template`` process started
with one-thread BLAS/Numba settings; it imports everything and loads the
kernels once, freezes its heap (gc.freeze) and then forks each worker on
request.  The forked workers share those pages copy-on-write, so N workers
cost one interpreter's worth of memory plus what each one touches.

Forking the template is safe: the template has one thread and runs no user
code.  The user's process never forks (it may have threads), and needs no
``if __name__ == "__main__"`` guard, since nothing re-imports its script.

    parent --stdin:  "spawn WID CPU IDLE_SPIN_US" --> template --fork--> worker WID
    parent <--stdout: "pid WID PID" / "dead WID PID CODE" -- template (reaps)
                      "error WID PID [module, type, message]" -- a worker, before it exits

If the parent dies, the template sees EOF on its stdin and exits; the
workers watch the parent itself (not the template) and clean up when it is
gone.  If the template dies (the OOM killer), its workers serve on; the
pool kills them and starts a new template and workers at its next command.  Where fork
does not exist (Windows), each worker is its own ``python -m shmrt.worker``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from shmrt import config


def worker_env() -> dict:
    env = dict(os.environ, **config.SINGLE_THREAD_ENV)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


class ExecLauncher:
    """One ``python -m shmrt.worker`` per worker (no fork available)."""

    errors = {}  # no channel back: a worker's exception is only printed on stderr
    deaths = None  # not counted: the pool finds a dead worker when a call stalls
    on_death = None  # nobody reports deaths as they happen (so the caller never computes: runtime.py)

    def gone(self) -> bool:
        return False

    def __init__(self, common_args: list):
        self.common = common_args

    def start(self, wid: int, cpu: int, idle_spin_us: float):
        args = [sys.executable, "-m", "shmrt.worker", "run", *self.common, str(wid), str(cpu), str(idle_spin_us),
                str(os.getpid())]
        return subprocess.Popen(args, env=worker_env(), stdin=subprocess.DEVNULL, close_fds=True)

    def close(self):
        pass


class ForkedWorker:
    """A worker forked by the template: Popen's poll/kill/wait, by pid."""

    def __init__(self, launcher: "ForkLauncher", wid: int, pid: int):
        self.launcher, self.wid, self.pid = launcher, wid, pid
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            self.returncode = self.launcher.exit_code(self.pid)
        return self.returncode

    def kill(self):
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.launcher.cond:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"shmrt worker {self.wid}", timeout)
                self.launcher.cond.wait(left if left is None else min(left, 0.1))
        return self.returncode


class ForkLauncher:
    def __init__(self, common_args: list):
        args = [sys.executable, "-m", "shmrt.worker", "template", *common_args]
        self.proc = subprocess.Popen(args, env=worker_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     close_fds=True, text=True, bufsize=1)
        self.cond = threading.Condition()
        self.pids = {}  # wid -> pid of the newest worker with that id
        self.exits = {}  # pid -> exit code (negative: signal)
        self.errors = {}  # pid -> (module, type name, message) of the exception that ended the worker
        self.deaths = 0  # workers reaped so far: the pool looks for dead ones when this moves
        self.on_death = None  # called (reader thread, under cond) when a worker or the template dies
        self.reader = threading.Thread(target=self._read, name="shmrt-template-reader", daemon=True)
        self.reader.start()
        # The template's death, as it happens: its output pipe does not close then (its workers hold it)
        self.watcher = threading.Thread(target=self._watch, name="shmrt-template-watcher", daemon=True)
        self.watcher.start()

    def _read(self):
        for line in self.proc.stdout:
            parts = line.split(maxsplit=3)
            with self.cond:
                if parts[:1] == ["pid"]:
                    self.pids[int(parts[1])] = int(parts[2])
                elif parts[:1] == ["dead"]:
                    self.exits[int(parts[2])] = int(parts[3])
                    self.deaths += 1
                    self._report_death()
                elif parts[:1] == ["error"] and len(parts) == 4:
                    try:
                        self.errors[int(parts[2])] = tuple(json.loads(parts[3]))
                    except ValueError:
                        pass
                self.cond.notify_all()
        self._gone()

    def _watch(self):
        self.proc.wait()
        self._gone()

    def _gone(self):
        with self.cond:  # the template is gone; its workers serve on until the pool replaces them
            if -1 not in self.pids:
                self.pids[-1] = -1
                self._report_death()
            self.cond.notify_all()

    def _report_death(self):
        if self.on_death is not None:
            try:
                self.on_death()
            except Exception:  # the reader thread must go on reading
                pass

    def gone(self) -> bool:
        """The template has exited (killed, say): no worker can be started or reaped by it."""
        return -1 in self.pids  # set by the reader thread at the template's EOF (no system call per command)

    def exit_code(self, pid):
        with self.cond:
            if pid in self.exits:
                return self.exits[pid]
            if -1 in self.pids:  # template gone: nobody reaps its workers for us
                return None if _exists(pid) else -9
            return None

    def start(self, wid: int, cpu: int, idle_spin_us: float):
        if self.proc.poll() is not None or -1 in self.pids:
            raise RuntimeError(f"the shmrt worker template (pid {self.proc.pid}) exited with code "
                               f"{self.proc.poll()}; its error, if any, is printed above")
        with self.cond:
            old = self.pids.pop(wid, None)
            self.proc.stdin.write(f"spawn {wid} {cpu} {idle_spin_us}\n")
            self.proc.stdin.flush()
            deadline = time.monotonic() + config.START_TIMEOUT_S
            while wid not in self.pids or self.pids[wid] == old:
                if -1 in self.pids or time.monotonic() > deadline:
                    raise RuntimeError(f"the shmrt worker template did not start worker {wid} "
                                       f"(template exit code {self.proc.poll()})")
                self.cond.wait(0.1)
            return ForkedWorker(self, wid, self.pids[wid])

    def close(self):
        try:
            self.proc.stdin.close()  # EOF: the template exits
        except OSError:
            pass
        try:
            self.proc.wait(2.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(2.0)  # it reads to the end of the template's output, then the pipe can go
        if not self.reader.is_alive():
            self.proc.stdout.close()


def stat_fields(pid: int):
    """The fields of /proc/<pid>/stat from the state on (field 3: index 0), as bytes; None when
    no such process exists.  Raises OSError when /proc cannot say (not Linux, say).  comm
    (field 2) may hold spaces and ')': the fields start after the last ')'."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rindex(b")") + 2:].split()


def _exists(pid: int) -> bool:
    """Process pid exists and is not a zombie (a process no longer ours is reaped by init, or
    by nobody in a container whose first process does not reap)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = stat_fields(pid)
        return fields is not None and fields[0] != b"Z"
    except (OSError, ValueError, IndexError):
        return True


def await_gone(pids, timeout: float) -> None:
    """Wait until none of pids exists (see _exists), at most timeout seconds."""
    deadline = time.monotonic() + timeout
    while any(_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.002)


def launcher(common_args: list):
    return ForkLauncher(common_args) if hasattr(os, "fork") else ExecLauncher(common_args)
