"""Cold and warm start of shmrt.exec.warmup.compile_all(), the first-run cost of a fresh install.

Each run is a new interpreter with an empty Numba cache folder of its own
(NUMBA_CACHE_DIR, which kernels/_cache.py respects): "cold" times
``import shmrt.exec.warmup; compile_all()`` there, "warm" the same again on the
cache it left.  Variants run interleaved, round by round, so that a busy
machine slows them alike; medians are reported.

    python bench/compile_time.py                      # parallel (default) vs SHMRT_COMPILE_JOBS=1
    python bench/compile_time.py --rounds 5 --variants parallel
    python bench/compile_time.py --baseline old_warmup.py   # and an older warmup.py, for comparison

After each run it also reports what the parent process left: every
dispatcher with more than one signature (each is compiled once per
signature; run_steps should have one), in a parallel cold run any function
of the child's group the parent compiled itself instead of loading it (a
signature in warmup's child group that no longer matches what run_steps
passes), and in a warm run any function compiled at all (there should be
none).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
baseline = os.environ.get("BENCH_BASELINE")
if baseline:  # an older warmup.py, loaded as a module of the shmrt package
    import importlib.util, shmrt
    spec = importlib.util.spec_from_file_location("shmrt._bench_warmup", baseline)
    w = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = w
    spec.loader.exec_module(w)
else:
    import shmrt.exec.warmup as w
t1 = time.perf_counter()
w.compile_all()
t2 = time.perf_counter()
from numba.core.registry import CPUDispatcher
multi = {}
for name, mod in list(sys.modules.items()):
    if mod is None or not name.startswith(("shmrt.", "kernels.")):
        continue
    for attr, d in list(vars(mod).items()):
        if isinstance(d, CPUDispatcher) and d.py_func.__module__ == name and len(d.signatures) > 1:
            multi[name + "." + attr] = len(d.signatures)
from shmrt.exec.executor import run_steps
import shmrt.exec.warmup as new
owned = set(getattr(new, "_CHILD_OWNS", ()))
compiled = sorted(n for n, d in new._dispatchers().items() if d.stats.cache_misses)  # here, not loaded
print(json.dumps({"import": t1 - t0, "compile_all": t2 - t1, "multi": multi, "compiled": compiled,
                  "child_owned_compiled_here": sorted(owned & set(compiled)),
                  "run_steps_sigs": len(run_steps.signatures)}))
"""


def one(variant, cache, baseline):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("BENCH_BASELINE", None)
    if variant == "serial":
        env["SHMRT_COMPILE_JOBS"] = "1"
    elif variant == "baseline":
        env["BENCH_BASELINE"] = os.path.abspath(baseline)
    else:
        env.pop("SHMRT_COMPILE_JOBS", None)
    t = time.perf_counter()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{out.stderr}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    r["wall"] = wall
    r["cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)  # the process and its compile child
    return r


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="parallel,serial", help="comma-separated: parallel, serial, baseline")
    ap.add_argument("--baseline", help="an older shmrt/exec/warmup.py to compare with (variant 'baseline')")
    ap.add_argument("--warm", type=int, default=1, help="warm runs after each cold one")
    a = ap.parse_args(argv)
    variants = a.variants.split(",")
    if a.baseline and "baseline" not in variants:
        variants.append("baseline")
    if "baseline" in variants and not a.baseline:
        ap.error("variant 'baseline' needs --baseline PATH")
    res = {v: {"cold": [], "cold_wall": [], "cold_cpu": [], "warm": [], "warm_wall": []} for v in variants}
    for r in range(a.rounds):
        for v in variants:
            cache = tempfile.mkdtemp(prefix="shmrt-nbc-")
            try:
                c = one(v, cache, a.baseline)
                res[v]["cold"].append(c["compile_all"])
                res[v]["cold_wall"].append(c["wall"])
                res[v]["cold_cpu"].append(c["cpu"])
                warm = [one(v, cache, a.baseline) for _ in range(a.warm)]
                for w in warm:
                    if w["compiled"]:
                        print(f"  warm run of {v} compiled {w['compiled']}: the cold run left them out of the cache")
            finally:
                shutil.rmtree(cache, ignore_errors=True)
            for w in warm:
                res[v]["warm"].append(w["compile_all"])
                res[v]["warm_wall"].append(w["wall"])
            load = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"
            print(f"round {r + 1} {v:9s} cold compile_all {c['compile_all']:6.1f} s "
                  f"(process {c['wall']:6.1f} s, CPU {c['cpu']:6.1f} s)"
                  f"  warm {' '.join('%.2f' % w['compile_all'] for w in warm)} s"
                  f"  run_steps signatures {c['run_steps_sigs']}  multi {c['multi']}  load {load}", flush=True)
            if v == "parallel" and c["child_owned_compiled_here"]:
                print(f"  the parent compiled {c['child_owned_compiled_here']} instead of loading them", flush=True)
    print("\nmedians (s):  cold compile_all / cold process / cold CPU (all processes) / "
          "warm compile_all / warm process")
    for v in variants:
        m = {k: statistics.median(x) if x else float("nan") for k, x in res[v].items()}
        runs = ", ".join("%.1f" % x for x in res[v]["cold"])
        print(f"  {v:9s} {m['cold']:6.1f} / {m['cold_wall']:6.1f} / {m['cold_cpu']:6.1f} / "
              f"{m['warm']:5.2f} / {m['warm_wall']:5.2f}   (cold runs: {runs})")


if __name__ == "__main__":
    main()
