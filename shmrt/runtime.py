"""Public API: Runtime, CompiledModel, run.

One request, end to end:
  cm(x) -> validate and cast x -> copy into the arena's input rows (shared
  memory) -> pool.command(RUN) (or the in-process executor when workers=0)
  -> every worker runs its program -> copy the output rows out.
Two tiers, like mpi4py's: ``cm(x)`` copies in and out; ``cm.input_buffer(n)``
and ``cm.run_in_place(n)`` hand out views of the shared arena itself.
"""
from __future__ import annotations

import atexit
import dataclasses
import itertools
import os
import threading
import weakref

import numpy as np

from shmrt import config
from shmrt.compile import plan as planner
from shmrt.compile.io import IO_ROWS, solo_rows
from shmrt.compile.isa import INPUT
from shmrt.exec import calls, sequence
from shmrt.exec.executor import run_in_process
from shmrt.exec.profile import Profile, run_profiled
from shmrt.parallel import control as C
from shmrt.parallel.pool import Pool, default_workers
from shmrt.parallel.store import Segment, WeightStore, align

_model_ids = itertools.count()
_NO_PROF = np.zeros(0, np.int64)
_live_runtimes: "weakref.WeakSet[Runtime]" = weakref.WeakSet()


@atexit.register
def _close_all():
    for rt in list(_live_runtimes):
        rt.close()


_reclaimed = []


def _reclaim_once() -> None:
    """At the first Runtime of this process: remove the segments of shmrt processes that
    were killed outright (nobody was left to unlink them; see parallel/reclaim.py)."""
    if _reclaimed:
        return
    from shmrt.parallel.reclaim import reclaim_message, reclaim_stale
    _reclaimed.append(reclaim_stale())
    msg = reclaim_message(*_reclaimed[0])
    if msg:
        import logging
        logging.getLogger("shmrt").warning(msg)


def _check_workers(workers):
    if workers is None:
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be None (one per physical core), 0 (run in this process) "
                         f"or a positive int, got {workers!r}")
    return int(workers)


