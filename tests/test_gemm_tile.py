"""shmrt's own GEMM (kernels/tile.py, kernels/gemm.py) against float64 numpy: every row count the
tile specialises (1..MR and past it), partial panels, K blocks, strided views, the fused epilogue,
accumulation, NaN/Inf, and the narrower instruction sets forced on this machine."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from shmrt.compile.ops.dense import split_panels
from shmrt.kernels import ACT_NAMES, IDENTITY, MR, NR, RELU, SIGMOID, gemm_packed, pack, packed_size
from shmrt.kernels.gemm import KC, gemm_cols

TOL = 1e-5
rng = np.random.default_rng(0)


def ref_act(v, act):
    if act == RELU:
        return np.maximum(v, 0.0)
    if act == SIGMOID:
        return 1.0 / (1.0 + np.exp(-v))
    assert act == IDENTITY
    return v


def rel(got, want):
    return np.abs(got.astype(np.float64) - want).max() / max(np.abs(want).max(), 1e-30)


def test_pack_layout():
    w = rng.standard_normal((NR + 5, 7)).astype(np.float32)
    p = pack(w)
    assert p.size == packed_size(*w.shape) == 2 * NR * 7
    for c in (0, 3, NR - 1, NR, NR + 4):
        for kk in (0, 6):
            assert p[(c // NR * 7 + kk) * NR + c % NR] == w[c, kk]
    assert np.all(p[(7 + 0) * NR + 5:(7 + 1) * NR] == 0.0)  # padding past the last column


@pytest.mark.parametrize("n", sorted({1, 2, 3, MR - 1, MR, MR + 1, 2 * MR + 3, 37, 250, 1001}))
@pytest.mark.parametrize("k,m", [(1, 1), (7, 5), (33, NR), (64, 2 * NR + 3), (KC + 44, 70), (2 * KC + 1, NR - 1)])
def test_gemm_packed_matches_float64(n, k, m):
    x = rng.standard_normal((n, k)).astype(np.float32)
    w = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    empty = np.zeros(0, np.float32)
    out = np.full((n, m), np.nan, np.float32)  # every element must be written
    gemm_packed(x, pack(w), k * NR, empty, out, IDENTITY, False)
    assert rel(out, want) <= TOL
    for act in (RELU, SIGMOID):
        gemm_packed(x, pack(w), k * NR, b, out, act, False)
        assert rel(out, ref_act(want + b, act)) <= TOL, ACT_NAMES[act]
    acc = rng.standard_normal((n, m)).astype(np.float32)
    out = acc.copy()
    gemm_packed(x, pack(w), k * NR, empty, out, IDENTITY, True)
    assert rel(out, want + acc) <= TOL


def test_views_slices_and_strides():
    """A column slice of the output (a worker's panels), a K slice of the weight (row parallel), rows
    of strided views -- nothing outside the slice is written."""
    n, k, m = 29, 300, 5 * NR + 7
    x_big = rng.standard_normal((n, k + 40)).astype(np.float32)
    w = rng.standard_normal((m, k)).astype(np.float32)
    bp = pack(w)
    out = np.zeros((n, m + 9), np.float32)
    c0, c1, k0, k1 = 2 * NR, m, 17, 250
    x = x_big[:, 11:11 + (k1 - k0)]
    gemm_packed(x, bp[c0 * k + k0 * NR:], k * NR, np.zeros(0, np.float32), out[:, c0:c1], IDENTITY, False)
    want = x.astype(np.float64) @ w[c0:c1, k0:k1].T.astype(np.float64)
    assert rel(out[:, c0:c1], want) <= TOL
    assert not out[:, :c0].any() and not out[:, c1:].any()


def test_zero_inputs_give_the_bias():
    out = np.full((3, 10), 7.0, np.float32)
    b = np.arange(10, dtype=np.float32) - 4
    gemm_packed(np.zeros((3, 0), np.float32), np.zeros(0, np.float32), 0, b, out, RELU, False)
    assert np.array_equal(out, np.tile(np.maximum(b, 0), (3, 1)))


def test_nan_and_inf_propagate():
    """Plain IEEE arithmetic: a NaN or Inf input reaches the outputs it feeds, and only those."""
    n, k, m = 20, 40, 45
    x = rng.standard_normal((n, k)).astype(np.float32)
    x[3, 5] = np.nan
    x[7, 0] = np.inf
    w = rng.standard_normal((m, k)).astype(np.float32)
    w[:, 0] = np.abs(w[:, 0]) + 0.5  # positive: +inf * w stays +inf for every output
    out = np.empty((n, m), np.float32)
    gemm_packed(x, pack(w), k * NR, np.zeros(0, np.float32), out, RELU, False)
    assert np.isnan(out[3]).all()
    assert np.isposinf(out[7]).all()
    ok = np.delete(np.arange(n), [3, 7])
    assert np.isfinite(out[ok]).all()


@pytest.mark.parametrize("co,c,h,w,rows", [(1, 1, 1, 1, 1), (5, 3, 32, 32, 32), (32, 3, 7, 5, 3), (64, 32, 16, 16, 16),
                                          (13, 40, 6, 9, 4)])
def test_gemm_cols_matches_float64(co, c, h, w, rows):
    """The convolution's product with indirect B rows: row (ci, i, j) of the im2col matrix read at its
    offset in a padded image, the last partial panel's extra lanes read from the slack and dropped."""
    wp = w + 2
    xp = np.zeros(c * (h + 2) * wp + 2 + NR, np.float32)
    xp[:c * (h + 2) * wp] = rng.standard_normal(c * (h + 2) * wp)
    xp[c * (h + 2) * wp:] = np.nan  # the slack: NaN there must not reach a kept column
    offs = np.array([ci * (h + 2) * wp + i * wp + j for ci in range(c) for i in range(3) for j in range(3)], np.int64)
    n = rows * wp
    a = rng.standard_normal((co, offs.size)).astype(np.float32)
    cols = np.stack([xp[o:o + n] for o in offs]).astype(np.float64)
    out = np.full((co, n), np.nan, np.float32)
    gemm_cols(a, xp, offs, n, out)
    valid = np.arange(n) % wp < w  # the columns a convolution keeps (the rest lie in the padding or slack)
    assert rel(out[:, valid], (a.astype(np.float64) @ cols)[:, valid]) <= TOL


def test_split_panels():
    assert split_panels(4 * NR, 2) == [0, 2 * NR, 4 * NR]
    assert split_panels(3 * NR + 1, 2) == [0, 2 * NR, 3 * NR + 1]
    assert split_panels(10, 2) == [0, 0, 10]  # one panel: one worker gets it
    for m in (1, 31, 32, 33, 100, 1000):
        for P in (1, 2, 3, 5):
            c = split_panels(m, P)
            assert c[0] == 0 and c[-1] == m and all(a <= b for a, b in zip(c, c[1:]))
            assert all(v % NR == 0 for v in c[:-1])


_FORCED = """
import numpy as np
from shmrt.kernels import IDENTITY, NR, ISA, gemm_packed, pack
from shmrt.kernels.gemm import gemm_cols
assert ISA == {isa!r}, ISA
rng = np.random.default_rng(1)
for n, k, m in [(1, 9, 3), (7, 100, 2 * NR + 1), (40, 600, 50)]:
    x = rng.standard_normal((n, k)).astype(np.float32); w = rng.standard_normal((m, k)).astype(np.float32)
    out = np.empty((n, m), np.float32)
    gemm_packed(x, pack(w), k * NR, np.zeros(0, np.float32), out, IDENTITY, False)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    assert np.abs(out - want).max() / np.abs(want).max() < 1e-5
    offs = np.arange(k, dtype=np.int64) * (n + NR)  # x.T with rows n + NR apart (the slack)
    src = np.zeros(k * (n + NR), np.float32)
    src.reshape(k, n + NR)[:, :n] = x.T
    out2 = np.empty((m, n), np.float32)
    gemm_cols(w, src, offs, n, out2)
    assert np.abs(out2 - want.T).max() / np.abs(want).max() < 1e-5
print("ok", ISA, NR)
"""


@pytest.mark.parametrize("isa", ["avx2", "portable"])
def test_narrower_instruction_sets(isa):
    """The AVX2 (8-float vectors, 6 x 16 tile) and portable (4-float, the ARM64 NEON shape) tiles,
    compiled and run here with SHMRT_TILE_ISA -- each its own Numba cache folder."""
    env = dict(os.environ, SHMRT_TILE_ISA=isa)
    r = subprocess.run([sys.executable, "-c", _FORCED.format(isa=isa)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"ok {isa}")


def test_bad_forced_isa_names_the_choices():
    env = dict(os.environ, SHMRT_TILE_ISA="sse9")
    r = subprocess.run([sys.executable, "-c", "import shmrt"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "SHMRT_TILE_ISA must be one of avx512, avx2, portable, got 'sse9'" in r.stderr


@pytest.mark.parametrize("n", [1, 4])
def test_blas_fallback_with_no_inputs_writes_zeros(n):
    """A row-parallel worker can own no input features (a layer of fewer panels than workers before it):
    its partial sums must be zeros.  OpenBLAS's GEMV returns at once when a dimension is 0, leaving
    whatever was there (this broke a model-parallel plan)."""
    from shmrt.kernels import gemm_nt
    out = np.full((n, 5), 3.0, np.float32)
    gemm_nt(np.zeros((n, 0), np.float32), np.zeros((5, 0), np.float32), out, False)
    assert not out.any()
    out[:] = 3.0
    gemm_nt(np.zeros((n, 0), np.float32), np.zeros((5, 0), np.float32), out, True)
    assert (out == 3.0).all()


def test_fast_float32_exp_and_sigmoid():
    """fastmath32: exp within 2 float32 ulps of float64 exp over its whole range, exact at the ends,
    NaN kept; the sigmoid and SiLU rows that use it agree with float64 to 2e-7."""
    from numba import njit

    from shmrt.kernels import SILU, apply_act, bias_act
    from shmrt.kernels.fastmath32 import exp32

    @njit(error_model="numpy")
    def run(x, out):
        for i in range(x.size):
            out[i] = exp32(x[i])

    x = np.linspace(-87.0, 88.7, 400_001).astype(np.float32)
    out = np.empty_like(x)
    run(x, out)
    ref = np.exp(x.astype(np.float64))
    assert (np.abs(out - ref) / ref).max() < 2 * 2.0 ** -24
    sp = np.array([np.nan, np.inf, -np.inf, 0.0, 89.0, -104.0], np.float32)
    run(sp, out[:6])
    assert np.isnan(out[0]) and out[1] == np.inf and out[2] == 0.0 and out[3] == 1.0 and out[4] == np.inf
    assert out[5] == 0.0
    v = np.concatenate([np.linspace(-120, 120, 10_001), [np.nan, np.inf, -np.inf]]).astype(np.float32)
    col = v.reshape(-1, 1).copy()  # the narrow path (down the column) and the row path
    row = v.reshape(1, -1).copy()
    bias_act(col, np.zeros(1, np.float32), SIGMOID)
    apply_act(row, row, SILU, np.float32(0.0), np.float32(0.0))
    v64 = v.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        sig, silu = 1 / (1 + np.exp(-v64)), v64 / (1 + np.exp(-v64))
    ok = ~np.isnan(v)
    assert np.abs(col[ok, 0] - sig[ok]).max() < 2e-7
    assert np.isnan(col[-3, 0]) and col[-2, 0] == 1.0 and col[-1, 0] == 0.0
    fin = np.isfinite(v)
    assert (np.abs(row[0, fin] - silu[fin]) / np.maximum(np.abs(silu[fin]), 1e-30)).max() < 1e-6
    assert np.isnan(row[0, -3]) and row[0, -2] == np.inf


def test_maxpool_fused_into_the_convolution():
    """A MaxPool2d(2) after a stride-1 convolution (and its activation) is one step, the pool computed in
    the convolution's epilogue; nothing fuses after it; a strided convolution's pool stays a step."""
    import shmrt
    from shmrt.compile.plan import build
    shmrt.manual_seed(2)
    m = shmrt.Sequential([shmrt.Conv2d(3, 4, 3, padding=1), shmrt.ReLU(), shmrt.MaxPool2d(2), shmrt.Tanh(),
                          shmrt.Conv2d(4, 4, 3, stride=2), shmrt.MaxPool2d(2)])
    rows = build(m, 2, "data", 4, (3, 12, 12)).explain_rows["data"]
    assert [r["short"] for r in rows] == ["Conv2d + ReLU + MaxPool2d", "Tanh", "Conv2d", "MaxPool2d"]
