"""Recurrent layers (RNN, LSTM, GRU): split by batch rows (whole sequences),
or by hidden units -- worker w owns the gate rows of units u0:u1, computes
them from the full h(t-1), writes its units of h(t), with one barrier per
time step.  One RECUR step runs a layer's whole time loop
(exec/recurrent.py's _recurrent).

The weights are packed once, gate by gate, into the panels of the packed
GEMM (kernels/gemm.py): gate g of W_ih at g * packed_size(H, F), of W_hh at
g * packed_size(H, H), so a worker's units u0:u1 (u0 a multiple of NR) of
each gate are a run of whole panels.  Both biases are added into one per
gate (PyTorch GRU's n gate: b_in only; b_hn stays apart, the cell needs it).

GRU with linear_before_reset=0 (cell "gru_lbr0", ONNX's default) needs
r * h(t-1) of ALL units before its n gate's product W_hn (r * h): split by
units, each worker writes r * h(t-1) of its units over its gate r of step t
and meets the others at a second barrier per step before that product."""
from __future__ import annotations

import numpy as np

from shmrt.compile import compress
from shmrt.compile.isa import CELLS, FRAC, GATES, GRU_CELL, GRU_LBR0, RECUR
from shmrt.compile.layout import Output
from shmrt.compile.layout import rows_of
from shmrt.compile.roofline import gemm_us, rows
from shmrt.compile.ops.dense import split_panels
from shmrt.ir import layers as L
from shmrt.kernels import NR
from shmrt.kernels.qformat import panel_floats, panel_scales


