"""Which convolution kernel: python bench/conv_kernel.py

One thread, the two convolutions of the built-in cnn workload (batch 64):
shmrt's kernel (kernels/conv.py: for stride 1, one GEMM per image on the
im2col rows read in place from a zero-padded plane) against a direct Numba
loop nest, both in GFLOP/s next to the machine's single-thread sgemm
ceiling measured in the same run.  Checked against each other first.
"""

import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits

from shmrt.kernels.conv import conv2d, scratch_floats
from shmrt.compile.tune import timeit


@njit(cache=True, fastmath=True)
def direct_conv(x, w, b, out, C, H, W, K, OH, OW):
    """3x3-style direct convolution, stride 1, padding (K-1)//2, one image."""
    Cout = w.shape[0]
    p = (K - 1) // 2
    for co in range(Cout):
        for oh in range(OH):
            for ow in range(OW):
                out[co, oh, ow] = b[co]
        for c in range(C):
            for i in range(K):
                for j in range(K):
                    wv = w[co, c, i, j]
                    for oh in range(max(0, p - i), min(OH, H + p - i)):
                        ih = oh - p + i
                        for ow in range(max(0, p - j), min(OW, W + p - j)):
                            out[co, oh, ow] += wv * x[c, ih, ow - p + j]


def median_time(fn, reps=7):
    return float(np.median(timeit(fn, reps)))


def main():
    rng = np.random.default_rng(0)
    with threadpool_limits(1):
        a = rng.standard_normal((1024, 1024)).astype(np.float32)
        t = median_time(lambda: a @ a)
        print(f"sgemm 1024^3, 1 thread: {2 * 1024 ** 3 / t / 1e9:.1f} GFLOP/s (the ceiling)")
        for C, Cout, H in ((3, 32, 32), (32, 64, 16)):
            N, K = 64, 3
            x = rng.standard_normal((N, C, H, H)).astype(np.float32)
            w = rng.standard_normal((Cout, C, K, K)).astype(np.float32)
            b = rng.standard_normal(Cout).astype(np.float32)
            flops = 2 * N * Cout * H * H * C * K * K
            g = np.array([C, H, H, K, K, 1, 1, 1, 1, 1, 1, 1, H, H], np.int64)
            out1 = np.empty((N, Cout * H * H), np.float32)
            scratch = np.empty(scratch_floats(g, Cout), np.float32)
            wmat = w.reshape(Cout, -1)
            xf = x.reshape(N, -1)

            def im2row():
                for n in range(N):
                    conv2d(xf[n], wmat, b, out1[n], g, 0, Cout, 0, H, scratch, 0)

            out2 = np.empty((N, Cout, H, H), np.float32)

            def direct():
                for n in range(N):
                    direct_conv(x[n], w, b, out2[n], C, H, H, K, H, H)

            im2row()
            direct()
            err = np.abs(out1.reshape(out2.shape) - out2).max() / np.abs(out2).max()
            t1, t2 = median_time(im2row), median_time(direct)
            print(f"conv {C}->{Cout} 3x3 on {H}x{H}, batch {N}: shmrt conv2d {flops / t1 / 1e9:.1f} GFLOP/s, "
                  f"direct Numba {flops / t2 / 1e9:.1f} GFLOP/s (agree to {err:.1e})")


if __name__ == "__main__":
    main()
