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
  ACT      x(off, ld, col, width), act, rows(lo, hi), out(off, ld)  (out may be x)
  SOFTMAX  x(off, ld, width), out(off, ld), log, rows(lo, hi)
  ARGMAX   x(off, ld, width), out off (int64), rows(lo, hi)
  TOPK     x(off, ld, width), k, values off, indices off (int64), rows(lo, hi)
  AFFINE   x(off, ld, col, width), scale off, shift off, out(off, ld), rows(lo, hi)
  GATHER   x(off, ld), index off, out(off, width), rows(lo, hi)
  LAYERNORM x(off, ld, width), weight off, bias off, eps off, out off, rows(lo, hi)
  RECUR    see _recurrent: one RNN/LSTM/GRU layer, its whole time loop, a
           barrier per step when the hidden units are split
  CONV     x(off, ld), out(off, ld), w off, b off|-1, act, channels co0:co1,
           output rows oh0:oh1, images rows(lo, hi), scratch off, geometry[14], Cout, scratch floats
  POOL     x(off, ld), out(off, ld), channels c0:c1, is_max, count_include_pad,
           rows(lo, hi), geometry[13]
  GAP      x(off, ld), out(off, ld), H*W, channels c0:c1, rows(lo, hi)

Pipeline (a stage's worker loops over micro-batches; rows above are then
fractions of the current micro-batch's rows, not of n):
  MICRO    M, counters off (arena, int32 view), workers, R: the call runs
           min(M, n // R) micro-batches (at least 1) of at least R rows
  WAIT     first producer w0, producers p: until workers w0..w0+p-1 (the
           previous stage) have each finished this micro-batch
  SIGNAL   worker w: this worker finished its part of micro-batch k
  NEXT     back to after MICRO for the next micro-batch, if any
Worker w's count of finished micro-batches is int32 word w * 2 * LINE of
the counters, its sleepers the word LINE after it; the parent zeroes them
before each call.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels import (affine, apply_act, argmax, conv2d, gather, gemm_nt, global_avg_pool, gru_cell, layernorm, linear,
                     lstm_cell, pool2d, reduce_partials, rnn_cell, softmax, topk)

from . import control as C
from .sync import ABORTED, LINE, barrier, bump, monotonic_ns, wait_change, wait_reach

ROW = 32
FRAC = 1 << 20
MICRO_ROWS = 8  # a pipeline's micro-batches have at least this many rows
(END, BARRIER, LINEAR, REDUCE, ACT, SOFTMAX, ARGMAX, TOPK, AFFINE, GATHER, LAYERNORM, RECUR, CONV, POOL, GAP,
 MICRO, WAIT, SIGNAL, NEXT) = range(19)
OP_NAMES = ("end", "barrier", "linear", "reduce", "act", "softmax", "argmax", "topk", "affine", "gather", "layernorm",
            "recurrent", "conv", "pool", "global avg pool", "micro-batch", "wait for stage", "signal stage",
            "next micro-batch")
# RECUR modes (layers._Recurrent.mode) and gates per mode
RNN_TANH, RNN_RELU, LSTM, GRU = range(4)


@njit(cache=True, inline="always")
def micro_batches(n, most, rows):
    """How many micro-batches a pipeline call of n rows runs: at most
    ``most``, of at least ``rows`` rows each, and at least one."""
    return max(1, min(most, n // max(rows, 1)))


@njit(cache=True, inline="always")
def _micro_rows(n, k, m):
    """(first row, rows) of micro-batch k of m over n rows."""
    lo = (n * k) // m
    return lo, (n * (k + 1)) // m - lo


@njit(cache=True, inline="always")
def _rows(base, cnt, lo, hi):
    """Rows lo/FRAC..hi/FRAC of the cnt rows from base (the batch, or a micro-batch)."""
    return base + (cnt * lo) // FRAC, base + (cnt * hi) // FRAC


@njit(cache=True, inline="always")
def _view(flat, off, ld, r0, r1, col, ncols):
    """Rows r0:r1, columns col:col+ncols of the row-major [*, ld] matrix at off."""
    return flat[off + r0 * ld:off + r1 * ld].reshape((r1 - r0, ld))[:, col:col + ncols]


@njit(cache=True)
def _bias_rows(out, b):
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] += b[j]


@njit(cache=True)
def _recurrent(s, weights, arena, base, cnt, ctrl, spin_ns, block_ns, ppid):
    """One recurrent layer for this worker's rows r0:r1 and hidden units u0:u1.

    Step layout: 1 x off, 2 -, 3 T, 4 F, 5 out off ([N, T, H], ld T*H),
    6 H, 7-10 W_ih, W_hh, b_ih, b_hh offsets (-1: no bias), 11 h0 off, 12 c0
    off (-1: zeros), 13-14 units u0:u1, 15-16 rows (fractions), 17 gates off
    ([G, maxb*T, H] regions), 18 gate region stride, 19 aux off ([maxb, H]:
    LSTM cell state / GRU W_hn h), 20 h-init off ([maxb, H]), 21 mode,
    22 parties (a barrier per step when > 1), 23 their barrier's base line.
    Returns 0, or -2 if aborted.

    The input projection of every step is one GEMM per gate up front; each
    step then multiplies the full h(t-1) by this worker's rows of W_hh,
    applies the cell to its own units, writes them into h(t), and meets the
    others at the barrier -- the whole loop stays in this function.
    """
    T, F, H = s[3], s[4], s[6]
    u0, u1 = s[13], s[14]
    r0, r1 = _rows(base, cnt, s[15], s[16])
    mode, parties = s[21], s[22]
    G = 4 if mode == LSTM else (3 if mode == GRU else 1)
    hs, R = u1 - u0, r1 - r0
    go, gstride, aux, hinit = s[17], s[18], s[19], s[20]
    TH = T * H
    if R > 0 and hs > 0:
        x2 = arena[s[1] + r0 * T * F:s[1] + r1 * T * F].reshape((R * T, F))  # [N, T, F] rows are contiguous
        for g in range(G):
            gv = _view(arena, go + g * gstride, H, r0 * T, r1 * T, u0, hs)
            gemm_nt(x2, _view(weights, s[7], F, g * H + u0, g * H + u1, 0, F), gv, False)
            if s[9] >= 0:
                _bias_rows(gv, weights[s[9] + g * H + u0:s[9] + g * H + u1])
            if s[10] >= 0 and not (mode == GRU and g == 2):
                _bias_rows(gv, weights[s[10] + g * H + u0:s[10] + g * H + u1])
        # initial state: this worker's rectangle of h-init (and of c)
        hin = _view(arena, hinit, H, r0, r1, u0, hs)
        cst = _view(arena, aux, H, r0, r1, u0, hs)
        for i in range(R):
            for u in range(hs):
                hin[i, u] = weights[s[11] + u0 + u] if s[11] >= 0 else 0.0
                if mode == LSTM:
                    cst[i, u] = weights[s[12] + u0 + u] if s[12] >= 0 else 0.0
    bline = s[23]
    if parties > 1 and barrier(ctrl, bline, parties, C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
        return -2
    empty = weights[0:0]
    for t in range(T):
        if R > 0 and hs > 0:
            if t == 0:
                hp = _view(arena, hinit, H, r0, r1, 0, H)
            else:
                hp = _view(arena, s[5] + (t - 1) * H, TH, r0, r1, 0, H)
            ht = _view(arena, s[5] + t * H, TH, r0, r1, u0, hs)
            for g in range(G):
                gt = _view(arena, go + g * gstride + t * H, TH, r0, r1, u0, hs)
                whh = _view(weights, s[8], H, g * H + u0, g * H + u1, 0, H)
                if mode == GRU and g == 2:
                    hn = _view(arena, aux, H, r0, r1, u0, hs)
                    gemm_nt(hp, whh, hn, False)
                else:
                    gemm_nt(hp, whh, gt, True)
            g0 = _view(arena, go + t * H, TH, r0, r1, u0, hs)
            if mode == LSTM:
                lstm_cell(g0, _view(arena, go + gstride + t * H, TH, r0, r1, u0, hs),
                          _view(arena, go + 2 * gstride + t * H, TH, r0, r1, u0, hs),
                          _view(arena, go + 3 * gstride + t * H, TH, r0, r1, u0, hs),
                          _view(arena, aux, H, r0, r1, u0, hs), ht)
            elif mode == GRU:
                bhn = weights[s[10] + 2 * H + u0:s[10] + 2 * H + u1] if s[10] >= 0 else empty
                gru_cell(g0, _view(arena, go + gstride + t * H, TH, r0, r1, u0, hs),
                         _view(arena, go + 2 * gstride + t * H, TH, r0, r1, u0, hs),
                         _view(arena, aux, H, r0, r1, u0, hs), bhn, hp[:, u0:u1], ht)
            else:
                rnn_cell(g0, ht, mode == RNN_RELU)
        if parties > 1 and barrier(ctrl, bline, parties, C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
            return -2
    return 0


@njit(cache=True)
def run_steps(prog, start, weights, arena, n, ctrl, status, spin_ns, block_ns, ppid, stop_at_barrier, prof):
    """Run prog[start:] for a batch of n rows, recording each step index in
    ctrl[status] (status < 0: don't), so a stuck worker can be located.
    prof (int64, empty: don't): prof[0] the monotonic ns at start, prof[i + 1]
    the ns spent in step i, summed over a micro-batch loop's passes.

    Returns -1 when the program ended, the index after a barrier when
    stop_at_barrier (the in-process executor interleaves workers that way),
    or -2 when a barrier was aborted.
    """
    empty = weights[0:0]
    timing = prof.shape[0] > 0
    last_t = np.int64(0)
    if timing:
        prof[:] = 0
        last_t = prof[0] = monotonic_ns()
    base, cnt = np.int64(0), n  # the rows steps split: the batch, or the current micro-batch
    ctr = arena[0:0].view(np.int32)
    mb_k, mb_m, mb_top = 0, 1, 0
    i = start  # the program counter: no loop below may reuse the name
    while True:
        s = prog[i]
        op = s[0]
        nxt = i + 1  # the step after this one (NEXT may loop back)
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
            r0, r1 = _rows(base, cnt, s[14], s[15])
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
                parts = _view(arena, s[1], P * m, base, base + cnt, 0, P * m)
                b = weights[s[7] + c0:s[7] + c1] if s[7] >= 0 else empty
                reduce_partials(parts, m, c0, b, _view(arena, s[9], s[10], base, base + cnt, c0, c1 - c0), s[8])
        elif op == ACT:
            r0, r1 = _rows(base, cnt, s[6], s[7])
            apply_act(_view(arena, s[1], s[2], r0, r1, s[3], s[4]), _view(arena, s[8], s[9], r0, r1, s[3], s[4]), s[5])
        elif op == AFFINE:
            r0, r1 = _rows(base, cnt, s[9], s[10])
            c, w = s[3], s[4]
            affine(_view(arena, s[1], s[2], r0, r1, c, w), weights[s[5] + c:s[5] + c + w],
                   weights[s[6] + c:s[6] + c + w], _view(arena, s[7], s[8], r0, r1, c, w))
        elif op == GATHER:
            r0, r1 = _rows(base, cnt, s[6], s[7])
            m = s[5]
            gather(_view(arena, s[1], s[2], r0, r1, 0, s[2]), weights[s[3]:s[3] + m], _view(arena, s[4], m, r0, r1, 0, m))
        elif op == LAYERNORM:
            r0, r1 = _rows(base, cnt, s[8], s[9])
            m = s[3]
            layernorm(_view(arena, s[1], s[2], r0, r1, 0, m), weights[s[4]:s[4] + m], weights[s[5]:s[5] + m],
                      float(weights[s[6]]), _view(arena, s[7], m, r0, r1, 0, m))
        elif op == CONV:
            r0, r1 = _rows(base, cnt, s[12], s[13])
            g = s[15:29]
            cout = s[29]
            K = g[0] // g[11] * g[3] * g[4]
            wmat = weights[s[5]:s[5] + cout * K].reshape((cout, K))
            b = weights[s[6]:s[6] + cout] if s[6] >= 0 else empty
            insz, outsz = g[0] * g[1] * g[2], cout * g[12] * g[13]
            scratch = arena[s[14]:s[14] + s[30]]
            for img in range(r0, r1):
                conv2d(arena[s[1] + img * s[2]:s[1] + img * s[2] + insz], wmat, b,
                       arena[s[3] + img * s[4]:s[3] + img * s[4] + outsz], g, s[8], s[9], s[10], s[11], scratch, s[7])
        elif op == POOL:
            r0, r1 = _rows(base, cnt, s[9], s[10])
            g = s[11:24]
            insz, outsz = g[0] * g[1] * g[2], g[0] * g[11] * g[12]
            for img in range(r0, r1):
                pool2d(arena[s[1] + img * s[2]:s[1] + img * s[2] + insz], arena[s[3] + img * s[4]:s[3] + img * s[4] + outsz],
                       g, s[5], s[6], s[7] != 0, s[8] != 0)
        elif op == GAP:
            r0, r1 = _rows(base, cnt, s[8], s[9])
            for img in range(r0, r1):
                global_avg_pool(arena[s[1] + img * s[2]:s[1] + (img + 1) * s[2]], arena[s[3] + img * s[4]:s[3] + (img + 1) * s[4]],
                                s[5], s[6], s[7])
        elif op == MICRO:
            ctr = arena[s[2]:s[2] + 2 * LINE * s[3]].view(np.int32)
            mb_m, mb_k, mb_top = micro_batches(n, s[1], s[4]), 0, i + 1
            base, cnt = _micro_rows(n, 0, mb_m)
        elif op == WAIT:
            for p in range(s[1], s[1] + s[2]):
                if wait_reach(ctr, 2 * LINE * p, mb_k + 1, 2 * LINE * p + LINE, ctrl, C.ABORT, spin_ns,
                              ppid) == ABORTED:
                    return -2
        elif op == SIGNAL:
            bump(ctr, 2 * LINE * s[1], 2 * LINE * s[1] + LINE)
        elif op == NEXT:
            mb_k += 1
            if mb_k < mb_m:
                base, cnt = _micro_rows(n, mb_k, mb_m)
                nxt = mb_top
            else:
                base, cnt = np.int64(0), n
        elif op == RECUR:
            if _recurrent(s, weights, arena, base, cnt, ctrl, spin_ns, block_ns, ppid) != 0:
                return -2
        elif op == SOFTMAX:
            r0, r1 = _rows(base, cnt, s[7], s[8])
            softmax(_view(arena, s[1], s[2], r0, r1, 0, s[3]), _view(arena, s[4], s[5], r0, r1, 0, s[3]), s[6] != 0)
        elif op == ARGMAX:
            r0, r1 = _rows(base, cnt, s[5], s[6])
            out = arena[s[4]:s[4] + 2 * n].view(np.int64)[r0:r1]
            argmax(_view(arena, s[1], s[2], r0, r1, 0, s[3]), out)
        elif op == TOPK:
            r0, r1 = _rows(base, cnt, s[7], s[8])
            k = s[4]
            vals = _view(arena, s[5], k, r0, r1, 0, k)
            idx = arena[s[6]:s[6] + 2 * n * k].view(np.int64).reshape((n, k))[r0:r1]
            topk(_view(arena, s[1], s[2], r0, r1, 0, s[3]), vals, idx)
        if timing:
            t = monotonic_ns()
            prof[i + 1] += t - last_t
            last_t = t
        i = nxt


@njit(cache=True)
def serve(ctrl, wid, model, progs, weights, arena, gen, spin_ns, idle_spin_ns, block_ns, ppid):
    """A worker's hot loop: run RUN (for ``model``) and NOP commands without
    leaving Numba.  Barriers spin spin_ns, the wait between commands
    idle_spin_ns.  Returns the generation of the first command it cannot
    handle (the caller handles it), or ABORTED when the parent is gone."""
    no_prof = np.zeros(0, np.int64)
    # run_steps' first step and stop_at_barrier as values, not constants: Numba would type the
    # literals 0 and False apart and compile run_steps a second time (a quarter of a cold start)
    first, no_stop = np.int64(0), wid < 0
    while True:
        op = ctrl[C.C_OP]
        if op == C.OP_RUN and ctrl[C.C_MODEL] == model:
            fault = ctrl[C.WORKER0 + wid * C.LINE + C.W_FAULT]
            if fault != 0:  # the fault-injection hook of the tests (Runtime._inject_fault)
                ctrl[C.WORKER0 + wid * C.LINE + C.W_FAULT] = 0
                if fault == 1:
                    raise ZeroDivisionError("injected fault: float division by zero")
                raise ValueError("injected fault: a kernel refused its input")
            prof = no_prof
            if ctrl[C.C_PROF] >= 0:  # a profiled call: this worker's record of step times
                rec = progs.shape[2] + 1
                prof = arena[ctrl[C.C_PROF] + 2 * wid * rec:ctrl[C.C_PROF] + 2 * (wid + 1) * rec].view(np.int64)
            run_steps(progs[ctrl[C.C_PROG], wid], first, weights, arena, np.int64(ctrl[C.C_N]), ctrl,
                      C.WORKER0 + wid * C.LINE + C.W_STEP, spin_ns, block_ns, ppid, no_stop, prof)
        elif op != C.OP_NOP:
            return gen
        C.finish(ctrl, wid, gen)
        g = wait_change(ctrl, C.GEN, gen, C.GEN_SLEEP, C.ZERO, idle_spin_ns, block_ns, ppid)
        if g == ABORTED:
            return g
        gen = g


_NO_PROF = np.zeros(0, np.int64)


def run_in_process(programs, weights, arena, n):
    """Run every worker's program in this process, interleaved at barriers.

    programs: int64 [P, steps, ROW].  Workers only meet at barriers, so
    running each one up to its next barrier in turn is a valid schedule.
    """
    if programs.shape[0] > 1 and np.any(programs[:, :, 0] == WAIT):
        raise ValueError("a pipeline plan runs its stages on different workers at once; "
                         "run it on a pool (workers >= 1), not in process")
    if programs.shape[0] > 1 and np.any((programs[:, :, 0] == RECUR) & (programs[:, :, 22] > 1)):
        raise ValueError("a recurrent layer split across workers meets them at every time step; "
                         "run it on a pool (workers >= 1), not in process")
    ctrl = np.zeros(C.WORKER0 + C.LINE, np.int32)
    pos = [0] * programs.shape[0]
    while any(p >= 0 for p in pos):
        for w, p in enumerate(pos):
            if p >= 0:
                pos[w] = run_steps(programs[w], p, weights, arena, n, ctrl, -1, 0, 0, 0, True, _NO_PROF)
