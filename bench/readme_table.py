"""The README's results table, generated from a bench JSON file (``python -m shmrt.bench --full --peers --json F``).

    python bench/readme_table.py bench/results/2core-xeon-peers.json

prints the Markdown table and the line naming the run it comes from, so that
every figure the README quotes comes from a recorded result.
"""
import json
import sys

AA = " A/A"


def _ms(v):
    return f"{v:.3g} ms" if v >= 0.1 else f"{v * 1e3:.3g} us"


def main(path):
    with open(path) as f:
        result = json.load(f)
    rows = [r for r in result["rows"] if "p50_ms" in r]
    m = result["machine"]
    top = max(r["workers"] for r in rows if r["impl"] == "shmrt")
    print(f"From `{path}`: shmrt {m['shmrt']} at commit {m['commit']}, {m['date']}, {m['cpu']} "
          f"({m['cores_logical']} logical cores), " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".")
    print()
    print(f"| workload | batch | numpy (1 process) | best peer, {top} threads | shmrt 1 worker (auto) | "
          f"shmrt {top} workers (auto, plan) | {top} workers, fastest fixed strategy | best peer / shmrt (auto, "
          f"{top}) | A/A spread |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups = dict.fromkeys((r["workload"], r["batch"]) for r in rows)
    for wl, b in groups:
        g = [r for r in rows if r["workload"] == wl and r["batch"] == b]

        def one(**kw):
            return next((r for r in g if all(r.get(k) == v for k, v in kw.items())), None)
        numpy = one(impl="numpy (1 process)", workers=top)
        peers = [r for r in g if r["workers"] == top and r["impl"] != "numpy (1 process)"  # float32 peers
                 and not r["impl"].startswith("shmrt") and r.get("weights", "float32") == "float32"]
        best = min(peers, key=lambda r: r["p50_ms"]) if peers else None
        a1, a = one(impl="shmrt", strategy="auto", workers=1), one(impl="shmrt", strategy="auto", workers=top)
        fixed = [r for r in g if r["impl"] == "shmrt" and r["workers"] == top and r["strategy"] != "auto"
                 and not r["strategy"].endswith(AA)]
        fb = min(fixed, key=lambda r: r["p50_ms"]) if fixed else None
        ratio = f"{a['vs_best_peer']:.2f}x" if a and "vs_best_peer" in a else "-"
        if a and a.get("within_aa"):
            ratio += " (inside A/A)"
        spread = f"{100 * a['aa_spread']:.1f} %" if a and "aa_spread" in a else "-"
        print(f"| {wl} | {b:,} | {_ms(numpy['p50_ms']) if numpy else '-'} | "
              f"{best['impl'].split(' (')[0] + ': ' + _ms(best['p50_ms']) if best else '-'} | "
              f"{_ms(a1['p50_ms']) if a1 else '-'} | {_ms(a['p50_ms']) + ' (' + a['plan'] + ')' if a else '-'} | "
              f"{fb['strategy'] + ': ' + _ms(fb['p50_ms']) if fb else '-'} | {ratio} | {spread} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench/results/2core-xeon-peers.json")
