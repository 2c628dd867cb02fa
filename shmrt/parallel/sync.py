"""Synchronisation primitives: atomics, futex, spin-then-block waits, barrier.

Everything that makes processes agree on something lives in this file, and
only here.  The words are int32 cells of the control block (see ctrl.py),
each on its own 64-byte line: a shared line costs false sharing on every
spin (ggml measured 21 % on an 80-core machine).

Why Numba and not Python: a round trip parent -> 15 workers -> parent costs
4.2 us when everyone spins on a shared flag from Python, 0.48 us inside a
Numba function with atomic loads/stores (DESIGN.md, measured 2026-11-26).
Numba has no CPU atomics of its own, so they are LLVM instructions emitted
through ``numba.extending.intrinsic``.  Ordering is explicit (acquire on
loads that guard data, release on stores that publish it, seq_cst where a
waiter and a waker must not both miss each other), so the code is correct
on ARM64 as on x86-64.

Waiting spins for ``spin_ns`` (tens of microseconds, SHMRT_SPIN_US), then
blocks: a futex on Linux, short sleeps elsewhere.  A blocked wait wakes at
least every ``block_ns`` to look at the abort word and at the runtime's
owner process, so a dead owner or an aborted call never leaves a process waiting forever.

Wake protocol (Dekker-style, both sides seq_cst):
  waiter: sleepers += 1; if word == old: futex_wait(word, old); sleepers -= 1
  waker:  word += 1;     if sleepers > 0: futex_wake(word)
Either the waker sees the sleeper, or the sleeper sees the new word (the
kernel re-checks ``word == old`` atomically before it sleeps).
"""
from __future__ import annotations

import platform
import sys
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

LINE = 16  # int32 words per 64-byte cache line

# futex(2) syscall numbers; other systems (and unknown arches) sleep instead.
_FUTEX_NR = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98,
             "riscv64": 98, "ppc64le": 221, "s390x": 238}
FUTEX_NR = _FUTEX_NR.get(platform.machine().lower(), -1) if sys.platform.startswith("linux") else -1
_CLOCK_MONOTONIC = 6 if sys.platform == "darwin" else 1
_IS_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_IS_ARM = platform.machine().lower() in ("aarch64", "arm64")
ABORTED = -(1 << 40)  # returned by waits when the abort word is set (never a word value)
TIMEOUT = -(1 << 41)  # returned by waits that gave up after one block slice


def _ptr(context, builder, aty, arr, idx):
    a = context.make_array(aty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, aty, a, [idx])


@intrinsic
def load_acquire(typingctx, arr, idx):
    """Atomic load with acquire ordering of arr[idx] (int32 array)."""
    def codegen(context, builder, sig, args):
        return builder.load_atomic(_ptr(context, builder, sig.args[0], *args), "acquire", 4)
    return types.int32(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, val):
    """Atomic store with release ordering: arr[idx] = val."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int32)
        builder.store_atomic(v, _ptr(context, builder, sig.args[0], args[0], args[1]), "release", 4)
        return context.get_dummy_value()
    return types.void(arr, idx, val), codegen


@intrinsic
def fetch_add(typingctx, arr, idx, val):
    """Atomic arr[idx] += val (seq_cst); returns the old value."""
    def codegen(context, builder, sig, args):
        v = context.cast(builder, args[2], sig.args[2], types.int32)
        return builder.atomic_rmw("add", _ptr(context, builder, sig.args[0], args[0], args[1]), v, "seq_cst")
    return types.int32(arr, idx, val), codegen


@intrinsic
def cas(typingctx, arr, idx, expected, new):
    """Atomic compare-and-swap (seq_cst); returns the value seen."""
    def codegen(context, builder, sig, args):
        e = context.cast(builder, args[2], sig.args[2], types.int32)
        n = context.cast(builder, args[3], sig.args[3], types.int32)
        res = builder.cmpxchg(_ptr(context, builder, sig.args[0], args[0], args[1]), e, n, "seq_cst", "seq_cst")
        return builder.extract_value(res, 0)
    return types.int32(arr, idx, expected, new), codegen


@intrinsic
def cpu_relax(typingctx):
    """The spin-loop hint: x86 ``pause``, ARM ``yield``, nothing elsewhere."""
    def codegen(context, builder, sig, args):
        if _IS_X86:  # LLVM intrinsics: Numba's JIT has no inline-asm parser
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                "llvm.x86.sse2.pause")
            builder.call(fn, [])
        elif _IS_ARM:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(32)]), "llvm.aarch64.hint")
            builder.call(fn, [ir.Constant(ir.IntType(32), 1)])  # 1 = YIELD
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def monotonic_ns(typingctx):
    """clock_gettime(CLOCK_MONOTONIC) in nanoseconds (vDSO, ~20 ns)."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        ts = cgutils.alloca_once(builder, ir.LiteralStructType([i64, i64]))
        fnty = ir.FunctionType(ir.IntType(32), [ir.IntType(32), ts.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        builder.call(fn, [ir.Constant(ir.IntType(32), _CLOCK_MONOTONIC), ts])
        sec = builder.load(cgutils.gep(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, 1_000_000_000)), nsec)
    return types.int64(), codegen


@intrinsic
def _kill0(typingctx, pid):
    """kill(pid, 0): 0 while process pid exists (a zombie too), -1 once it is gone."""
    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i32, [i32, i32]), "kill")
        return builder.call(fn, [context.cast(builder, args[0], sig.args[0], types.int32), ir.Constant(i32, 0)])
    return types.int32(pid), codegen


