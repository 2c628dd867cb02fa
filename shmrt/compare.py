"""shmrt.compare: what a weight format costs in accuracy on the user's own data."""
from __future__ import annotations

import numpy as np


def _outputs(y) -> list:
    if isinstance(y, dict):
        return [np.asarray(v) for v in y.values()]
    if isinstance(y, (tuple, list)):
        return [np.asarray(v) for v in y]
    return [np.asarray(y)]


def _call(cm, x):
    if isinstance(x, tuple):
        return cm(*x)
    return cm(x)


def compare(model, x, weights="int8", workers=None, **compile_kwargs) -> dict:
    """Run ``model`` on ``x`` with float32 weights and with ``weights`` ("bf16", "int8", "int4", or None:
    as loaded) and return how far apart they are:

    - "max_abs": the largest absolute difference over every output;
    - "rel_err": that, over the largest absolute float32 output;
    - "top1_agreement": the fraction of rows whose argmax agrees (first output, when it is [N, classes]
      with more than one class; else None);
    - "weights_rel_err": {layer: relative (Frobenius) error of its weights as run} for compressed layers;
    - "format": {layer: the format it ran}.

    x: an array of samples (or a tuple of arrays / a dict for several inputs, as the compiled model is
    called).  workers and compile_kwargs (strategy, max_batch, input_shape, max_seq_len, ...) as for
    Runtime and Runtime.compile; max_batch defaults to the batch of x.
    """
    from shmrt.runtime import Runtime
    first = next(iter(x.values())) if isinstance(x, dict) else x[0] if isinstance(x, tuple) else x
    n = len(first)
    compile_kwargs.setdefault("max_batch", max(n, 1))
    with Runtime(workers=workers) as rt:
        ref = _outputs(_call(rt.compile(model, weights="float32", **compile_kwargs), x))
        cm = rt.compile(model, weights=weights, **compile_kwargs)
        got = _outputs(_call(cm, x))
        plan = getattr(cm, "inner", cm).plan
    rows = next(iter(plan.explain_rows.values()))
    notes = {f"{','.join(map(str, r['layers']))}: {r['short']}": r["weights"] for r in rows if "weights" in r}
    diff = max((float(np.max(np.abs(g.astype(np.float64) - r))) if r.size else 0.0) for g, r in zip(got, ref))
    scale = max((float(np.max(np.abs(r))) if r.size else 0.0) for r in ref)
    top1 = None
    r0, g0 = ref[0], got[0]
    if r0.ndim == 2 and r0.shape[1] > 1 and r0.shape[0] > 0:
        top1 = float(np.mean(np.argmax(r0, axis=1) == np.argmax(g0, axis=1)))
    return {"max_abs": diff, "rel_err": diff / scale if scale > 0 else diff, "top1_agreement": top1,
            "weights_rel_err": {k: v["rel_err"] for k, v in notes.items() if v["format"] != "float32"},
            "format": {k: v["format"] for k, v in notes.items()}}
