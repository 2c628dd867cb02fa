"""The benchmark's report: statistics of timed calls, goals, tables and the plot.

Everything here reads the result dict that ``shmrt.bench.run`` returns; it
measures nothing itself.
"""
from __future__ import annotations

import numpy as np

from shmrt.bench import formats

AA = formats.AA  # suffix of the control's strategy name: the same implementation, compiled twice, timed twice


def stats(ts, seed=0) -> dict:
    """p50 / p10 / p90 of per-call seconds (in ms), and a 95 % bootstrap
    interval of the p50 (1000 resamples)."""
    t = np.asarray(ts) * 1e3
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(t, size=(1000, t.size)), axis=1)
    return dict(p50_ms=float(np.median(t)), p10_ms=float(np.percentile(t, 10)), p90_ms=float(np.percentile(t, 90)),
                ci_lo_ms=float(np.percentile(boot, 2.5)), ci_hi_ms=float(np.percentile(boot, 97.5)), calls=int(t.size))


def aa_spread(rows) -> dict:
    """{(workload, workers, batch): |p50(A) - p50(A')| / min of the two}, from the A/A control rows."""
    out = {}
    for r in rows:
        if r.get("strategy", "").endswith(AA) and "p50_ms" in r:
            twin = next((p for p in rows if p["impl"] == r["impl"] and p["workload"] == r["workload"]
                         and p["workers"] == r["workers"] and p["batch"] == r["batch"]
                         and p["strategy"] == r["strategy"][:-len(AA)] and "p50_ms" in p), None)
            if twin is not None:
                a, b = twin["p50_ms"], r["p50_ms"]
                out[(r["workload"], r["workers"], r["batch"])] = abs(a - b) / min(a, b)
    return out


def _peers(rows, r):
    """The float32 peers of r's group: a compressed shmrt row is compared with these too, and with the
    int8 peers apart (formats.annotate)."""
    return formats.peers_of(rows, r, "float32")


def versus_best_peer(rows) -> None:
    """shmrt rows (every weight format) get best float32 peer p50 / shmrt p50 (at the same workers = peer
    threads and batch), and whether that difference is inside the group's A/A spread."""
    spread = aa_spread(rows)
    for r in rows:
        if not formats.is_shmrt(r) or "p50_ms" not in r or r["strategy"].endswith(AA) or "variant" in r:
            continue  # a variant (sentences all 128 long) ran on other inputs than the peers
        peers = _peers(rows, r)
        if peers:
            best = min(peers, key=lambda p: p["p50_ms"])
            r["vs_best_peer"] = best["p50_ms"] / r["p50_ms"]
            r["best_peer"] = best["impl"]
            aa = spread.get((r["workload"], r["workers"], r["batch"]))
            if aa is not None:
                r["aa_spread"] = aa
                r["within_aa"] = abs(r["vs_best_peer"] - 1) <= aa


# The targets of issue 14, for 2 workers against each peer at 2 threads
# (workload, batch, kind, compared with, target).  "throughput": reference
# p50 / shmrt p50, at least target; "read bound": (bytes of the rows / read
# GB/s) / shmrt p50, at least target.
GOALS = [
    ("mlp", 1, "throughput", "best peer", 1.1),
    ("mlp", 256, "throughput", "best peer", 1.0),
    ("cnn", 1, "throughput", "onnxruntime", 1.0),
    ("cnn", 64, "throughput", "best peer", 1.0),
    ("lstm", 1, "throughput", "best peer", 1.1),
    ("lstm", 32, "throughput", "best peer", 1.0),
    ("deep", 4096, "throughput", "best peer", 1.0),
    ("logreg", 1_000_000, "throughput", "best peer", 1.0),
    ("logreg", 1_000_000, "read bound", None, 0.9),
]


