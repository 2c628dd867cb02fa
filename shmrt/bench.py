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

from .peers import PEERS, Skip
from .workloads import WORKLOADS, numpy_forward

def rel_err(y, ref) -> float:
    return float(np.max(np.abs(y - ref)) / max(np.max(np.abs(ref)), 1e-30))


def timeit(fn, reps: int, min_time: float, warmup: int = 2):
    """Per-call seconds: ``warmup`` calls excluded, then ``reps`` calls or
    until ``min_time`` has passed, whichever is later (at most 20 x reps)."""
    for _ in range(warmup):
        fn()
    ts, t_end = [], time.perf_counter() + min_time
    while len(ts) < reps or (time.perf_counter() < t_end and len(ts) < 20 * reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return np.array(ts)


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
    try:
        from threadpoolctl import threadpool_info
        info["blas"] = [f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')}, "
                        f"{d.get('num_threads')} threads)" for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        pass
    return info


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


def run_workload(wl, workers, strategies, batches, quick=False, peers=False):
    model = wl.model
    nbytes = sum(a.nbytes for l in model.layers for a in l.params.values())
    rng = np.random.default_rng(0)
    batches = batches or wl.batches
    xs = {b: rng.standard_normal((b, *wl.input_shape)).astype(np.float32) for b in batches}
    refs = {b: numpy_forward(model, xs[b], np.float64) for b in batches}
    reps, min_time = (3, 0.2) if quick else (10, 1.0)
    rows, base = [], {}
    common = dict(workload=wl.name, unit=wl.unit)
    for b in batches:
        _progress(f"{wl.name}: numpy batch {b}")
        err = rel_err(numpy_forward(model, xs[b]), refs[b])
        ts = timeit(lambda: numpy_forward(model, xs[b]), reps, min_time, warmup=1)
        base[b] = float(np.median(ts))
        rows.append(dict(common, impl="numpy (1 process)", workers=1, strategy="-", batch=b, p50_ms=base[b] * 1e3,
                         p90_ms=float(np.percentile(ts, 90)) * 1e3, items_per_s=b / base[b], speedup=1.0,
                         rel_err=err, ok=err <= 1e-5))
    roundtrips, resources = {}, {}
    for n in (workers if peers else []):
        for peer, build in PEERS.items():
            for b in batches:
                _progress(f"{wl.name}: {peer} with {max(n, 1)} thread(s), batch {b}")
                row = dict(common, impl=f"{peer} ({max(n, 1)} thr)", workers=n, strategy="-", batch=b)
                try:
                    run, close = build(model, max(n, 1), wl.input_shape)
                except Skip as e:
                    rows.append(dict(row, skipped=str(e), ok=True, rel_err=float("nan")))
                    continue
                try:
                    err = rel_err(run(xs[b]), refs[b])
                    row.update(rel_err=err, ok=err <= 1e-5)
                    if row["ok"]:
                        ts = timeit(lambda: run(xs[b]), reps, min_time, warmup=1)
                        p50 = float(np.median(ts))
                        row.update(p50_ms=p50 * 1e3, p90_ms=float(np.percentile(ts, 90)) * 1e3,
                                   items_per_s=b / p50, speedup=base[b] / p50)
                finally:
                    close()
                rows.append(row)
                time.sleep(0.2)  # OpenBLAS and onnxruntime keep threads spinning after a call
    for n in workers:
        _progress(f"{wl.name}: starting {n} worker(s)")
        with shmrt.Runtime(workers=n) as rt:
            if n > 0 and wl.name == "mlp":
                roundtrips[n] = roundtrip_us(rt, 1000 if quick else 5000)
            for s in strategies:
                cm = rt.compile(model, strategy=s, max_batch=min(wl.max_batch, max(batches)),
                                input_shape=wl.input_shape)
                for b in batches:
                    _progress(f"{wl.name}: workers={n} strategy={s} batch={b}")
                    if wl.zero_copy:
                        # the rows live in shared memory already (a producer wrote
                        # them there); each call reads them in place and returns a
                        # view of the output: no copy either way
                        cm.input_buffer(b)[...] = xs[b]
                        call = (lambda: cm.run_in_place(b))
                        out = np.array(call())
                    elif wl.chunk:
                        y = np.empty((b, *cm.plan.output.shape), np.float32)
                        call = (lambda: _stream(cm, xs[b], y, wl.chunk))
                        call()
                        out = y
                    else:
                        call = (lambda: cm(xs[b]))
                        out = call()
                    err = rel_err(out, refs[b])
                    row = dict(common, impl="shmrt", workers=n, strategy=s, batch=b, rel_err=err, ok=err <= 1e-5,
                               plan=cm.plan.strategy_for(s, min(b, cm.max_batch)))
                    if row["ok"]:
                        ts = timeit(call, reps, min_time, warmup=1)
                        p50 = float(np.median(ts))
                        row.update(p50_ms=p50 * 1e3, p90_ms=float(np.percentile(ts, 90)) * 1e3,
                                   items_per_s=b / p50, speedup=base[b] / p50)
                    rows.append(row)
                if n > 0 and s == strategies[0] and wl.name == "mlp":
                    resources[n] = footprint(rt, nbytes)
                cm.close()
    return dict(rows=rows, roundtrip_us={str(k): {"p50": v[0], "p90": v[1]} for k, v in roundtrips.items()},
                resources={str(k): v for k, v in resources.items()},
                description=f"{wl.description}, {nbytes / 2**20:.1f} MiB float32 weights")


def run(workloads, workers, strategies, batches=None, quick=False, peers=False):
    result = dict(machine=machine(), rows=[], roundtrip_us={}, resources={}, workloads={})
    for name in workloads:
        wl = WORKLOADS[name]()
        r = run_workload(wl, workers, strategies, batches if not name.startswith("logreg") else None, quick, peers)
        result["rows"] += r["rows"]
        result["roundtrip_us"].update(r["roundtrip_us"])
        result["resources"].update(r["resources"])
        result["workloads"][name] = r["description"]
    _versus_best_peer(result["rows"])
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


def table(result) -> str:
    m = result["machine"]
    out = [f"machine: {m.get('cpu', '?')}, {m.get('cores_logical')} logical cores, BLAS {m.get('blas', '?')}"]
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
    ap.add_argument("--strategies", default="data,model,auto",
                    help="comma-separated strategies among auto,data,model (default: all)")
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
