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
next call.  A live worker that cannot run a command (a RUN for a model it
was never sent) says so in the control block and the call raises
``CommandError``.  Workers that could not be pinned give one RuntimeWarning.
"""
from __future__ import annotations

import builtins
import os
import subprocess
import threading
import time
import warnings

import numpy as np

from shmrt import config
from shmrt.parallel import control as C
from shmrt.parallel import launch, xmem
from shmrt.parallel.store import Segment
from shmrt.exec.executor import call_stamped, lead
from shmrt.parallel.cpus import compact_cpus, cpu_order, default_workers, pin_failure  # noqa: F401 (re-exported)
from shmrt.parallel.sync import ABORTED, IDLE_SPIN_CAP_NS, LINE, TIMEOUT, IdleBudget, wake_all


_NO_STAMPS = np.zeros(0, np.int64)


class WorkerError(RuntimeError):
    """A worker process died during a call; the call's result is lost.  When the
    worker died of a Python exception (raised in a kernel, say), the error
    raised is also an instance of that exception's type, with its message."""


class CopyRefused(RuntimeError):
    """A single-copy call could not read the caller's input or write its result (the OS
    refused process_vm_readv/writev): the pool has switched to copying through the arena,
    and the caller runs the call again that way (runtime.py)."""


class CommandError(RuntimeError):
    """A worker could not run the command it was sent (a RUN for a model it does
    not have), so the call computed nothing.  No process died (unlike
    WorkerError): the workers keep running and the next call runs normally."""