def goals(result) -> list:
    """Each goal at the largest worker count run, judged on what a user gets
    (strategy auto), with the fastest fixed strategy shown beside it."""
    rows = [r for r in result["rows"] if "p50_ms" in r and not r["strategy"].endswith(AA)]
    shm = [r for r in rows if r["impl"] == "shmrt"]
    if not shm:
        return []
    n = max(r["workers"] for r in shm)
    spread = aa_spread(result["rows"])
    out = []
    for wl, b, kind, which, target in GOALS:
        mine = [r for r in shm if r["workload"] == wl and r["batch"] == b and r["workers"] == n]
        auto = next((r for r in mine if r["strategy"] == "auto"), None)
        refs = [r for r in _peers(rows, auto) if which == "best peer" or r["impl"].startswith(str(which))] \
            if auto else []
        ref = min(refs, key=lambda r: r["p50_ms"]) if refs else None
        if auto is None or (which and ref is None):
            continue

        def figure(r):
            if kind == "throughput":
                return ref["p50_ms"] / r["p50_ms"]
            read = result.get("ceilings", {}).get(str(max(n, 1)), {}).get("read_gbs")
            return result["row_bytes"][wl] * b / (read * 1e9) / (r["p50_ms"] / 1e3) if read else None

        fixed = [r for r in mine if r["strategy"] != "auto"]
        best = min(fixed, key=lambda r: r["p50_ms"]) if fixed else None
        f_auto = figure(auto)
        if f_auto is None:
            continue
        aa = spread.get((wl, n, b))
        out.append(dict(workload=wl, batch=b, workers=n, kind=kind, versus=which or "", target=target, auto=f_auto,
                        plan=auto.get("plan", "?"), best=figure(best) if best else None,
                        best_strategy=best["strategy"] if best else "", aa_spread=aa, met=f_auto >= target,
                        within_aa=aa is not None and abs(f_auto - target) <= aa * target,
                        reference=f"{ref['impl']} {ref['p50_ms']:.3f} ms" if ref else ""))
    return out


def goals_table(gs) -> str:
    if not gs:
        return ""
    what = {"throughput": "{v} p50 / shmrt p50 >= {t}", "read bound": "read-bandwidth bound / p50 >= {t}"}
    out = [f"goals (issue 14's targets) at {gs[0]['workers']} worker(s), judged on auto; the fastest fixed "
           f"strategy beside it:"]
    for g in gs:
        best = f"{g['best']:.3g} ({g['best_strategy']})" if g["best"] is not None else "-"
        aa = f"A/A {100 * g['aa_spread']:.1f} %" if g["aa_spread"] is not None else "no A/A"
        verdict = "met" if g["met"] else "NOT met"
        if g["within_aa"]:
            verdict += " (inside the A/A spread)"
        out.append(f"  {g['workload']:<13} b={g['batch']:<8} {what[g['kind']].format(v=g['versus'], t=g['target']):<42}"
                   f" auto {g['auto']:.3g} [{g['plan']}]  fixed best {best}  {aa}  {verdict}"
                   f"{'  [' + g['reference'] + ']' if g['reference'] else ''}")
    return "\n".join(out)


def gap_table(result) -> str:
    """Where shmrt's time goes (profiled calls, the same tier as timed) for
    each workload and batch, largest gap to the best peer first: auto at the largest N."""
    shm = [r for r in result["rows"] if r["impl"] == "shmrt" and "breakdown" in r and r["strategy"] == "auto"]
    if not shm:
        return ""
    n = max(r["workers"] for r in shm)
    shm = sorted((r for r in shm if r["workers"] == n), key=lambda r: r.get("vs_best_peer", float("inf")))
    out = [f"where the time goes at {n} worker(s), auto (medians of profiled calls in the tier timed, us; critical "
           f"worker's path; largest gap to the best peer first):",
           f"  {'workload':<13} {'rows':>8} {'tier':>10} {'vs best':>8} {'total':>9} {'copies':>9} {'kernels':>9} "
           f"{'coord.':>8} {'dispatch':>9} {'waits':>8} {'return':>8} {'python':>8} {'unacc.':>7}"]
    for r in shm:
        b = r["breakdown"]
        vs = f"{r['vs_best_peer']:.2f}x" if "vs_best_peer" in r else "-"
        out.append(f"  {r['workload']:<13} {b['rows']:>8} {b['tier']:>10} {vs:>8} {b['total_us']:9.1f} "
                   f"{b['copy_us']:9.1f} {b['kernel_us']:9.1f} {b['coordination_us']:8.1f} {b['dispatch_us']:9.1f} "
                   f"{b['wait_us']:8.1f} {b['return_us']:8.1f} {b['python_us']:8.1f} {b['unaccounted_us']:7.1f}")
    return "\n".join(out)


