"""Single-copy input and output: each program's INPUT and OUTPUT rows.

The convenience tier ``cm(x)`` used to copy x into the arena in the caller,
run, and copy the output out: every byte moved by one thread, twice in all
for the input (into the arena, then read by the kernels) and the output.
With single copy, every participant moves its own rows, in parallel: before
its program it reads rows lo:hi of the caller's array straight from the
caller's memory into the arena (``process_vm_readv``; parallel/xmem.py),
and after its program it writes its rows of the output straight into the
array the caller will return (``process_vm_writev``).

Whose rows: where every step of every worker reads and writes only the
worker's own batch rows (a data-parallel plan, the usual case at large
batch), a worker moves exactly those rows and meets nobody.  Otherwise
(columns, channels, stages, a reduction), the rows are split evenly, and a
barrier of every participant follows the input and precedes the output.

The rows sit after the program's END (the step interpreter never reaches
them); the command loops (executor.serve, executor.lead) read them there.
"""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import END, FRAC, INPUT, OP, OPS, OUTPUT, RECUR, encode
from shmrt.compile.layout import rows_of
from shmrt.parallel.control import barrier_line

IO_ROWS = 2  # INPUT, OUTPUT: the last two rows of a program table


def own_rows(prog) -> tuple | None:
    """Each worker's (lo, hi), when every step of each reads and writes only those batch
    rows and the workers' rows do not overlap; else None."""
    P = prog.shape[0]
    rows = []
    for w in range(P):
        seen = set()
        for s in prog[w]:
            if s[OP] == END.code:
                break
            op = OPS[int(s[OP])]
            # a barrier, a reduction, a stage or a recurrent layer split by hidden units: rows cross workers
            if not hasattr(op, "lo") or (s[OP] == RECUR.code and s[RECUR.parties] > 1):
                return None
            seen.add((int(s[op.lo]), int(s[op.hi])))
        if len(seen) > 1:
            return None
        rows.append(seen.pop() if seen else (0, 0))
    spans = sorted(r for r in rows if r[1] > r[0])
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        return None
    return tuple(rows)


def with_io(prog: np.ndarray, inp, output, direct_ok=True) -> np.ndarray:
    """prog [P, steps, ROW] with each worker's INPUT and OUTPUT rows appended (after END).
    direct_ok=False: never read the input where the caller has it (several inputs: steps read
    the row at columns other than the input's first)."""
    P = prog.shape[0]
    own = own_rows(prog)
    line = barrier_line(P)
    o = output
    if o.paired:
        out = dict(off=o.off, ld=o.width, row_bytes=4 * o.width, off2=o.idx_off, ld2=2 * o.width,
                   row_bytes2=8 * o.width)
    elif o.kind == "argmax":
        out = dict(off=o.off, ld=2 * o.width, row_bytes=8 * o.width, off2=-1, ld2=0, row_bytes2=0)
    else:
        out = dict(off=o.off, ld=o.ld or o.width, row_bytes=4 * o.width, off2=-1, ld2=0, row_bytes2=0)
    rows = np.zeros((P, IO_ROWS, prog.shape[2]), np.int64)
    sync = int(own is None)  # (a barrier of one party returns at once)
    direct = int(direct_ok and own is not None and not _writes_input(prog, inp.off))
    for w in range(P):
        lo, hi = own[w] if own is not None else tuple(rows_of(w, P).values())
        rows[w, 0] = encode(INPUT, x=inp.off, row_floats=inp.width, lo=lo, hi=hi, sync=sync, line=line, parties=P,
                            direct=direct)
        rows[w, 1] = encode(OUTPUT, **out, lo=lo, hi=hi, sync=sync, line=line, parties=P)
    return np.concatenate([prog, rows], axis=1)


def solo_rows(prog: np.ndarray) -> int:
    """The largest batch n of which the last participant (the calling thread, when it
    computes) has every row and the others none, so that it runs the call alone: 0 unless
    the workers' rows are their own (no barrier; own_rows)."""
    P = prog.shape[0]
    io = prog[:, -IO_ROWS]
    if P < 2 or io[:, INPUT.sync].any():
        return 0
    n = 0
    while n < 1 << 20 and all((n + 1) * int(io[w, INPUT.hi]) // FRAC == (n + 1) * int(io[w, INPUT.lo]) // FRAC
                              for w in range(P - 1)):
        n += 1
    return n


def _writes_input(prog: np.ndarray, input_off: int) -> bool:
    """Whether a step writes into the input rows (an activation in place, say): then nobody
    may read the input where the caller has it (INPUT's direct)."""
    for w in range(prog.shape[0]):
        for s in prog[w]:
            if s[OP] == END.code:
                break
            op = OPS[int(s[OP])]
            for field in ("out", "values", "indices", "gates", "aux", "hinit"):
                if hasattr(op, field) and int(s[getattr(op, field)]) == input_off:
                    return True
    return False
