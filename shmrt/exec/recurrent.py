"""One RNN / LSTM / GRU layer's whole time loop (the RECUR step), with its per-step barriers when
several workers share the hidden units, and per-sample lengths (rows past their length keep their
state)."""
from __future__ import annotations

from numba import njit

from shmrt.compile.isa import GATES, GRU_CELL, GRU_LBR0, LSTM_CELL, RECUR, RNN_RELU
from shmrt.exec.rows import _rows, _src, _view
from shmrt.kernels import IDENTITY, NR, gemm_fmt, gru_cell, gru_lbr0_cell, gru_reset, lstm_cell, rnn_cell
from shmrt.kernels.qformat import nb_panel_floats as panel_floats, nb_panel_scales as panel_scales
from shmrt.parallel import control as C
from shmrt.parallel.sync import ABORTED, barrier

@njit(cache=True)
def _keep_rows(arena, lens, ld, r0, r1, t, src, dst, zero):
    """Rows r0:r1 whose length (arena[lens + r * ld]) is at most step t: dst := src, or 0 (zero)."""
    for i in range(r1 - r0):
        if t >= arena[lens + (r0 + i) * ld]:
            for u in range(dst.shape[1]):
                dst[i, u] = 0.0 if zero else src[i, u]


@njit(cache=True)
def _recurrent(s, weights, arena, base, cnt, w0, w1, ctrl, spin_ns, block_ns, ppid, xin, in_off):
    """One recurrent layer (a RECUR step s, fields in isa.py) for this
    worker's rows and hidden units u0:u1.  Returns 0, or -2 if aborted.

    The input projection of every step is one GEMM per gate up front (packed
    weights, both biases fused); each step then multiplies the full h(t-1) by
    this worker's rows of W_hh, applies the cell to its own units, writes them
    into h(t), and meets the others at the barrier (GRU_LBR0: also once before
    its n gate, which reads r * h(t-1) of every unit) -- all in this function.
    """
    T, F, H = s[RECUR.T], s[RECUR.F], s[RECUR.H]
    u0, u1 = s[RECUR.u0], s[RECUR.u1]
    r0, r1 = _rows(base, cnt, w0, w1, s[RECUR.lo], s[RECUR.hi])
    mode, parties = s[RECUR.mode], s[RECUR.parties]
    G = GATES[mode]
    hs, R = u1 - u0, r1 - r0
    go, gstride, aux, hinit = s[RECUR.gates], s[RECUR.gate_stride], s[RECUR.aux], s[RECUR.hinit]
    w_ih, w_hh, b_ih, b_hh, out = s[RECUR.w_ih], s[RECUR.w_hh], s[RECUR.b_ih], s[RECUR.b_hh], s[RECUR.out]
    TH = T * H
    Hp = (H + NR - 1) // NR * NR  # a gate's rows, padded to whole panels
    empty = weights[0:0]
    fmt = s[RECUR.fmt]  # gate g's units u0: panel (g * Hp + u0) // NR, in the weights' format
    pf_ih, pf_hh, ps_ih, ps_hh = panel_floats(fmt, F), panel_floats(fmt, H), panel_scales(fmt, F), panel_scales(fmt, H)
    s_ih, s_hh = max(s[RECUR.s_ih], 0), max(s[RECUR.s_hh], 0)
    if R > 0 and hs > 0:
        xa, xo = _src(arena, xin, s[RECUR.x], in_off)
        xld = s[RECUR.x_ld]
        for g in range(G):  # the input projection of every step: one GEMM per gate, both biases fused
            bias = weights[b_ih + g * H + u0:b_ih + g * H + u1] if b_ih >= 0 else empty
            pan = (g * Hp + u0) // NR
            wg, sg = weights[w_ih + pan * pf_ih:], weights[s_ih + pan * ps_ih:]
            if xld == T * F:  # [N, T, F] packed: row r, step t at row r * T + t
                gemm_fmt(fmt, _view(xa, xo, F, r0 * T, r1 * T, 0, F), wg, pf_ih, sg, ps_ih,
                         bias, _view(arena, go + g * gstride, H, r0 * T, r1 * T, u0, hs), IDENTITY, False)
            else:  # samples xld apart (an input beside others in the row): one GEMM per sample
                for r in range(r0, r1):
                    gemm_fmt(fmt, _view(xa, xo + r * xld, F, 0, T, 0, F), wg, pf_ih, sg, ps_ih, bias,
                             _view(arena, go + g * gstride, H, r * T, (r + 1) * T, u0, hs), IDENTITY, False)
        # initial state: this worker's rectangle of h-init (and of c)
        hin = _view(arena, hinit, H, r0, r1, u0, hs)
        cst = _view(arena, aux, H, r0, r1, u0, hs)
        for i in range(R):
            for u in range(hs):
                hin[i, u] = weights[s[RECUR.h0] + u0 + u] if s[RECUR.h0] >= 0 else 0.0
                if mode == LSTM_CELL:
                    cst[i, u] = weights[s[RECUR.c0] + u0 + u] if s[RECUR.c0] >= 0 else 0.0
    bline = s[RECUR.line]
    if parties > 1 and barrier(ctrl, bline, parties, C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
        return -2
    live = R > 0 and hs > 0
    for t in range(T):
        hp = _view(arena, hinit, H, r0, r1, 0, H) if t == 0 else _view(arena, out + (t - 1) * H, TH, r0, r1, 0, H)
        ht, g0 = _view(arena, out + t * H, TH, r0, r1, u0, hs), _view(arena, go + t * H, TH, r0, r1, u0, hs)
        if live:
            for g in range(G):
                gt = _view(arena, go + g * gstride + t * H, TH, r0, r1, u0, hs)
                pan = (g * Hp + u0) // NR
                whh, shh = weights[w_hh + pan * pf_hh:], weights[s_hh + pan * ps_hh:]
                if mode == GRU_CELL and g == 2:
                    gemm_fmt(fmt, hp, whh, pf_hh, shh, ps_hh, empty, _view(arena, aux, H, r0, r1, u0, hs), IDENTITY,
                             False)
                elif mode != GRU_LBR0 or g < 2:  # GRU_LBR0's n gate multiplies r * h(t-1), made just below
                    gemm_fmt(fmt, hp, whh, pf_hh, shh, ps_hh, empty, gt, IDENTITY, True)
            if mode == GRU_LBR0:  # gate r of step t := r * h(t-1); split by units, every worker reads all of it
                gru_reset(g0, hp[:, u0:u1])
        if mode == GRU_LBR0 and parties > 1 and barrier(ctrl, bline, parties, C.ABORT, spin_ns, block_ns,
                                                         ppid) == ABORTED:
            return -2
        lens = s[RECUR.lens]
        if live and lens >= 0 and t > 0 and mode == LSTM_CELL:  # rows past their length keep c: in hinit
            _keep_rows(arena, lens, s[RECUR.lens_ld], r0, r1, t, _view(arena, aux, H, r0, r1, u0, hs),
                       _view(arena, hinit, H, r0, r1, u0, hs), False)
        if live:
            if mode == LSTM_CELL:
                lstm_cell(g0, _view(arena, go + gstride + t * H, TH, r0, r1, u0, hs),
                          _view(arena, go + 2 * gstride + t * H, TH, r0, r1, u0, hs),
                          _view(arena, go + 3 * gstride + t * H, TH, r0, r1, u0, hs),
                          _view(arena, aux, H, r0, r1, u0, hs), ht)
            elif mode == GRU_CELL:
                bhn = weights[b_hh + 2 * H + u0:b_hh + 2 * H + u1] if b_hh >= 0 else empty
                gru_cell(g0, _view(arena, go + gstride + t * H, TH, r0, r1, u0, hs),
                         _view(arena, go + 2 * gstride + t * H, TH, r0, r1, u0, hs),
                         _view(arena, aux, H, r0, r1, u0, hs), bhn, hp[:, u0:u1], ht)
            elif mode == GRU_LBR0:
                hn = _view(arena, aux, H, r0, r1, u0, hs)
                pan = (2 * Hp + u0) // NR
                gemm_fmt(fmt, _view(arena, go + t * H, TH, r0, r1, 0, H), weights[w_hh + pan * pf_hh:], pf_hh,
                         weights[s_hh + pan * ps_hh:], ps_hh, empty, hn, IDENTITY, False)
                gru_lbr0_cell(_view(arena, go + gstride + t * H, TH, r0, r1, u0, hs),
                              _view(arena, go + 2 * gstride + t * H, TH, r0, r1, u0, hs), hn, hp[:, u0:u1], ht)
            else:
                rnn_cell(g0, ht, mode == RNN_RELU)
            if lens >= 0 and t > 0:
                if mode == LSTM_CELL:  # (hinit is free after step 0: every worker is past it)
                    _keep_rows(arena, lens, s[RECUR.lens_ld], r0, r1, t, _view(arena, hinit, H, r0, r1, u0, hs),
                               _view(arena, aux, H, r0, r1, u0, hs), False)
                _keep_rows(arena, lens, s[RECUR.lens_ld], r0, r1, t, hp[:, u0:u1], ht, s[RECUR.zero_tail] != 0)
        if parties > 1 and barrier(ctrl, bline, parties, C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
            return -2
    return 0