def table(result) -> str:
    m = result["machine"]
    out = [f"shmrt {m.get('shmrt', '?')} at commit {m.get('commit', '?')}, {m.get('date', '?')}",
           f"machine: {m.get('cpu', '?')}, {m.get('cores_logical')} logical cores, caches {m.get('caches', '?')}",
           "versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()),
           f"BLAS: {'; '.join(m.get('blas', [])) or '?'}"]
    for n, c in result.get("ceilings", {}).items():
        out.append(f"  ceilings at {n} thread(s): sgemm {c['sgemm_gflops']:.0f} GFLOP/s, read {c['read_gbs']:.1f} GB/s, "
                   f"copy {c['copy_gbs']:.1f} GB/s (read + write)")
    out += [f"  {k}: {v}" for k, v in result["workloads"].items()]
    out += ["", f"{'workload':<13} {'impl':<24} {'workers':>7} {'strategy':>12} {'plan':>8} {'batch':>9} "
                f"{'p50 ms':>9} {'[p10 - p90]':>19} {'p50 95% CI':>19} {'items/s':>11} {'vs numpy':>8} "
                f"{'vs best peer':>12} {'vs int8 peer':>12} {'rel err':>8} {'read bw':>7}",
            "  (vs best peer: the fastest float32 peer's p50 / this p50; vs int8 peer: the same against the peers' "
            "int8 models; read bw: at batch 1, weights read / p50 as a fraction of the read ceiling)"]
    skipped = {}
    for r in result["rows"]:
        if "skipped" in r:
            skipped.setdefault(r["skipped"], set()).add(r["workload"])
            continue
        if "p50_ms" in r:
            peer = f"{r['vs_best_peer']:11.2f}x" if "vs_best_peer" in r else f"{'-':>12}"
            peer8 = f"{r['vs_best_int8_peer']:11.2f}x" if "vs_best_int8_peer" in r else f"{'-':>12}"
            bw = f"{r['read_fraction']:7.2f}" if "read_fraction" in r else f"{'-':>7}"
            timing = (f"{r['p50_ms']:9.3f} [{r['p10_ms']:8.3f} - {r['p90_ms']:8.3f}] [{r['ci_lo_ms']:8.3f} - "
                      f"{r['ci_hi_ms']:8.3f}] {r['items_per_s']:11.1f} {r['speedup']:7.2f}x {peer} {peer8} "
                      f"{r['rel_err']:8.1e} {bw}")
        else:
            timing = f"FAILED numeric check (rel err {r['rel_err']:.1e} > {r.get('tol', 1e-5):.0e}), not timed"
        out.append(f"{r['workload']:<13} {r['impl']:<24} {r['workers']:>7} {r['strategy']:>12} {r.get('plan', '-'):>8} "
                   f"{r['batch']:>9,} {timing}")
    out += [f"not run: {why} ({', '.join(sorted(wls))})" for why, wls in skipped.items()]
    out += ["", aa_summary(result), ""]
    out += [f"{k}: {v}" for k, v in result.get("notes", {}).items()] + ([""] if result.get("notes") else [])
    if result.get("goals"):
        out += [goals_table(result["goals"]), ""]
    compressed = formats.section(result)
    if compressed:
        out += [compressed, ""]
    gaps = gap_table(result)
    if gaps:
        out += [gaps, ""]
    for n, v in result["roundtrip_us"].items():
        out.append(f"empty-command round trip parent -> {n} worker(s) -> parent: "
                   f"p50 {v['p50']:.2f} us, p90 {v['p90']:.2f} us")
    for n, v in result.get("tiny_us", {}).items():
        out.append(f"tiny model (Linear 16 -> 16) called back to back with cm(x), {n} worker(s): p50 {v['p50']:.2f} us "
                   f"per call, p90 {v['p90']:.2f} us ({1e6 / v['p50']:,.0f} calls/s)")
    for cache, v in result.get("first_result", {}).items():
        out.append(f"first result ({cache} Numba cache, fresh interpreter): Runtime() + compile + first call "
                   + (f"{v['first_result_s']:.2f} s (import shmrt {v['import_s']:.2f} s before it)" if "error" not in v
                      else f"failed: {v['error']}"))
    for n, v in result.get("barrier_us", {}).items():
        out.append(f"barrier among {n} workers (last arrival -> every worker out, {v['barriers']} barriers in "
                   f"profiled calls of a tiny model-parallel model): p50 {v['p50']:.2f} us, p90 {v['p90']:.2f} us")
    for n, v in result.get("resources", {}).items():
        mem = (f"workers' PSS {v['workers_pss_mib']:.0f} MiB (+ {v.get('template_pss_mib', 0):.0f} MiB template) "
               f"for {v['weights_mib']:.0f} MiB of weights" if "workers_pss_mib" in v else "PSS not available")
        out.append(f"{n} worker(s): {mem}; idle CPU 200 ms after the last call: {v['idle_cpu_pct']:.3f} % of a core")
    out.append(f"wall time of this run: {result.get('wall_s', 0):.1f} s")
    return "\n".join(out)


