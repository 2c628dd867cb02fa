"""shmrt's packed-weight GEMM alone, beside OpenBLAS, at the worker shapes of every workload:
python bench/microkernel.py [--rounds R] [--out FILE]   (with shmrt installed, or PYTHONPATH=.)

One thread, one process.  For each shape (rows M x inputs K x outputs N,
the slice one worker multiplies with 2 workers) the round runs, in a new
random order every round: shmrt's kernel (kernels.gemm.gemm_packed on the
weight packed once), the same kernel again (the A/A control), and
OpenBLAS's sgemm through the bridge the runtime used before
(kernels.blas.gemm_nt, which packs the weight on every call).  The
convolutions' products run as kernels/conv.py runs them (gemm_cols: M
output channels, N pixels, the columns read in place from the padded
image) beside numpy's matmul on the same operands, materialised.  Reported:
medians over the rounds, GFLOP/s, the A/A spread (|A - A'| / A of the
medians), and the fraction of the single-core sgemm ceiling (numpy's BLAS,
2048^3, one thread, best of 3, measured in the same run).
"""
import argparse
import platform
import random
import time

import numpy as np
from threadpoolctl import threadpool_limits

import shmrt
from shmrt.kernels import IDENTITY
from shmrt.kernels.blas import gemm_nt
from shmrt.kernels.gemm import gemm_cols, gemm_packed, pack
from shmrt.kernels.tile import ISA, MR, NR

# (workload, what, K, N): the per-worker weight slice at 2 workers, rows M from ROWS (gemm_packed)
SHAPES = [
    ("mlp", "fc1 cols/2", 1024, 2048), ("mlp", "fc2 cols/2", 4096, 2048), ("mlp", "fc3 cols/2", 4096, 512),
    ("cnn", "fc 4096-256", 4096, 256), ("lstm", "W_ih 4 gates/2", 256, 2048), ("lstm", "W_hh gate/2", 1024, 512),
    ("deep", "256-256", 256, 256),
]
# the convolutions as they run (kernels/conv.py, stride 1): out[co, pixels] = W[co, K] @ cols[K, pixels],
# the im2col columns read where they lie in the padded image (gemm_cols), per image and per half image
# (the spatial split at batch 1); pixels at the padded width.  (workload, what, C, Cout, H, rows)
CONVS = [("cnn", "conv1 per image", 3, 32, 32, 32), ("cnn", "conv1 half image", 3, 32, 32, 16),
         ("cnn", "conv2 per image", 32, 64, 16, 16), ("cnn", "conv2 half image", 32, 64, 16, 8)]
ROWS = (1, 16, 32, 128, 256)


def blas_nn(a, b, out):
    """out = a @ b through numpy's BLAS (one thread here): what kernels/conv.py called before."""
    np.matmul(a, b, out=out)


def ceiling() -> float:
    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    best = 1e9
    for _ in range(4):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 ** 3 / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lines = []

    def say(s=""):
        print(s, flush=True)
        lines.append(s)

    with threadpool_limits(1):
        peak = ceiling()
        say(f"# shmrt {shmrt.__version__}, {platform.processor() or platform.machine()}, tile ISA {ISA} "
            f"({MR} x {NR}), numpy {np.__version__}; single-core sgemm ceiling {peak:.1f} GFLOP/s")
        say(f"# {args.rounds} rounds, implementations in random order each round; medians; "
            "A/A: the packed kernel timed twice")
        say(f"{'workload':8} {'slice':16} {'M':>5} {'K':>5} {'N':>5} | {'packed GF/s':>11} {'of ceil':>7} "
            f"{'A/A':>5} | {'OpenBLAS GF/s':>13} {'of ceil':>7} | {'packed/BLAS':>11}")
        cases = []
        for wl, what, k, n in SHAPES:
            w = rng.standard_normal((n, k)).astype(np.float32)
            bp, empty = pack(w), np.zeros(0, np.float32)
            for m in ROWS:
                x = rng.standard_normal((m, k)).astype(np.float32)
                o1, o2 = np.empty((m, n), np.float32), np.empty((m, n), np.float32)
                cases.append((wl, what, m, k, n, x.astype(np.float64) @ w.T.astype(np.float64), o1,
                              lambda x=x, bp=bp, k=k, o1=o1, e=empty: gemm_packed(x, bp, k * NR, e, o1, IDENTITY, False),
                              lambda x=x, w=w, o2=o2: gemm_nt(x, w, o2, False)))
        for wl, what, c, co, h, rows in CONVS:
            wp = h + 2
            xp = np.zeros(c * (h + 2) * wp + 2 + NR, np.float32)
            xp[:c * (h + 2) * wp] = rng.standard_normal(c * (h + 2) * wp)
            offs = np.array([ci * (h + 2) * wp + i * wp + j for ci in range(c) for i in range(3) for j in range(3)],
                            np.int64)
            k, px = offs.size, rows * wp
            a = rng.standard_normal((co, k)).astype(np.float32)
            cols = np.stack([xp[o:o + px] for o in offs])  # what BLAS needs materialised
            o1, o2 = np.empty((co, px), np.float32), np.empty((co, px), np.float32)
            cases.append((wl, what, co, k, px, a.astype(np.float64) @ cols.astype(np.float64), o1,
                          lambda a=a, xp=xp, offs=offs, px=px, o1=o1: gemm_cols(a, xp, offs, px, o1),
                          lambda a=a, c=cols, o2=o2: blas_nn(a, c, o2)))
        for wl, what, m, k, n, ref, o1, mine, theirs in cases:
            impls = {"A": mine, "A'": mine, "blas": theirs}
            for f in impls.values():
                f()
            err = np.abs(o1 - ref).max() / max(np.abs(ref).max(), 1e-30)
            assert err < 1e-5, (wl, what, m, err)
            flops = 2.0 * m * k * n
            reps = max(1, int(2e7 / flops))  # each sample about 1+ ms of work at 20 GFLOP/s
            times = {name: [] for name in impls}
            for _ in range(args.rounds):
                order = list(impls)
                random.shuffle(order)
                for name in order:
                    t = time.perf_counter()
                    for _ in range(reps):
                        impls[name]()
                    times[name].append((time.perf_counter() - t) / reps)
            med = {name: float(np.median(v)) for name, v in times.items()}
            gf = {name: flops / t / 1e9 for name, t in med.items()}
            aa = abs(med["A"] - med["A'"]) / med["A"]
            say(f"{wl:8} {what:16} {m:5d} {k:5d} {n:5d} | {gf['A']:11.1f} {gf['A'] / peak:7.0%} {aa:5.0%} | "
                f"{gf['blas']:13.1f} {gf['blas'] / peak:7.0%} | {med['blas'] / med['A']:10.2f}x")
        say("# logreg (64 -> 1) is not here: a Linear of fewer than 8 outputs runs on OpenBLAS's GEMV "
            "(kernels/linear.py, PACKED_MIN_OUT)")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