class Runtime:
    """A pool of pinned worker processes that compiled models run on.

    ``workers=None``: one participant per physical core -- the calling thread
    computes its share of every call, beside one worker process per other
    core (``workers`` is then the number of participants, ``pids()`` one
    fewer); ``workers=N``: N worker processes, the calling thread waits;
    ``workers=0``: no processes, the plan runs sequentially in this process
    (the reference and debugging path).  SHMRT_CALLER=0 keeps the calling
    thread out of the work for workers=None too.
    """

    def __init__(self, workers=None):
        self.workers = _check_workers(workers)
        # the calling thread computes where deaths are reported as they happen (a forked template)
        caller = workers is None and self.workers >= 2 and config.CALLER and hasattr(os, "fork")
        self._lock = threading.RLock()
        self._models = {}  # id -> CompiledModel, alive until closed with the runtime
        self._closed = False
        self.pool = None
        self._rates = None
        _reclaim_once()
        from shmrt.exec import warmup
        self._blas_threads = None  # this process's BLAS threads before a computing caller set them to 1
        warmup.compile_all()  # first: the template then loads what it compiled from Numba's cache
        if self.workers > 0:
            self.pool = Pool(self.workers - caller, caller=caller)
            if caller:
                from shmrt.parallel.cpus import scipy_blas_threads
                self._blas_threads = scipy_blas_threads(1)
        _live_runtimes.add(self)

    def compile(self, model, strategy="auto", max_batch=256, input_shape=None, autotune=False,
                max_seq_len=None, weights=None) -> "CompiledModel":
        """Plan ``model`` for this runtime's workers and place it in shared memory.

        strategy: "auto" (the planner picks, per batch size, among the plans
        below: predicted by the cost model, or measured with autotune=True),
        "data", "model", "hybrid" or "pipeline" (see ``explain()``).
        input_shape: the per-sample shape, when the model does not fix it
        ((T, F) for recurrent models: T steps of F features).
        autotune: time every candidate plan at batch sizes 1, 4, 16, ...,
        max_batch on this machine and keep the fastest for each; the result
        is cached per (model, max_batch, workers, machine).
        max_seq_len: a sequence model's longest call (exec/sequence.py).
        weights: None (float32; layers loaded quantized run int8 on their own scales), "float32", "bf16",
        "int8" or "int4": the format of every Linear and RNN/LSTM/GRU weight (compile/compress.py)."""
        self._check_open()
        if sequence.is_sequence(model):
            return sequence.compile_sequence(self, model, strategy, max_batch, max_seq_len, CompiledModel, weights)
        if not isinstance(autotune, bool):
            raise TypeError(f"autotune must be True or False, got {autotune!r}")
        P = max(self.workers, 1)
        rates = self.rates() if P > 1 and strategy in ("auto", "hybrid", "pipeline") else None
        plan = planner.build(model, P, strategy, max_batch, input_shape, rates, weights)
        classes = getattr(model, "classes", None)
        if classes is not None and tuple(plan.output.shape) != (len(classes),):
            raise ValueError(f"the model names {len(classes)} classes, so its output must be (N, {len(classes)}) "
                             f"probabilities, got (N, {', '.join(map(str, plan.output.shape))})")
        cm = CompiledModel(self, plan, strategy)
        cm.classes, cm.output_1d = classes, getattr(model, "output_1d", False)
        if autotune and len(plan.programs) > 1:
            try:
                from shmrt.compile.tune import autotune as tune
                cm.plan = dataclasses.replace(plan, tuned=tune(cm, model))  # the plan itself is never changed
            except BaseException:
                cm.close()
                raise
        return cm

    def rates(self):
        """The cost model's rates for this runtime (measured once; see shmrt.cost)."""
        if self._rates is None:
            from shmrt.compile import cost
            with self._lock:
                self._rates = cost.calibrate(self) if self.pool is not None else \
                    cost.Rates(source="defaults (not measured: workers=0 runs in process, one program)")
        return self._rates

    def roundtrip(self) -> None:
        """One empty command parent -> every worker -> parent (for benchmarks)."""
        self._check_open()
        if self.pool is not None:
            with self._lock:
                self.pool.command(C.OP_NOP)

    def _inject_fault(self, worker: int, kind: int = 1) -> None:
        """Test hook: worker ``worker`` raises inside its next RUN (kind 1: ZeroDivisionError,
        2: ValueError), as a kernel would; the call then raises that error (see WorkerError)."""
        self._check_open()
        if self.pool is None or not 0 <= worker < self.pool.n or kind not in (1, 2):
            raise ValueError(f"_inject_fault: expected a worker process in 0..{self.workers - 1} and kind 1 or 2, "
                             f"got worker={worker!r}, kind={kind!r}")
        C.set_word(self.pool.ctrl, C.wline(worker) + C.W_FAULT, kind)

    def pids(self) -> list:
        """The worker processes' pids (empty when workers=0; one fewer than ``workers``
        when the calling thread computes too, as with workers=None)."""
        return self.pool.pids() if self.pool is not None else []

    def template_pid(self):
        """The pid of the idle template process the workers are forked from (None: none)."""
        proc = getattr(self.pool.launcher, "proc", None) if self.pool is not None else None
        return proc.pid if proc is not None else None

    @staticmethod
    def default_workers() -> int:
        """How many workers ``Runtime(workers=None)`` starts: SHMRT_WORKERS, else every physical core."""
        return default_workers()

    def _check_open(self):
        if self._closed:
            raise RuntimeError("this shmrt.Runtime is closed; create a new one")

    def close(self) -> None:
        """Stop the workers and remove every shared segment; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.pool is not None:  # workers first: they must not see segments vanish
                self.pool.close()
                if self._blas_threads is not None and not any(r.pool is not None and r.pool.caller and r is not self
                                                              for r in _live_runtimes):
                    from shmrt.parallel.cpus import scipy_blas_threads
                    scipy_blas_threads(self._blas_threads)
            for cm in list(self._models.values()):
                cm._release()
        _live_runtimes.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return f"shmrt.Runtime(workers={self.workers}, {state})"


_REFUSED_KINDS = {"c": "complex", "O": "object", "U": "string", "S": "bytes", "M": "datetime",
                  "m": "timedelta", "V": "structured"}


class CompiledModel:
    """A model placed in shared memory with its plan; call it like a function."""

    classes = None  # a classifier's labels (see predict)
    output_1d = False
    _fast_rows = 0  # until placed (see __init__)

    def __init__(self, rt: Runtime, plan: planner.Plan, strategy: str):
        self.runtime, self.plan, self.strategy = rt, plan, strategy
        self.id = next(_model_ids)
        self.max_batch = plan.max_batch
        self.in_features = plan.in_features
        self._row_bytes = calls.row_bytes(plan.output)
        self.weights = WeightStore.pack(plan.tensors)
        try:
            self._programs = calls.stack(list(plan.programs.values()))
            # after the plan's arena: each worker's profile record (int64 per step + 1)
            self._prof_off = align(plan.arena_floats)
            # each worker's record, then the parent's two stamps (executor.call_stamped)
            rec = plan.workers * (self._programs.shape[2] + 1) + 2
            self._arena_seg = Segment.create((self._prof_off + 2 * rec) * 4)
            self.arena = self._arena_seg.array(np.float32)
            solo = np.array([solo_rows(p) for p in plan.programs.values()], np.int64)
            self._inp = self.arena[plan.input_off:plan.input_off + plan.max_batch * plan.in_features]
            self._prog_for = {}  # n -> (program name, index) of the plan's choice: _run's cache
            # the rows of a call that _small runs (an input of fewer bytes than a single copy pays for)
            self._fast_rows = min(plan.max_batch, (calls.SINGLE_COPY_MIN_BYTES - 1) // (4 * plan.in_features))
            self._local = (self._programs, self.weights.flat, self.arena, _NO_PROF, solo, self.arena[0:0])
            # where the calling thread may read its rows of x in place (exec/calls.py)
            self._direct = [bool(p[-1, -IO_ROWS, INPUT.direct]) for p in plan.programs.values()]
            # the calling thread's share of such a call's rows, balanced by speed (calls.balance)
            self._share, self._stamps = 1.0 / plan.workers, np.zeros(3, np.int64)
            rt._models[self.id] = self
            if rt.pool is not None:
                rt.pool.models[self.id] = {
                    "weights": self.weights.segment.name, "weights_bytes": self.weights.nbytes,
                    "arena": self._arena_seg.name, "arena_bytes": self._arena_seg.nbytes,
                    "programs": self._programs.ravel().tolist(), "programs_shape": list(self._programs.shape)}
                rt.pool.sync_models()
        except BaseException:
            self._release()
            raise
        self._released = False

    # -- convenience tier ----------------------------------------------------
    def __call__(self, *xs):
        x = xs[0] if len(xs) == 1 else None
        if type(x) is np.ndarray and x.dtype == np.float32 and x.shape[1:] == self.plan.in_shape \
                and 0 < x.shape[0] <= self._fast_rows and x.flags.c_contiguous and self.plan.output.kind == "dense" \
                and not self._released and not self.plan.inputs:
            y = self._small(x)
            return calls.split(self.plan, y) if self.plan.outputs else y
        self._check_open()
        if self.plan.inputs:  # several inputs: packed side by side into one row (compile/several.py)
            x, squeeze = calls.pack(self.plan, xs, _REFUSED_KINDS)
        elif len(xs) != 1:
            raise TypeError(f"this model takes one input of shape (N, {', '.join(map(str, self.plan.in_shape))}), "
                            f"got {len(xs)}")
        else:
            x, squeeze = self._validate(x)
        y = self._call_rows(x, squeeze)
        return calls.split(self.plan, y) if self.plan.outputs else y

    def _call_rows(self, x, squeeze):
        n = x.shape[0]
        o = self.plan.output
        calls.check_room(n, self._row_bytes)
        outs = calls.results(o, n)
        with self.runtime._lock:  # one call at a time owns the arena
            self.runtime._check_open()
            calls.call(self, x, outs)
        if o.paired:
            return (outs[0][0], outs[1][0]) if squeeze else tuple(outs)
        return outs[0][0] if squeeze else outs[0]

    def _small(self, x):
        """cm(x) for a float32 batch of at most max_batch rows and under calls.SINGLE_COPY_MIN_BYTES
        (the latency-bound call), in as few Python operations as the general path allows."""
        n, rt = x.shape[0], self.runtime
        with rt._lock:
            if rt._closed:
                rt._check_open()
            self._inp[:n * self.in_features] = x.reshape(-1)
            self._run(n)
            return self._output_view(n).copy()

    # -- scikit-learn's meaning (models loaded from an estimator) --------------
    def predict(self, x):
        """A classifier's labels (``classes[argmax]`` of its probabilities), else the model's output
        (``[N]`` for a single-target regressor): what the estimator's ``predict`` returns."""
        y = self(x)
        if self.classes is not None:
            return self.classes[np.argmax(y, axis=-1)]
        if self.output_1d and isinstance(y, np.ndarray) and y.shape[-1:] == (1,):
            return y[..., 0]
        return y

    def predict_proba(self, x):
        """A classifier's probability per class, in ``classes`` order."""
        if self.classes is None:
            raise TypeError("predict_proba needs a classifier: this model has no classes (load a fitted "
                            "scikit-learn classifier, or pass classes= to shmrt.Sequential)")
        return self(x)

    def _validate(self, x):
        shape = self.plan.in_shape
        want = "(N, " + ", ".join(map(str, shape)) + ")"
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as e:
                raise TypeError(f"expected a numpy array of shape {want}, got {type(x).__name__}: {e}") from None
        if x.dtype.kind in _REFUSED_KINDS:
            raise TypeError(f"expected a real numeric array (float, int or bool, computed as float32) of shape "
                            f"{want}, got dtype {x.dtype} ({_REFUSED_KINDS[x.dtype.kind]})")
        squeeze = x.ndim == len(shape)
        if squeeze:
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"expected input of shape {want} or {tuple(shape)}, got {x.shape}")
        return x.reshape(x.shape[0], self.in_features), squeeze

    # -- zero-copy tier ----------------------------------------------------
    def input_buffer(self, n=None) -> np.ndarray:
        """The arena's input rows [n, *input shape], in shared memory: write here,
        then call ``run_in_place(n)``.  Valid until the model is closed."""
        n = self._check_n(n)
        self._check_open()
        off = self.plan.input_off
        return self.arena[off:off + n * self.in_features].reshape(n, *self.plan.in_shape)

    def run_in_place(self, n=None):
        """Run on the first n rows of ``input_buffer`` and return views of the
        output in the arena (valid until the next call): an array, or
        (values, indices) for TopK."""
        return self._run_in_place(n)

    def _run_in_place(self, n, program=None):
        """run_in_place, with the program named (autotune times each one) or the plan's choice for n."""
        n = self._check_n(n)
        self._check_open()
        if n > 0:
            with self.runtime._lock:
                self.runtime._check_open()
                self._run(n, program)
        return self._output_view(n)

    def _run(self, n, program=None):
        """Run program ``program`` (default: the plan's choice for n, cached) on the first n rows
        of the arena's input; the caller holds the runtime's lock."""
        got = self._prog_for.get(n) if program is None else None
        if got is None:
            plan = self.plan
            name = program or plan.strategy_for(self.strategy, n)
            got = (name, plan.program_index(name))
            if program is None:
                self._prog_for[n] = got
        name, index = got
        self._reset_counters(name)
        if self.runtime.pool is None:
            run_in_process(self.plan.programs[name], self.weights.flat, self.arena, n)
        else:
            self.runtime.pool.command(C.OP_RUN, self.id, n, index, local=self._local)

    def _reset_counters(self, name):
        """A pipeline's stage counters start each call at zero (published by the command)."""
        c = self.plan.counters.get(name)
        if c is not None:
            self.arena[c[0]:c[0] + c[1]] = 0

    def _output_view(self, n):
        o = self.plan.output
        if o.kind == "argmax":
            return self.arena[o.off:o.off + 2 * n * o.width].view(np.int64).reshape(n, *o.shape)
        if o.ld:  # the last step of a sequence buffer: rows are o.ld apart
            return self.arena[o.off:o.off + n * o.ld].reshape(n, o.ld)[:, :o.width]
        vals = self.arena[o.off:o.off + n * o.width].reshape(n, *o.shape)
        if o.paired:
            return vals, self.arena[o.idx_off:o.idx_off + 2 * n * o.width].view(np.int64).reshape(n, *o.shape)
        return vals

    def _check_n(self, n):
        if n is None:
            return self.max_batch
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= self.max_batch:
            raise ValueError(f"n must be an int in 0..max_batch={self.max_batch}, got {n!r}")
        return int(n)

    def _check_open(self):
        if getattr(self, "_released", True):
            raise RuntimeError("this compiled model is closed (its runtime was closed)")

    # -- explain and profile ----------------------------------------------
    def profile(self, x=None, *, n=None) -> "Profile":
        """Run once and return where the time went (see shmrt.profile):
        ``profile(x)`` times the convenience tier, ``cm(x)`` on at most
        max_batch rows (copy in, the call, copy out); ``profile(n=k)`` the
        zero-copy tier, ``run_in_place(k)`` on the rows already in
        ``input_buffer`` (no copies).  ``str()`` of the result is a table;
        ``.as_dict()`` the figures."""
        self._check_open()
        rt = self.runtime
        if rt.pool is None:
            raise ValueError("profile() times the workers; this runtime runs in process (workers=0): "
                             "expected a Runtime with workers >= 1")
        if (x is None) == (n is None):
            raise TypeError("profile() takes either x (the convenience tier) or n= (the zero-copy tier), "
                            f"expected exactly one, got {'neither' if x is None else 'both'}")
        if x is not None:
            x, _ = self._validate(x)
            n = x.shape[0]
        elif isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise ValueError(f"n must be an int in 1..max_batch={self.max_batch}, got {n!r}")
        if not 1 <= n <= self.max_batch:
            raise ValueError(f"profile() runs one call: expected 1..max_batch={self.max_batch} rows, got {n}")
        return run_profiled(self, x, n)

    # -- explain -----------------------------------------------------------
    def explain(self, batch=None) -> str:
        """The plan at a batch size (default max_batch): for "auto", each
        candidate plan's predicted time (or the measured choice) and the one
        chosen; each worker's pid and CPUs (as the OS has them); then per
        layer its partition, worker group, slices, flops, bytes, barriers
        and predicted time -- next to the same layer's predicted time in
        the other plans, which is why it was chosen."""
        from shmrt.compile.explain import explain
        n = self.max_batch if batch is None else self._check_n(batch)
        pool = self.runtime.pool  # each worker's CPUs, as the OS has them now
        workers = pool.describe() + "\n" + pool.describe_io() if pool is not None else \
            "workers: in process (workers=0)"
        return explain(self.plan, self.strategy, n, self.weights.nbytes, workers)

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        """Detach the workers from this model and free its shared memory."""
        rt = self.runtime
        with rt._lock:
            if rt.pool is not None and self.id in rt.pool.models and not rt._closed:
                del rt.pool.models[self.id]
                rt.pool.sync_models()
            self._release()

    def _release(self):
        self._released = True
        self.arena = self._local = None
        if hasattr(self, "_arena_seg"):
            self._arena_seg.close()
        self.weights.segment.close()
        self.runtime._models.pop(self.id, None)
        if self.runtime.pool is not None:
            self.runtime.pool.models.pop(self.id, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<shmrt.CompiledModel id={self.id} strategy={self.strategy!r} workers={self.plan.workers}>"


_default = {}


def run(model, x, **compile_options):
    """One-shot: run ``model`` on ``x`` on a default runtime (created on first use,
    closed at exit).  Compiled models are cached per model object."""
    rt = _default.get("rt")
    if rt is None or rt._closed:
        rt = _default["rt"] = Runtime()
        _default["cache"] = weakref.WeakKeyDictionary()
    cache = _default["cache"]
    key = tuple(sorted(compile_options.items()))
    entry = cache.get(model)
    if entry is None or entry[0] != key:
        if entry is not None:
            entry[1].close()
        entry = cache[model] = (key, rt.compile(model, **compile_options))
    return entry[1](x)
