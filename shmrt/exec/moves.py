"""Single-copy moves of one participant's rows (compile/io.py): the caller's input rows into
the arena, the output rows into the caller's result, through parallel/xmem.py; a refusal is
recorded for the pool (ERR_XMEM), which falls back to copying in the calling thread."""
from __future__ import annotations

from numba import njit

from shmrt.compile.isa import FRAC, INPUT, OUTPUT
from shmrt.parallel import control as C
from shmrt.parallel.sync import ABORTED, barrier
from shmrt.parallel.xmem import addr_of, vm_copy


@njit(cache=True)
def _refused(ctrl, wid, err):
    """A single copy failed with -errno err: say so (the pool falls back and runs the call again)."""
    ctrl[C.WORKER0 + wid * C.LINE + C.W_XERR] = -err
    ctrl[C.WORKER0 + wid * C.LINE + C.W_ERROR] = C.ERR_XMEM
    ctrl[C.C_ERR] = 1  # published by finish's release


@njit(cache=True)
def _copy_in_rows(s, arena, ctrl, wid, r0, r1):
    """Rows r0:r1 of the caller's input (INPUT row s) into the arena's input rows."""
    if r1 > r0:
        rb = s[INPUT.row_floats] * 4
        local = arena.ctypes.data + (s[INPUT.x] * 4 + r0 * rb)
        err = vm_copy(False, ctrl[C.C_PID], local, addr_of(ctrl, C.C_SRC) + r0 * rb, (r1 - r0) * rb)
        if err != 0:
            _refused(ctrl, wid, err)


@njit(cache=True)
def _copy_out_rows(s, arena, ctrl, wid, r0, r1):
    """Rows r0:r1 of the output (and of TopK's indices; OUTPUT row s) into the caller's result."""
    for k in range(2):
        off, ld, rb = (s[OUTPUT.off], s[OUTPUT.ld], s[OUTPUT.row_bytes]) if k == 0 else \
            (s[OUTPUT.off2], s[OUTPUT.ld2], s[OUTPUT.row_bytes2])
        if rb == 0 or r1 <= r0:
            continue
        src = arena.ctypes.data + off * 4
        dst = addr_of(ctrl, C.C_DST if k == 0 else C.C_DST2)
        if ld * 4 == rb:  # whole rows, one run
            err = vm_copy(True, ctrl[C.C_PID], src + r0 * rb, dst + r0 * rb, (r1 - r0) * rb)
        else:  # every row apart (the last step of a sequence)
            err = 0
            for r in range(r0, r1):
                err = vm_copy(True, ctrl[C.C_PID], src + r * ld * 4, dst + r * rb, rb)
                if err != 0:
                    break
        if err != 0:
            _refused(ctrl, wid, err)


@njit(cache=True)
def copy_in(s, arena, n, ctrl, wid, spin_ns, block_ns, ppid):
    """An INPUT row (compile/io.py): this participant's rows of the caller's input into the
    arena (none when the command names no input: C_SRC 0), then the barrier if the row says
    so.  Returns 0, or -2 if aborted."""
    if ctrl[C.C_PID] == 0:  # the input is in the arena already
        return 0
    if addr_of(ctrl, C.C_SRC) != 0:
        _copy_in_rows(s, arena, ctrl, wid, (n * s[INPUT.lo]) // FRAC, (n * s[INPUT.hi]) // FRAC)
    if s[INPUT.sync] and barrier(ctrl, s[INPUT.line], s[INPUT.parties], C.ABORT, spin_ns, block_ns, ppid) == ABORTED:
        return -2
    return 0


@njit(cache=True)
def copy_out(s, arena, n, ctrl, wid, spin_ns, block_ns, ppid):
    """An OUTPUT row: the barrier if the row says so, then this participant's rows of the
    output into the caller's result arrays."""
    if ctrl[C.C_PID] == 0:
        return 0
    if s[OUTPUT.sync] and barrier(ctrl, s[OUTPUT.line], s[OUTPUT.parties], C.ABORT, spin_ns, block_ns,
                                  ppid) == ABORTED:
        return -2
    _copy_out_rows(s, arena, ctrl, wid, (n * s[OUTPUT.lo]) // FRAC, (n * s[OUTPUT.hi]) // FRAC)
    return 0
