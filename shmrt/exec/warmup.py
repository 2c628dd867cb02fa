"""Compile every Numba function a worker uses, in the parent, before any
worker starts: workers then load machine code from Numba's on-disk cache
instead of each compiling it (seconds per process).  Runs once per process.

On a warm cache this only loads (about 0.4 s).  On a cold one (a fresh
install, or any source edit: kernels/_cache.py keys the cache folder on
every source file) it compiles, and the time goes to (CPU seconds on the
2-core development VM, bench/compile_time.py):

- the kernels, sync and control functions, independent of each other:
  about 24 s in one process.  Two groups compile at once, one here and one
  in a child process (``python -c``, same interpreter and cache folder),
  when the cache is cold and this process may use two CPUs or more.  The
  child writes Numba's disk cache; this process then loads its functions
  from there when it compiles run_steps (a callee loaded from the cache is
  linked in from the entry's bitcode, just as a fresh one: nothing is
  compiled twice, and the machine code is the same).  Numba's cache index
  is not safe against two processes saving the same function at once, so
  each process saves only the functions of its own group (_CHILD_OWNS)
  and compiles any other one it reaches (gemm_nt, ld) in memory only.
  SHMRT_COMPILE_JOBS=1 compiles everything in this process.
- run_steps (about 11 s) and then serve (about 6 s), in this process, one
  after the other: serve links run_steps, which links every kernel, and
  Numba optimises and emits the whole linked module again for each
  (serve's time is nearly all LLVM on run_steps' code).  Nothing can
  overlap them.

serve passes run_steps its first step and stop_at_barrier as values, not
constants: Numba types literals apart, which used to compile run_steps a
second time (about a quarter of the old total) next to the specialisation
the in-process executor calls from Python.  After compile_all, run_steps
has one signature.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import threading

import numba
import numpy as np
from numba import types

_done = []
_lock = threading.Lock()

# The child's group: functions that only run_steps (and serve, and the
# parent's Python code) call, and that no kernel of the parent's group
# calls.  Each group saves only its own functions to the cache (see above).
# Named as _dispatchers() names them (tests/test_warmup.py checks each exists:
# after the move into subpackages these names matched nothing, and the child
# compiled its whole group for nothing).
_CHILD_OWNS = ("exec.recurrent._recurrent", "kernels.gemm.gemm_packed", "kernels.gemm._tile",
               "kernels.gemm.gemm_packed_bf16", "kernels.qgemm.gemm_q", "kernels.qgemm.quantize_rows",
               "kernels.qgemm._portable", "kernels.qgemm._keep",
               "kernels.recurrent.lstm_cell", "kernels.recurrent.gru_cell", "kernels.recurrent.rnn_cell",
               "kernels.rowwise.softmax", "kernels.rowwise.topk", "parallel.sync.barrier", "parallel.sync.bump",
               "parallel.sync.wake_all", "parallel.sync.wait_change", "parallel.sync.block_while",
               "parallel.sync.wait_reach", "parallel.control.call", "parallel.control.post",
               "parallel.control.wait_done", "parallel.control.finish", "parallel.control.set_word")


def _types():
    """The argument types the step interpreter passes (see executor.run_steps)."""
    f32, i32, i64 = types.float32, types.int32, types.int64
    return dict(
        f32=f32, i64=i64, b1=types.boolean,
        vec=types.Array(f32, 1, "C"),  # a slice of the arena
        wvec=types.Array(f32, 1, "C", readonly=True),  # a slice of the weights
        mat=types.Array(f32, 2, "A"),  # _view of the arena
        wmat=types.Array(f32, 2, "A", readonly=True),  # _view of the weights
        wcmat=types.Array(f32, 2, "C", readonly=True),  # a reshaped slice of the weights
        ivec=types.Array(i64, 1, "C"),  # a program row
        imat=types.Array(i64, 2, "C"),
        ctrl=types.Array(i32, 1, "C"))


def _compile_parent_group() -> None:
    """Every kernel but the recurrent ones, softmax and topk: about half of the kernels' compile time."""
    from shmrt.kernels import (affine, apply_act, argmax, conv2d, gather, global_avg_pool, layernorm, linear, pool2d,
                         pool2d_argmax, reduce_partials)
    t = _types()
    i64, b1, mat, wvec, vec, ivec = t["i64"], t["b1"], t["mat"], t["wvec"], t["vec"], t["ivec"]
    linear.compile((mat, t["wmat"], wvec, mat, i64))
    conv2d.compile((vec, t["wcmat"], wvec, vec, ivec, i64, i64, i64, i64, vec, i64, i64))
    pool2d.compile((vec, vec, ivec, i64, i64, b1, b1, b1))
    pool2d_argmax.compile((vec, ivec, ivec, i64, i64, b1, i64))
    reduce_partials.compile((mat, i64, i64, wvec, mat, i64))
    apply_act.compile((mat, mat, i64, types.float32, types.float32))
    affine.compile((mat, wvec, wvec, mat))
    gather.compile((mat, wvec, mat))
    layernorm.compile((mat, wvec, wvec, t["f32"], mat))
    global_avg_pool.compile((vec, vec, i64, i64, i64))
    argmax.compile((mat, ivec, b1))


