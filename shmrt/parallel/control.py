"""The control block: the only thing processes exchange on the hot path.

One shared segment of int32 words, one 64-byte line per field, followed by
a message area (length + UTF-8 JSON) used only off the hot path, to tell
workers which models' segments to attach.

    line  field
    0     GEN        command generation; workers wait for it to change
    1     GEN_SLEEP  workers blocked on GEN (futex waiters)
    2     CMD        op, model id, batch n, program index, profile record
                     (arena offset, or -1: none) (written before GEN);
                     then ERR: non-zero when a worker set its W_ERROR during
                     the current command (one word for the parent to check);
                     then SPIN: the idle workers' spin budget (ns), which
                     follows the gaps between calls (Pool.command); then
                     PID, SRC, DST, DST2: a single-copy call's caller pid
                     and array addresses (0: none; compile/io.py)
    3     DONE       workers finished with the current command
    4     DONE_SLEEP parent blocked on DONE
    5     ABORT      non-zero: abandon the current command (a worker died)
    6     ZERO       always 0: the abort word of waits that must not abort
    7-9   BARRIER    arrival count, generation, sleepers (sync.barrier)
    10+w  WORKER w   (w < parties: the calling thread, when it computes, is
                     the last participant and has a line too) state, last generation done, pid, step being run, fault
                     (non-zero: raise inside the next RUN; tests only),
                     error (ERR_*: why the worker could not run the current
                     command; set before it finishes it, cleared by the
                     parent), pin (PIN_*: the outcome of pinning itself to
                     its CPU, set before READY), the errno of a refused
                     single copy (with error ERR_XMEM)
    then  STAGE g    3 lines per group g < workers: the barrier of a pipeline
                     stage's worker group (sync.barrier), see barrier_line

Protocol for one command (parent side in ``post``/``wait_done``):
parent writes CMD, sets DONE = 0, increments GEN (release; wakes
sleepers) -> each worker sees GEN (acquire), runs, records its status and
increments DONE -> parent sees DONE == workers.  A worker that cannot run
the command (ERR_NO_MODEL) sets its W_ERROR and ERR before it increments
DONE; the parent reads ERR after DONE, raises, and clears both.
"""
from __future__ import annotations

import json

import numpy as np
from numba import njit

from shmrt.parallel.sync import LINE, TIMEOUT, bump, load_acquire, store_release, wait_change

GEN, GEN_SLEEP, CMD, DONE, DONE_SLEEP, ABORT, ZERO, BARRIER = (i * LINE for i in range(8))
WORKER0 = 10 * LINE
# CMD words (C_SPIN: how long an idle worker spins for the next command, in ns: the pool's adaptive budget)
C_OP, C_MODEL, C_N, C_PROG, C_PROF, C_ERR, C_SPIN = CMD, CMD + 1, CMD + 2, CMD + 3, CMD + 4, CMD + 5, CMD + 6
# single copy (compile/io.py): the caller's pid (0: the input is in the arena already, the output
# stays there) and the addresses (two words each, parallel/xmem.py) of its input rows and result arrays
C_PID, C_SRC, C_DST, C_DST2 = CMD + 7, CMD + 8, CMD + 10, CMD + 12
# a single-copy call whose rows are each participant's own: 0, or the first row of the calling
# thread's share (it reads its rows in place; the workers split the rows before it evenly)
C_SPLIT = CMD + 14
# the input lies in shared buffer C_XBUF (parallel/buffers.py; 0: none), which workers map: they
# read their rows of it where they are (C_SRC is the caller's address of the rows)
C_XBUF = CMD + 15
# worker line words (W_FAULT: a test hook, see Runtime._inject_fault)
W_STATE, W_GEN, W_PID, W_STEP, W_FAULT, W_ERROR, W_PIN, W_XERR = range(8)
# W_ERROR values: 0 none; ERR_NO_MODEL: a RUN for a model this worker was never sent (Pool.command raises);
# ERR_XMEM: a single copy was refused (W_XERR: its errno; the pool copies through the arena from then on)
ERR_NO_MODEL, ERR_XMEM = 1, 2
# W_PIN values: PIN_NONE not requested, PIN_OK pinned; a failure is -errno, or PIN_FAILED without one
PIN_NONE, PIN_OK, PIN_FAILED = 0, 1, -100000
# ops
OP_NOP, OP_RUN, OP_SYNC, OP_EXIT = 0, 1, 2, 3
# worker states
ST_STARTING, ST_READY, ST_EXITED = 0, 1, 2

MSG_BYTES = 1 << 20


def layout(max_workers: int):
    """(number of int32 words, byte offset of the message area, total bytes)."""
    words = (WORKER0 // LINE + 4 * max_workers) * LINE
    return words, words * 4, words * 4 + MSG_BYTES


def barrier_line(workers: int, group: int = -1) -> int:
    """Base word of a barrier's three lines: every worker's (group < 0), or
    pipeline stage group ``group``'s."""
    return BARRIER if group < 0 else (WORKER0 // LINE + workers + 3 * group) * LINE


def barrier_lines(workers: int) -> list:
    return [barrier_line(workers, g) for g in range(-1, workers)]


def wline(wid: int) -> int:
    return WORKER0 + wid * LINE


def write_msg(buf, offset: int, obj) -> None:
    data = json.dumps(obj).encode()
    if len(data) + 8 > MSG_BYTES:
        raise RuntimeError(f"control message of {len(data)} bytes exceeds {MSG_BYTES - 8}")
    buf[offset:offset + 8] = len(data).to_bytes(8, "little")
    buf[offset + 8:offset + 8 + len(data)] = data


def read_msg(buf, offset: int):
    n = int.from_bytes(bytes(buf[offset:offset + 8]), "little")
    return json.loads(bytes(buf[offset + 8:offset + 8 + n]).decode()) if n else {}


@njit(cache=True)
def post(ctrl, op, model, n, prog):
    """Publish one command to every worker."""
    ctrl[C_OP] = op
    ctrl[C_MODEL] = model
    ctrl[C_N] = n
    ctrl[C_PROG] = prog
    store_release(ctrl, DONE, 0)
    return bump(ctrl, GEN, GEN_SLEEP)


@njit(cache=True)
def wait_done(ctrl, parties, spin_ns, block_ns):
    """Wait for DONE == parties; returns parties, or TIMEOUT after one block slice."""
    while True:
        v = load_acquire(ctrl, DONE)
        if v >= parties:
            return np.int64(v)
        r = wait_change(ctrl, DONE, v, DONE_SLEEP, ZERO, spin_ns, block_ns, 0)
        if r == TIMEOUT:
            return r


@njit(cache=True)
def call(ctrl, op, model, n, prog, parties, spin_ns, block_ns):
    """post + wait_done in one dispatch: the parent's hot path."""
    post(ctrl, op, model, n, prog)
    return wait_done(ctrl, parties, spin_ns, block_ns)


@njit(cache=True)
def finish(ctrl, wid, gen):
    """A worker's end of a command: status, then DONE += 1 (waking the parent)."""
    store_release(ctrl, WORKER0 + wid * LINE + W_GEN, gen)
    bump(ctrl, DONE, DONE_SLEEP)


@njit(cache=True)
def get_word(ctrl, idx):
    """Acquire-load of one word, for Python code."""
    return load_acquire(ctrl, idx)


@njit(cache=True)
def set_word(ctrl, idx, value):
    """Release-store of one word, for Python code."""
    store_release(ctrl, idx, value)