def aa_summary(result) -> str:
    """The A/A control per workload, and each shmrt-versus-best-peer ratio read against it."""
    spread = aa_spread(result["rows"])
    if not spread:
        return "A/A control: none timed"
    out = ["A/A control (shmrt auto compiled twice, timed under two names, interleaved): |difference| of the two "
           "p50s; a ratio closer to 1.00 than this is no difference:"]
    for (wl, n, b), v in spread.items():
        r = next((r for r in result["rows"] if r["impl"] == "shmrt" and r["strategy"] == "auto"
                  and (r["workload"], r["workers"], r["batch"]) == (wl, n, b)), {})
        vs = (f"auto vs best peer ({r['best_peer']}) {r['vs_best_peer']:.2f}x: "
              f"{'inside the A/A spread, no difference' if r['within_aa'] else 'outside the A/A spread'}"
              if "within_aa" in r else "no peer")
        out.append(f"  {wl:<13} N={n} b={b:<9,} A/A {100 * v:5.1f} %   {vs}")
    return "\n".join(out)


def plot(result, path):
    """Throughput against workers (threads for peers), one panel per workload and batch."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install 'shmrt[plot]')")
    rows = [r for r in result["rows"] if "p50_ms" in r and r["impl"] != "numpy (1 process)"
            and not r["strategy"].endswith(AA)]
    panels = sorted({(r["workload"], r["batch"]) for r in rows},
                    key=lambda k: (list(result["workloads"]).index(k[0]), k[1]))
    cols = 2
    fig, axes = plt.subplots((len(panels) + cols - 1) // cols, cols, figsize=(11, 3.2 * ((len(panels) + 1) // cols)),
                             squeeze=False)
    for ax, (wl, b) in zip(axes.ravel(), panels):
        series = {}
        for r in rows:
            if r["workload"] == wl and r["batch"] == b:
                label = f"shmrt {r['strategy']}" if r["impl"] == "shmrt" else r["impl"].split(" (")[0]
                series.setdefault(label, []).append((max(r["workers"], 1), r["items_per_s"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                    linewidth=2.5 if label.startswith("shmrt") else 1.2)
        ax.set_title(f"{wl}, batch {b:,}", fontsize=10)
        ax.set_xlabel("workers / threads")
        ax.set_ylabel(f"{next(r['unit'] for r in rows if r['workload'] == wl)}/s")
        ax.set_xticks(sorted({max(r["workers"], 1) for r in rows}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    m = result["machine"]
    fig.suptitle(f"shmrt {m.get('commit', '')[:10]} and peers on {m.get('cpu', '?')}, {m.get('cores_logical')} "
                 f"logical cores (higher is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
