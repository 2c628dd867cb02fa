"""The instruction set: every op a program can hold, and its fields by name.

A program is an int64 table [steps, ROW] per worker; column OP of a row is
the op's code, the others its fields.  This module is the one place that
says which column holds what: the planner writes rows with ``encode`` (by
field name), and the interpreter (exec/executor.py), the cost model, the
profiler and explain() read them by name, ``s[LINEAR.x]``.  Each op is a
namedtuple of ints -- ``LINEAR.code`` its code, ``LINEAR.x`` the column of
its field ``x`` -- which Numba freezes as constants, so a named read costs
what a literal index did.

Conventions shared by the fields:
- a buffer is (offset, leading dimension[, first column]) into the flat
  float32 weight store (w, b, scale, ...) or the activation arena (x, out);
  an offset of -1 means "none" (no bias);
- ``lo``, ``hi`` are the worker's batch rows as fractions of the call's
  batch n in units of 1/FRAC (of the current micro-batch inside a pipeline
  stage), so one program serves every n up to max_batch;
- ``act`` is an activation code of shmrt.kernels.activations (ACTIVATIONS).
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from shmrt.kernels.activations import ACT_NAMES
from shmrt.kernels.recurrent import (CELLS, GATES, GRU_CELL, GRU_LBR0, LSTM_CELL, RNN_RELU,  # noqa: F401 (re-exported)
                                     RNN_TANH)

ROW = 32  # columns of a program row
OP = 0  # the column of the op's code
FRAC = 1 << 20  # batch-row fractions are in units of 1/FRAC
MICRO_ROWS = 8  # a pipeline's micro-batches have at least this many rows
CONV_GEOM = 14  # conv2d's geometry (kernels/conv.py): C, H, W, kh, kw, sh, sw, ph, pw, dh, dw, groups, OH, OW
POOL_GEOM = 15  # pool2d's geometry: C, H, W, kh, kw, sh, sw, pt, pl, dh, dw, OH, OW, pb, pr (pads top, left, bottom, right)

# Recurrent cells (a RECUR step's mode) and activations (an ``act`` field) are
# coded by the kernels' own tables, CELLS / GATES and ACT_NAMES, re-exported here.

# name, label (profile and explain), fields in column order: a name, or (name, width) for an array
_DECLARED = (
    ("END", "end", ()),
    ("BARRIER", "barrier", ("line", "parties")),  # barrier at control line `line` of `parties` workers
    # out[rows, out_col:out_col+m] = act(x[rows, x_col:x_col+k] @ W[0:m, w_col:w_col+k].T + b).  packed: W is
    # panels at w (kernels/gemm.py: panel p at w + p * w_ld, input feature j at + j * NR), else row-major [m, w_ld];
    # fmt: the panels' format (kernels/qformat.py), sc: their scales (panel p's at sc + p * s_ld), -1: none
    ("LINEAR", "linear", ("x", "x_ld", "x_col", "k", "w", "w_ld", "w_col", "b", "out", "out_ld", "out_col", "m",
                          "act", "lo", "hi", "packed", "fmt", "sc", "s_ld")),
    # out[all rows, c0:c1] = act(sum over p < P of parts[:, p*m + c0 : p*m + c1] + b[c0:c1]); parts is [n, P*m]
    ("REDUCE", "reduce", ("parts", "P", "m", "c0", "c1", "b", "act", "out", "out_ld")),
    # out[rows, col:col+width] = act(x[rows, col:col+width]) (out may be x)
    ("ACT", "act", ("x", "x_ld", "col", "width", "act", "lo", "hi", "out", "out_ld", "alpha")),
    # over dim m of each row seen as [outer, m, inner] (width = outer * m * inner)
    ("SOFTMAX", "softmax", ("x", "x_ld", "width", "out", "out_ld", "log", "lo", "hi", "m", "inner")),
    # out: int64 indices [N, width // m], one per group of m floats of a row; last: of ties
    ("ARGMAX", "argmax", ("x", "x_ld", "width", "out", "lo", "hi", "last", "m")),
    ("TOPK", "topk", ("x", "x_ld", "width", "k", "values", "indices", "lo", "hi")),  # indices: int64
    # out[rows, col:col+width] = x[rows, col:col+width] * scale[col:...] + shift[col:...]
    ("AFFINE", "affine", ("x", "x_ld", "col", "width", "scale", "shift", "out", "out_ld", "lo", "hi")),
    ("GATHER", "gather", ("x", "x_ld", "index", "out", "width", "lo", "hi")),  # out = x[:, index]
    # each row as width // norm groups of norm floats, each normalised on its own (weight, bias: norm floats);
    # stat 1 / 2: out [N, width // norm] holds each group's mean / 1 / sqrt(var + eps) instead
    ("LAYERNORM", "layernorm", ("x", "x_ld", "width", "weight", "bias", "eps", "out", "lo", "hi", "norm", "stat")),
    # one RNN/LSTM/GRU layer, its whole time loop (exec/recurrent.py): x [N, T, F] (samples x_ld apart),
    # out [N, T, H];
    # this worker's hidden units u0:u1; gates: [G, maxb*T, H] regions gate_stride apart; aux [maxb, H]
    # (LSTM cell state, GRU W_hn h); hinit [maxb, H]; a barrier per step at `line` when parties > 1;
    # lens: -1, or each row's length L (a float, rows lens_ld apart): steps t >= L leave the state as it
    # was and write 0 to out (zero_tail) or the state (the last step then holds the state after L-1);
    # fmt: the weights' format (kernels/qformat.py), s_ih, s_hh: their scales (-1: none)
    ("RECUR", "recurrent", ("x", "x_ld", "T", "F", "out", "H", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0", "u0", "u1",
                            "lo", "hi", "gates", "gate_stride", "aux", "hinit", "mode", "parties", "line",
                            "lens", "lens_ld", "zero_tail", "fmt", "s_ih", "s_hh")),
    # output channels co0:co1, output rows oh0:oh1 of images lo:hi; scratch: this worker's im2col buffer;
    # pool: a 2x2 max pool fused (out holds the pooled image, oh0:oh1 even, in the convolution's rows)
    ("CONV", "conv", ("x", "x_ld", "out", "out_ld", "w", "b", "act", "co0", "co1", "oh0", "oh1", "lo", "hi",
                      "scratch", ("geom", CONV_GEOM), "cout", "scratch_floats", "pool")),
    # adaptive: PyTorch's adaptive windows over H x W (geom's kernel, stride and padding unused);
    # indices: -1, or where ONNX MaxPool's int64 Indices go ([maxb, C*OH*OW]; col_major: storage_order=1)
    ("POOL", "pool", ("x", "x_ld", "out", "out_ld", "c0", "c1", "is_max", "count_include_pad", "lo", "hi",
                      ("geom", POOL_GEOM), "adaptive", "indices", "col_major")),
    ("GAP", "global avg pool", ("x", "x_ld", "out", "out_ld", "hw", "c0", "c1", "lo", "hi")),
    # Pipeline stages: a stage's worker loops over micro-batches.  MICRO: the call runs
    # min(most, n // rows) micro-batches (at least 1) of at least `rows` rows; counters: int32
    # words in the arena, worker w's count of finished micro-batches at w * 2 * LINE, its
    # sleepers LINE after it (the parent zeroes them before each call).
    ("MICRO", "micro-batch", ("most", "counters", "workers", "rows")),
    ("WAIT", "wait for stage", ("first", "producers")),  # until workers first.. have finished this micro-batch
    ("SIGNAL", "signal stage", ("worker",)),  # this worker finished its part of the micro-batch
    ("NEXT", "next micro-batch", ()),  # back to after MICRO for the next micro-batch, if any
    # Single-copy input and output (compile/io.py, parallel/xmem.py): the last two rows of every
    # program, after its END, read by the worker's command loop, not by the step interpreter.  When
    # a call names the caller's arrays (C_PID), this participant copies rows lo:hi of the caller's
    # input into the arena (x, row_floats floats per row) before its program, and its rows of the
    # output (off, ld floats apart, row_bytes each; off2.. a second array: TopK's indices) into the
    # caller's result after it; sync: the program reads or writes rows other than its own, so a
    # barrier of `parties` at `line` follows the input and precedes the output (else its rows are
    # its own: it may move them in blocks); direct: its rows are its own and no step writes into
    # the input rows, so it may read them where they lie (the caller's array, a shared buffer).
    ("INPUT", "input", ("x", "row_floats", "lo", "hi", "sync", "line", "parties", "direct")),
    ("OUTPUT", "output", ("off", "ld", "row_bytes", "off2", "ld2", "row_bytes2", "lo", "hi", "sync", "line",
                          "parties")),
    # out = act(a <op> b) over the output's three dims d (kernels/merge.py: op ADD, SUB, MUL, DIV, or COPY
    # of a into a part of out: Concat, Permute, Slice), each operand's strides within a row sa, sb, so (0:
    # broadcast); rows lo:hi, dim-0 indices c0:c1 (channels, when split by model); b_w: b is a constant in
    # the weight store (b_ld 0), swap: out = act(b <op> a)
    ("MERGE", "merge", ("a", "a_ld", "b", "b_ld", "out", "out_ld", "op", ("d", 3), ("sa", 3), ("sb", 3), ("so", 3),
                        "c0", "c1", "act", "b_w", "swap", "lo", "hi")),
    # channels c0:c1 of images lo:hi resized (kernels/conv.upsample2d): geom (C, H, W, OH, OW); bilinear; taps:
    # the source tables in the weight store, (i0, i1, w) over OH rows then (i0, i1, w) over OW columns
    ("RESIZE", "resize", ("x", "x_ld", "out", "out_ld", "c0", "c1", "lo", "hi", ("geom", 5), "bilinear", "taps")),
    # a transposed convolution (kernels/convtranspose.py): output channels co0:co1, rows oh0:oh1 of images lo:hi;
    # w: its phases' packed weights; geom as CONV's (OH, OW the output's); scratch: this worker's padded image
    ("CONVT", "conv transpose", ("x", "x_ld", "out", "out_ld", "w", "b", "act", "co0", "co1", "oh0", "oh1", "lo", "hi",
                                 "scratch", ("geom", CONV_GEOM), "cout", "scratch_floats")),
    # token rows (compile/tokens.py): out[rows] = table[int(x[rows, 0])], table [*, width] in the weight store
    ("EMBED", "embedding", ("x", "x_ld", "table", "width", "out", "out_ld", "lo", "hi")),
    # attention of query token rows q_lo:q_hi (fractions, as lo:hi; named apart because the step reads other
    # rows' keys and values), heads h0:h1 (kernels/attention.py): q, k, v the arena offsets of head 0's
    # columns (head h at + h * hs), meta the (pos, start, len) token rows; scale a float in the weight
    # store; mask: -1 or an additive [mask_ld, mask_ld] mask in the weight store; scratch per worker
    ("ATTN", "attention", ("q", "k", "v", "ld", "hs", "meta", "meta_ld", "h0", "h1", "dh", "out", "out_ld", "scale",
                           "mask", "mask_ld", "causal", "q_lo", "q_hi", "scratch", "scratch_floats")),
)


def _declare(code, name, fields):
    names, cols, col = ["code"], [code], 1
    widths = {}
    for f in fields:
        fname, width = (f, 1) if isinstance(f, str) else f
        names.append(fname)
        cols.append(col)
        widths[fname] = width
        col += width
    assert col <= ROW, f"{name} needs {col} columns, a row has {ROW}"
    return namedtuple(name.title(), names)(*cols), widths


_BUILT = [_declare(code, name, fields) for code, (name, _, fields) in enumerate(_DECLARED)]
OPS = tuple(op for op, _ in _BUILT)  # by code
_WIDTHS = [widths for _, widths in _BUILT]
LABELS = tuple(label for _, label, _ in _DECLARED)
(END, BARRIER, LINEAR, REDUCE, ACT, SOFTMAX, ARGMAX, TOPK, AFFINE, GATHER, LAYERNORM, RECUR, CONV, POOL, GAP,
 MICRO, WAIT, SIGNAL, NEXT, INPUT, OUTPUT, MERGE, RESIZE, CONVT, EMBED, ATTN) = OPS
assert [op.__class__.__name__ for op in OPS] == [name.title() for name, _, _ in _DECLARED]  # the names above in order


def encode(op, /, **fields) -> np.ndarray:
    """One program row of op, every declared field given by name."""
    widths = _WIDTHS[op.code]
    missing, unknown = sorted(set(widths) - set(fields)), sorted(set(fields) - set(widths))
    if missing or unknown:
        raise TypeError(f"{LABELS[op.code]} step: expected fields {list(widths)}"
                        + (f"; missing {missing}" if missing else "") + (f"; unknown {unknown}" if unknown else ""))
    row = np.zeros(ROW, np.int64)
    row[OP] = op.code
    for name, width in widths.items():
        col = getattr(op, name)
        row[col:col + width] = fields[name]
    return row


def act_code(name: str) -> int:
    """The kernels' code of an activation named as in ACT_NAMES ("relu", "gelu_tanh", ...)."""
    try:
        return ACT_NAMES.index(name)
    except ValueError:
        raise ValueError(f"unknown activation {name!r}; expected one of {ACT_NAMES}") from None