class Pool:
    def __init__(self, workers: int, caller: bool = False):
        self.n = int(workers)  # worker processes
        # caller: the calling thread computes too, as the last participant (executor.lead)
        self.caller = bool(caller)
        self.parties = self.n + self.caller
        ncpu = len(cpu_order())
        spin_us = config.SPIN_US if config.SPIN_US is not None else (50.0 if self.parties <= ncpu else 2.0)
        self.spin_ns, self.spin_us = int(spin_us * 1000), spin_us
        # When the worker processes take every CPU (workers=N asked for explicitly), the parent
        # has no core of its own.  The last worker then blocks as soon as it is idle instead of
        # spinning, so the parent runs on its core between calls and each call costs one
        # same-core hand-off (measured on 2 cores, 2 workers: 4.4 us round trip; with every
        # worker spinning 108 us, yielding 40 us).  When the caller computes, it has a core.
        self.host_worker = self.n - 1 if not self.caller and self.n >= ncpu else -1
        # For the same reason the parent does not spin while it waits for a call's DONE then: it
        # would take half of the host worker's core (2 cores, 2 workers: a small CNN at batch 1
        # took 109 us with the parent spinning 50 us, 45 us without).  A computing caller spins
        # for the stragglers as long as the idle workers would.
        if self.caller:
            self.wait_spin_ns = IDLE_SPIN_CAP_NS
        else:
            self.wait_spin_ns = self.spin_ns if self.host_worker < 0 or config.SPIN_US is not None else 0
        self.block_ns = 20_000_000  # the parent looks at its children every 20 ms while it waits
        words, self.msg_off, nbytes = C.layout(self.parties)
        self.seg = Segment.create(nbytes)
        self.ctrl = self.seg.array(np.int32, words)
        self.ctrl[C.C_SPIN] = self.spin_ns
        self.waits = IdleBudget(self.spin_ns, fixed=config.SPIN_US is not None)
        self.procs = [None] * self.n
        self.cpus = (config.CPUS or cpu_order()) if config.PIN else []
        self.pin_cpu = [-1] * self.n  # the CPU each worker was asked to pin itself to (-1: none)
        self.pin_warned = False  # a failed pin warns once per Pool, not per worker or restart
        self.models = {}  # model id -> spec (segment names, programs)
        self.buffers = {}  # shared input buffer id -> spec (segment name, bytes, address here): buffers.py
        self.restarting = set()  # workers started again, not yet seen READY
        self.deaths_seen = None  # the launcher's count of reaped workers, when last looked at
        self.busy = False  # a command is in flight: a death sets ABORT (_on_death)
        self.lock = threading.RLock()
        self.closed = False
        C.write_msg(self.seg.buf, self.msg_off, {"models": {}})
        # single copy (compile/io.py): workers read the caller's input and write its result directly
        self.single_copy, self.copy_note = xmem.AVAILABLE and config.SINGLE_COPY, None
        if not xmem.AVAILABLE:
            self.copy_note = "this OS has no process_vm_readv"
        elif not config.SINGLE_COPY:
            self.copy_note = "turned off by SHMRT_SINGLE_COPY=0"
        self.xmem_pid = os.getpid()  # the pid workers read from (a test names a dead one to force a refusal)
        self.launcher = None
        self.launch_args = [self.seg.name, str(self.seg.nbytes), str(self.msg_off), str(spin_us)]
        try:
            self._start_launcher()
            for w in range(self.n):
                self._spawn(w)
            self._await_ready(range(self.n))
        except BaseException:
            self.close()
            raise

    def _start_launcher(self) -> None:
        self.launcher = launch.launcher(self.launch_args)
        self.launcher.on_death = self._on_death
        self.deaths_seen = self.launcher.deaths
        if self.single_copy:  # under Yama scope 1, the template and its workers may read this process
            proc = getattr(self.launcher, "proc", None)
            why = xmem.allow_tracer(proc.pid) if proc is not None else None
            if why:
                self.copy_off(why)

    def copy_off(self, why: str) -> None:
        """Copy inputs and outputs through the arena (in the caller) from now on, and say why."""
        self.single_copy, self.copy_note = False, why

    def _on_death(self) -> None:
        """The template's reader thread heard of a death (a worker's, or the template's own):
        abort the command in flight, so that a caller waiting at a barrier for the dead
        worker leaves it (its thread holds no GIL there: executor.lead)."""
        if self.busy and self.ctrl is not None:
            C.set_word(self.ctrl, C.ABORT, 1)
            for base in C.barrier_lines(self.parties):
                wake_all(self.ctrl, base + LINE)

    # -- processes ---------------------------------------------------------
    def _spawn(self, w: int) -> None:
        C.set_word(self.ctrl, C.wline(w) + C.W_STATE, C.ST_STARTING)
        self.ctrl[C.wline(w) + C.W_PIN] = self.ctrl[C.wline(w) + C.W_ERROR] = 0
        # a computing caller keeps the first CPU (where the OS most likely runs it); workers take the next
        first = 1 if self.caller and len(self.cpus) > self.n else 0
        cpu = self.cpus[(w + first) % len(self.cpus)] if self.cpus and self.n <= len(self.cpus) else -1
        self.pin_cpu[w] = cpu
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
        self._check_pins(wids)

    def _check_pins(self, wids) -> None:
        """Warn, once per Pool, of workers that could not pin themselves (worker.pin)."""
        failed = []
        for w in wids:
            code = int(C.get_word(self.ctrl, C.wline(w) + C.W_PIN))
            if code < 0:
                failed.append(f"worker {w} (pid {self.procs[w].pid}) to CPU {self.pin_cpu[w]}: "
                              f"{pin_failure(code, True)}")
        if config.PIN and config.CPUS and self.n > len(config.CPUS):
            failed.append(f"SHMRT_CPUS lists {len(config.CPUS)} CPU(s) for {self.n} workers (expected one "
                          f"per worker), so no worker was pinned")
        if failed and not self.pin_warned:
            self.pin_warned = True
            try:
                allowed = "{" + compact_cpus(os.sched_getaffinity(0)) + "}"
            except AttributeError:
                allowed = "unknown"
            warnings.warn(f"shmrt could not pin every worker to a CPU of its own: {'; '.join(failed)}. They run "
                          f"unpinned, where the OS schedules them. Expected CPUs this process may use "
                          f"({allowed}); choose them with SHMRT_CPUS, or set SHMRT_PIN=0 not to pin",
                          RuntimeWarning, stacklevel=5)  # from Runtime(): the caller's line

    def pids(self) -> list:
        return [p.pid for p in self.procs if p is not None]

    def describe(self) -> str:
        """One line for explain(): each worker's pid and the CPUs the OS lets it run on."""
        if self.closed:
            return "workers: none (this runtime is closed)"
        parts = []
        for w, p in enumerate(self.procs):
            try:
                cpus = "{" + compact_cpus(os.sched_getaffinity(p.pid)) + "}"
            except AttributeError:
                cpus = "unknown (this OS has no sched_getaffinity)"
            except OSError:
                cpus = "unknown (the process has exited)"
            code = int(C.get_word(self.ctrl, C.wline(w) + C.W_PIN))
            note = ("" if code == C.PIN_OK else " (not pinned)" if code == C.PIN_NONE else
                    f" (pinning to CPU {self.pin_cpu[w]} failed: {pin_failure(code)})")
            parts.append(f"w{w} pid {p.pid} cpus {cpus}{note}")
        if self.caller:
            parts.append(f"w{self.n} the calling thread (pid {os.getpid()}, not pinned)")
        return "workers: " + ", ".join(parts)

    def describe_io(self) -> str:
        """One line for explain(): how cm(x) moves its input and output."""
        if self.single_copy:
            return ("input/output of cm(x): single copy -- each worker reads its rows of x from the caller's "
                    "memory and writes its rows of the result into the returned array (process_vm_readv/writev)")
        return (f"input/output of cm(x): copied through the shared arena by the calling thread (single copy off: "
                f"{self.copy_note})")

    # -- commands ----------------------------------------------------------
    def command(self, op: int, model: int = -1, n: int = 0, prog: int = 0, prof: int = -1, stamps=None,
                local=None, io=None) -> None:
        """Run one command on every worker; raise WorkerError if one dies, CommandError
        if one could not run it (a RUN for a model it was never sent).
        prof >= 0: a profiled RUN, each worker records its step times there
        in the model's arena (see executor.run_steps); stamps: an int64 [2] array for
        the times the command is published and its last DONE seen (executor.call_stamped).
        local: (programs, weights, arena, profile record, solo, xin) of the model, for a RUN the
        calling thread computes its share of (when the pool has a caller: executor.lead); solo[prog]:
        the largest batch whose rows all fall to the calling thread (compile/io.py), run without
        telling the workers; xin: the caller's own input rows, read in place (None: from the arena).
        io: (input rows, result, second result) addresses of a single-copy RUN (compile/io.py;
        an input address 0: the rows are in the arena already)[, the first row of the calling
        thread's share (C_SPLIT)[, the shared buffer the rows lie in (C_XBUF)]], else None."""
        if self.closed:
            raise RuntimeError("this shmrt.Runtime is closed; create a new one")
        if local is not None and self.caller and n <= local[4][prog] and io is None and stamps is None:
            # solo: every row is the calling thread's; the workers are not told, nor waited for
            self.ctrl[C.C_PID] = self.ctrl[C.C_XBUF] = 0
            lead(self.ctrl, model, n, prog, 0, self.n, local[0], local[1], local[2], self.spin_ns, self.wait_spin_ns,
                 self.block_ns, local[3], _NO_STAMPS, local[5])
            if self.ctrl[C.C_ERR]:
                raise self._command_error(model)
            return
        if self.launcher.gone():
            self._restart_template()
        if self.launcher.deaths != self.deaths_seen:
            self._heal()  # a worker died between calls: start it again before this call
        if self.restarting:
            self._await_ready(sorted(self.restarting))
            self.restarting.clear()
        self.ctrl[C.C_PROF] = prof  # published by call's release of GEN
        if io is None:
            self.ctrl[C.C_PID] = self.ctrl[C.C_XBUF] = 0
        else:
            self.ctrl[C.C_PID] = self.xmem_pid
            for word, addr in zip((C.C_SRC, C.C_DST, C.C_DST2), io[:3]):
                xmem.store_addr(self.ctrl, word, addr)
            self.ctrl[C.C_SPLIT] = io[3] if len(io) > 3 else 0
            self.ctrl[C.C_XBUF] = io[4] if len(io) > 4 else 0
        self.ctrl[C.C_SPIN] = self.waits.start()
        self.busy = True
        try:  # a KeyboardInterrupt can land as soon as call returns, with the command in flight
            if local is not None and self.caller and op == C.OP_RUN:
                progs, weights, arena, rec, solo, xin = local
                r = lead(self.ctrl, model, n, prog, 0 if n <= solo[prog] else self.n, self.n, progs, weights, arena,
                         self.spin_ns, self.wait_spin_ns, self.block_ns, rec, _NO_STAMPS if stamps is None else stamps,
                         arena[0:0] if xin is None else xin)
            elif stamps is None:
                r = C.call(self.ctrl, op, model, n, prog, self.n, self.wait_spin_ns, self.block_ns)
            else:
                r = call_stamped(self.ctrl, op, model, n, prog, self.n, self.wait_spin_ns, self.block_ns, stamps)
            while r == TIMEOUT:
                dead = [w for w, p in enumerate(self.procs) if p.poll() is not None]
                if dead or self.launcher.gone():
                    self._recover(dead)  # raises WorkerError
                r = C.wait_done(self.ctrl, self.n, self.wait_spin_ns, self.block_ns)
                if stamps is not None and r != TIMEOUT:
                    stamps[1] = time.monotonic_ns()  # call_stamped gave up at its first block slice
            if r == ABORTED or self.ctrl[C.ABORT]:  # a death during the call: its result is lost
                self._recover(self._await_dead(), lost=True)  # raises WorkerError
        except WorkerError:
            raise
        except BaseException:  # KeyboardInterrupt while waiting: stop the workers, then re-raise
            if not self.closed:
                self.busy = False
                try:
                    self._recover([])
                except WorkerError:
                    pass
            raise
        finally:
            self.busy = False
            self.waits.end()
        if self.ctrl[C.C_ERR]:  # one word read per call: a worker could not run this command
            raise self._command_error(model)

    def _await_dead(self, timeout: float = 1.0) -> list:
        """The workers that died during a command whose abort word is set (their exit is
        recorded just before the death watch sets it; the template's own death leaves none)."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [w for w, p in enumerate(self.procs) if p.poll() is not None]
            if dead or self.launcher.gone() or time.monotonic() > deadline:
                return dead
            time.sleep(0.001)

    def _clear_errors(self) -> list:
        """Workers whose W_ERROR is set; clears those words and ERR for the next command."""
        bad = [w for w in range(self.parties) if self.ctrl[C.wline(w) + C.W_ERROR]]
        for w in bad:
            self.ctrl[C.wline(w) + C.W_ERROR] = 0
        self.ctrl[C.C_ERR] = 0
        return bad

    def _command_error(self, model: int) -> CommandError:
        refused = {w: int(self.ctrl[C.wline(w) + C.W_XERR]) for w in range(self.parties)
                   if self.ctrl[C.wline(w) + C.W_ERROR] == C.ERR_XMEM}
        if refused:
            w, err = next(iter(refused.items()))
            who = "the calling thread" if w == self.n else f"worker {w}"
            self._clear_errors()
            self.copy_off(f"process_vm_readv/writev refused for {who}: {os.strerror(err)} (errno {err})")
            return CopyRefused(self.copy_note)
        bad = self._clear_errors()
        who = f"worker {bad[0]} has" if len(bad) == 1 else f"workers {', '.join(map(str, bad))} have"
        its = "its model list is" if len(bad) == 1 else "their model lists are"
        if model in self.models:
            why = "this runtime has that model, but the worker was not sent it (Pool.sync_models)"
        else:
            why = (f"this runtime's models are {sorted(self.models)} (model {model} was closed, never compiled "
                   f"here, or belongs to another runtime)")
        return CommandError(f"{who} no program for model {model}: {its} out of date, or the id is wrong: {why}; "
                            f"expected a RUN only for a model compiled on this runtime and not closed. The call "
                            f"computed nothing; the workers are still running, so the next call runs normally")

    def _heal(self) -> None:
        self.deaths_seen = self.launcher.deaths
        self._reset_words()  # a death at the end of the last call may have set ABORT
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
                return type(name, (WorkerError, cls), {"__module__": "shmrt.parallel.pool"})(text)
            except TypeError:  # a base with its own layout (OSError and kin)
                pass
        return WorkerError(text)

    def _recover(self, dead: list, lost: bool = False) -> None:
        """Abort the current command, wait for the survivors, restart the dead.  Raises
        WorkerError when a worker died, or when lost (the call was aborted) or the template
        is gone (it and every worker are started again at the next command)."""
        self.busy = False
        gen = int(C.get_word(self.ctrl, C.GEN))
        steps = {w: int(C.get_word(self.ctrl, C.wline(w) + C.W_STEP)) for w in range(self.n)}
        C.set_word(self.ctrl, C.ABORT, 1)
        for base in C.barrier_lines(self.parties):
            wake_all(self.ctrl, base + LINE)
        deadline = time.monotonic() + 0.5
        live = [w for w in range(self.n) if w not in dead]
        while live and time.monotonic() < deadline:
            live = [w for w in live if C.get_word(self.ctrl, C.wline(w) + C.W_GEN) != gen
                    and self.procs[w].poll() is None]
            time.sleep(0.0005)
        stuck = live  # neither finished nor died in time: replace them too
        if dead:  # one that died while the others were awaited failed this call too: name it now
            dead = dead + [w for w in range(self.n) if w not in dead and w not in stuck
                           and self.procs[w].poll() is not None]
        for w in stuck:
            self.procs[w].kill()
        for w in set(dead) | set(stuck):
            self.procs[w].wait()
        self._reset_words()
        template_gone = self.launcher.gone()
        errors = []
        for w in sorted(set(dead) | set(stuck)):
            code = self.procs[w].returncode
            how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            where = f", at step {steps[w]} of the program" if w in dead else ""
            errors.append(self._error(w, how, where))
            if not template_gone:  # else the next command starts the template and every worker again
                self._spawn(w)
                self.restarting.add(w)  # the next command waits for it
        if template_gone and (dead or lost):
            errors.append(WorkerError(f"the shmrt worker template (pid {self.launcher.proc.pid}) exited with code "
                                      f"{self.launcher.proc.poll()} during the call; the call was abandoned, and "
                                      f"the template and its workers are started again at the next call"))
        elif lost and not errors:
            errors.append(WorkerError("the call was aborted (a worker's death was reported, but no worker is "
                                      "dead now); its result is lost, and the next call runs normally"))
        if dead or errors:
            first = errors[0]
            if len(errors) > 1:
                first.args = (f"{first.args[0]}; and also: " + "; ".join(str(e) for e in errors[1:]),)
            raise first

    def _reset_words(self) -> None:
        """Barrier counts and the abort word back to rest, errors cleared: after an abort."""
        for base in C.barrier_lines(self.parties):
            self.ctrl[base] = 0
        C.set_word(self.ctrl, C.ABORT, 0)
        self._clear_errors()

    def _restart_template(self) -> None:
        """The template died (the OOM killer, say): kill its workers (they serve on, watching
        this process, not it), start a new template and every worker again."""
        old = self.launcher
        code = old.proc.poll()
        for p in self.procs:
            if p is not None:
                p.kill()
        launch.await_gone([p.pid for p in self.procs if p is not None], 2.0)
        old.close()
        self._reset_words()
        self._start_launcher()
        for w in range(self.n):
            self._spawn(w)
        self.restarting.clear()
        self._await_ready(range(self.n))
        warnings.warn(f"the shmrt worker template (pid {old.proc.pid}) had exited with code {code}; it and its "
                      f"{self.n} worker(s) were started again", RuntimeWarning, stacklevel=4)

    def sync_models(self) -> None:
        with self.lock:
            C.write_msg(self.seg.buf, self.msg_off, {"models": self.models, "buffers": self.buffers})
            self.command(C.OP_SYNC)

    def use_buffer(self, found) -> int:
        """Map shared input buffer ``found`` (buffers.find) in every worker, once; forget freed
        ones.  Returns its id."""
        bid, name, nbytes, offset = found
        if bid not in self.buffers:
            from shmrt.parallel import buffers
            live = buffers.live()
            self.buffers = {k: v for k, v in self.buffers.items() if k in live}
            self.buffers[bid] = {"name": name, "bytes": nbytes, "addr": buffers.start(bid)}
            self.sync_models()
        return bid

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
