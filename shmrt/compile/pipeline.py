"""Pipeline plans and the hybrid plan's per-layer choice.

A pipeline runs stages of consecutive ops, each on its own group of
workers, split within the group as the hybrid plan splits; micro-batches
flow from stage to stage, each stage counting the micro-batches it finished
(MICRO, WAIT, SIGNAL, NEXT).  Stages are balanced on a relative cost; among
cuts nearly as balanced as the best, the graph is cut where the fewest
bytes cross from stage to stage (a residual block is not cut through)."""
from __future__ import annotations

import numpy as np

from shmrt.compile.builder import Builder
from shmrt.compile.isa import END, MICRO, MICRO_ROWS, NEXT, ROW, SIGNAL, WAIT, encode
from shmrt.parallel.control import barrier_line

# at most this many micro-batches per stage per call, of at least
# MICRO_ROWS rows each (each micro-batch reads the stage's weights again)
MICRO_PER_STAGE = 4


def stage_costs(ops, woff, outs, parts, scratch, inp, inputs):
    """Per op, a relative cost for balancing stages: flops per row, plus
    weight bytes (read once per micro-batch) at 4 flops a byte."""
    b = Builder("data", 1, woff, outs, parts, scratch, inp, inputs=inputs)
    costs = []
    for op in ops:
        b.add(op)
        r = b.rows[-1]
        costs.append(r.get("flops", 0) + 4 * r.get("weight_bytes", 0) / 16)
    return costs


def crossing(ops):
    """Per cut position j (stages ops[:j] | ops[j:]), the floats per batch row of the values that
    ops before j write and ops from j on read: what crosses from stage to stage there."""
    last = {}
    for k, op in enumerate(ops):
        for v in op.inputs:
            last[v] = k
    cross = np.zeros(len(ops) + 1)
    for k, op in enumerate(ops):
        cross[k + 1:last.get(op.out, k) + 1] += int(np.prod(op.shape)) if op.shape else 1
    return cross


def balance(costs, groups, cross=None, slack=1.25):
    """Cut costs (in order) into len(groups) consecutive non-empty stages: of the cuts whose largest
    cost / group size is within ``slack`` of the best balance, those where the fewest values cross
    (``cross``: per cut position, see crossing(); exhaustive DP, few ops)."""
    n, S = len(costs), len(groups)
    pre = np.concatenate([[0.0], np.cumsum(costs)])

    def cuts_by(score, cap, start):
        best = {0: (start, [])}
        for s in range(S):
            nxt = {}
            for i, (acc, cuts) in best.items():
                for j in range(i + 1, n - (S - s - 1) + 1):
                    load = (pre[j] - pre[i]) / groups[s]
                    if load > cap:
                        continue
                    v = score(acc, load, j)
                    if j not in nxt or v < nxt[j][0]:
                        nxt[j] = (v, cuts + [j])
            best = nxt
        return best[n]

    worst, cuts = cuts_by(lambda acc, load, j: max(acc, load), np.inf, 0.0)
    if cross is None:
        return cuts
    # (floats crossing, then the largest load): ties go to the better balance
    return cuts_by(lambda acc, load, j: (acc[0] + (cross[j] if j < n else 0.0), max(acc[1], load)),
                   worst * slack + 1e-9, (0.0, 0.0))[1]


def layer_splits(ops, data, model, maxb, rates):
    """Per op, whether the hybrid plan splits it by model: the cheaper, at
    max_batch rows, of its steps in the batch-row plan and in the
    model-parallel plan ((program, explain rows) each) as the cost model
    prices them (barriers included)."""
    from shmrt.compile.cost import op_us
    out = {}
    for op, rd, rm in zip(ops, data[1], model[1]):
        t_model, t_data = (op_us(prog, r["steps"], maxb, rates) for prog, r in ((model[0], rm), (data[0], rd)))
        out[op.index] = (t_model < t_data, f"predicted at batch {maxb}: {t_model:.1f} us by model "
                                           f"(as the model plan splits it: {rm['partition']}), {t_data:.1f} us "
                                           f"by batch rows")
    return out


def pipeline(ops, P, woff, outs, parts, scratch, inp, inputs, counters_off, splits=None):
    """Stages of consecutive ops, each on its own group of workers, split
    within the group as the hybrid plan splits (large layers by model, with
    the group's own barrier); micro-batches flow from stage to stage,
    each stage counting the micro-batches it finished (executor: MICRO,
    WAIT, SIGNAL, NEXT).  A micro-batch's rows have their own place in
    every activation, so a stage never waits for room, only for data."""
    S = min(P if P <= 3 else P // 2, len(ops))  # from 4 workers on, groups of 2 or more
    groups = [P // S + (1 if s < P % S else 0) for s in range(S)]
    cuts = balance(stage_costs(ops, woff, outs, parts, scratch, inp, inputs), groups, crossing(ops))
    steps = [[] for _ in range(P)]
    rows, first, start, vals = [], 0, 0, None
    for s, (size, end) in enumerate(zip(groups, cuts)):
        wids = list(range(first, first + size))
        b = Builder("hybrid", size, woff, outs, parts, scratch, inp, wids, barrier_line(P, s), splits, inputs, vals)
        for op in ops[start:end]:
            b.add(op)
        head_len = 2 if s > 0 else 1
        for r in b.rows:
            r["workers"] = f"stage {s}: " + r["workers"]
            r["steps"] = {w: (a + head_len, z + head_len) for w, (a, z) in r["steps"].items()}
            r["micro"] = MICRO_PER_STAGE * S
        rows += b.rows
        for local, w in enumerate(wids):
            head = [encode(MICRO, most=MICRO_PER_STAGE * S, counters=counters_off, workers=P, rows=MICRO_ROWS)]
            if s > 0:
                head.append(encode(WAIT, first=first - groups[s - 1], producers=groups[s - 1]))
            tail = ([encode(SIGNAL, worker=w)] if s < S - 1 else []) + [encode(NEXT), encode(END)]
            steps[w] += head + b.steps[local] + tail
        vals = b.vals
        for v in vals.values():  # the next stage waits for this one (WAIT): every value so far is complete
            v.state, v.bounds = "all", None
        first, start = first + size, end
    n = max(len(x) for x in steps)
    prog = np.zeros((P, n, ROW), np.int64)
    for w in range(P):
        prog[w, :len(steps[w])] = steps[w]
    return prog, rows
