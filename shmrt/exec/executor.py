"""Executing a plan: the step interpreter every worker runs, and the
sequential in-process executor that runs the same plan in the caller.

A program is an int64 table, one row per step, ending in an END row; each
worker has its own (its slice bounds differ).  The ops and their fields are
declared in shmrt/compile/isa.py, and read here by name (``s[LINEAR.x]``).

Pipeline stages: a stage's worker loops over micro-batches between MICRO
and NEXT; the rows of the steps in between are then fractions of the
current micro-batch's rows, not of n.  WAIT blocks until the previous
stage's workers have finished this micro-batch, SIGNAL says this worker has.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from shmrt.kernels import (HARD_SIGMOID, HARDTANH, NR, affine, apply_act, argmax, gather, gemm_fmt, layernorm,
                           layernorm_stat, linear, reduce_partials, softmax, topk)

from shmrt.compile.isa import (ACT, AFFINE, ARGMAX, ATTN, BARRIER, CONV, EMBED, END, FRAC, GAP, GATHER, INPUT, LAYERNORM,
                               LINEAR, MERGE, MICRO, NEXT, OP, POOL, RECUR, RESIZE, REDUCE, SIGNAL, SOFTMAX, TOPK, WAIT,
                               CONVT)
from shmrt.parallel import control as C
from shmrt.exec.images import conv_step, convt_step, gap_step, merge_step, pool_step, resize_step
from shmrt.exec.moves import _copy_in_rows, _copy_out_rows, copy_in, copy_out
from shmrt.exec.recurrent import _recurrent
from shmrt.exec.tokens import attn_step, embed_step
from shmrt.exec.rows import _rows, _src, _view
from shmrt.parallel.xmem import addr_of
from shmrt.parallel.sync import ABORTED, LINE, TIMEOUT, barrier, bump, monotonic_ns, wait_change, wait_reach



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


@njit(cache=True, nogil=True)
def run_steps(prog, start, weights, arena, n, ctrl, status, spin_ns, block_ns, ppid, stop_at_barrier, prof, xin,
              in_off, w0, w1):
    """Run prog[start:] for a batch of n rows, recording each step index in
    ctrl[status] (status < 0: don't), so a stuck worker can be located.
    prof (int64, empty: don't): prof[0] the monotonic ns at start, prof[i + 1]
    the ns spent in step i, summed over a micro-batch loop's passes.

    xin (empty: none): the calling thread's own input array, read in place of the arena's input
    rows at offset in_off (a computing caller's rows, where nothing else reads or writes them).
    w1 > w0: every step runs rows w0:w1 only (a block of a worker's own rows: run_command).

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
        op = s[OP]
        nxt = i + 1  # the step after this one (NEXT may loop back)
        if status >= 0:
            ctrl[status] = i
        if op == END.code:
            return -1
        if op == BARRIER.code:
            if stop_at_barrier:
                return i + 1
            if barrier(ctrl, s[BARRIER.line], s[BARRIER.parties], C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
                return -2
        elif op == LINEAR.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[LINEAR.lo], s[LINEAR.hi])
            if r1 > r0:
                m, k, bo = s[LINEAR.m], s[LINEAR.k], s[LINEAR.b]
                xa, xo = _src(arena, xin, s[LINEAR.x], in_off)
                x = _view(xa, xo, s[LINEAR.x_ld], r0, r1, s[LINEAR.x_col], k)
                b = weights[bo:bo + m] if bo >= 0 else empty
                out = _view(arena, s[LINEAR.out], s[LINEAR.out_ld], r0, r1, s[LINEAR.out_col], m)
                if s[LINEAR.packed]:
                    gemm_fmt(s[LINEAR.fmt], x, weights[s[LINEAR.w] + s[LINEAR.w_col] * NR:], s[LINEAR.w_ld],
                             weights[max(s[LINEAR.sc], 0):], s[LINEAR.s_ld], b, out, s[LINEAR.act], False)
                else:
                    linear(x, _view(weights, s[LINEAR.w], s[LINEAR.w_ld], 0, m, s[LINEAR.w_col], k), b, out,
                           s[LINEAR.act])
        elif op == REDUCE.code:
            P, m, c0, c1, bo = s[REDUCE.P], s[REDUCE.m], s[REDUCE.c0], s[REDUCE.c1], s[REDUCE.b]
            if c1 > c0:
                parts = _view(arena, s[REDUCE.parts], P * m, base, base + cnt, 0, P * m)
                b = weights[bo + c0:bo + c1] if bo >= 0 else empty
                out = _view(arena, s[REDUCE.out], s[REDUCE.out_ld], base, base + cnt, c0, c1 - c0)
                reduce_partials(parts, m, c0, b, out, s[REDUCE.act])
        elif op == ACT.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[ACT.lo], s[ACT.hi])
            c, w = s[ACT.col], s[ACT.width]
            ao, act = s[ACT.alpha], s[ACT.act]
            alpha = weights[ao] if ao >= 0 else np.float32(0.0)
            beta = weights[ao + 1] if ao >= 0 and (act == HARDTANH or act == HARD_SIGMOID) else np.float32(0.0)
            xa, xo = _src(arena, xin, s[ACT.x], in_off)
            apply_act(_view(xa, xo, s[ACT.x_ld], r0, r1, c, w),
                      _view(arena, s[ACT.out], s[ACT.out_ld], r0, r1, c, w), act, alpha, beta)
        elif op == AFFINE.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[AFFINE.lo], s[AFFINE.hi])
            c, w, sc, sh = s[AFFINE.col], s[AFFINE.width], s[AFFINE.scale], s[AFFINE.shift]
            xa, xo = _src(arena, xin, s[AFFINE.x], in_off)
            affine(_view(xa, xo, s[AFFINE.x_ld], r0, r1, c, w), weights[sc + c:sc + c + w],
                   weights[sh + c:sh + c + w], _view(arena, s[AFFINE.out], s[AFFINE.out_ld], r0, r1, c, w))
        elif op == GATHER.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[GATHER.lo], s[GATHER.hi])
            m, ld = s[GATHER.width], s[GATHER.x_ld]
            xa, xo = _src(arena, xin, s[GATHER.x], in_off)
            gather(_view(xa, xo, ld, r0, r1, 0, ld), weights[s[GATHER.index]:s[GATHER.index] + m],
                   _view(arena, s[GATHER.out], m, r0, r1, 0, m))
        elif op == LAYERNORM.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[LAYERNORM.lo], s[LAYERNORM.hi])
            m, k, st = s[LAYERNORM.width], s[LAYERNORM.norm], s[LAYERNORM.stat]
            wo, bo, G = s[LAYERNORM.weight], s[LAYERNORM.bias], m // k
            eps = float(weights[s[LAYERNORM.eps]])
            xa, xo = _src(arena, xin, s[LAYERNORM.x], in_off)
            for g in range(G):  # each group of k floats of a row normalised on its own
                xg = _view(xa, xo, s[LAYERNORM.x_ld], r0, r1, g * k, k)
                if st == 0:
                    layernorm(xg, weights[wo:wo + k], weights[bo:bo + k], eps,
                              _view(arena, s[LAYERNORM.out], m, r0, r1, g * k, k))
                else:
                    layernorm_stat(xg, eps, st == 2, _view(arena, s[LAYERNORM.out], G, r0, r1, g, 1))
        elif op == CONV.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[CONV.lo], s[CONV.hi])
            xa, xo = _src(arena, xin, s[CONV.x], in_off)
            conv_step(s, weights, arena, xa, xo, r0, r1)
        elif op == POOL.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[POOL.lo], s[POOL.hi])
            xa, xo = _src(arena, xin, s[POOL.x], in_off)
            pool_step(s, arena, xa, xo, r0, r1)
        elif op == GAP.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[GAP.lo], s[GAP.hi])
            xa, xo = _src(arena, xin, s[GAP.x], in_off)
            gap_step(s, arena, xa, xo, r0, r1)
        elif op == MERGE.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[MERGE.lo], s[MERGE.hi])
            aa, ao = _src(arena, xin, s[MERGE.a], in_off)
            ba, bo = _src(arena, xin, s[MERGE.b], in_off)
            merge_step(s, weights, arena, aa, ao, ba, bo, r0, r1)
        elif op == RESIZE.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[RESIZE.lo], s[RESIZE.hi])
            xa, xo = _src(arena, xin, s[RESIZE.x], in_off)
            resize_step(s, weights, arena, xa, xo, r0, r1)
        elif op == CONVT.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[CONVT.lo], s[CONVT.hi])
            xa, xo = _src(arena, xin, s[CONVT.x], in_off)
            convt_step(s, weights, arena, xa, xo, r0, r1)
        elif op == EMBED.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[EMBED.lo], s[EMBED.hi])
            xa, xo = _src(arena, xin, s[EMBED.x], in_off)
            embed_step(s, weights, arena, xa, xo, r0, r1)
        elif op == ATTN.code:  # reads other rows' keys: never a window of own rows (w0:w1)
            r0, r1 = _rows(base, cnt, 0, 0, s[ATTN.q_lo], s[ATTN.q_hi])
            attn_step(s, weights, arena, base + cnt, r0, r1)
        elif op == MICRO.code:
            ctr = arena[s[MICRO.counters]:s[MICRO.counters] + 2 * LINE * s[MICRO.workers]].view(np.int32)
            mb_m, mb_k, mb_top = micro_batches(n, s[MICRO.most], s[MICRO.rows]), 0, i + 1
            base, cnt = _micro_rows(n, 0, mb_m)
        elif op == WAIT.code:
            for p in range(s[WAIT.first], s[WAIT.first] + s[WAIT.producers]):
                if wait_reach(ctr, 2 * LINE * p, mb_k + 1, 2 * LINE * p + LINE, ctrl, C.ABORT, spin_ns,
                              ppid) == ABORTED:
                    return -2
        elif op == SIGNAL.code:
            bump(ctr, 2 * LINE * s[SIGNAL.worker], 2 * LINE * s[SIGNAL.worker] + LINE)
        elif op == NEXT.code:
            mb_k += 1
            if mb_k < mb_m:
                base, cnt = _micro_rows(n, mb_k, mb_m)
                nxt = mb_top
            else:
                base, cnt = np.int64(0), n
        elif op == RECUR.code:
            if _recurrent(s, weights, arena, base, cnt, w0, w1, ctrl, spin_ns, block_ns, ppid, xin, in_off) != 0:
                return -2
        elif op == SOFTMAX.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[SOFTMAX.lo], s[SOFTMAX.hi])
            m = s[SOFTMAX.width]
            xa, xo = _src(arena, xin, s[SOFTMAX.x], in_off)
            softmax(_view(xa, xo, s[SOFTMAX.x_ld], r0, r1, 0, m),
                    _view(arena, s[SOFTMAX.out], s[SOFTMAX.out_ld], r0, r1, 0, m), s[SOFTMAX.log] != 0,
                    s[SOFTMAX.m], s[SOFTMAX.inner])
        elif op == ARGMAX.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[ARGMAX.lo], s[ARGMAX.hi])
            m, W = s[ARGMAX.m], s[ARGMAX.width]
            G = W // m
            out = arena[s[ARGMAX.out]:s[ARGMAX.out] + 2 * n * G].view(np.int64).reshape((n, G))
            xa, xo = _src(arena, xin, s[ARGMAX.x], in_off)
            for g in range(G):  # each group of m floats of a row: one index
                argmax(_view(xa, xo, s[ARGMAX.x_ld], r0, r1, g * m, m), out[r0:r1, g], s[ARGMAX.last] != 0)
        elif op == TOPK.code:
            r0, r1 = _rows(base, cnt, w0, w1, s[TOPK.lo], s[TOPK.hi])
            k = s[TOPK.k]
            vals = _view(arena, s[TOPK.values], k, r0, r1, 0, k)
            idx = arena[s[TOPK.indices]:s[TOPK.indices] + 2 * n * k].view(np.int64).reshape((n, k))[r0:r1]
            xa, xo = _src(arena, xin, s[TOPK.x], in_off)
            topk(_view(xa, xo, s[TOPK.x_ld], r0, r1, 0, s[TOPK.width]), vals, idx)
        if timing:
            t = monotonic_ns()
            prof[i + 1] += t - last_t
            last_t = t
        i = nxt


