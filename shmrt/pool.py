"""The worker pool: N pinned processes around one control block.

    parent (your Python)                     workers (python -m shmrt.worker)
    +----------------------+   int32 words   +-------------------+
    | cm(x): copy x in,    |---- GEN++ ----->| w0  pinned cpu 0  |--+
    | post RUN, wait DONE, |<--- DONE++ -----| w1  pinned cpu 1  |  | barriers
    | copy y out           |                 | ...               |<-+ (control
    +----------+-----------+                 +---------+---------+    block)
               |  creates, owns, unlinks               |  attach by name
               v                                       v
    [control block]  [weights (read-only)]  [activation arena]   /dev/shm

Only integers cross processes on the hot path (control.py documents the
words).  Workers are forked from a clean template process (launch.py), not
from your process: safe with threads, no ``if __name__ == "__main__"`` guard
needed, one-thread BLAS and Numba set before numpy is imported, and the
interpreter, libraries and kernels shared copy-on-write between workers.

Failure: the parent watches its children while it waits.  A worker that
dies mid-call aborts the call (ABORT word; workers leave their barriers),
the call raises ``WorkerError`` and the worker is started again for the
next call.
"""
from __future__ import annotations

import builtins
import os
import subprocess
import threading
import time
import warnings

import numpy as np

from . import config
from . import control as C
from . import launch
from .store import Segment
from .sync import LINE, TIMEOUT, wake_all


class WorkerError(RuntimeError):
    """A worker process died during a call; the call's result is lost.  When the
    worker died of a Python exception (raised in a kernel, say), the error
    raised is also an instance of that exception's type, with its message."""


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


