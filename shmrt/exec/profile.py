"""Where one call's time goes: ``CompiledModel.profile(x)`` (or ``profile(n=...)``).

Every part is measured, on one clock (CLOCK_MONOTONIC, shared by every
process), as the difference of two stamps taken where it starts and ends:

    parent  t_in ... copy in ... t_copied ... launch (Python) ... t_post
    worker  start = its first step  (dispatch: t_post -> start)
            each step: kernels, or a wait at a barrier / for a stage
            end = after its last step
    parent  t_seen (the last worker's DONE seen: return = t_seen - end of
            the worker that finished last) ... t_done ... copy out ... t_out

t_post and t_seen are taken inside the Numba command call, right before the
command is published and right after the last DONE is seen; the workers'
stamps inside their step loop.  The call's path runs through the worker that
finished last (the critical worker): total = copy in + launch + its dispatch
+ its kernels + its waits + return + finish + copy out, and what the stamps
do not cover is printed as "unaccounted".  A recurrent layer's per-time-step
barriers run inside its step and count as kernel time.  In a pipeline, a
stage's wait for the previous one counts as a wait, and each step's time is
summed over the micro-batches.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from shmrt.compile.isa import BARRIER, END, LABELS, OP, WAIT
from shmrt.parallel import control as C


@dataclass
class Profile:
    batch: int
    workers: int
    strategy: str
    copy_in_us: float
    copy_out_us: float
    total_us: float
    launch_us: float = 0.0  # parent, Python: input copied -> command published
    finish_us: float = 0.0  # parent, Python: last DONE seen -> call returns
    dispatch_us: list = field(default_factory=list)  # per worker: command published -> first step starts
    kernel_us: list = field(default_factory=list)  # per worker: time in compute steps
    wait_us: list = field(default_factory=list)  # per worker: time at barriers / waiting for a stage
    return_us: float = 0.0  # the critical worker done -> parent sees it
    critical: int = 0  # the worker that finished last
    per_worker: list = field(default_factory=list)  # per worker: [(step label, us)] in program order
    barrier_us: list = field(default_factory=list)  # per barrier step: last arrival -> last worker out

    @property
    def coordination_us(self) -> float:
        """Dispatch + barrier waits + return, of the critical worker: each measured."""
        w = self.critical
        return self.dispatch_us[w] + self.wait_us[w] + self.return_us

    @property
    def unaccounted_us(self) -> float:
        """The call's time that no stamp pair covers."""
        w = self.critical
        return self.total_us - (self.copy_in_us + self.launch_us + self.dispatch_us[w] + self.kernel_us[w]
                                + self.wait_us[w] + self.return_us + self.finish_us + self.copy_out_us)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["coordination_us"] = self.coordination_us
        d["unaccounted_us"] = self.unaccounted_us
        return d

    def __str__(self) -> str:
        P, w = self.workers, self.critical
        head = "".join(f"{f'w{i}':>10}" for i in range(P))
        lines = [f"shmrt profile: batch {self.batch}, {P} worker(s), plan {self.strategy!r}: "
                 f"{self.total_us:.1f} us in all",
                 f"  copy in {self.copy_in_us:.1f} us | kernels {self.kernel_us[w]:.1f} us | coordination "
                 f"{self.coordination_us:.1f} us (dispatch {self.dispatch_us[w]:.1f}, waits {self.wait_us[w]:.1f}, "
                 f"return {self.return_us:.1f}) | copy out {self.copy_out_us:.1f} us   [worker w{w}, the last to "
                 f"finish]",
                 f"  parent's Python around the command: {self.launch_us:.1f} us before, {self.finish_us:.1f} us "
                 f"after; unaccounted {self.unaccounted_us:.1f} us"]
        if self.barrier_us:
            lines.append(f"  barriers: {len(self.barrier_us)}, last arrival -> all out: median "
                         f"{np.median(self.barrier_us):.2f} us")
        if all(len(s) == len(self.per_worker[0]) and [n for n, _ in s] == [n for n, _ in self.per_worker[0]]
               for s in self.per_worker):  # every worker ran the same steps: one table
            lines += [f"  {'step (us)':<44}{head}",
                      f"  {'dispatch':<44}" + "".join(f"{v:10.1f}" for v in self.dispatch_us)]
            for i, (name, _) in enumerate(self.per_worker[0]):
                lines.append(f"  {f'{i:>3} {name}'[:44]:<44}" + "".join(f"{s[i][1]:10.1f}" for s in self.per_worker))
            lines += [f"  {'kernels':<44}" + "".join(f"{v:10.1f}" for v in self.kernel_us),
                      f"  {'barrier waits':<44}" + "".join(f"{v:10.1f}" for v in self.wait_us)]
        else:  # a pipeline: each worker its own steps
            for i, steps in enumerate(self.per_worker):
                lines.append(f"  worker {i}: dispatch {self.dispatch_us[i]:.1f} us, kernels {self.kernel_us[i]:.1f} "
                             f"us, waits {self.wait_us[i]:.1f} us")
                lines += [f"    {f'{j:>3} {name}'[:44]:<44}{us:10.1f}" for j, (name, us) in enumerate(steps)]
        lines.append(f"  return to the parent: {self.return_us:.1f} us after the last worker")
        return "\n".join(lines)


