"""Where things are: an output buffer in the activation arena (Output), the
arena's allocator, and the slices a partition gives each worker -- near-equal
ranges (split) and batch rows as fractions of the call's batch (rows_of)."""
from __future__ import annotations

from dataclasses import dataclass

from shmrt.compile.isa import FRAC
from shmrt.parallel.store import align


def split(total: int, parts: int, grain: int = 16) -> list:
    """Boundaries of ``parts`` near-equal ranges of ``total``; multiples of
    ``grain`` (a cache line of float32) where every part can have one."""
    if total >= grain * parts:
        units = total // grain
        return [units * p // parts * grain for p in range(parts)] + [total]
    return [total * p // parts for p in range(parts + 1)]


@dataclass
class Output:
    kind: str  # "dense" | "argmax" | "topk" | "maxpool" (the last two: values, then int64 indices at idx_off)
    off: int
    width: int  # features per row
    idx_off: int = -1
    shape: tuple = ()  # per-sample shape
    ld: int = 0  # row stride (0: width)
    idx_step: int = 0  # what a row adds to the indices (ONNX MaxPool's: the flat input, C*H*W; 0: none)

    @property
    def paired(self) -> bool:
        """Values and int64 indices (TopK, MaxPool with Indices): a call returns the two."""
        return self.kind in ("topk", "maxpool")


class Arena:
    def __init__(self):
        self.size = 0

    def alloc(self, n: int) -> int:
        off, self.size = self.size, self.size + align(max(int(n), 1))
        return off


def rows_of(w, P) -> dict:
    """Worker w's batch rows of P, as a step's lo and hi fields (fractions of the batch, units of 1/FRAC)."""
    return dict(lo=w * FRAC // P, hi=(w + 1) * FRAC // P)