class Pool:
    def __init__(self, workers: int):
        self.n = int(workers)
        ncpu = len(cpu_order())
        spin_us = config.SPIN_US if config.SPIN_US is not None else (50.0 if self.n <= ncpu else 2.0)
        self.spin_ns, self.spin_us = int(spin_us * 1000), spin_us
        # When the workers take every CPU, the parent has no core of its own.
        # The last worker then blocks as soon as it is idle instead of
        # spinning, so the parent runs on its core between calls and each
        # call costs one same-core hand-off (measured on 2 cores, 2 workers:
        # 4.4 us round trip; with every worker spinning 108 us, yielding 40 us).
        self.host_worker = self.n - 1 if self.n >= ncpu else -1
        self.block_ns = 20_000_000  # the parent looks at its children every 20 ms while it waits
        words, self.msg_off, nbytes = C.layout(self.n)
        self.seg = Segment.create(nbytes)
        self.ctrl = self.seg.array(np.int32, words)
        self.procs = [None] * self.n
        self.cpus = cpu_order() if config.PIN else []
        self.models = {}  # model id -> spec (segment names, programs)
        self.restarting = set()  # workers started again, not yet seen READY
        self.deaths_seen = None  # the launcher's count of reaped workers, when last looked at
        self.lock = threading.RLock()
        self.closed = False
        C.write_msg(self.seg.buf, self.msg_off, {"models": {}})
        self.launcher = None
        try:
            self.launcher = launch.launcher([self.seg.name, str(self.seg.nbytes), str(self.msg_off), str(spin_us)])
            for w in range(self.n):
                self._spawn(w)
            self._await_ready(range(self.n))
        except BaseException:
            self.close()
            raise

    # -- processes ---------------------------------------------------------
    def _spawn(self, w: int) -> None:
        C.set_word(self.ctrl, C.wline(w) + C.W_STATE, C.ST_STARTING)
        cpu = self.cpus[w % len(self.cpus)] if self.cpus and self.n <= len(self.cpus) else -1
        idle_spin_us = 0.0 if w == self.host_worker else self.spin_us
        self.procs[w] = self.launcher.start(w, cpu, idle_spin_us)

    def _await_ready(self, wids) -> None:
        deadline = time.monotonic() + config.START_TIMEOUT_S
        for w in wids:
            while C.get_word(self.ctrl, C.wline(w) + C.W_STATE) != C.ST_READY:
                code = self.procs[w].poll()
                if code is not None:
                    raise WorkerError(f"worker {w} exited with code {code} while starting "
                                      f"(its error, if any, is printed above)")
                if time.monotonic() > deadline:
                    raise WorkerError(f"worker {w} did not start within {config.START_TIMEOUT_S:.0f} s "
                                      f"(SHMRT_START_TIMEOUT_S)")
                time.sleep(0.002)

    def pids(self) -> list:
        return [p.pid for p in self.procs if p is not None]

    # -- commands ----------------------------------------------------------
    def command(self, op: int, model: int = -1, n: int = 0, prog: int = 0, prof: int = -1) -> None:
        """Run one command on every worker; raise WorkerError if one dies.
        prof >= 0: a profiled RUN, each worker records its step times there
        in the model's arena (see executor.run_steps)."""
        if self.closed:
            raise RuntimeError("this shmrt.Runtime is closed; create a new one")
        if getattr(self.launcher, "deaths", None) != self.deaths_seen:
            self._heal()  # a worker died between calls: start it again before this call
        if self.restarting:
            self._await_ready(sorted(self.restarting))
            self.restarting.clear()
        self.ctrl[C.C_PROF] = prof  # published by call's release of GEN
        try:  # a KeyboardInterrupt can land as soon as call returns, with the command in flight
            r = C.call(self.ctrl, op, model, n, prog, self.n, self.spin_ns, self.block_ns)
            while r == TIMEOUT:
                dead = [w for w, p in enumerate(self.procs) if p.poll() is not None]
                if dead:
                    self._recover(dead)  # raises WorkerError
                r = C.wait_done(self.ctrl, self.n, self.spin_ns, self.block_ns)
        except WorkerError:
            raise
        except BaseException:  # KeyboardInterrupt while waiting: stop the workers, then re-raise
            if not self.closed:
                self._recover([])
            raise

    def _heal(self) -> None:
        self.deaths_seen = self.launcher.deaths
        for w, p in enumerate(self.procs):
            if p.poll() is not None:  # idle, or killed while it was starting
                record = self.launcher.errors.pop(p.pid, None)
                if record is not None:
                    warnings.warn(f"shmrt worker {w} (pid {p.pid}) died between calls of {record[1]}: "
                                  f"{record[2]}; it was started again", RuntimeWarning, stacklevel=3)
                self._spawn(w)
                self.restarting.add(w)

    def _error(self, w: int, how: str, where: str) -> WorkerError:
        """The exception a call raises for dead worker ``w``: its own, when it reported one."""
        pid = self.procs[w].pid
        record = self.launcher.errors.pop(pid, None)
        tail = "; the call was abandoned and the worker restarted, so the next call runs normally"
        if record is None:
            return WorkerError(f"worker {w} (pid {pid}, {how}{where}) died during the call{tail}")
        module, name, message = record
        text = f"worker {w} (pid {pid}) raised {name}: {message}{where}{tail}"
        cls = getattr(builtins, name, None) if module == "builtins" else None
        if isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, WorkerError):
            try:  # both: `except ZeroDivisionError` and `except shmrt.WorkerError` catch it
                return type(name, (WorkerError, cls), {"__module__": "shmrt.pool"})(text)
            except TypeError:  # a base with its own layout (OSError and kin)
                pass
        return WorkerError(text)

    def _recover(self, dead: list) -> None:
        """Abort the current command, wait for the survivors, restart the dead."""
        gen = int(C.get_word(self.ctrl, C.GEN))
        steps = {w: int(C.get_word(self.ctrl, C.wline(w) + C.W_STEP)) for w in dead}
        C.set_word(self.ctrl, C.ABORT, 1)
        for base in C.barrier_lines(self.n):
            wake_all(self.ctrl, base + LINE)
        deadline = time.monotonic() + 0.5
        live = [w for w in range(self.n) if w not in dead]
        while live and time.monotonic() < deadline:
            live = [w for w in live if C.get_word(self.ctrl, C.wline(w) + C.W_GEN) != gen
                    and self.procs[w].poll() is None]
            time.sleep(0.0005)
        stuck = live  # neither finished nor died in time: replace them too
        for w in stuck:
            self.procs[w].kill()
        for w in set(dead) | set(stuck):
            self.procs[w].wait()
        for base in C.barrier_lines(self.n):
            self.ctrl[base] = 0
        C.set_word(self.ctrl, C.ABORT, 0)
        errors = []
        for w in sorted(set(dead) | set(stuck)):
            code = self.procs[w].returncode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            where = f", at step {steps[w]} of the program" if w in steps else ""
            errors.append(self._error(w, how, where))
            self._spawn(w)
            self.restarting.add(w)  # the next command waits for it
        if dead:
            first = errors[0]
            if len(errors) > 1:
                first.args = (f"{first.args[0]}; and also: " + "; ".join(str(e) for e in errors[1:]),)
            raise first

    def sync_models(self) -> None:
        with self.lock:
            C.write_msg(self.seg.buf, self.msg_off, {"models": self.models})
            self.command(C.OP_SYNC)

    # -- shutdown ----------------------------------------------------------
    def close(self, timeout: float = 2.0) -> None:
        with self.lock:
            if self.closed:
                return
            starting = [w for w in range(self.n) if self.procs[w] is not None and self.procs[w].poll() is None
                        and C.get_word(self.ctrl, C.wline(w) + C.W_STATE) != C.ST_READY]
            try:  # a worker still starting would miss the EXIT command
                self._await_ready(starting)
            except WorkerError:
                pass
            live = [p for p in self.procs if p is not None and p.poll() is None]
            if live and all(p is not None for p in self.procs):
                try:
                    C.post(self.ctrl, C.OP_EXIT, -1, 0, 0)
                except Exception:
                    pass
            self.closed = True
            deadline = time.monotonic() + timeout
            for p in live:
                try:
                    p.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if self.launcher is not None:
                self.launcher.close()
            self.ctrl = None
            self.seg.close()
