"""A worker process, and the template that forks workers.

    python -m shmrt.worker run      CTRL BYTES MSG_OFF SPIN_US WID CPU IDLE_SPIN_US PPID
    python -m shmrt.worker template CTRL BYTES MSG_OFF SPIN_US   (then "spawn WID CPU IDLE_SPIN_US" on stdin)

A worker killed by an exception (in a kernel, say) reports its type and
message to the parent before it exits, so the failed call raises it.

Started by launch.py with one-thread BLAS/Numba settings in its environment.
A worker pins itself, attaches the control block and every model the parent
lists in the message area, records whether the pin worked (W_PIN), says
READY, then loops: wait for a command, run it (the hot loop stays inside
Numba: executor.serve), count itself done.  A RUN for a model it was never
sent sets its W_ERROR (the call raises CommandError) instead of running.
It never pickles or queues anything.  When its parent is gone it unlinks
every segment it knows and exits.
"""
from __future__ import annotations

import os
import signal
import sys

import numpy as np

from shmrt import config
from shmrt.exec.executor import serve
from shmrt.parallel import control as C
from shmrt.parallel.store import Segment, WeightStore, unlink
from shmrt.parallel.sync import ABORTED, wait_change


def pin(cpu: int) -> int:
    """Pin this process to ``cpu`` (< 0: not asked to).  Returns the outcome for the
    worker's W_PIN word: control.PIN_NONE, PIN_OK, or -errno / PIN_FAILED when the
    OS refused (a container's cpuset, a CPU that does not exist); the pool then warns
    once.  A refusal does not stop the worker: pinning is an optimisation."""
    if cpu < 0:
        return C.PIN_NONE
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        elif sys.platform == "darwin":  # macOS has no affinity API
            return C.PIN_NONE
        else:
            import psutil
            psutil.Process().cpu_affinity([cpu])
        return C.PIN_OK
    except OSError as e:
        return -e.errno if e.errno else C.PIN_FAILED
    except Exception:  # ValueError, OverflowError, psutil's own errors
        return C.PIN_FAILED


class _Model:
    def __init__(self, spec):
        self.spec = spec
        self.weights = WeightStore.attach(spec["weights"], spec["weights_bytes"], {})
        self.arena_seg = Segment(spec["arena"], spec["arena_bytes"], create=False)
        self.arena = self.arena_seg.array(np.float32)
        self.progs = np.asarray(spec["programs"], dtype=np.int64).reshape(spec["programs_shape"])

    def close(self):
        self.arena = None
        self.weights.segment.close()
        self.arena_seg.close()


class _Buffer:
    """A shared input buffer of the caller's (parallel/buffers.py), mapped here."""

    def __init__(self, spec):
        self.seg = Segment(spec["name"], spec["bytes"], create=False)
        self.array, self.start = self.seg.array(np.float32), int(spec["addr"])

    def close(self):
        self.array = None
        self.seg.close()


def _sync(models: dict, spec: dict, bufs: dict) -> None:
    for mine, key, make in ((models, "models", _Model), (bufs, "buffers", _Buffer)):
        wanted = {int(k): v for k, v in spec.get(key, {}).items()}
        for mid in list(mine):
            if mid not in wanted:
                mine.pop(mid).close()
        for mid, s in wanted.items():
            if mid not in mine:
                try:
                    mine[mid] = make(s)
                except FileNotFoundError:  # a buffer freed since: its calls copy instead
                    if make is _Model:
                        raise


