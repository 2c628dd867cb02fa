"""explain(): a plan told in words -- for "auto", each candidate program's
predicted time (or the measured choice) and the one chosen; then per layer
its partition, worker group, slices, flops, bytes, barriers and predicted
time, next to the same layer's predicted time in the other programs, which
is why it was chosen.  Everything comes from the plan's explain rows (the
builder's record of each layer) and the cost model."""
from __future__ import annotations

from shmrt.compile.compress import describe
from shmrt.compile.cost import Rates, op_us


def explain(plan, strategy: str, n: int, weight_bytes: int, workers: str) -> str:
    """The text of CompiledModel.explain for ``plan`` compiled with ``strategy``,
    at batch n; ``workers`` is the pool's line of pids and CPU sets."""
    chosen = plan.strategy_for(strategy, max(n, 1))
    rates = plan.rates or Rates()
    lines = [f"shmrt plan: {plan.workers} worker(s), strategy={strategy!r}, max_batch={plan.max_batch}, "
             f"weights {weight_bytes / 2**20:.2f} MiB (one shared copy), "
             f"arena {plan.arena_floats * 4 / 2**20:.2f} MiB"]
    if len(plan.programs) > 1:
        pred = plan.predictions(max(n, 1))
        lines.append(f"cost model (rates {rates.source}; per worker: GEMM {rates.gflops:.0f} GFLOP/s, read "
                     f"{rates.read_gbs:.1f} GB/s from memory and {rates.cache_gbs:.1f} from its "
                     f"{rates.l2_bytes >> 10} KiB L2; barrier {rates.barrier_us:.1f} us, dispatch "
                     f"{rates.dispatch_us:.1f} us), predicted at batch {n}: " +
                     ", ".join(f"{k} {v:,.0f} us" for k, v in sorted(pred.items(), key=lambda kv: kv[1])))
        how = (f"measured fastest near batch {n} (autotune: {dict(sorted(plan.tuned.items()))})" if plan.tuned
               else "predicted fastest")
        lines.append(f"auto at batch {n} -> {chosen!r}, {how}")

    def layer_us(name, members):
        for r in plan.explain_rows[name]:
            if r["layers"] == members:
                return op_us(plan.programs[name], r["steps"], n, rates, r.get("micro", 1))
        return None

    lines.append(workers)
    mem = plan.memory
    if mem:
        mib = lambda floats: f"{floats * 4 / 2**20:.2f} MiB"  # noqa: E731
        lines.append(f"arena: activations peak {mib(mem['slots'][chosen])} in [{chosen}] (values share slots "
                     f"once their last reader is done); largest input + output of one layer {mib(mem['pair'])}; "
                     f"fixed part (input, output, scratch) {mib(mem['base'])}; all programs "
                     f"{mib(plan.arena_floats)}")
    lines.append(f"[{chosen}] at batch {n}:")
    for r in plan.explain_rows[chosen]:
        flops = r.get("flops", 0) * n
        moved = r.get("read_per_worker", 0) + r.get("moved_per_row", 0) * n
        mine = layer_us(chosen, r["layers"])
        others = {k: layer_us(k, r["layers"]) for k in plan.programs if k != chosen}
        alt = ", ".join(f"{k} {v:,.0f} us" for k, v in others.items() if v is not None)
        lines.append(f"  layer {','.join(map(str, r['layers']))}: {r['layer']}")
        lines.append(f"    partition: {r['partition']}; {r['workers']}; barriers: {r['barriers']}; "
                     f"flops: {flops:,}; bytes read per worker: {moved:,}")
        lines.append(f"    predicted {mine:,.0f} us" + (f" (in the other plans: {alt})" if alt else ""))
        if "weights" in r:
            lines.append(f"    {describe(r['weights'])}")
        if "why" in r:
            lines.append(f"    {r['why']}")
        lines.append("    slices: " + " | ".join(f"w{w}: {sl}" for w, sl in enumerate(r["slices"])))
    return "\n".join(lines)
