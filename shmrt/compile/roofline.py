"""What the cost model prices with: the machine's rates (Rates, measured by
calibrate.py) and the roofline of one step -- the larger of its flops at the
GEMM rate and its bytes at the read bandwidth, per worker.  A GEMM's rate
falls with few rows (r / (r + ROWS_HALF) of the peak: a GEMM of few rows
cannot reuse its weights); a worker's slice of weights that fits its L2 is read at
the L2 rate (it stays there between calls).  The op modules (compile/ops/)
price their own steps with these."""
from __future__ import annotations

from dataclasses import dataclass

from shmrt.compile.isa import FRAC, OP, OPS


# rows at which a GEMM runs at half its peak rate: shmrt's packed tile (kernels/gemm.py) runs 16 rows at
# 0.43-0.89 and 32 rows at 0.70-1.0 of its 128-row rate (bench/microkernel.py); OpenBLAS, before it, needed 16
ROWS_HALF = 8.0


@dataclass
class Rates:
    gflops: float = 50.0  # one worker's GEMM rate at many rows
    read_gbs: float = 10.0  # one worker's read bandwidth from memory
    cache_gbs: float = 40.0  # one worker's read bandwidth from its own L2
    l2_bytes: int = 1 << 20  # per-core L2 (sysfs); weights that fit stay there between calls
    barrier_us: float = 5.0  # one barrier, or one hand-off between stages
    dispatch_us: float = 5.0  # one command's round trip
    source: str = "defaults (not measured: this plan was not compiled with strategy auto, hybrid or pipeline)"


def rows(cnt, lo, hi):
    """How many of cnt rows the fractions lo..hi (units of 1/FRAC) cover."""
    return (cnt * hi) // FRAC - (cnt * lo) // FRAC


def gemm_us(flops, weight_bytes, act_bytes, r, rates):
    """A GEMM of r rows: its flops at the rate r rows allow, or its bytes --
    weights from L2 when this worker's slice fits there, else from memory."""
    eff = r / (r + ROWS_HALF)
    wbw = rates.cache_gbs if weight_bytes <= rates.l2_bytes else rates.read_gbs
    return max(flops / (rates.gflops * 1e3 * max(eff, 1e-3)),
               weight_bytes / (wbw * 1e3) + act_bytes / (rates.read_gbs * 1e3))


def stream_us(rows_, width, rates, read=8.0) -> float:
    """A streaming step over rows_ rows of width floats: ``read`` bytes a float from memory."""
    return read * rows_ * width / (rates.read_gbs * 1e3)


def streaming_step_us(s, cnt, rates, read=8.0) -> float:
    """stream_us of a step s whose op has fields lo, hi (its rows of cnt) and width."""
    op = OPS[int(s[OP])]
    return stream_us(rows(cnt, s[op.lo], s[op.hi]), s[op.width], rates, read)
