"""The compressed GEMM (kernels/qgemm.py, qtile.py, qformat.py) against an independent numpy model of
its arithmetic (tests/qref.py): int8 and int4 bit for bit on every integer path (VNNI, AVX2, portable --
the ones this CPU lacks are skipped, the portable fallback always runs), bf16 against float64 on the
rounded weights; row counts through and past the tile's, partial panels, padding of K, accumulation,
bias, activations, rows of zeros and NaN."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from shmrt.kernels import IDENTITY, NR, RELU, QISA, gemm_fmt
from shmrt.kernels.qformat import BF16, INT4, INT8, from_bf16, pack_format, panel_floats, panel_scales, to_bf16
from qref import qgemm

SHAPES = [(1, 64, NR), (3, 100, 2 * NR + 5), (5, 33, 7), (9, 257, NR + 1), (16, 96, 3 * NR)]


def run(fmt, x, w, b, act=IDENTITY, c=None):
    t, _ = pack_format(w, fmt)
    out = np.zeros((x.shape[0], w.shape[0]), np.float32) if c is None else c.copy()
    sc = t.get("scales", np.zeros(1, np.float32))
    gemm_fmt(fmt, x, t["panels"], panel_floats(fmt, x.shape[1]), sc, panel_scales(fmt, x.shape[1]), b, out, act,
             c is not None)
    return out


def data(n, k, m, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, k)).astype(np.float32), rng.standard_normal((m, k)).astype(np.float32),
            rng.standard_normal(m).astype(np.float32))


@pytest.mark.parametrize("n,k,m", SHAPES)
@pytest.mark.parametrize("fmt,bits", [(INT8, 8), (INT4, 4)])
def test_integer_formats_bit_exact(n, k, m, fmt, bits):
    x, w, b = data(n, k, m)
    x[0, :5] = 0.0
    got = run(fmt, x, w, b)
    assert np.array_equal(got, qgemm(x, w, bits, b))
    c = np.random.default_rng(1).standard_normal((n, m)).astype(np.float32)
    assert np.array_equal(run(fmt, x, w, np.zeros(0, np.float32), c=c), qgemm(x, w, bits, None, c))
    relu = run(fmt, x, w, b, RELU)
    assert np.array_equal(relu, np.maximum(qgemm(x, w, bits, b), 0))


@pytest.mark.parametrize("fmt,bits", [(INT8, 8), (INT4, 4)])
def test_sweep_of_small_shapes(fmt, bits):
    """Rows 1..6 (each tile height, and sums of them), K through 1..4 blocks, full and partial panels: the
    activations' quantized copy must live as long as the tile reads it (it once did not, and the freed
    buffer came back as the bias's padding: wrong sums at some shapes only)."""
    for n in range(1, 7):
        for k in (12, 32, 40, 64, 100):
            for m in (NR, NR + 8):
                x, w, b = data(n, k, m, seed=n * k + m)
                c = np.ones((n, m), np.float32)
                assert np.array_equal(run(fmt, x, w, b), qgemm(x, w, bits, b)), (n, k, m)
                assert np.array_equal(run(fmt, x, w, np.zeros(0, np.float32), c=c), qgemm(x, w, bits, None, c))


@pytest.mark.parametrize("fmt", [INT8, INT4])
def test_zero_and_nan_rows(fmt):
    x, w, b = data(3, 40, NR + 3)
    x[1] = 0.0
    x[2, 7] = np.nan
    got = run(fmt, x, w, b)
    assert np.array_equal(got[1], b)  # a row of zeros gives the bias
    assert np.isnan(got[2]).all() and np.isfinite(got[0]).all()


@pytest.mark.parametrize("n,k,m", SHAPES)
def test_bf16(n, k, m):
    x, w, b = data(n, k, m)
    wr = from_bf16(to_bf16(w)).astype(np.float64)
    assert np.abs(wr - w).max() <= np.abs(w).max() * 2.0 ** -8
    want = x.astype(np.float64) @ wr.T + b
    got = run(BF16, x, w, b)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-5


def test_bf16_rounding_ties_to_even_and_nan():
    v = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, np.inf, -0.0, np.nan], np.float32)
    r = from_bf16(to_bf16(v))
    assert r[0] == 1.0 and r[1] == 1.0 and r[2] == 1.0 + 2 ** -6  # ties go to the even mantissa
    assert r[3] == np.inf and np.signbit(r[4]) and np.isnan(r[5])


_FORCED = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from shmrt.kernels import QISA, NR, IDENTITY, gemm_fmt
from shmrt.kernels.qformat import INT4, INT8, pack_format, panel_floats, panel_scales
from qref import qgemm, qgemm_own
assert QISA == {qisa!r}, QISA
rng = np.random.default_rng(2)
for n, k, m in [(1, 64, NR), (6, 130, 2 * NR + 3), (13, 64, 7)]:
    x = rng.standard_normal((n, k)).astype(np.float32); w = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    for fmt, bits in ((INT8, 8), (INT4, 4)):
        t, _ = pack_format(w, fmt)
        out = np.empty((n, m), np.float32)
        gemm_fmt(fmt, x, t["panels"], panel_floats(fmt, k), t["scales"], panel_scales(fmt, k), b, out, IDENTITY, False)
        assert np.array_equal(out, qgemm(x, w, bits, b)), (n, k, m, bits, np.abs(out - qgemm(x, w, bits, b)).max())
    q = rng.integers(-128, 128, (m, k)).astype(np.int8); q[0, :3] = -128  # torch's int8 weights reach -128
    s = rng.uniform(0.01, 0.02, m).astype(np.float32)
    t, _ = pack_format(q.astype(np.float32) * s[:, None], INT8, own=(q, s))
    out = np.empty((n, m), np.float32)
    gemm_fmt(INT8, x, t["panels"], panel_floats(INT8, k), t["scales"], panel_scales(INT8, k), b, out, IDENTITY, False)
    assert np.array_equal(out, qgemm_own(x, q, s, b)), ("own", n, k, m)
print("ok", QISA)
"""


def _has(feature):
    import llvmlite.binding as llb
    return bool(llb.get_host_cpu_features().get(feature))


@pytest.mark.parametrize("qisa", ["portable", "avx2", "vnni512"])
def test_forced_integer_paths(qisa):
    """Each integer path, forced with SHMRT_QUANT_ISA (its own Numba cache folder), bit for bit."""
    if qisa == "avx2" and not _has("avx2") or qisa == "vnni512" and not _has("avx512vnni"):
        pytest.skip(f"this CPU has no {qisa}")
    env = dict(os.environ, SHMRT_QUANT_ISA=qisa)
    script = _FORCED.format(tests=os.path.dirname(__file__), qisa=qisa)
    r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(f"ok {qisa}")


def test_bad_forced_quant_isa_names_the_choices():
    env = dict(os.environ, SHMRT_QUANT_ISA="sse9")
    r = subprocess.run([sys.executable, "-c", "import shmrt"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "SHMRT_QUANT_ISA must be one of vnni512, avx2, portable, got 'sse9'" in r.stderr


def test_host_path_is_reported():
    assert QISA in ("vnni512", "avx2", "portable")
