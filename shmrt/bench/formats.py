"""The benchmark's compressed-weight rows (issue 18): which layers a format compresses, the bytes of
weights a batch-1 call reads in each format, their fraction of the measured read bandwidth, and the
comparison of shmrt's formats with the peers' float32 and int8 models.

Bytes counted (``weight_bytes``), per call at batch 1, in the format the call runs:
- float32 4 B a weight, bf16 2 B;
- shmrt int8: 1 B a weight (input features padded to 4) + 8 B per output row (its float32 scale and
  the int32 correction beside it: kernels/qformat.py's layout);
- shmrt int4: 0.5 B a weight (input features padded to 32) + 8 B per block of 32 per output row
  (scale and correction);
- a peer's int8 (ONNX Runtime, torch): 1 B a weight + 4 B per output row (a scale);
- parameters a format leaves alone (biases, convolutions, a Linear with < 8 outputs) at 4 B;
- a recurrent layer's recurrent weights (weight_hh_*) are read at every time step: T times; its
  input weights once (one GEMM over the T steps).
That is the least a call must read.  The fraction is those bytes / p50 / the read GB/s ceiling that
ceilings.py measures at the same thread count (a 256 MiB array: DRAM).  Weights that fit in the
caches are re-read from there -- the LSTM's recurrent weights every step, and a compressed MLP
between calls when it fits the L3 -- so a fraction above 1 is cache bandwidth, not a measuring error.
"""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L
from shmrt.kernels.linear import PACKED_MIN_OUT

FORMATS = ("float32", "bf16", "int8", "int4")

# The numeric check's bound on rel err = max |y - ref| / max |ref| against the float64 reference,
# per format.  float32: 1e-5 (the bench's bound).  The others: about 3x what the format's rounding
# alone gives on the bench models -- simulated in numpy on the mlp, lstm, cnn and deep weights
# (bf16 <= 2.5e-3, int8 weights per channel <= 6e-3, int4 blocks of 32 <= 0.11) and measured for the
# peers' int8 models (ONNX Runtime <= 2e-2, torch <= 2.5e-2, activations quantized per tensor) --
# while a wrong layout (a transposed weight, gates out of order) gives errors near 1.
TOL = {"float32": 1e-5, "bf16": 2e-2, "int8": 8e-2, "int4": 0.3}

RECURRENT = (L.RNN, L.LSTM, L.GRU)
MIN_OUT = PACKED_MIN_OUT  # shmrt compresses a Linear of at least this many outputs (8), and every recurrent layer


def compresses(layer, min_out=MIN_OUT) -> bool:
    """Whether a compressed format compresses this layer's weights."""
    return isinstance(layer, RECURRENT) or (isinstance(layer, L.Linear) and layer.out_features >= min_out)


def compressible(model) -> bool:
    """Whether any layer of the model compresses (else every format runs its float32 weights)."""
    return any(compresses(l) for l in model.layers)


def runnable(model, weights) -> list:
    """The formats of ``weights`` that differ on this model: float32, and the compressed ones where a layer
    compresses (float32 alone if none is left)."""
    return [f for f in weights if f == "float32" or compressible(model)] or ["float32"]