@intrinsic
def _futex(typingctx, arr, idx, op, val, timeout_ns):
    """futex(&arr[idx], op, val, timeout) -- shared (not PRIVATE) futex."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        ptr = _ptr(context, builder, sig.args[0], args[0], args[1])
        ts = cgutils.alloca_once(builder, ir.LiteralStructType([i64, i64]))
        t = context.cast(builder, args[4], sig.args[4], types.int64)
        billion = ir.Constant(i64, 1_000_000_000)
        builder.store(builder.sdiv(t, billion), cgutils.gep(builder, ts, 0, 0))
        builder.store(builder.srem(t, billion), cgutils.gep(builder, ts, 0, 1))
        fnty = ir.FunctionType(i64, [i64], var_arg=True)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "syscall")
        op_ = builder.sext(context.cast(builder, args[2], sig.args[2], types.int32), i64)
        val_ = builder.sext(context.cast(builder, args[3], sig.args[3], types.int32), i64)
        null = ir.Constant(i64, 0)
        return builder.call(fn, [ir.Constant(i64, FUTEX_NR), builder.ptrtoint(ptr, i64), op_, val_,
                                 builder.ptrtoint(ts, i64), null, null])
    return types.int64(arr, idx, op, val, timeout_ns), codegen


@intrinsic
def _usleep(typingctx, us):
    def codegen(context, builder, sig, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32)]), "usleep")
        builder.call(fn, [context.cast(builder, args[0], sig.args[0], types.int32)])
        return context.get_dummy_value()
    return types.void(us), codegen


@njit(cache=True)
def block_while(words, idx, old, timeout_ns):
    """Sleep while words[idx] == old, at most timeout_ns (futex, or usleep)."""
    if FUTEX_NR >= 0:
        _futex(words, idx, 0, old, timeout_ns)  # FUTEX_WAIT
    else:
        _usleep(min(max(timeout_ns // 1000, 50), 1000))


@njit(cache=True)
def wake_all(words, idx):
    if FUTEX_NR >= 0:
        _futex(words, idx, 1, 2147483647, 0)  # FUTEX_WAKE


@njit(cache=True)
def wait_change(ctrl, idx, old, sleepers, abort, spin_ns, block_ns, ppid):
    """Wait until ctrl[idx] != old; return the new value.

    Spins spin_ns, then blocks in slices of block_ns.  Returns ABORTED when
    ctrl[abort] becomes non-zero, and TIMEOUT after one block slice so
    that the caller can look around (signals, dead processes) -- unless ppid
    > 0, in which case the wait goes on until the word changes, the call is
    aborted, or process ppid (the runtime's owner) is gone, which also
    returns ABORTED.  A worker watches the owner, not its own parent (the
    template): a template that dies leaves its workers serving, and the
    pool replaces them all at its next command.
    """
    return _wait_change(ctrl, idx, old, sleepers, ctrl, abort, spin_ns, block_ns, ppid)


@njit(cache=True, inline="always")
def _wait_change(words, idx, old, sleepers, flags, abort, spin_ns, block_ns, ppid):
    """wait_change on any int32 words (a pipeline's counters live in an
    arena), with the abort word flags[abort] in the control block."""
    v = np.int64(load_acquire(words, idx))
    if v != old:
        return v
    t0 = monotonic_ns()
    i = 0
    while True:
        v = load_acquire(words, idx)
        if v != old:
            return v
        if load_acquire(flags, abort) != 0:
            return ABORTED
        cpu_relax()
        i += 1
        if (i & 31) == 0 and monotonic_ns() - t0 > spin_ns:
            break
    while True:
        fetch_add(words, sleepers, 1)
        if load_acquire(words, idx) == old and load_acquire(flags, abort) == 0:
            block_while(words, idx, old, block_ns)
        fetch_add(words, sleepers, -1)
        v = load_acquire(words, idx)
        if v != old:
            return v
        if load_acquire(flags, abort) != 0:
            return ABORTED
        if ppid <= 0:
            return TIMEOUT
        if _kill0(ppid) != 0:  # the runtime's process is gone (checked once per block slice)
            return ABORTED


@njit(cache=True)
def bump(ctrl, idx, sleepers):
    """ctrl[idx] += 1 (publishing everything written before), waking sleepers."""
    old = fetch_add(ctrl, idx, 1)
    if load_acquire(ctrl, sleepers) > 0:
        wake_all(ctrl, idx)
    return old + 1


@njit(cache=True)
def barrier(ctrl, base, parties, abort, spin_ns, block_ns, ppid):
    """Barrier over ``parties`` processes on three lines at ``base``.

    Lines: base = arrival count, base+LINE = generation (futex word),
    base+2*LINE = sleepers.  The generation is read *before* arriving, so
    the last arrival cannot bump it unseen.  Returns 0, or ABORTED.
    """
    if parties <= 1:
        return 0
    gen_i = base + LINE
    g = load_acquire(ctrl, gen_i)
    if fetch_add(ctrl, base, 1) == parties - 1:
        store_release(ctrl, base, 0)  # visible before the new generation
        bump(ctrl, gen_i, base + 2 * LINE)
        return 0
    while True:
        r = wait_change(ctrl, gen_i, g, base + 2 * LINE, abort, spin_ns, block_ns, ppid)
        if r == ABORTED:
            return ABORTED
        if r != TIMEOUT:
            return 0


@njit(cache=True)
def wait_reach(words, idx, target, sleepers, ctrl, abort, spin_ns, ppid):
    """Wait until words[idx] >= target (a pipeline stage's count of finished
    micro-batches; words may live outside the control block): wait_change
    from each value seen, blocking in 1 ms slices.  Returns 0, or ABORTED
    when ctrl[abort] is set or the parent (ppid > 0) is gone."""
    while True:
        v = np.int64(load_acquire(words, idx))
        if v >= target:
            return 0
        if _wait_change(words, idx, v, sleepers, ctrl, abort, spin_ns, 1_000_000, ppid) == ABORTED:
            return ABORTED


def new_words(n_lines: int) -> np.ndarray:
    """A private control-block-shaped array, for tests and the in-process path."""
    return np.zeros(n_lines * LINE, dtype=np.int32)


IDLE_SPIN_CAP_NS = 2_000_000  # the longest an idle worker spins for the next call (IdleBudget)


class IdleBudget:
    """How long idle workers spin for the next command before they block: the
    running median of the last gaps between calls (with a margin), so that calls
    back to back never meet a sleeping worker, capped at IDLE_SPIN_CAP_NS -- past
    the cap, the base spin (a gap that long pays a wake-up either way).  An idle
    runtime therefore blocks at most 2 ms after its last call."""

    def __init__(self, base_ns: int, fixed: bool = False, keep: int = 16):
        self.base, self.fixed, self.keep = int(base_ns), fixed, keep
        self.gaps, self.last_end, self.budget, self.calls = [], None, int(base_ns), 0

    def start(self) -> int:
        """A command starts: record the gap since the last one; returns the budget (ns)."""
        if self.fixed:
            return self.base
        now = time.monotonic_ns()
        if self.last_end is not None:
            self.gaps.append(now - self.last_end)
            if len(self.gaps) > self.keep:
                del self.gaps[0]
            self.calls += 1
            if self.calls % 4 == 0 or len(self.gaps) < 4:  # a sort of 16 ints, every 4th call
                med = sorted(self.gaps)[len(self.gaps) // 2]
                want = med + med // 2 + 20_000
                self.budget = max(self.base, want) if want <= IDLE_SPIN_CAP_NS else self.base
        return self.budget

    def end(self) -> None:
        self.last_end = time.monotonic_ns()
