"""``python -m shmrt.bench``: shmrt on the built-in workloads, beside numpy and the installed peers.

By default a representative subset that finishes in about a minute: every
workload at one latency and one throughput batch, shmrt's ``auto`` at one
worker per core, numpy in one process, and every peer installed (ONNX
Runtime, PyTorch) at the same thread count.  ``--full`` runs the whole
matrix: worker counts 1 and N, every strategy.

Every implementation is checked against a float64 reference before it is
timed; one that fails the check is reported, never timed.  Timing is
interleaved: in every round the implementations run in a fresh random
order, and shmrt's auto is compiled twice and timed under two names (an
A/A control) whose difference says how large a difference must be to mean
anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import subprocess
import sys
import time

import numpy as np

import shmrt

from shmrt.bench.startup import first_result_s
from shmrt.bench import ceilings
from shmrt.bench import formats
from shmrt.bench import report
from shmrt.compile.tune import timeit
from shmrt.compile.cost import cpu_model
from shmrt.compile.plan import STRATEGIES
from shmrt.bench.peers import PEERS, Impl, Skip
from shmrt.bench.quantpeers import QUANT_PEERS
from shmrt.bench.timing import MODES, interleaved, rel_err  # noqa: F401 (rel_err: a public name here)
from shmrt.bench.encoders import ENCODERS
from shmrt.bench.workloads import GRAPH_WORKLOADS, WORKLOADS, numpy_forward

WORKLOADS = {**WORKLOADS, **ENCODERS}
FULL_ONLY = (*GRAPH_WORKLOADS, *ENCODERS)  # in --full runs, or named: a default run stays near a minute


def roundtrip_us(rt, n=3000):
    ts = timeit(rt.roundtrip, n, 0.0, warmup=200)
    return float(np.median(ts) * 1e6), float(np.percentile(ts, 90) * 1e6)


def tiny_call_us(rt, n=3000):
    """A tiny model (Linear 16 -> 16) called back to back with cm(x) on one row: us per call."""
    from shmrt.ir import layers as L
    with rt.compile(L.Sequential([L.Linear(16, 16)]), max_batch=4) as cm:
        x = np.ones((1, 16), np.float32)
        ts = timeit(lambda: cm(x), n, 0.0, warmup=200)
    return float(np.median(ts) * 1e6), float(np.percentile(ts, 90) * 1e6)


def barrier_us(rt, calls=300) -> dict:
    """Barrier latency among the workers: in profiled calls of a tiny
    model-parallel model (8 Linear 32x32 layers, a barrier after each), the
    time from the last worker's arrival at a barrier to every worker's
    leaving it (shmrt.profile)."""
    from shmrt.ir import layers as L
    tiny = L.Sequential([L.Linear(32, 32) for _ in range(8)])
    with rt.compile(tiny, strategy="model", max_batch=2) as cm:
        cm.input_buffer(2)[...] = 1.0
        vals = []
        for i in range(calls):
            p = cm.profile(n=2)
            if i >= 20:
                vals += p.barrier_us
    return dict(p50=float(np.median(vals)), p90=float(np.percentile(vals, 90)), barriers=len(vals))


def footprint(rt, weights_bytes) -> dict:
    """Workers' memory (PSS: shared pages split among the processes mapping
    them) after a call, and their CPU use while idle (200 ms after the last
    call, over 1 s)."""
    import psutil
    procs = [psutil.Process(p) for p in rt.pids()]
    out = {"weights_mib": weights_bytes / 2**20}
    try:
        out["workers_pss_mib"] = sum(p.memory_full_info().pss for p in procs) / 2**20
        template = rt.template_pid()
        if template is not None:
            out["template_pss_mib"] = psutil.Process(template).memory_full_info().pss / 2**20
    except (AttributeError, psutil.Error):
        pass  # no PSS on this OS
    time.sleep(0.2)
    t0 = [cpu_seconds(p) for p in procs]
    time.sleep(1.0)
    out["idle_cpu_pct"] = 100 * sum(cpu_seconds(p) - a for p, a in zip(procs, t0))
    return out


def cpu_seconds(proc) -> float:
    """CPU time of a process: nanosecond schedstat on Linux (psutil's ticks are 10 ms)."""
    try:
        with open(f"/proc/{proc.pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return sum(proc.cpu_times()[:2])


def _commit() -> str:
    """The git commit of the shmrt sources that ran (+ "-dirty" with uncommitted changes)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "unknown (not run from a git checkout)"
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (git not available)"


def machine() -> dict:
    """What the figures were measured with: commit, date, CPU, caches, versions, BLAS."""
    from importlib import metadata
    info = {"shmrt": shmrt.__version__, "commit": _commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "platform": platform.platform(), "machine": platform.machine(), "versions": {}}
    info["versions"]["python"] = platform.python_version()
    for pkg in ("numpy", "numba", "llvmlite", "scipy", "psutil", "threadpoolctl", "onnx", "onnxruntime", "torch"):
        try:
            info["versions"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    import psutil
    info["cores_physical"] = psutil.cpu_count(logical=False)
    info["cores_logical"] = psutil.cpu_count()
    info["cpu"] = cpu_model()
    info["caches"] = caches()
    from threadpoolctl import threadpool_info
    info["blas"] = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
                    f"{d.get('num_threads')} threads)" for d in threadpool_info() if d.get("user_api") == "blas"]
    return info


def _read(path) -> str:
    with open(path) as f:
        return f.read().strip()


def caches() -> str:
    """CPU 0's caches from sysfs, e.g. 'L1d 32K, L1i 32K, L2 1024K, L3 36608K' ('?' where unreadable)."""
    import glob
    out = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            level, kind, size = (_read(f"{d}/{f}") for f in ("level", "type", "size"))
        except OSError:
            continue
        out.append(f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''} {size}")
    return ", ".join(out) or "?"


class Progress:
    """Progress on stderr: a tqdm bar when tqdm is installed and stderr is a
    terminal, else one "[k/total] step" line per step."""

    def __init__(self, total: int):
        self.total, self.k, self.bar = total, 0, None
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False)
            except ImportError:
                pass

    def __call__(self, msg: str, step: bool = True):
        self.k += step
        if self.bar is not None:
            self.bar.set_description_str(msg[:60])
            self.bar.update(int(step))
        else:
            print(f"  [{self.k:>3}/{self.total}] {msg}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _stream(cm, x, y, chunk, buf):
    """Every row of x, chunk rows at a time, as a reader streams them: each chunk
    is written into a buffer in shared memory (shmrt.empty; as a reader filling
    it would), and cm(buffer) computes it where it lies, its output written
    into y."""
    for s in range(0, x.shape[0], chunk):
        e = min(x.shape[0], s + chunk)
        buf[:e - s] = x[s:e]
        y[s:e] = cm(buf[:e - s])


def _shmrt_impl(cm, wl, x, b):
    """The call a user of this workload makes (see Workload): an Impl."""
    if wl.zero_copy:
        # the rows live in shared memory already (a producer wrote them
        # there); each call reads them in place and returns a view of the
        # output: no copy either way
        cm.input_buffer(b)[...] = x
        return Impl(lambda _: cm.run_in_place(b))
    if wl.chunk:
        y = np.empty((b, *cm.plan.output.shape), np.float32)
        buf = shmrt.empty((wl.chunk, *wl.input_shape), np.float32)

        def stream(_):
            _stream(cm, x, y, wl.chunk, buf)
            return y
        return Impl(stream)
    return Impl(cm)


def call_sizes(wl, b, max_batch) -> list:
    """The row counts of the calls one timed run of b rows makes."""
    step = wl.chunk or max_batch
    return sorted({min(step, b - s) for s in range(0, b, step)}) if not wl.zero_copy else [b]


def breakdown(cm, wl, x, reps, min_time) -> dict:
    """Medians over profiled calls of where a call's time goes, in us, in the
    tier that is timed: in place for a zero-copy workload, else the
    convenience tier on one call's rows (a chunk, or at most max_batch)."""
    rows = min(x.shape[0], wl.chunk or cm.max_batch)
    xs = shmrt.asarray(x[:rows]) if wl.chunk else x[:rows]  # a stream's chunk lies in a shared buffer
    prof = (lambda: cm.profile(n=rows)) if wl.zero_copy else (lambda: cm.profile(xs))
    prof()
    ps, t_end = [], time.perf_counter() + min_time
    while len(ps) < reps and (time.perf_counter() < t_end or len(ps) < 3):
        ps.append(prof())
    med = lambda f: float(np.median([f(p) for p in ps]))
    crit = lambda f: (lambda p: f(p)[p.critical])
    return dict(rows=rows, tier="in place" if wl.zero_copy else "cm(x)", total_us=med(lambda p: p.total_us),
                copy_us=med(lambda p: p.copy_in_us + p.copy_out_us), kernel_us=med(crit(lambda p: p.kernel_us)),
                coordination_us=med(lambda p: p.coordination_us), dispatch_us=med(crit(lambda p: p.dispatch_us)),
                wait_us=med(crit(lambda p: p.wait_us)), return_us=med(lambda p: p.return_us),
                python_us=med(lambda p: p.launch_us + p.finish_us), unaccounted_us=med(lambda p: p.unaccounted_us),
                profiles=len(ps), steps=formats.step_medians(ps))


def run_workload(wl, workers, strategies, batches, mode, peers, progress, rng, weights=("float32",)):
    """Every implementation of one workload, per worker count N and batch:
    numpy in one process (its own threads), each peer at N threads and shmrt
    at N workers per strategy (auto compiled twice: the A/A control) -- checked
    against the float64 reference, then timed interleaved.  weights: shmrt's
    weight formats (formats.py); a compressed one runs at the control
    strategy only, beside the peers' int8 models (quantpeers.py), where the
    model has a layer it compresses."""
    rounds, min_time, reps, prof_time = MODES[mode]
    model = wl.model
    nbytes = sum(a.nbytes for l in model.layers for a in l.params.values())
    fmts = formats.runnable(model, weights)
    squeezed = [f for f in fmts if f != "float32"]
    data = np.random.default_rng(0)
    xs = {b: data.standard_normal((b, *wl.input_shape)).astype(np.float32) for b in batches}
    refs = {b: numpy_forward(model, xs[b], np.float64) for b in batches}
    rows, extra = [], {"roundtrip_us": {}, "barrier_us": {}, "resources": {}, "tiny_us": {}, "format_resources": {}}
    common = dict(workload=wl.name, unit=wl.unit)
    control = "auto" if "auto" in strategies else strategies[0]
    for n in workers:
        progress(f"{wl.name}: starting {n} worker(s)", step=False)
        # N = every core: Runtime() as a user makes it (the calling thread computes, beside N - 1 workers)
        with shmrt.Runtime(workers=None if n == shmrt.Runtime.default_workers() else n) as rt:
            max_batch = min(wl.max_batch, max(batches))
            if n > 0 and wl.name == "mlp":
                extra["roundtrip_us"][n] = roundtrip_us(rt, 1000 if mode == "quick" else 5000)
                extra["tiny_us"][n] = tiny_call_us(rt, 1000 if mode == "quick" else 5000)
                if n > 1:
                    extra["barrier_us"][n] = barrier_us(rt, 60 if mode == "quick" else 300)
                if squeezed:  # the workers with no model compiled: the baseline of the formats' footprints
                    extra["format_resources"][n] = {"no model": footprint(rt, 0)}
                with rt.compile(model, strategy=strategies[0], max_batch=max_batch, input_shape=wl.input_shape) as cm:
                    cm(xs[batches[0]])
                    extra["resources"][n] = footprint(rt, nbytes)  # one compiled model, after a call
                for f in squeezed:  # the same in each compressed format
                    with rt.compile(model, strategy=strategies[0], max_batch=max_batch, input_shape=wl.input_shape,
                                    weights=f) as cm:
                        cm(xs[batches[0]])
                        extra["format_resources"][n][f] = footprint(rt, formats.call_bytes(model, wl.input_shape, f))
            # numpy with its BLAS's own threads: the "vs numpy" baseline of the full matrix (by default
            # the numpy peer at N threads is the baseline instead)
            built = {("numpy (1 process)", "-"): (Impl(lambda x: numpy_forward(model, x)), True)} if mode == "full" \
                else {}
            skipped, fmt_of = [], {}
            quant = {p: v for p, v in QUANT_PEERS.items() if peers and squeezed}
            for peer, (build, fmt) in [*((p, (b, "float32")) for p, b in (PEERS.items() if peers else [])),
                                       *quant.items()]:
                fmt_of[(f"{peer} ({max(n, 1)} thr)", "-")] = fmt
                try:
                    built[(f"{peer} ({max(n, 1)} thr)", "-")] = (build(model, max(n, 1), wl.input_shape), True)
                except Skip as e:
                    skipped.append(dict(common, impl=f"{peer} ({max(n, 1)} thr)", workers=n, strategy="-",
                                        weights=fmt, skipped=str(e), ok=True, rel_err=float("nan")))
            # the A/A control is a second compiled model of the same strategy: its own weight copy and
            # arena, placed apart, as every other implementation's are (at mlp batch 1, which copies
            # stay in the L3 changed a strategy's p50 by a quarter between two compiled models)
            cms = {("shmrt", s): rt.compile(model, strategy=s.removesuffix(report.AA), max_batch=max_batch,
                                            input_shape=wl.input_shape)
                   for s in ([*strategies, control + report.AA] if "float32" in fmts else [])}
            for f in squeezed:  # a compressed format: the control strategy, no A/A twin
                fmt_of[(f"shmrt {f}", control)] = f
                cms[(f"shmrt {f}", control)] = rt.compile(model, strategy=control, max_batch=max_batch,
                                                          input_shape=wl.input_shape, weights=f)
            try:
                for b in batches:
                    impls = dict(built)
                    for key, cm in cms.items():
                        impls[key] = (_shmrt_impl(cm, wl, xs[b], b), False)
                    timed, group = {}, []
                    for (name, s), (impl, spins) in impls.items():
                        with impl.scope():
                            err = rel_err(np.asarray(impl.run(xs[b])), refs[b])
                        fmt = fmt_of.get((name, s), "float32")
                        row = dict(common, impl=name, workers=n, strategy=s, batch=b, weights=fmt, rel_err=err,
                                   tol=formats.TOL[fmt], ok=err <= formats.TOL[fmt])
                        if b == 1 and nbytes:  # the bytes of weights a latency call reads, in its format
                            row["weight_bytes"] = formats.call_bytes(model, wl.input_shape, fmt,
                                                                     peer=not formats.is_shmrt(row))
                        if (name, s) in cms:
                            cm = cms[(name, s)]
                            row["plan"] = "+".join(dict.fromkeys(cm.plan.strategy_for(cm.strategy, k)
                                                                 for k in call_sizes(wl, b, cm.max_batch)))
                        if row["ok"]:
                            timed[(name, s)] = (impl, spins)
                        group.append(row)
                    progress(f"{wl.name}: N={n} batch {b:,}: {len(timed)} implementations")
                    ts = interleaved(timed, xs[b], rounds, min_time, rng, 0.2 if mode == "full" else 0.05)
                    base = ts.get(("numpy (1 process)", "-"), ts.get((f"numpy ({max(n, 1)} thr)", "-")))
                    base = float(np.median(base)) if base is not None else None
                    for row in group:
                        t = ts.get((row["impl"], row["strategy"]))
                        if t is not None:
                            row.update(report.stats(t), items_per_s=b / float(np.median(t)),
                                       speedup=base / float(np.median(t)) if base else float("nan"))
                        key = (row["impl"], row["strategy"])
                        if key in cms and n > 0 and row["ok"] and not row["strategy"].endswith(report.AA):
                            row["breakdown"] = breakdown(cms[key], wl, xs[b], reps, prof_time)
                            if b == 1:  # the weight-streaming steps, each with the bytes it reads
                                per_layer = formats.weight_bytes(model, wl.input_shape, row["weights"])
                                row["steps"] = formats.step_bytes(row["breakdown"]["steps"], per_layer)
                    rows += group
                rows += [dict(r, batch=b) for r in skipped for b in batches]
            finally:
                for cm in cms.values():
                    cm.close()
                for impl, _ in built.values():
                    impl.close()
    extra = {k: {str(n): v for n, v in d.items()} for k, d in extra.items()}
    for k in ("roundtrip_us", "tiny_us"):
        extra[k] = {n: {"p50": v[0], "p90": v[1]} for n, v in extra[k].items()}
    return dict(rows=rows, description=f"{wl.description}, {nbytes / 2**20:.1f} MiB float32 weights", **extra)


def plan_runs(workloads, batches, mode) -> dict:
    """{workload: batches}: the given batches, else the workload's own (all of
    them with --full; its latency and throughput batch by default)."""
    out = {}
    for name in workloads:
        wl = WORKLOADS[name]()
        own = wl.batches if mode == "full" else wl.subset
        out[name] = list(batches) if batches and not wl.fixed_batch else list(own)
    return out


def run(workloads, workers, strategies, batches=None, quick=False, peers=False, mode=None, seed=None,
        weights=("float32",)):
    """Measure; returns the result dict that bench_report prints.  mode:
    "quick", "default" or "full" (quick=True is mode "quick"); weights: shmrt's
    weight formats, among formats.FORMATS."""
    t0 = time.perf_counter()
    mode = mode or ("quick" if quick else "full")
    seed = random.SystemRandom().randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    todo = plan_runs(workloads, batches, mode)
    progress = Progress(len(workers) * (1 + sum(len(b) for b in todo.values())))
    result = dict(machine=machine(), mode=mode, order_seed=seed, rows=[], roundtrip_us={}, barrier_us={},
                  resources={}, workloads={}, ceilings={}, row_bytes={}, tiny_us={}, notes={}, format_resources={},
                  weights=list(weights))
    try:
        for n in workers:
            progress(f"ceilings at {max(n, 1)} thread(s)")
            result["ceilings"][str(max(n, 1))] = ceilings.measure(max(n, 1), mode == "quick")
        for name, bs in todo.items():
            wl = WORKLOADS[name]()
            r = wl.runner(wl, workers, strategies, bs, mode, peers, progress, rng) if wl.runner else \
                run_workload(wl, workers, strategies, bs, mode, peers, progress, rng, weights)
            result["rows"] += r.pop("rows")
            result["workloads"][name] = r.pop("description")
            for k, v in r.items():
                result[k].update(v)
            result["row_bytes"][name] = int(np.prod(wl.input_shape)) * 4
    finally:
        progress.close()
    if mode != "quick":
        progress("first result: Runtime() + compile + first call in a fresh interpreter", step=False)
        result["first_result"] = {"warm": first_result_s(cold=False)}
        if mode == "full":
            result["first_result"]["cold"] = first_result_s(cold=True)
    report.versus_best_peer(result["rows"])
    formats.annotate(result)  # batch-1 read bandwidth; shmrt against the peers' int8 models
    result["format_goals"] = formats.goals(result)
    result["goals"] = report.goals(result)
    result["wall_s"] = time.perf_counter() - t0
    return result


table = report.table  # the public names of the report, kept here for callers of shmrt.bench
plot = report.plot


def _ints(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of ints, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative ints, got {text!r}")
    return vals


def main(argv=None) -> int:
    default_n = shmrt.Runtime.default_workers()
    ap = argparse.ArgumentParser(prog="python -m shmrt.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true",
                    help=f"the whole matrix: workers 1,{default_n}, every strategy, every batch (default: a "
                         f"representative subset in about a minute)")
    ap.add_argument("--workers", type=_ints, default=None,
                    help=f"comma-separated worker counts (default: {default_n}; with --full 1,{default_n})")
    ap.add_argument("--strategies", "--strategy", default=None,
                    help="comma-separated strategies among auto,data,model,hybrid,pipeline (default: auto; with "
                         "--full all)")
    ap.add_argument("--workloads", default=None,
                    help=f"comma-separated, among {','.join(WORKLOADS)} (default: all with --full; without it, all "
                         f"but the 224x224 graph workloads {', '.join(GRAPH_WORKLOADS)} and the transformer encoders "
                         f"{', '.join(ENCODERS)}, to stay near a minute)")
    ap.add_argument("--batches", type=_ints, default=None,
                    help="comma-separated batch sizes (default: each workload's own; logreg always runs 1M rows)")
    ap.add_argument("--weights", default=None,
                    help=f"comma-separated weight formats of shmrt's rows, among {','.join(formats.FORMATS)} (default: "
                         f"float32; with --full all); a compressed format adds the peers' int8 models as peers")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--peers", action="store_true",
                    help="with --full: also run onnxruntime, torch and numpy at N threads, where installed "
                         "(the default run always includes the installed peers)")
    ap.add_argument("--no-peers", action="store_true", help="run no peer, only shmrt and numpy in one process")
    ap.add_argument("--seed", type=int, default=None, help="the seed of the random order (default: a fresh one)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--plot", metavar="PATH.png", help="also plot throughput against workers (needs matplotlib)")
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    workers = args.workers or (sorted({1, default_n}) if args.full else [default_n])
    strategies = [s.strip() for s in (args.strategies or ("data,model,hybrid,pipeline,auto" if args.full else "auto"))
                  .split(",") if s.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad:
        ap.error(f"unknown strategy {bad[0]!r}; expected some of {', '.join(STRATEGIES)}")
    weights = [w.strip() for w in (args.weights or (",".join(formats.FORMATS) if args.full else "float32"))
               .split(",") if w.strip()]
    bad = [w for w in weights if w not in formats.FORMATS]
    if bad or not weights:
        ap.error(f"unknown weight format {bad[0] if bad else args.weights!r}; expected some of "
                 f"{', '.join(formats.FORMATS)}")
    if args.batches and 0 in args.batches:
        ap.error("batch sizes must be >= 1")
    default = [w for w in WORKLOADS if args.full or w not in FULL_ONLY]
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()] if args.workloads else default
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]!r}; expected some of {', '.join(WORKLOADS)}")
    peers = not args.no_peers and (args.peers or not args.full)
    result = run(workloads, workers, strategies, args.batches, peers=peers, mode=mode, seed=args.seed, weights=weights)
    print(table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0 if all(r["ok"] for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
