"""``python -m shmrt.bench``: shmrt on the built-in workloads, next to numpy in one process.

For each worker count and strategy: latency p50 / p90 and throughput of
``cm(x)`` (the convenience tier, copies included), the speedup over the
same model in numpy (float32, numpy's own BLAS threads) measured in the
same run, and the empty-command round trip parent -> workers -> parent.
Every configuration is checked against a float64 reference before it is
timed; a configuration that fails the check is reported, never timed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

import shmrt

from . import ceilings
from .ceilings import timeit
from .peers import PEERS, Impl, Skip
from .workloads import WORKLOADS, numpy_forward

def rel_err(y, ref) -> float:
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def roundtrip_us(rt, n=3000):
    ts = timeit(rt.roundtrip, n, 0.0, warmup=200)
    return float(np.median(ts) * 1e6), float(np.percentile(ts, 90) * 1e6)


def footprint(rt, weights_bytes) -> dict:
    """Workers' memory (PSS: shared pages split among the processes mapping
    them) after a call, and their CPU use while idle (200 ms after the last
    call, over 1 s)."""
    import psutil
    procs = [psutil.Process(p) for p in rt.pids()]
    out = {"weights_mib": weights_bytes / 2**20}
    try:
        out["workers_pss_mib"] = sum(p.memory_full_info().pss for p in procs) / 2**20
        template = getattr(rt.pool.launcher, "proc", None)
        if template is not None:
            out["template_pss_mib"] = psutil.Process(template.pid).memory_full_info().pss / 2**20
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


def machine() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "numpy": np.__version__}
    try:
        import numba
        info["numba"] = numba.__version__
    except ImportError:
        pass
    try:
        import psutil
        info["cores_physical"] = psutil.cpu_count(logical=False)
        info["cores_logical"] = psutil.cpu_count()
    except ImportError:
        info["cores_logical"] = os.cpu_count()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        info["cpu"] = platform.processor()
    info["caches"] = caches()
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
                        f"{d.get('num_threads')} threads)" for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


def caches() -> str:
    """CPU 0's caches from sysfs, e.g. 'L1d 32K, L1i 32K, L2 1024K, L3 36608K' ('?' where unreadable)."""
    import glob
    out = []
    for d in sorted(glob.glob("/sys/devices/system/cpu/cpu0/cache/index*")):
        try:
            level, kind, size = (open(f"{d}/{f}").read().strip() for f in ("level", "type", "size"))
        except OSError:
            continue
        out.append(f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''} {size}")
    return ", ".join(out) or "?"


def _progress(msg):
    """One line per step on stderr; a tqdm bar instead when tqdm is installed and stderr is a terminal."""
    bar = _bar.get("bar")
    if bar is not None:
        bar.set_description_str(msg[:60])
        bar.update(1)
    else:
        print(f"  .. {msg}", file=sys.stderr, flush=True)


_bar = {}


def _start_progress():
    try:
        from tqdm import tqdm
    except ImportError:
        return
    if sys.stderr.isatty():
        _bar["bar"] = tqdm(file=sys.stderr, unit="step", leave=False)


def _stop_progress():
    bar = _bar.pop("bar", None)
    if bar is not None:
        bar.close()