def _compile_child_group() -> None:
    """The recurrent layer (and with it the packed GEMM in every weight format: a Linear's step reaches
    it only through run_steps), softmax and top-k, the synchronisation and the control words."""
    from shmrt.kernels import softmax, topk

    from shmrt.parallel import control as C
    from shmrt.exec.recurrent import _recurrent
    from shmrt.parallel.sync import wait_change, wait_reach
    t = _types()
    i64, mat, ctrl = t["i64"], t["mat"], t["ctrl"]
    _recurrent.compile((t["ivec"], t["wvec"], t["vec"], i64, i64, i64, i64, ctrl, i64, i64, i64, t["vec"], i64))
    wait_reach.compile((ctrl, i64, i64, i64, ctrl, i64, i64, i64))
    softmax.compile((mat, mat, t["b1"], i64, i64))
    topk.compile((mat, mat, t["imat"]))
    C.call.compile((ctrl,) + (i64,) * 7)
    C.finish.compile((ctrl, i64, i64))
    C.set_word.compile((ctrl, i64, i64))
    wait_change.compile((ctrl,) + (i64,) * 7)


def _dispatchers():
    """{"module.function": dispatcher} for every cached Numba function of shmrt and kernels."""
    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher
    found = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or not name.startswith("shmrt."):
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == name \
                    and isinstance(getattr(obj, "_cache", None), FunctionCache):
                found[f"{name.split('.', 1)[1]}.{attr}"] = obj
    return found


@contextlib.contextmanager
def _saving_only(owned):
    """Inside: only the dispatchers named in ``owned`` read or write Numba's
    disk cache; any other one reached is compiled in memory only."""
    from numba.core.caching import NullCache
    others = {name: d for name, d in _dispatchers().items() if name not in owned}
    saved = {name: d._cache for name, d in others.items()}
    for d in others.values():
        d._cache = NullCache()
    try:
        yield
    finally:
        for name, d in others.items():
            d._cache = saved[name]


def _child_main() -> None:
    """The child process's work (``python -c``): the child group, saved to the cache."""
    from shmrt.exec import executor  # noqa: F401  (defines every dispatcher before _saving_only lists them)
    with _saving_only(set(_CHILD_OWNS)):
        _compile_child_group()