def _ceil(v, step):
    return -(-v // step) * step


def matrix_bytes(m, k, fmt, peer=False) -> int:
    """Bytes of a weight [m, k] stored in fmt (see the module's docstring)."""
    if fmt == "float32":
        return 4 * m * k
    if fmt == "bf16":
        return 2 * m * k
    if fmt == "int8":
        return m * k + 4 * m if peer else m * _ceil(k, 4) + 8 * m
    if fmt == "int4" and not peer:
        k32 = _ceil(k, 32)
        return m * k32 // 2 + 8 * m * (k32 // 32)
    raise ValueError(f"weight format must be one of {', '.join(FORMATS)} (int4 for shmrt only), got {fmt!r}"
                     + (" for a peer" if peer else ""))


def layer_bytes(layer, in_shape, fmt, peer=False) -> int:
    """Bytes of one layer's parameters one batch-1 call reads in fmt (in_shape: its input's per-sample shape)."""
    steps = in_shape[0] if isinstance(layer, RECURRENT) else 1
    squeeze = compresses(layer, 1 if peer else MIN_OUT)  # the peers quantize every Linear and LSTM
    total = 0
    for name, a in layer.params.items():
        weight = name.startswith("weight") and a.ndim == 2
        b = matrix_bytes(*a.shape, fmt, peer) if squeeze and weight else a.nbytes
        total += b * (steps if name.startswith("weight_hh") else 1)
    return total


def _layer_shapes(model, input_shape) -> list:
    """Each layer's input's per-sample shape, in model.layers' order."""
    g = model if isinstance(model, L.Graph) else L.Graph.chain(model)
    shapes = g.shapes(tuple(input_shape))
    return [shapes[n.inputs[0]] for n in g.nodes]


def weight_bytes(model, input_shape, fmt, peer=False) -> dict:
    """{layer index: bytes read by a batch-1 call} in fmt, for the layers with parameters."""
    shapes = _layer_shapes(model, input_shape)
    return {i: layer_bytes(l, s, fmt, peer) for i, (l, s) in enumerate(zip(model.layers, shapes)) if l.params}


def call_bytes(model, input_shape, fmt, peer=False) -> int:
    """Bytes of weights a batch-1 call reads in fmt, all layers."""
    return sum(weight_bytes(model, input_shape, fmt, peer).values())


def step_medians(profiles) -> list:
    """[(step label, us)]: per step of the program, the median over profiled calls of its slowest worker's
    time ([] when the workers run different steps, a pipeline)."""
    first = profiles[0].per_worker
    labels = [n for n, _ in first[0]]
    if any([n for n, _ in s] != labels for p in profiles for s in p.per_worker):
        return []
    return [(name, float(np.median([max(s[i][1] for s in p.per_worker) for p in profiles])))
            for i, name in enumerate(labels)]


WEIGHT_STEPS = ("linear", "recurrent")  # the steps that stream a layer's weights (GEMV-shaped at batch 1)


def step_bytes(steps, per_layer) -> list:
    """[{step, bytes, us}] for the weight-streaming steps of step_medians' list, each with the bytes of the
    layers its label names ("linear: layer 2,3 Linear + ReLU" -> layers 2 and 3)."""
    out = []
    for label, us in steps:
        op, _, rest = label.partition(":")
        if not any(op.strip().startswith(w) for w in WEIGHT_STEPS) or "layer " not in rest:
            continue
        try:
            ids = [int(v) for v in rest.split("layer ", 1)[1].split()[0].split(",")]
        except ValueError:
            continue
        nbytes = sum(per_layer.get(i, 0) for i in ids)
        if nbytes and us > 0:
            out.append(dict(step=label.strip(), bytes=int(nbytes), us=us))
    return out


AA = " A/A"  # report.AA, the A/A control's suffix (report imports this module, not the other way)


def peers_of(rows, r, weights="float32") -> list:
    """The timed peer rows of r's group (workload, batch, workers: threads) that run ``weights``."""
    return [p for p in rows if p["workload"] == r["workload"] and p["batch"] == r["batch"]
            and p["workers"] == r["workers"] and not is_shmrt(p) and p["impl"] != "numpy (1 process)"
            and p.get("weights", "float32") == weights and "p50_ms" in p]


def _read_gbs(result, workers):
    return result.get("ceilings", {}).get(str(max(workers, 1)), {}).get("read_gbs")


def is_shmrt(r) -> bool:
    return r["impl"] == "shmrt" or r["impl"].startswith("shmrt ")


def annotate(result) -> None:
    """Add to the batch-1 rows their read bandwidth (GB/s and fraction of the read ceiling), to their
    weight-streaming steps the same per step, and to every shmrt row its ratio against the best int8
    peer (``vs_best_int8_peer``; report.versus_best_peer gives the float32 peers' ``vs_best_peer``)."""
    rows = result["rows"]
    for r in rows:
        read = _read_gbs(result, r["workers"])
        if r.get("weight_bytes") and "p50_ms" in r and read:
            r["read_gbs"] = r["weight_bytes"] / (r["p50_ms"] / 1e3) / 1e9
            r["read_fraction"] = r["read_gbs"] / read
        for s in r.get("steps", []):
            if read:
                s["read_gbs"] = s["bytes"] / (s["us"] / 1e6) / 1e9
                s["read_fraction"] = s["read_gbs"] / read
        if is_shmrt(r) and "p50_ms" in r and not r["strategy"].endswith(AA):
            peers = peers_of(rows, r, "int8")
            if peers:
                best = min(peers, key=lambda p: p["p50_ms"])
                r["vs_best_int8_peer"], r["best_int8_peer"] = best["p50_ms"] / r["p50_ms"], best["impl"]


# issue 18's targets at batch 1 (2 workers vs the peers at 2 threads): (workload, format, versus, target);
# "float32" / "int8": the best peer of those weights' p50 / shmrt's p50
GOALS = [("mlp", "int8", "float32", 2.5), ("mlp", "int8", "int8", 1.2), ("mlp", "int4", "float32", 4.0),
         ("lstm", "int8", "float32", 2.5), ("lstm", "int8", "int8", 1.2), ("lstm", "int4", "float32", 4.0)]
STEP_TARGET = 0.85  # GEMV-shaped steps at >= this fraction of the read bandwidth, in every format


def goals(result) -> list:
    """Issue 18's targets judged on the rows of the largest worker count."""
    rows = [r for r in result["rows"] if is_shmrt(r) and "p50_ms" in r and r["batch"] == 1]
    if not rows:
        return []
    n = max(r["workers"] for r in rows)
    out = []
    for wl, fmt, versus, target in GOALS:
        r = next((r for r in rows if r["workload"] == wl and r["workers"] == n and r.get("weights") == fmt
                  and not r["strategy"].endswith(AA)), None)
        key = "vs_best_peer" if versus == "float32" else "vs_best_int8_peer"
        if r is not None and key in r:
            peer = r["best_peer"] if versus == "float32" else r["best_int8_peer"]
            out.append(dict(workload=wl, weights=fmt, versus=versus, target=target, figure=r[key], peer=peer,
                            workers=n, met=r[key] >= target))
    return out


def section(result) -> str:
    """The compressed-weights section of the report: per batch-1 group, each implementation's weight
    format, bytes read, GB/s and fraction of the read ceiling, and shmrt's ratios to the best float32 and
    int8 peers; then the weight-streaming steps of shmrt's profiled calls; then issue 18's goals."""
    rows = [r for r in result["rows"] if "read_fraction" in r and not r["strategy"].endswith(AA)]
    if not rows:
        return ""
    out = ["weights read per call at batch 1 (bytes counted in each implementation's format; recurrent weights "
           "once per time step), against the read bandwidth measured at the same threads; a fraction above 1 "
           "means the weights came from the caches:",
           f"  {'workload':<13} {'impl':<26} {'workers':>7} {'weights':>8} {'MiB read':>9} {'p50 ms':>9} {'GB/s':>7} "
           f"{'of read':>8} {'rel err':>8} {'vs f32 peer':>12} {'vs int8 peer':>13}"]
    for r in rows:
        f32 = f"{r['vs_best_peer']:.2f}x" if "vs_best_peer" in r else "-"
        i8 = f"{r['vs_best_int8_peer']:.2f}x" if "vs_best_int8_peer" in r else "-"
        name = r["impl"] + ("" if r["strategy"] in ("-", "auto") else f" {r['strategy']}")
        out.append(f"  {r['workload']:<13} {name[:26]:<26} {r['workers']:>7} {r.get('weights', 'float32'):>8} "
                   f"{r['weight_bytes'] / 2**20:9.2f} {r['p50_ms']:9.3f} {r['read_gbs']:7.1f} "
                   f"{r['read_fraction']:8.2f} {r['rel_err']:8.1e} {f32:>12} {i8:>13}")
    steps = [r for r in rows if r.get("steps")]
    if steps:
        out += ["", "weight-streaming steps of shmrt's profiled batch-1 calls (slowest worker's time per step, "
                    f"median; target >= {STEP_TARGET} of read bandwidth):"]
        for r in steps:
            for s in r["steps"]:
                out.append(f"  {r['workload']:<13} {r['impl'] + ' ' + r['strategy']:<20} {s['step'][:44]:<44} "
                           f"{s['bytes'] / 2**20:8.2f} MiB {s['us']:9.1f} us {s.get('read_gbs', 0):7.1f} GB/s "
                           f"{s.get('read_fraction', 0):6.2f} of read")
    gs = result.get("format_goals") or []
    if gs:
        out += ["", f"goals (issue 18's targets) at batch 1, {gs[0]['workers']} worker(s):"]
        for g in gs:
            out.append(f"  {g['workload']:<6} {g['weights']:<5} best {g['versus']} peer p50 / shmrt p50 >= "
                       f"{g['target']}: {g['figure']:.2f} ({g['peer']})  {'met' if g['met'] else 'NOT met'}")
    for n, by in (result.get("format_resources") or {}).items():
        base = by.get("no model", {}).get("workers_pss_mib")
        f32 = result.get("resources", {}).get(n, {}).get("workers_pss_mib")
        if base is None or f32 is None:
            continue  # no PSS on this OS
        out += ["", "workers' memory (PSS) by weight format, each model compiled alone after a call (issue 18's "
                    "target: int8's increase over no model <= a quarter of float32's):"]
        out.append(f"  mlp, {n} worker(s): workers' PSS with no model compiled {base:.1f} MiB; with the float32 "
                   f"model {f32:.1f} MiB (+{f32 - base:.1f})")
        for fmt, v in by.items():
            if fmt != "no model" and "workers_pss_mib" in v:
                pss = v["workers_pss_mib"]
                out.append(f"    {fmt} weights ({v['weights_mib']:.1f} MiB): {pss:.1f} MiB (+{pss - base:.1f}; "
                           f"float32's + / 4 = {(f32 - base) / 4:.1f})")
    return "\n".join(out)