def step_labels(prog, explain_rows) -> list:
    """Per worker, {step index: "linear: layer 0,1 Linear + ReLU"}: each step
    named by its op and the layers it computes (the builder's explain rows)."""
    labels = [{} for _ in range(prog.shape[0])]
    for r in explain_rows:
        for w, (a, z) in r["steps"].items():
            for i in range(a, z):
                labels[w][i] = f"{LABELS[int(prog[w, i, OP])]}: layer {','.join(map(str, r['layers']))} {r['short']}"
    return labels


def build(prog, stamps, labels, n, strategy, t_in, t_copied, call_stamps, t_done, t_out, moved=False) -> Profile:
    """prog: int64 [P, steps, ROW] the program run; stamps: int64 [P, steps + 1]
    each worker's record (its start, then the time in each step, summed over
    a micro-batch loop's passes, and in its last two slots the time of its
    single copies in and out: executor.run_command); labels: per worker
    {step index: label}; call_stamps: (published, last DONE seen) from
    call_stamped; times in ns.  moved: the workers moved the input and output
    (single copy); their copies count as copy time, and are listed as steps."""
    P, S = prog.shape[0], prog.shape[1]
    t_post, t_seen = int(call_stamps[0]), int(call_stamps[1])
    kernel, wait, dispatch, per_worker, ends, step_ends = [], [], [], [], [], []
    io_in, io_out = (stamps[:, S - 1], stamps[:, S]) if moved else (np.zeros(P, np.int64), np.zeros(P, np.int64))
    for w in range(P):
        ops = prog[w, :, OP]
        last = int(np.argmax(ops == END.code))  # steps 0..last-1 ran
        d = stamps[w, 1:last + 1]
        # a worker that did not run (the calling thread had every row: a solo call) has no start
        dispatch.append((stamps[w, 0] - t_post) / 1e3 if stamps[w, 0] else 0.0)
        waits = np.isin(ops[:last], (BARRIER.code, WAIT.code))
        kernel.append(float(d[~waits].sum()) / 1e3)
        wait.append(float(d[waits].sum()) / 1e3)
        step_ends.append(stamps[w, 0] + io_in[w] + np.cumsum(d))
        ends.append(int(stamps[w, 0] + io_in[w] + d.sum() + io_out[w]) if stamps[w, 0] else 0)
        steps = [(labels[w].get(i, LABELS[int(ops[i])]), float(d[i]) / 1e3) for i in range(last)]
        if moved:
            steps = [("input: its rows of x, single copy", io_in[w] / 1e3)] + steps + \
                [("output: its rows of the result, single copy", io_out[w] / 1e3)]
        per_worker.append(steps)
    barrier_us = []
    ops0 = prog[0, :, OP]
    if all(np.array_equal(prog[w, :, OP], ops0) for w in range(P)) and P > 1:
        for i in np.flatnonzero(ops0 == BARRIER.code):
            out = [int(step_ends[w][i]) for w in range(P)]
            arrive = [out[w] - int(stamps[w, 1 + i]) for w in range(P)]
            barrier_us.append((max(out) - max(arrive)) / 1e3)
    critical = int(np.argmax(ends))
    if t_seen == 0:  # the command outlived one wait slice (a worker died and was replaced): no stamp
        t_seen = t_done
    return Profile(batch=n, workers=P, strategy=strategy, copy_in_us=(t_copied - t_in + io_in[critical]) / 1e3,
                   copy_out_us=(t_out - t_done + io_out[critical]) / 1e3, total_us=(t_out - t_in) / 1e3,
                   launch_us=(t_post - t_copied) / 1e3, finish_us=(t_done - t_seen) / 1e3, dispatch_us=dispatch,
                   kernel_us=kernel, wait_us=wait, return_us=(t_seen - ends[critical]) / 1e3, critical=critical,
                   per_worker=per_worker, barrier_us=barrier_us)


