"""Where one call's time goes: ``CompiledModel.profile(x)``.

The call is timed on one clock (CLOCK_MONOTONIC, shared by every process):
the parent's copy of the input into the arena, the command's way to each
worker (dispatch), each worker's steps -- kernels, and waits at barriers
for the slowest worker -- the way back to the parent once the last worker
is done (return), and the copy of the output out of the arena.  A
recurrent layer's per-time-step barriers run inside its step and count as
kernel time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .executor import BARRIER, END, OP_NAMES


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
    steps: list = field(default_factory=list)  # (op name, [us per worker]) in program order

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
                 f"coordination {self.coordination_us:.1f} us | copy out {self.copy_out_us:.1f} us",
                 f"  {'phase (us)':<22}{head}",
                 f"  {'dispatch':<22}" + "".join(f"{v:10.1f}" for v in self.dispatch_us)]
        for i, (name, us) in enumerate(self.steps):
            lines.append(f"  {f'{i:>3} {name}':<22}" + "".join(f"{v:10.1f}" for v in us))
        lines += [f"  {'kernels':<22}" + "".join(f"{v:10.1f}" for v in self.kernel_us),
                  f"  {'barrier waits':<22}" + "".join(f"{v:10.1f}" for v in self.wait_us),
                  f"  return to the parent: {self.return_us:.1f} us after the last worker"]
        return "\n".join(lines)


def build(prog, stamps, n, strategy, t_in, t_posted, t_done, t_out) -> Profile:
    """prog: int64 [P, steps, ROW] the program run; stamps: int64 [P, steps + 1]
    each worker's record (start, then the end of each step); times in ns."""
    P = prog.shape[0]
    kernel, wait, dispatch, steps, ends = [], [], [], [], []
    for w in range(P):
        ops = prog[w, :, 0]
        last = int(np.argmax(ops == END))  # steps 0..last-1 ran
        t = stamps[w, :last + 1].astype(np.int64)
        d = np.diff(t) / 1e3
        dispatch.append((t[0] - t_posted) / 1e3)
        is_bar = ops[:last] == BARRIER
        kernel.append(float(d[~is_bar].sum()))
        wait.append(float(d[is_bar].sum()))
        ends.append(int(t[-1]))
        for i in range(last):
            if w == 0:
                steps.append((OP_NAMES[int(ops[i])], []))
            if i < len(steps):
                steps[i][1].append(float(d[i]))
    width = max(len(us) for _, us in steps) if steps else 0
    steps = [(name, us + [0.0] * (width - len(us))) for name, us in steps]
    return Profile(batch=n, workers=P, strategy=strategy, copy_in_us=(t_posted - t_in) / 1e3,
                   copy_out_us=(t_out - t_done) / 1e3, total_us=(t_out - t_in) / 1e3, dispatch_us=dispatch,
                   kernel_us=kernel, wait_us=wait, return_us=(t_done - max(ends)) / 1e3, steps=steps)