def _jobs() -> int:
    """SHMRT_COMPILE_JOBS, or the CPUs this process may use: above 1, a cold
    cache is compiled in two processes (there are two groups)."""
    from shmrt import config
    if config.COMPILE_JOBS is not None:
        if config.COMPILE_JOBS < 1:
            raise ValueError(f"SHMRT_COMPILE_JOBS must be a positive int, got {config.COMPILE_JOBS}")
        return config.COMPILE_JOBS
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _compile_kernels_in_parallel() -> None:
    """The parent group here while a child process compiles the child group; raises if the child fails."""
    from shmrt.parallel.launch import worker_env
    env = worker_env()  # as a worker's: this package first on the path, one thread
    if numba.config.CACHE_DIR:  # the very folder this process uses, even if a source changed since
        env["NUMBA_CACHE_DIR"] = numba.config.CACHE_DIR
    with tempfile.TemporaryFile() as err:  # the child's stdout and stderr
        proc = subprocess.Popen([sys.executable, "-c", "from shmrt.exec import warmup; warmup._child_main()"],
                                env=env, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            with _saving_only(set(_dispatchers()) - set(_CHILD_OWNS)):
                _compile_parent_group()
            rc = proc.wait()
        finally:
            if proc.poll() is None:  # this process failed or was interrupted: the child's work is moot
                proc.kill()
                proc.wait()
        err.seek(0)
        text = err.read().decode(errors="replace")
    if rc != 0:
        raise RuntimeError(f"shmrt: compiling kernels in a child process failed (exit code {rc}):\n{text.rstrip()}")
    if text:
        sys.stderr.write(text)  # its warnings, as this process would have printed them


def compile_all() -> None:
    with _lock:
        if not _done:
            _compile_all()
            _done.append(True)


def _compile_all() -> None:
    from shmrt.parallel import control as C
    from shmrt.ir import layers as L
    from shmrt.compile import plan as planner
    from shmrt.exec.executor import lead, run_in_process, serve
    from shmrt.parallel.store import Segment, WeightStore
    from shmrt.parallel.sync import barrier, wait_change

    i64 = types.int64
    ctrl_t = types.Array(types.int32, 1, "C")
    # A cold cache?  get_word is the cheapest function to find out with (and the child does not own it).
    C.get_word.compile((ctrl_t, i64))
    if C.get_word.stats.cache_misses:
        if _jobs() > 1:
            _compile_kernels_in_parallel()
        else:  # one by one, rather than nested in run_steps' compile (measured: that takes longer)
            _compile_parent_group()
            _compile_child_group()

    # run_steps, through the in-process executor: every kernel comes from memory or the cache
    m = L.Sequential([L.Linear(3, 4), L.ReLU(), L.Linear(4, 2)])
    p = planner.build(m, 2, "data", 4, None)
    w = WeightStore.pack(p.tensors)
    try:
        arena = np.zeros(p.arena_floats, np.float32)
        arena[p.input_off:p.input_off + 3 * p.in_features] = 0.5
        run_in_process(p.programs["data"], w.flat, arena, 3)
        progs = np.ascontiguousarray(p.programs["data"][None])
        w_type = numba.typeof(w.flat)
    finally:
        w.segment.close()
    seg = Segment.create(4096)
    try:
        ctrl = seg.array(np.int32, 1024)
        serve.compile((numba.typeof(ctrl), i64, i64, numba.typeof(progs), w_type, numba.typeof(arena),
                       i64, i64, i64, i64, i64, numba.typeof(arena), i64, i64))
        prof_t = types.Array(i64, 1, "C")
        lead.compile((numba.typeof(ctrl), i64, i64, i64, i64, i64, numba.typeof(progs), w_type, numba.typeof(arena),
                      i64, i64, i64, prof_t, prof_t, numba.typeof(arena)))
        ctrl[C.GEN] = 1
        wait_change(ctrl, C.GEN, 0, C.GEN_SLEEP, C.ZERO, 0, 0, 0)
        barrier(ctrl, C.BARRIER, 1, C.ABORT, 0, 0, 0)
        C.call(ctrl, C.OP_NOP, 0, 0, 0, 0, 0, 0)
        C.wait_done(ctrl, 0, 0, 0)
        C.finish(ctrl, 0, 0)
        C.set_word(ctrl, C.ABORT, 0)
        C.get_word(ctrl, C.ABORT)
        del ctrl
    finally:
        seg.close()