def run_profiled(cm, x, n) -> Profile:
    """CompiledModel.profile's call, on validated arguments: x (the convenience tier, the
    rows of one call) or None and n (the zero-copy tier)."""
    from shmrt.exec import calls
    from shmrt.parallel import buffers
    rt = cm.runtime
    name = cm.plan.strategy_for(cm.strategy, n)
    prog_index = cm.plan.program_index(name)
    rec = cm._programs.shape[2] + 1
    P = cm.plan.workers
    with rt._lock:
        rt._check_open()
        record = cm.arena[cm._prof_off:cm._prof_off + 2 * (P * rec + 2)].view(np.int64)
        record[:] = 0  # a worker that does not run leaves its record at 0 (profile.build)
        mine = rt.pool.n  # the calling thread's record, when it computes
        mine_rec = record[mine * rec:(mine + 1) * rec]
        big = x is not None and x.size * 4 >= calls.SINGLE_COPY_MIN_BYTES  # as cm(x) decides
        for single in ((True, False) if big and rt.pool.single_copy else (False,)):
            t_in = time.monotonic_ns()
            io = None
            if single:  # as cm(x) runs it: every worker moves its own rows (exec/calls.py)
                xs = np.ascontiguousarray(x, np.float32)
                local = calls.local(cm, xs, prog_index, mine_rec)
                outs = calls.results(cm.plan.output, n)
                found = buffers.find(xs)
                io = (xs.ctypes.data, outs[0].ctypes.data, outs[-1].ctypes.data if len(outs) > 1 else 0, 0,
                      rt.pool.use_buffer(found) if found is not None else 0)
            else:
                local = calls.local(cm, None, prog_index, mine_rec)
                if x is not None:
                    cm.input_buffer(n).reshape(n, -1)[...] = x
            t_copied = time.monotonic_ns()
            cm._reset_counters(name)
            try:
                rt.pool.command(C.OP_RUN, cm.id, n, prog_index, cm._prof_off, record[P * rec:], local=local,
                                io=io)
            except calls.CopyRefused:
                continue  # the pool copies through the arena now: profile that
            t_done = time.monotonic_ns()
            out = cm._output_view(n)
            if x is not None and not single:
                out = tuple(np.array(o) for o in out) if isinstance(out, tuple) else np.array(out)
            t_out = time.monotonic_ns()
            break
        stamps = record[:P * rec].reshape(P, rec).copy()
        call_stamps = record[P * rec:].copy()
    prog = cm._programs[prog_index]
    return build(prog, stamps, step_labels(prog, cm.plan.explain_rows[name]), n, name, t_in, t_copied,
                 call_stamps, t_done, t_out, moved=io is not None)
