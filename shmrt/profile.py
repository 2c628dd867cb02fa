"""Where one call's time goes: ``CompiledModel.profile(x)``.

The call is timed on one clock (CLOCK_MONOTONIC, shared by every process):
the parent's copy of the input into the arena, the command's way to each
worker (dispatch), each worker's steps -- kernels, and waits at barriers
for the slowest worker -- the way back to the parent once the last worker
is done (return), and the copy of the output out of the arena.  A
recurrent layer's per-time-step barriers run inside its step and count as
kernel time.  In a pipeline, a stage's wait for the previous one counts as
a wait, and each step's time is summed over the micro-batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .executor import BARRIER, END, OP_NAMES, WAIT


@dataclass
class Profile:
    batch: int
    workers: int
    strategy: str
    copy_in_us: float
    copy_out_us: float
    total_us: float
    dispatch_us: list = field(default_factory=list)  # per worker: command posted -> first step starts
    kernel_us: list = field(default_factory=list)  # per worker: time in compute steps
    wait_us: list = field(default_factory=list)  # per worker: time at barriers
    return_us: float = 0.0  # last worker done -> parent sees it
    per_worker: list = field(default_factory=list)  # per worker: [(step label, us)] in program order

    @property
    def coordination_us(self) -> float:
        """Dispatch + barrier waits + return, of the worker that finished last."""
        return self.total_us - self.copy_in_us - self.copy_out_us - max(self.kernel_us)

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["coordination_us"] = self.coordination_us
        return d

    def __str__(self) -> str:
        P = self.workers
        head = "".join(f"{f'w{w}':>10}" for w in range(P))
        lines = [f"shmrt profile: batch {self.batch}, {P} worker(s), plan {self.strategy!r}: "
                 f"{self.total_us:.1f} us in all",
                 f"  copy in {self.copy_in_us:.1f} us | kernels {max(self.kernel_us):.1f} us (slowest worker) | "
                 f"coordination {self.coordination_us:.1f} us | copy out {self.copy_out_us:.1f} us"]
        if all(len(w) == len(self.per_worker[0]) and [n for n, _ in w] == [n for n, _ in self.per_worker[0]]
               for w in self.per_worker):  # every worker ran the same steps: one table
            lines += [f"  {'step (us)':<44}{head}",
                      f"  {'dispatch':<44}" + "".join(f"{v:10.1f}" for v in self.dispatch_us)]
            for i, (name, _) in enumerate(self.per_worker[0]):
                lines.append(f"  {f'{i:>3} {name}'[:44]:<44}" + "".join(f"{w[i][1]:10.1f}" for w in self.per_worker))
            lines += [f"  {'kernels':<44}" + "".join(f"{v:10.1f}" for v in self.kernel_us),
                      f"  {'barrier waits':<44}" + "".join(f"{v:10.1f}" for v in self.wait_us)]
        else:  # a pipeline: each worker its own steps
            for w, steps in enumerate(self.per_worker):
                lines.append(f"  worker {w}: dispatch {self.dispatch_us[w]:.1f} us, kernels {self.kernel_us[w]:.1f} us, "
                             f"waits {self.wait_us[w]:.1f} us")
                lines += [f"    {f'{i:>3} {name}'[:44]:<44}{us:10.1f}" for i, (name, us) in enumerate(steps)]
        lines.append(f"  return to the parent: {self.return_us:.1f} us after the last worker")
        return "\n".join(lines)


def build(prog, stamps, labels, n, strategy, t_in, t_posted, t_done, t_out) -> Profile:
    """prog: int64 [P, steps, ROW] the program run; stamps: int64 [P, steps + 1]
    each worker's record (its start, then the time in each step, summed over
    a micro-batch loop's passes); labels: per worker {step index: layer
    label}; times in ns."""
    P = prog.shape[0]
    kernel, wait, dispatch, per_worker, ends = [], [], [], [], []
    for w in range(P):
        ops = prog[w, :, 0]
        last = int(np.argmax(ops == END))  # steps 0..last-1 ran
        d = stamps[w, 1:last + 1] / 1e3
        dispatch.append((stamps[w, 0] - t_posted) / 1e3)
        waits = np.isin(ops[:last], (BARRIER, WAIT))
        kernel.append(float(d[~waits].sum()))
        wait.append(float(d[waits].sum()))
        ends.append(int(stamps[w, 0] + stamps[w, 1:last + 1].sum()))
        per_worker.append([(labels[w].get(i, OP_NAMES[int(ops[i])]), float(d[i])) for i in range(last)])
    return Profile(batch=n, workers=P, strategy=strategy, copy_in_us=(t_posted - t_in) / 1e3,
                   copy_out_us=(t_out - t_done) / 1e3, total_us=(t_out - t_in) / 1e3, dispatch_us=dispatch,
                   kernel_us=kernel, wait_us=wait, return_us=(t_done - max(ends)) / 1e3, per_worker=per_worker)