def main(argv) -> int:
    """A worker: argv = CTRL BYTES MSG_OFF SPIN_US WID CPU IDLE_SPIN_US OWNER_PID."""
    ctrl_name, ctrl_bytes, msg_off = argv[0], int(argv[1]), int(argv[2])
    spin = int(float(argv[3]) * 1000)
    wid, cpu = int(argv[4]), int(argv[5])
    idle_spin = int(float(argv[6]) * 1000)  # 0 for the worker that lends its core to the parent
    ppid = int(argv[7])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    pinned = pin(cpu)
    seg = Segment(ctrl_name, ctrl_bytes, create=False)
    ctrl = seg.array(np.int32, msg_off // 4)
    block = int(config.BLOCK_MS * 1e6)
    models: dict = {}
    bufs: dict = {}  # buffer id -> _Buffer
    no_buf = np.zeros(0, np.float32)
    dummy_w = np.zeros(16, np.float32)
    dummy_w.flags.writeable = False
    dummy = (np.zeros((1, 1, 1, 16), np.int64), dummy_w, np.zeros(16, np.float32))
    line = C.wline(wid)
    try:
        _sync(models, C.read_msg(seg.buf, msg_off), bufs)
        gen = int(ctrl[C.GEN])
        ctrl[line + C.W_PID] = os.getpid()
        ctrl[line + C.W_GEN] = gen
        ctrl[line + C.W_PIN] = pinned
        C.set_word(ctrl, line + C.W_STATE, C.ST_READY)  # release: after gen was read
        pending = None
        while True:
            if pending is None:
                g = wait_change(ctrl, C.GEN, gen, C.GEN_SLEEP, C.ZERO, idle_spin, block, ppid)
                if g == ABORTED:
                    return _orphaned(models, ctrl_name)
                pending = g
            gen, pending = int(pending), None
            op, mid = int(ctrl[C.C_OP]), int(ctrl[C.C_MODEL])
            if op == C.OP_NOP or (op == C.OP_RUN and mid in models):
                m = models[mid] if op == C.OP_RUN else None
                progs, w, a = (m.progs, m.weights.flat, m.arena) if m else dummy
                bid = int(ctrl[C.C_XBUF])
                b = bufs.get(bid)
                r = serve(ctrl, wid, mid if m else -1, progs, w, a, gen, spin, idle_spin, block, ppid,
                          b.array if b is not None else no_buf, bid, b.start if b is not None else 0)
                if r == ABORTED:
                    return _orphaned(models, ctrl_name)
                pending = r
                continue
            if op == C.OP_SYNC:
                _sync(models, C.read_msg(seg.buf, msg_off), bufs)
            elif op == C.OP_RUN:  # a model this worker was never sent: the parent raises (Pool.command)
                ctrl[line + C.W_ERROR] = C.ERR_NO_MODEL
                ctrl[C.C_ERR] = 1  # published by finish's release
            C.finish(ctrl, wid, gen)
            if op == C.OP_EXIT:
                break
    finally:
        for m in list(models.values()) + list(bufs.values()):
            m.close()
        ctrl[line + C.W_STATE] = C.ST_EXITED
        del ctrl
    return 0


def _orphaned(models, ctrl_name) -> int:
    """The runtime's process died: remove every segment it made that we know of."""
    for m in models.values():
        unlink(m.spec["weights"])
        unlink(m.spec["arena"])
    unlink(ctrl_name)
    return 3


def _report(chan, wid, exc) -> None:
    """Tell the parent, through the template's channel, which exception killed this worker:
    one line "error WID PID [module, type, message]" (under PIPE_BUF, so never interleaved)."""
    if chan is None:
        return
    import json
    t = type(exc)
    message = str(exc)
    while True:  # JSON escapes can make a message up to 6x longer: shorten until the line fits
        line = f"error {wid} {os.getpid()} {json.dumps([t.__module__, t.__qualname__, message])}\n".encode()
        if len(line) <= 4000 or not message:
            break
        message = message[:len(message) // 2] + "..."
    try:
        os.write(chan, line)
    except OSError:
        pass


def template(argv) -> int:
    """Load everything once, then fork a worker per "spawn" line on stdin;
    report "pid WID PID" and, when reaped, "dead WID PID CODE"; exit on EOF."""
    import gc
    import select

    from shmrt.exec import warmup

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warmup.compile_all()  # loads every kernel from Numba's cache, once, before forking
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) the shared heap
    children = {}
    owner = os.getppid()  # the runtime's process: what the workers watch (sync.wait_change)
    stdin = sys.stdin
    # A worker's death wakes the loop at once (SIGCHLD through a wakeup pipe), so the parent
    # hears of it in about a millisecond and can replace an idle worker before the next call.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    while True:
        ready, _, _ = select.select([stdin, wake_r], [], [], 0.05)
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
        if stdin in ready:
            line = stdin.readline()
            if not line:
                break  # the parent is gone (or closed us)
            cmd = line.split()
            if cmd[0] == "spawn":
                pid = os.fork()
                if pid == 0:  # the worker
                    code, chan = 1, None
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    os.close(wake_r)
                    os.close(wake_w)
                    try:
                        chan = os.dup(1)  # the template's channel to the parent: for an error report
                        os.dup2(2, 1)  # the worker's own prints go to stderr
                        code = main(argv + cmd[1:4] + [str(owner)])
                    except BaseException as e:
                        import traceback
                        traceback.print_exc()
                        _report(chan, cmd[1], e)
                    finally:
                        sys.stderr.flush()
                        os._exit(code)
                children[pid] = cmd[1]
                print(f"pid {cmd[1]} {pid}", flush=True)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            wid = children.pop(pid, "?")
            print(f"dead {wid} {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


def entry(argv) -> int:
    """``python -m shmrt.worker template|run ...`` (shmrt/worker.py)."""
    mode, rest = argv[0], argv[1:]
    return template(rest) if mode == "template" else main(rest)
