"""Where each op's output lives: fixed buffers, and activation slots reused by liveness.

A graph's values are many more than are alive at once (a ResNet's blocks each make three), so the
arena does not hold one buffer per value.  The model's input, its outputs and the outputs that
are not a plain [N, width] (ArgMax's indices, a recurrent layer's sequences) have buffers of
their own, fixed for every program.  Every other value takes a *slot* when its producer is
emitted and gives it back after its last consumer: one program's slots are a pool over the
arena above the fixed part, sized to its peak.

When may a value take the slot another value left?  Only when no worker can still be reading
the old value while another writes the new one:
- one worker, or the batch-row plan ("data": every step of every worker reads and writes its own
  batch rows): at once, provided row r of the new value lies in row r of the slot -- so a value
  in a wider slot keeps the slot's row stride (its Output's ``ld``), and a row's owner is the
  only one ever to touch it;
- the other plans (columns, channels, stages within a group): once a barrier has stood since
  the old value's last read -- or, between two batch-row steps of a hybrid plan, where every
  step that wrote or read the old value split it by batch rows too (the same rows, the same
  owner: the argument of the data plan);
- a pipeline: never (stages work on different micro-batches at once).
A value is only put in a wider slot where its producer writes with a row stride and no consumer
needs its rows packed (``Program.strided``)."""
from __future__ import annotations

import numpy as np

from shmrt.compile.layout import Output
from shmrt.parallel.store import align

REUSE = ("rows", "barrier", "none")


class Slots:
    """One program's activation buffers (``slots[op index]`` -> Output), handed out as the builder
    emits each op (``builder`` set by the Builder), and taken back by ``release``."""

    def __init__(self, plan, reuse):
        assert reuse in REUSE
        self.plan, self.reuse = plan, reuse
        self.builder = None
        self.got = {}  # op index -> Output
        self.slot_of = {}  # op index -> slot number
        self.slots = []  # [off, ld, free since barrier count or None (in use), every access by batch rows]
        self.rows_only = {}  # value -> every step that wrote or read it so far split it by batch rows
        self.rows_next = False  # the op being emitted writes by batch rows (the builder's prediction)
        self.top = 0  # floats above plan.base
        self.users = dict(plan.users)  # value -> consumers left

    def __getitem__(self, i):
        if i in self.got:
            return self.got[i]
        p = self.plan
        if i in p.fixed:
            out = p.fixed[i]
        else:
            shape = p.shapes[i]
            width = int(np.prod(shape)) if shape else 1
            k = self._take(width, p.strided[i])
            off, ld = self.slots[k][0], self.slots[k][1]
            self.slot_of[i] = k
            out = Output("dense", p.base + off, width, shape=tuple(shape), ld=ld if ld != width else 0)
        self.got[i] = out
        return out

    def _take(self, width, strided):
        now = self.builder.barriers if self.builder is not None else 0
        best = None
        for k, (_, ld, since, rows_ok) in enumerate(self.slots):
            if since is None or (ld != width and not (strided and ld > width)):
                continue
            if self.reuse == "none" or (self.reuse == "barrier" and since >= now and not (
                    rows_ok and self.rows_next)):
                continue
            if best is None or ld < self.slots[best][1]:
                best = k
        if best is None:
            self.slots.append([self.top, width, None, False])
            self.top += align(self.plan.maxb * width)
            return len(self.slots) - 1
        self.slots[best][2] = None
        return best

    def release(self, op, rows):
        """op was emitted (by batch rows: rows): the values it read whose last consumer it was give
        their slots back."""
        now = self.builder.barriers if self.builder is not None else 0
        self.rows_only[op.out] = rows
        for v in set(op.inputs):
            self.users[v] -= 1
            self.rows_only[v] = self.rows_only.get(v, False) and rows
            i = self.plan.producer.get(v)
            if self.users[v] == 0 and i in self.slot_of:
                self.slots[self.slot_of[i]][2:] = [now, self.rows_only[v]]

    @property
    def peak(self) -> int:
        """Floats of arena this program's slots span."""
        return self.top


class Program:
    """What every program's Slots share: the fixed outputs, each op's output shape, who produces
    and how many read each value, and where the slots start (``base``, set once the fixed part is
    laid out)."""

    def __init__(self, ops, shapes, fixed, strided, maxb):
        self.fixed, self.maxb, self.base = fixed, maxb, 0
        self.shapes = {op.index: shapes[op.out] for op in ops}
        self.strided = strided
        self.producer = {op.out: op.index for op in ops}
        self.users = {}
        for op in ops:
            for v in set(op.inputs):
                self.users[v] = self.users.get(v, 0) + 1

    def slots(self, reuse) -> Slots:
        return Slots(self, reuse)
