"""Executing a plan: the step interpreter every worker runs, and the
sequential in-process executor that runs the same plan in the caller.

A program is an int64 table, one row per step, ``ROW`` columns, ending in
an END row; each worker has its own (its slice bounds differ).  Buffers are
given as (offset, leading dimension, first column, columns) into the flat
float32 weight store or activation arena; batch rows are given as fractions
of the call's batch n in units of 1/FRAC, so one program serves every n up
to max_batch.  Step layouts (column 0 is the op):

  BARRIER  base line, parties
  LINEAR   x(off, ld, col, k), w(off, ld, col), b_off|-1, out(off, ld, col, m), act, rows(lo, hi)
  REDUCE   parts off (a [n, P*m] matrix), P, -, m, col lo, col hi, b_off|-1, act, out(off, ld)
  ACT      x(off, ld, col, width), act, rows(lo, hi)
  SOFTMAX  x(off, ld, width), out(off, ld), log, rows(lo, hi)
  ARGMAX   x(off, ld, width), out off (int64), rows(lo, hi)
  TOPK     x(off, ld, width), k, values off, indices off (int64), rows(lo, hi)
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels import apply_act, argmax, linear, reduce_partials, softmax, topk

from . import control as C
from .sync import ABORTED, barrier, wait_change

ROW = 16
FRAC = 1 << 20
END, BARRIER, LINEAR, REDUCE, ACT, SOFTMAX, ARGMAX, TOPK = range(8)
OP_NAMES = {END: "end", BARRIER: "barrier", LINEAR: "linear", REDUCE: "reduce", ACT: "act",
            SOFTMAX: "softmax", ARGMAX: "argmax", TOPK: "topk"}


@njit(cache=True, inline="always")
def _rows(n, lo, hi):
    return (n * lo) // FRAC, (n * hi) // FRAC


@njit(cache=True, inline="always")
def _view(flat, off, ld, r0, r1, col, ncols):
    """Rows r0:r1, columns col:col+ncols of the row-major [*, ld] matrix at off."""
    return flat[off + r0 * ld:off + r1 * ld].reshape((r1 - r0, ld))[:, col:col + ncols]


@njit(cache=True)
def run_steps(prog, start, weights, arena, n, ctrl, status, spin_ns, block_ns, ppid, stop_at_barrier):
    """Run prog[start:] for a batch of n rows, recording each step index in
    ctrl[status] (status < 0: don't), so a stuck worker can be located.

    Returns -1 when the program ended, the index after a barrier when
    stop_at_barrier (the in-process executor interleaves workers that way),
    or -2 when a barrier was aborted.
    """
    empty = weights[0:0]
    i = start
    while True:
        s = prog[i]
        op = s[0]
        if status >= 0:
            ctrl[status] = i
        if op == END:
            return -1
        if op == BARRIER:
            if stop_at_barrier:
                return i + 1
            if barrier(ctrl, s[1], s[2], C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
                return -2
        elif op == LINEAR:
            r0, r1 = _rows(n, s[14], s[15])
            if r1 > r0:
                m = s[12]
                x = _view(arena, s[1], s[2], r0, r1, s[3], s[4])
                w = _view(weights, s[5], s[6], 0, m, s[7], s[4])
                b = weights[s[8]:s[8] + m] if s[8] >= 0 else empty
                out = _view(arena, s[9], s[10], r0, r1, s[11], m)
                linear(x, w, b, out, s[13])
        elif op == REDUCE:
            P, m, c0, c1 = s[2], s[4], s[5], s[6]
            if c1 > c0:
                parts = _view(arena, s[1], P * m, 0, n, 0, P * m)
                b = weights[s[7] + c0:s[7] + c1] if s[7] >= 0 else empty
                reduce_partials(parts, m, c0, b, _view(arena, s[9], s[10], 0, n, c0, c1 - c0), s[8])
        elif op == ACT:
            r0, r1 = _rows(n, s[6], s[7])
            x = _view(arena, s[1], s[2], r0, r1, s[3], s[4])
            apply_act(x, x, s[5])
        elif op == SOFTMAX:
            r0, r1 = _rows(n, s[7], s[8])
            softmax(_view(arena, s[1], s[2], r0, r1, 0, s[3]), _view(arena, s[4], s[5], r0, r1, 0, s[3]), s[6] != 0)
        elif op == ARGMAX:
            r0, r1 = _rows(n, s[5], s[6])
            out = arena[s[4]:s[4] + 2 * n].view(np.int64)[r0:r1]
            argmax(_view(arena, s[1], s[2], r0, r1, 0, s[3]), out)
        elif op == TOPK:
            r0, r1 = _rows(n, s[7], s[8])
            k = s[4]
            vals = _view(arena, s[5], k, r0, r1, 0, k)
            idx = arena[s[6]:s[6] + 2 * n * k].view(np.int64).reshape((n, k))[r0:r1]
            topk(_view(arena, s[1], s[2], r0, r1, 0, s[3]), vals, idx)
        i += 1


@njit(cache=True)
def serve(ctrl, wid, model, progs, weights, arena, gen, spin_ns, idle_spin_ns, block_ns, ppid):
    """A worker's hot loop: run RUN (for ``model``) and NOP commands without
    leaving Numba.  Barriers spin spin_ns, the wait between commands
    idle_spin_ns.  Returns the generation of the first command it cannot
    handle (the caller handles it), or ABORTED when the parent is gone."""
    while True:
        op = ctrl[C.C_OP]
        if op == C.OP_RUN and ctrl[C.C_MODEL] == model:
            run_steps(progs[ctrl[C.C_PROG], wid], 0, weights, arena, np.int64(ctrl[C.C_N]), ctrl,
                      C.WORKER0 + wid * C.LINE + C.W_STEP, spin_ns, block_ns, ppid, False)
        elif op != C.OP_NOP:
            return gen
        C.finish(ctrl, wid, gen)
        g = wait_change(ctrl, C.GEN, gen, C.GEN_SLEEP, C.ZERO, idle_spin_ns, block_ns, ppid)
        if g == ABORTED:
            return g
        gen = g


def run_in_process(programs, weights, arena, n):
    """Run every worker's program in this process, interleaved at barriers.

    programs: int64 [P, steps, ROW].  Workers only meet at barriers, so
    running each one up to its next barrier in turn is a valid schedule.
    """
    ctrl = np.zeros(C.WORKER0 + C.LINE, np.int32)
    pos = [0] * programs.shape[0]
    while any(p >= 0 for p in pos):
        for w, p in enumerate(pos):
            if p >= 0:
                pos[w] = run_steps(programs[w], p, weights, arena, n, ctrl, -1, 0, 0, 0, True)