def plot(result, path):
    """Throughput against workers (threads for peers), one panel per workload and batch."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install 'shmrt[plot]')")
    panels = sorted({(r["workload"], r["batch"]) for r in result["rows"]}, key=lambda k: (list(result["workloads"]).index(k[0]), k[1]))
    cols = 2
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(11, 3.2 * ((len(panels) + 1) // cols)),
                             squeeze=False)
    for ax, (wl, b) in zip(axes.ravel(), panels):
        series = {}
        for r in result["rows"]:
            if r["workload"] != wl or r["batch"] != b or "p50_ms" not in r or r["impl"] == "numpy (1 process)":
                continue
            label = f"shmrt {r['strategy']}" if r["impl"] == "shmrt" else r["impl"].split(" (")[0]
            series.setdefault(label, []).append((max(r["workers"], 1), r["items_per_s"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    linewidth=2.5 if label.startswith("shmrt") else 1.2)
        ax.set_title(f"{wl}, batch {b:,}", fontsize=10)
        ax.set_xlabel("workers / threads")
        ax.set_ylabel(f"{next(r['unit'] for r in result['rows'] if r['workload'] == wl)}/s")
        ax.set_xticks(sorted({max(r["workers"], 1) for r in result["rows"]}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(f"shmrt and peers on {m.get('cpu', '?')}, {m.get('cores_logical')} logical cores (higher is better)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _stream(cm, x, y, chunk):
    """Every row of x through the zero-copy tier, chunk rows at a time: each
    chunk is written into the shared input buffer (as a reader filling it
    would), computed in place, and its output read from the arena."""
    for s in range(0, x.shape[0], chunk):
        e = min(x.shape[0], s + chunk)
        cm.input_buffer(e - s)[...] = x[s:e]
        y[s:e] = cm.run_in_place(e - s)


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

        def stream(_):
            _stream(cm, x, y, wl.chunk)
            return y
        return Impl(stream)
    return Impl(cm)


def breakdown(cm, x, reps, min_time) -> dict:
    """Medians over profiled calls (CompiledModel.profile) of where a call's
    time goes, in us: copies, the slowest worker's kernels, coordination
    (dispatch, barrier waits, return).  x is cut to max_batch rows."""
    x = x[:cm.max_batch]
    cm.profile(x)
    ps, t_end = [], time.perf_counter() + min_time
    while len(ps) < reps and (time.perf_counter() < t_end or len(ps) < 3):
        ps.append(cm.profile(x))
    med = lambda f: float(np.median([f(p) for p in ps]))
    return dict(rows=x.shape[0], total_us=med(lambda p: p.total_us), copy_us=med(lambda p: p.copy_in_us + p.copy_out_us),
                kernel_us=med(lambda p: max(p.kernel_us)), coordination_us=med(lambda p: p.coordination_us),
                barrier_wait_us=med(lambda p: max(p.wait_us)), dispatch_us=med(lambda p: max(p.dispatch_us)),
                return_us=med(lambda p: p.return_us), profiles=len(ps))


def interleaved(impls, x, reps, min_time, rounds, pause):
    """Per-call seconds of each Impl, timed in ``rounds`` rounds of a stretch
    each (at least reps/rounds calls or min_time/rounds seconds), one after
    the other, so that drift of the machine hits all alike.  A warm-up call
    each first; ``pause`` seconds after each stretch of an impl whose
    threads spin on after a call (OpenBLAS, onnxruntime)."""
    times = {k: [] for k in impls}
    for k, (impl, _) in impls.items():
        with impl.scope():
            impl.run(x)
    for _ in range(rounds):
        for k, (impl, spins) in impls.items():
            with impl.scope():
                times[k] += list(timeit(lambda: impl.run(x), max(1, reps // rounds), min_time / rounds, warmup=0))
            if spins:
                time.sleep(pause)
    return {k: np.array(v) for k, v in times.items()}


def run_workload(wl, workers, strategies, batches, quick=False, peers=False):
    """Every implementation of one workload, per worker count N and batch:
    numpy in one process (its own threads), each peer at N threads (with
    --peers) and shmrt at N workers per strategy -- checked against the
    float64 reference, then timed interleaved."""
    model = wl.model
    nbytes = sum(a.nbytes for l in model.layers for a in l.params.values())
    rng = np.random.default_rng(0)
    batches = batches or wl.batches
    xs = {b: rng.standard_normal((b, *wl.input_shape)).astype(np.float32) for b in batches}
    refs = {b: numpy_forward(model, xs[b], np.float64) for b in batches}
    reps, min_time, rounds, pause = (3, 0.2, 1, 0.05) if quick else (10, 1.0, 5, 0.2)
    rows, roundtrips, resources = [], {}, {}
    common = dict(workload=wl.name, unit=wl.unit)
    for n in workers:
        _progress(f"{wl.name}: starting {n} worker(s)")
        with shmrt.Runtime(workers=n) as rt:
            if n > 0 and wl.name == "mlp":
                roundtrips[n] = roundtrip_us(rt, 1000 if quick else 5000)
                with rt.compile(model, strategy=strategies[0], max_batch=min(wl.max_batch, max(batches)),
                                input_shape=wl.input_shape) as cm:
                    cm(xs[batches[0]])
                    resources[n] = footprint(rt, nbytes)  # one compiled model, after a call
            built = {("numpy (1 process)", "-"): (Impl(lambda x: numpy_forward(model, x)), True)}
            skipped = []
            for peer, build in (PEERS.items() if peers else []):
                try:
                    built[(f"{peer} ({max(n, 1)} thr)", "-")] = (build(model, max(n, 1), wl.input_shape), True)
                except Skip as e:
                    skipped.append(dict(common, impl=f"{peer} ({max(n, 1)} thr)", workers=n, strategy="-",
                                        skipped=str(e), ok=True, rel_err=float("nan")))
            cms = {s: rt.compile(model, strategy=s, max_batch=min(wl.max_batch, max(batches)),
                                 input_shape=wl.input_shape) for s in strategies}
            try:
                for b in batches:
                    impls = dict(built)
                    impls.update({("shmrt", s): (_shmrt_impl(cm, wl, xs[b], b), False) for s, cm in cms.items()})
                    timed, group = {}, []
                    for (name, s), (impl, spins) in impls.items():
                        _progress(f"{wl.name}: N={n} batch {b}: checking {name} {s}")
                        with impl.scope():
                            err = rel_err(np.asarray(impl.run(xs[b])), refs[b])
                        row = dict(common, impl=name, workers=n, strategy=s, batch=b, rel_err=err, ok=err <= 1e-5)
                        if name == "shmrt":
                            row["plan"] = cms[s].plan.strategy_for(s, min(b, cms[s].max_batch))
                        if row["ok"]:
                            timed[(name, s)] = (impl, spins)
                        group.append(row)
                    _progress(f"{wl.name}: N={n} batch {b}: timing {len(timed)} implementations interleaved")
                    ts = interleaved(timed, xs[b], reps, min_time, rounds, pause)
                    base = float(np.median(ts[("numpy (1 process)", "-")])) if ("numpy (1 process)", "-") in ts else None
                    for row in group:
                        t = ts.get((row["impl"], row["strategy"]))
                        if t is not None:
                            p50 = float(np.median(t))
                            row.update(p50_ms=p50 * 1e3, p90_ms=float(np.percentile(t, 90)) * 1e3, items_per_s=b / p50,
                                       calls=len(t), speedup=base / p50 if base else float("nan"))
                        if row["impl"] == "shmrt" and n > 0 and row["ok"]:
                            row["breakdown"] = breakdown(cms[row["strategy"]], xs[b], 5 if quick else 15,
                                                         0.2 if quick else 1.0)
                    rows += group
                rows += [dict(r, batch=b) for r in skipped for b in batches]
            finally:
                for cm in cms.values():
                    cm.close()
                for impl, _ in built.values():
                    impl.close()
    return dict(rows=rows, roundtrip_us={str(k): {"p50": v[0], "p90": v[1]} for k, v in roundtrips.items()},
                resources={str(k): v for k, v in resources.items()},
                description=f"{wl.description}, {nbytes / 2**20:.1f} MiB float32 weights")


def run(workloads, workers, strategies, batches=None, quick=False, peers=False):
    result = dict(machine=machine(), rows=[], roundtrip_us={}, resources={}, workloads={}, ceilings={})
    for n in workers:
        _progress(f"ceilings at {max(n, 1)} thread(s)")
        result["ceilings"][str(max(n, 1))] = ceilings.measure(max(n, 1), quick)
    for name in workloads:
        wl = WORKLOADS[name]()
        r = run_workload(wl, workers, strategies, batches if not name.startswith("logreg") else None, quick, peers)
        result["rows"] += r["rows"]
        result["roundtrip_us"].update(r["roundtrip_us"])
        result["resources"].update(r["resources"])
        result["workloads"][name] = r["description"]
    _versus_best_peer(result["rows"])
    result["goals"] = goals(result)
    return result


def _versus_best_peer(rows):
    """shmrt rows get best peer p50 / shmrt p50, at the same workers (= peer threads) and batch."""
    for r in rows:
        if r["impl"] != "shmrt" or "p50_ms" not in r:
            continue
        peers = [p["p50_ms"] for p in rows if p["workload"] == r["workload"] and p["batch"] == r["batch"]
                 and p["workers"] == r["workers"] and p["impl"] not in ("shmrt", "numpy (1 process)")
                 and "p50_ms" in p]
        if peers:
            r["vs_best_peer"] = min(peers) / r["p50_ms"]


# The goals of issue 4, set for 16 cores (and ">= 1.0x the best peer on every
# workload" for 2 cores): (workload, batch, goal, compare with, target).
# "latency": shmrt p50 / reference p50, at most target; "throughput":
# reference p50 / shmrt p50, at least target; "ms": shmrt p50 at most
# target; "read bound": (bytes / read GB/s) / shmrt p50, at least target.
GOALS = [
    ("mlp", 1, "latency", "best peer", 0.8),
    ("mlp", 256, "throughput", "best peer", 1.2),
    ("cnn", 1, "latency", "onnxruntime", 1.0),
    ("cnn", 64, "throughput", "onnxruntime", 1.0),
    ("lstm", 1, "ms", None, 1.0),
    ("lstm", 32, "throughput", "best peer", 1.5),
    ("logreg", 1_000_000, "read bound", None, 0.9),
]


def goals(result) -> list:
    """Where shmrt stands against each goal, at the largest worker count run,
    for the auto strategy and for the best strategy measured."""
    rows = [r for r in result["rows"] if "p50_ms" in r]
    shm = [r for r in rows if r["impl"] == "shmrt"]
    if not shm:
        return []
    n = max(r["workers"] for r in shm)
    out = []

    def peer_p50(wl, b, which):
        ps = [r for r in rows if r["workload"] == wl and r["batch"] == b and r["workers"] == n
              and r["impl"] not in ("shmrt", "numpy (1 process)")
              and (which == "best peer" or r["impl"].startswith(which))]
        return min(ps, key=lambda r: r["p50_ms"]) if ps else None

    def figure(kind, r, ref, wl, b):
        if kind == "latency":
            return r["p50_ms"] / ref["p50_ms"]
        if kind == "throughput":
            return ref["p50_ms"] / r["p50_ms"]
        if kind == "ms":
            return r["p50_ms"]
        read = result.get("ceilings", {}).get(str(max(n, 1)), {}).get("read_gbs")
        if not read:
            return None
        nbytes = b * int(np.prod(WORKLOADS[wl]().input_shape)) * 4
        return nbytes / read / 1e9 / (r["p50_ms"] / 1e3)

    cases = [(wl, b, kind, which, target, "16-core goal") for wl, b, kind, which, target in GOALS]
    cases += [(wl, b, "throughput", "best peer", 1.0, "2-core goal")
              for wl, b in dict.fromkeys((r["workload"], r["batch"]) for r in shm)]
    for wl, b, kind, which, target, label in cases:
        mine = [r for r in shm if r["workload"] == wl and r["batch"] == b and r["workers"] == n]
        ref = peer_p50(wl, b, which) if which else None
        if not mine or (which and ref is None):
            continue
        auto = next((r for r in mine if r["strategy"] == "auto"), None)
        best = min(mine, key=lambda r: r["p50_ms"])
        f_auto = figure(kind, auto, ref, wl, b) if auto else None
        f_best = figure(kind, best, ref, wl, b)
        if f_best is None:
            continue
        lower = kind in ("latency", "ms")
        met = (f_best <= target) if lower else (f_best >= target)
        out.append(dict(label=label, workload=wl, batch=b, workers=n, kind=kind, versus=which or "", target=target,
                        auto=f_auto, best=f_best, best_strategy=best["strategy"], met=met,
                        reference=f"{ref['impl']} {ref['p50_ms']:.3f} ms" if ref else ""))
    return out


def gap_table(result) -> str:
    """Where shmrt's time goes (profiled calls) for each workload and batch,
    largest gap to the best peer first: the auto strategy at the largest N."""
    shm = [r for r in result["rows"] if r["impl"] == "shmrt" and "breakdown" in r and r["strategy"] == "auto"]
    if not shm:
        return ""
    n = max(r["workers"] for r in shm)
    shm = sorted((r for r in shm if r["workers"] == n), key=lambda r: r.get("vs_best_peer", float("inf")))
    out = [f"where the time goes at {n} worker(s), auto strategy (medians of profiled calls, us; "
           f"largest gap to the best peer first):",
           f"  {'workload':<13} {'batch':>8} {'vs best':>8} {'total':>10} {'copies':>10} {'kernels':>10} "
           f"{'coord.':>10} {'of which barrier':>17} {'dispatch':>9} {'return':>9}"]
    for r in shm:
        b = r["breakdown"]
        vs = f"{r['vs_best_peer']:.2f}x" if "vs_best_peer" in r else "-"
        out.append(f"  {r['workload']:<13} {b['rows']:>8} {vs:>8} {b['total_us']:10.1f} {b['copy_us']:10.1f} "
                   f"{b['kernel_us']:10.1f} {b['coordination_us']:10.1f} {b['barrier_wait_us']:17.1f} "
                   f"{b['dispatch_us']:9.1f} {b['return_us']:9.1f}")
    return "\n".join(out)


def goals_table(gs) -> str:
    if not gs:
        return ""
    what = {"latency": "p50 / {v} p50 <= {t}", "throughput": "{v} p50 / p50 >= {t}", "ms": "p50 ms <= {t}",
            "read bound": "read-bandwidth bound / p50 >= {t}"}
    out = [f"goals at {gs[0]['workers']} worker(s) (16-core goals are meant for 16 workers):"]
    for g in gs:
        auto = f"{g['auto']:.3g}" if g["auto"] is not None else "-"
        out.append(f"  {g['label']:<12} {g['workload']:<13} b={g['batch']:<8} "
                   f"{what[g['kind']].format(v=g['versus'], t=g['target']):<42} auto {auto:>7}  "
                   f"best {g['best']:.3g} ({g['best_strategy']})  {'met' if g['met'] else 'NOT met'}"
                   f"{'  [' + g['reference'] + ']' if g['reference'] else ''}")
    return "\n".join(out)


def table(result) -> str:
    m = result["machine"]
    out = [f"machine: {m.get('cpu', '?')}, {m.get('cores_logical')} logical cores, caches {m.get('caches', '?')}, "
           f"BLAS {m.get('blas', '?')}"]
    for n, c in result.get("ceilings", {}).items():
        sgemm = (f"{c['sgemm_gflops']:.0f} GFLOP/s" if "sgemm_gflops" in c
                 else "n/a (threadpoolctl is needed to hold BLAS to N threads)")
        out.append(f"  ceilings at {n} thread(s): sgemm {sgemm}, read {c['read_gbs']:.1f} GB/s, "
                   f"copy {c['copy_gbs']:.1f} GB/s (read + write)")
    out += [f"  {k}: {v}" for k, v in result["workloads"].items()]
    out += ["", f"{'workload':<13} {'impl':<20} {'workers':>7} {'strategy':>8} {'plan':>5} {'batch':>7} {'p50 ms':>9} "
                f"{'p90 ms':>9} {'items/s':>11} {'vs numpy':>8} {'vs best peer':>12} {'rel err':>8}"]
    for r in result["rows"]:
        if "skipped" in r:
            timing = f"skipped: {r['skipped']}"
        elif "p50_ms" in r:
            peer = f"{r['vs_best_peer']:11.2f}x" if "vs_best_peer" in r else f"{'-':>12}"
            timing = (f"{r['p50_ms']:9.3f} {r['p90_ms']:9.3f} {r['items_per_s']:11.1f} {r['speedup']:7.2f}x {peer} "
                      f"{r['rel_err']:8.1e}")
        else:
            timing = f"FAILED numeric check (rel err {r['rel_err']:.1e}), not timed"
        out.append(f"{r['workload']:<13} {r['impl']:<20} {r['workers']:>7} {r['strategy']:>8} {r.get('plan', '-'):>5} "
                   f"{r['batch']:>7} {timing}")
    out.append("")
    if result.get("goals"):
        out += [goals_table(result["goals"]), ""]
    gaps = gap_table(result)
    if gaps:
        out += [gaps, ""]
    for n, v in result["roundtrip_us"].items():
        out.append(f"empty-command round trip parent -> {n} worker(s) -> parent: "
                   f"p50 {v['p50']:.2f} us, p90 {v['p90']:.2f} us")
    for n, v in result.get("resources", {}).items():
        mem = (f"workers' PSS {v['workers_pss_mib']:.0f} MiB (+ {v.get('template_pss_mib', 0):.0f} MiB template) "
               f"for {v['weights_mib']:.0f} MiB of weights" if "workers_pss_mib" in v else "PSS not available")
        out.append(f"{n} worker(s): {mem}; idle CPU 200 ms after the last call: {v['idle_cpu_pct']:.3f} % of a core")
    return "\n".join(out)


def _ints(text):
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of ints, got {text!r}") from None
    if not vals or any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected non-negative ints, got {text!r}")
    return vals


def main(argv=None) -> int:
    default_n = shmrt.pool.default_workers()
    ap = argparse.ArgumentParser(prog="python -m shmrt.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=_ints, default=sorted({1, default_n}),
                    help=f"comma-separated worker counts (default: 1,{default_n})")
    ap.add_argument("--strategies", "--strategy", default="data,model,hybrid,pipeline,auto",
                    help="comma-separated strategies among auto,data,model,hybrid,pipeline (default: all)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated, among {','.join(WORKLOADS)} (default: all)")
    ap.add_argument("--batches", type=_ints, default=None,
                    help="comma-separated batch sizes (default: each workload's own; logreg always runs 1M rows)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    ap.add_argument("--peers", action="store_true",
                    help="also run numpy, onnxruntime and torch at the same thread counts, where installed")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--plot", metavar="PATH.png", help="also plot throughput against workers (needs matplotlib)")
    args = ap.parse_args(argv)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    bad = [s for s in strategies if s not in shmrt.plan.STRATEGIES]
    if bad:
        ap.error(f"unknown strategy {bad[0]!r}; expected some of {', '.join(shmrt.plan.STRATEGIES)}")
    if args.batches and 0 in args.batches:
        ap.error("batch sizes must be >= 1")
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]!r}; expected some of {', '.join(WORKLOADS)}")
    _start_progress()
    try:
        result = run(workloads, args.workers, strategies, args.batches, args.quick, args.peers)
    finally:
        _stop_progress()
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