BLOCK_BYTES = 1 << 18  # a worker moves and computes its own rows this many input bytes at a time


@njit(cache=True, inline="always")
def run_command(prog, weights, arena, n, ctrl, wid, spin_ns, block_ns, ppid, prof, xin):
    """One participant's part of a RUN: its input rows (single copy), its program, its output
    rows (xin, not empty: the calling thread reads its rows of the input where they are, no copy).
    A worker whose rows are its own (no barrier: compile/io.py) moves and computes them in blocks
    of BLOCK_BYTES of input, each computed while it is still in cache.  prof (empty: don't) as
    run_steps', with the copies' times in the slots of the program's INPUT and OUTPUT rows and
    prof[0] the time before the input.  Returns 0, or -2."""
    S = prog.shape[0]
    si, so = prog[S - 2], prog[S - 1]
    t0 = monotonic_ns()
    status = C.WORKER0 + wid * C.LINE + C.W_STEP
    own = ctrl[C.C_PID] != 0 and si[INPUT.sync] == 0
    split, P = np.int64(ctrl[C.C_SPLIT]) if own else np.int64(0), si[INPUT.parties]
    if own and (xin.shape[0] > 0 or addr_of(ctrl, C.C_SRC) != 0):  # each participant's rows are its own
        r0, r1 = (n * si[INPUT.lo]) // FRAC, (n * si[INPUT.hi]) // FRAC
        if split > 0:  # the calling thread's share from row split, the workers' evenly before it
            r0, r1 = (split, n) if wid == P - 1 else ((split * wid) // (P - 1), (split * (wid + 1)) // (P - 1))
        if xin.shape[0] > 0 and si[INPUT.direct]:  # read where they are: the caller's array, a shared buffer
            if r1 > r0:
                if run_steps(prog, np.int64(0), weights, arena, n, ctrl, status, spin_ns, block_ns, ppid, wid < 0,
                             prof, xin, si[INPUT.x], r0, r1) == -2:
                    return -2
                t2 = monotonic_ns()
                _copy_out_rows(so, arena, ctrl, wid, r0, r1)
                if prof.shape[0] > 0:
                    prof[0], prof[S - 1], prof[S] = t0, 0, monotonic_ns() - t2
            return 0
        xin = arena[0:0]  # a step writes into the input rows: they are moved into the arena
        rows = max(1, BLOCK_BYTES // max(si[INPUT.row_floats] * 4, 1))
        t_in = t_out = np.int64(0)
        acc = np.zeros_like(prof)  # run_steps restarts its record each block: the sum of them
        for b0 in range(r0, r1, rows):
            b1 = min(r1, b0 + rows)
            t = monotonic_ns()
            _copy_in_rows(si, arena, ctrl, wid, b0, b1)
            t_in += monotonic_ns() - t
            if run_steps(prog, np.int64(0), weights, arena, n, ctrl, status, spin_ns, block_ns, ppid, wid < 0, prof,
                         xin, si[INPUT.x], b0, b1) == -2:
                return -2
            acc += prof
            t = monotonic_ns()
            _copy_out_rows(so, arena, ctrl, wid, b0, b1)
            t_out += monotonic_ns() - t
        if prof.shape[0] > 0:
            prof[:] = acc
            prof[0], prof[S - 1], prof[S] = t0, t_in, t_out
        return 0
    xin = arena[0:0]  # the rows cross participants: every one reads the input from the arena
    if copy_in(si, arena, n, ctrl, wid, spin_ns, block_ns, ppid) != 0:
        return -2
    t1 = monotonic_ns()
    r = run_steps(prog, np.int64(0), weights, arena, n, ctrl, status, spin_ns, block_ns, ppid, wid < 0, prof, xin,
                  si[INPUT.x], 0, 0)
    if r == -2:
        return -2
    t2 = monotonic_ns()
    if copy_out(so, arena, n, ctrl, wid, spin_ns, block_ns, ppid) != 0:
        return -2
    if prof.shape[0] > 0:
        prof[0], prof[S - 1], prof[S] = t0, t1 - t0, monotonic_ns() - t2
    return 0


@njit(cache=True)
def serve(ctrl, wid, model, progs, weights, arena, gen, spin_ns, idle_spin_ns, block_ns, ppid, xbuf, xbuf_id, xstart):
    """A worker's hot loop: run RUN (for ``model``) and NOP commands without
    leaving Numba.  Barriers spin spin_ns, the wait between commands
    idle_spin_ns.  Returns the generation of the first command it cannot
    handle (the caller handles it: another model, another shared input buffer), or ABORTED when
    the parent is gone.  xbuf (empty: not mapped here): shared input buffer xbuf_id, at address
    xstart in the caller, whose rows a RUN naming it reads in place."""
    no_prof = np.zeros(0, np.int64)
    while True:
        op = ctrl[C.C_OP]
        if op == C.OP_RUN and ctrl[C.C_MODEL] == model and ctrl[C.C_XBUF] == xbuf_id:
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
            xin = xbuf[(addr_of(ctrl, C.C_SRC) - xstart) // 4:] if xbuf.shape[0] > 0 and ctrl[C.C_PID] != 0 \
                else arena[0:0]
            run_command(progs[ctrl[C.C_PROG], wid], weights, arena, np.int64(ctrl[C.C_N]), ctrl, wid, spin_ns,
                        block_ns, ppid, prof, xin)
        elif op != C.OP_NOP:
            return gen
        C.finish(ctrl, wid, gen)
        # the idle spin follows the gaps between calls (the pool's C_SPIN); 0 stays 0 (the host worker)
        idle = np.int64(ctrl[C.C_SPIN]) if idle_spin_ns > 0 else np.int64(0)
        g = wait_change(ctrl, C.GEN, gen, C.GEN_SLEEP, C.ZERO, idle, block_ns, ppid)
        if g == ABORTED:
            return g
        gen = g


@njit(cache=True, nogil=True)
def lead(ctrl, model, n, prog_index, procs, wid, progs, weights, arena, spin_ns, done_spin_ns, block_ns, prof,
         stamps, xin):
    """The calling thread's side of a RUN when it computes too (participant
    ``wid``, after the ``procs`` worker processes): publish the command, run
    its own program, then wait for the workers' DONE.  Returns the DONE
    count, TIMEOUT after one block slice (the pool then looks for dead
    workers and waits on), or ABORTED when the pool's death watch set the
    abort word while this thread waited at a barrier.  stamps (int64, empty:
    don't) as executor.call_stamped's.  No GIL: the pool's death watch (a
    Python thread) runs meanwhile."""
    timed = stamps.shape[0] > 0
    if timed:
        stamps[0] = monotonic_ns()
    if procs > 0:  # procs 0: a call only this thread has rows of (Pool.command's solo): nobody is told
        C.post(ctrl, C.OP_RUN, model, n, prog_index)
    r = run_command(progs[prog_index, wid], weights, arena, np.int64(n), ctrl, wid, spin_ns, block_ns, 0, prof, xin)
    if stamps.shape[0] > 2:
        stamps[2] = monotonic_ns()  # this thread's share done (calls.py balances the shares by it)
    if r == -2:
        return ABORTED
    v = C.wait_done(ctrl, procs, done_spin_ns, block_ns)
    if timed:
        stamps[1] = monotonic_ns() if v != TIMEOUT else 0
    return v


@njit(cache=True)
def call_stamped(ctrl, op, model, n, prog, parties, spin_ns, block_ns, stamps):
    """control.call, with stamps[0] = the time the command is published and
    stamps[1] = the time the last worker's DONE is seen (0 on TIMEOUT)."""
    stamps[0] = monotonic_ns()
    C.post(ctrl, op, model, n, prog)
    r = C.wait_done(ctrl, parties, spin_ns, block_ns)
    stamps[1] = monotonic_ns() if r != TIMEOUT else 0
    return r


_NO_PROF = np.zeros(0, np.int64)


def run_in_process(programs, weights, arena, n):
    """Run every worker's program in this process, interleaved at barriers.

    programs: int64 [P, steps, ROW].  Workers only meet at barriers, so
    running each one up to its next barrier in turn is a valid schedule.
    """
    if programs.shape[0] > 1 and np.any(programs[:, :, OP] == WAIT.code):
        raise ValueError("a pipeline plan runs its stages on different workers at once; "
                         "run it on a pool (workers >= 1), not in process")
    if programs.shape[0] > 1 and np.any((programs[:, :, OP] == RECUR.code) & (programs[:, :, RECUR.parties] > 1)):
        raise ValueError("a recurrent layer split across workers meets them at every time step; "
                         "run it on a pool (workers >= 1), not in process")
    ctrl = np.zeros(C.WORKER0 + C.LINE, np.int32)
    pos = [0] * programs.shape[0]
    while any(p >= 0 for p in pos):
        for w, p in enumerate(pos):
            if p >= 0:
                pos[w] = run_steps(programs[w], p, weights, arena, n, ctrl, -1, 0, 0, 0, True, _NO_PROF, arena[0:0], 0,
                                   0, 0)
