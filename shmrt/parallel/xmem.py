"""Cross-memory copies: reading and writing another process's memory directly.

Linux's cross-memory attach (``process_vm_readv`` / ``process_vm_writev``,
since 3.2) copies between two address spaces in one pass inside the kernel,
as Open MPI's and MPICH's single-copy intra-node transports do.  A worker
uses it to read its rows of the caller's input array and to write its rows
of the result (compile/io.py says which rows).  The caller uses the same
calls on itself (a process may always access its own memory).

The kernel allows it where ptrace would be allowed: same user, and under
Yama's ptrace_scope 1 only a declared tracer (``prctl(PR_SET_PTRACER)``) or
an ancestor -- the pool names the worker template (see ``allow_tracer``).
Anything else (seccomp, scope 2 or 3, another OS) refuses: the failing
participant records ``-errno`` and the pool falls back, once, to copying
through the arena in the caller (Pool.single_copy says why).

Addresses travel as two int32 words each in the control block (lo, hi).
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

# process_vm_readv, process_vm_writev syscall numbers; elsewhere: not available
_NR = {"x86_64": (310, 311), "amd64": (310, 311), "aarch64": (270, 271), "arm64": (270, 271),
       "riscv64": (270, 271), "ppc64le": (351, 352), "s390x": (340, 341)}
NR_READ, NR_WRITE = _NR.get(platform.machine().lower(), (-1, -1)) if sys.platform.startswith("linux") else (-1, -1)
AVAILABLE = NR_READ >= 0


@intrinsic
def _vm_copy(typingctx, nr, pid, local, remote, nbytes):
    """syscall(nr, pid, {local, nbytes}, 1, {remote, nbytes}, 1, 0): bytes copied, or -errno."""
    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        iov = ir.LiteralStructType([i64, i64])
        liov, riov = cgutils.alloca_once(builder, iov), cgutils.alloca_once(builder, iov)
        n = context.cast(builder, args[4], sig.args[4], types.int64)
        for slot, addr, ty in ((liov, args[2], sig.args[2]), (riov, args[3], sig.args[3])):
            builder.store(context.cast(builder, addr, ty, types.int64), cgutils.gep(builder, slot, 0, 0))
            builder.store(n, cgutils.gep(builder, slot, 0, 1))
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64], var_arg=True), "syscall")
        one, zero = ir.Constant(i64, 1), ir.Constant(i64, 0)
        r = builder.call(fn, [context.cast(builder, args[0], sig.args[0], types.int64),
                              context.cast(builder, args[1], sig.args[1], types.int64),
                              builder.ptrtoint(liov, i64), one, builder.ptrtoint(riov, i64), one, zero])
        errno_fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32).as_pointer(), []),
                                                  "__errno_location")
        e = builder.sext(builder.load(builder.call(errno_fn, [])), i64)  # read either way: cheap
        return builder.select(builder.icmp_signed("<", r, zero), builder.neg(e), r)
    return types.int64(nr, pid, local, remote, nbytes), codegen


@njit(cache=True, inline="always")
def addr_of(ctrl, i):
    """The 64-bit address stored in ctrl[i] (low word) and ctrl[i + 1] (high word)."""
    return (np.int64(ctrl[i + 1]) << 32) | (np.int64(ctrl[i]) & 0xFFFFFFFF)


@njit(cache=True)
def vm_copy(write, pid, local, remote, nbytes):
    """Copy nbytes between this process's address ``local`` and process pid's ``remote``:
    into local (write False) or into remote (write True).  Returns 0, or -errno."""
    if NR_READ < 0:
        return -38  # ENOSYS
    nr = NR_WRITE if write else NR_READ
    done = np.int64(0)
    while done < nbytes:  # the kernel may move less than asked (a partial transfer)
        r = _vm_copy(nr, pid, local + done, remote + done, nbytes - done)
        if r < 0:
            return r
        if r == 0:
            return -14  # EFAULT: nothing moved
        done += r
    return 0


def store_addr(ctrl, i: int, addr: int) -> None:
    """ctrl[i], ctrl[i + 1] = the low and high words of addr (published by the command's release)."""
    ctrl[i:i + 2] = np.array([addr & 0xFFFFFFFF, addr >> 32], np.uint32).view(np.int32)


def yama_scope() -> int:
    """Yama's ptrace_scope (0 when Yama is absent)."""
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def allow_tracer(pid: int) -> str | None:
    """Under Yama scope 1, let process pid and its descendants (the worker template and its
    workers) read and write this process's memory: prctl(PR_SET_PTRACER, pid).  Returns
    None, or why single copy cannot work here."""
    scope = yama_scope()
    if scope == 0:
        return None
    if scope >= 2:
        return f"Yama's ptrace_scope is {scope} (/proc/sys/kernel/yama/ptrace_scope): only an administrator may " \
               f"read another process's memory"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(0x59616D61, ctypes.c_ulong(pid), 0, 0, 0) != 0:  # PR_SET_PTRACER
            e = ctypes.get_errno()
            return f"prctl(PR_SET_PTRACER) failed: {os.strerror(e)} (errno {e})"
    except (OSError, AttributeError) as e:
        return f"prctl(PR_SET_PTRACER) is unavailable: {e}"
    return None