def recurrent(b, op, info):
    P, l, i, sc = b.P, op.layer, op.index, b.scratch
    out = b.outs[i]
    T = int(np.prod(b.cur_shape)) // l.input_size
    H = l.hidden_size
    x_off, x_ld = b.cur_off, b.cur_ld  # a graph input beside others: its samples are the row's width apart
    split_units = b.split_model
    if split_units:
        b.need_all()
    lens, lens_ld = -1, 0
    if len(b.ins) > 1:  # (x, lengths): each row's length, one float
        b.need_inputs(("all",) if split_units else ("all", "rows"))
        lens, lens_ld = b.ins[1].out.off, b.ins[1].out.ld or b.ins[1].out.width
    u = split_panels(H, P) if split_units else None
    cell = getattr(out, "cell", -1)  # LSTM return_cell_state: the last layer keeps its cell state there
    for k in range(l.num_layers):
        F = l.input_size if k == 0 else H
        h0 = b.w(f"{i}.h0") + k * H if f"{i}.h0" in b.woff else -1
        c0 = b.w(f"{i}.c0") + k * H if f"{i}.c0" in b.woff else -1
        for w in range(P):
            u0, u1 = (u[w], u[w + 1]) if split_units else (0, H)
            where = dict(lo=0, hi=FRAC) if split_units else rows_of(w, P)
            b.emit(w, RECUR, x=x_off, x_ld=x_ld if k == 0 else T * F, T=T, F=F, out=out.seqs[k], H=H, w_ih=b.w(f"{i}.panels_ih_l{k}"),
                   w_hh=b.w(f"{i}.panels_hh_l{k}"), b_ih=b.w(f"{i}.gate_bias_l{k}"),
                   b_hh=b.w(f"{i}.bias_hh_l{k}"), h0=h0, c0=c0, u0=u0, u1=u1, gates=sc["gates"],
                   gate_stride=sc["gstride"], aux=cell if k == l.num_layers - 1 and cell >= 0 else sc["aux"],
                   hinit=sc["hinit"], mode=CELLS.index(l.cell),
                   parties=P if split_units else 1, line=b.bline, lens=lens, lens_ld=lens_ld,
                   zero_tail=int(l.return_sequences and k == l.num_layers - 1), fmt=op.fmt,
                   s_ih=b.w(f"{i}.scales_ih_l{k}"), s_hh=b.w(f"{i}.scales_hh_l{k}"), **where)
        if split_units:
            b.barriers += T * (2 if l.cell == "gru_lbr0" else 1) + 1
        x_off = out.seqs[k]
    G = l.gates
    info["flops"] = 2 * G * H * (l.input_size + H + (l.num_layers - 1) * 2 * H) * T
    Hp = -(-H // NR) * NR
    info["weight_bytes"] = 4 * sum(G * Hp // NR * (panel_floats(op.fmt, F) + panel_scales(op.fmt, F))
                                   for F in [l.input_size] + [H] * (2 * l.num_layers - 1))
    if split_units:
        info["partition"] = (f"hidden units, {'two barriers' if l.cell == 'gru_lbr0' else 'one barrier'} per time "
                             f"step ({T} steps x {l.num_layers} layer(s))")
        info["slices"] = [f"units {u[w]}:{u[w + 1]}" for w in range(P)]
        info["read_per_worker"] = info["weight_bytes"] // P
        b.set_cur(out, "all")
    else:
        info["partition"] = "batch rows (whole sequences)"
        info["slices"] = [f"rows {w}/{P}..{w + 1}/{P}" for w in range(P)]
        info["read_per_worker"] = info["weight_bytes"]
        b.set_cur(out, "rows" if P > 1 else "all")


def recurrent_us(s, cnt, n, rates) -> float:
    """The input projection of every step as one GEMM, then per step the
    recurrent GEMM of this worker's units (and a barrier when split)."""
    r, T, F, H = rows(cnt, s[RECUR.lo], s[RECUR.hi]), s[RECUR.T], s[RECUR.F], s[RECUR.H]
    hs, G = s[RECUR.u1] - s[RECUR.u0], GATES[int(s[RECUR.mode])]
    if r <= 0 or hs <= 0:
        return 0.0
    fmt = int(s[RECUR.fmt])
    per = lambda k: 4.0 * (panel_floats(fmt, k) + panel_scales(fmt, k)) / NR  # noqa: E731 (bytes an output unit)
    proj = gemm_us(2.0 * r * T * F * G * hs, G * hs * per(F), 4.0 * r * T * (F + G * hs), r * T, rates)
    step = gemm_us(2.0 * r * H * G * hs, G * hs * per(H), 4.0 * r * (H + G * hs), r, rates)
    meets = 2 if int(s[RECUR.mode]) == GRU_LBR0 else 1  # barriers per step
    return proj + T * (step + (meets * rates.barrier_us if s[RECUR.parties] > 1 else 0.0))


def tensors(op, before) -> dict:
    """Per stacked layer k: panels_ih_l{k}, panels_hh_l{k} (each gate packed on its own, in the op's format;
    compressed: scales_ih_l{k}, scales_hh_l{k} beside), gate_bias_l{k} (b_ih + b_hh, PyTorch GRU's n gate
    b_in only) and, for GRU, bias_hh_l{k} (b_hn); h0, c0 as given."""
    l = op.layer
    H, G, p = l.hidden_size, l.gates, l.params
    out = {name: p[name] for name in ("h0", "c0") if name in p}
    pairs = []
    for k in range(l.num_layers):
        for part in ("ih", "hh"):
            name = f"weight_{part}_l{k}"
            w, own = p[name], compress.own_scales(op, name)
            gates = [compress.pack_weight(w[g * H:(g + 1) * H], op.fmt, None if own is None else
                                          (own[0][g * H:(g + 1) * H], own[1][g * H:(g + 1) * H]))
                     for g in range(G)]
            for key in gates[0][0]:
                out[f"{key}_{part}_l{k}"] = np.concatenate([t[key] for t, _ in gates])
            pairs.append((w, np.concatenate([run for _, run in gates])))
        if l.bias:
            b_ih, b_hh = (p[f"bias_{part}_l{k}"].astype(np.float64) for part in ("ih", "hh"))
            both = b_ih + b_hh
            if CELLS.index(l.cell) == GRU_CELL:
                both[2 * H:] = b_ih[2 * H:]
                out[f"bias_hh_l{k}"] = p[f"bias_hh_l{k}"]
            out[f"gate_bias_l{k}"] = both.astype(np.float32)
    compress.note(op, pairs)
    return out


def output(op, shape, in_shape, maxb, arena):
    """One [N, T, H] sequence per stacked layer (the next layer's input); the layer's output is the
    last one, or its last step ([N, H], leading dimension T*H) without return_sequences, or (LSTM
    return_cell_state) the final cell state [N, H]: the last layer's RECUR keeps its cell state there."""
    l = op.layer
    T, H = in_shape[0], l.hidden_size
    seqs = [arena.alloc(maxb * T * H) for _ in range(l.num_layers)]
    o = Output("dense", seqs[-1], T * H, shape=(T, H))
    if not l.return_sequences:
        o = Output("dense", seqs[-1] + (T - 1) * H, H, shape=(H,), ld=T * H)
    o.cell = -1  # the last layer's cell state (the step's aux) where it is the output, else the shared scratch
    if getattr(l, "return_cell_state", False):
        o = Output("dense", arena.alloc(maxb * H), H, shape=(H,))
        o.cell = o.off
    o.seqs = seqs
    return o


LAYERS = (L._Recurrent,)
emit = recurrent
COSTS = {RECUR.code: recurrent_us}
