"""rt.compile(model, weights=...) on the runtime: every strategy and worker count gives the in-process
result, bit for bit in the integer formats (compressed panels are split by whole panels and hidden units, each column computed
whole), the result is the float64 reference of the weights as run within the activations' rounding,
explain() names each layer's format and its weights' error, and a bad format is refused by name."""
from __future__ import annotations

import numpy as np
import pytest

import shmrt
from shmrt.ir import reference

FORMATS = ["bf16", "int8", "int4"]


def mlp():
    shmrt.manual_seed(7)
    return shmrt.Sequential([shmrt.Linear(96, 160), shmrt.ReLU(), shmrt.Linear(160, 70), shmrt.GELU(),
                             shmrt.Linear(70, 9)])


def rnn(kind):
    shmrt.manual_seed(8)
    cls = {"lstm": shmrt.LSTM, "gru": shmrt.GRU, "rnn": shmrt.RNN}[kind]
    return shmrt.Sequential([cls(12, 40, num_layers=2, return_sequences=False), shmrt.Linear(40, 9)])


def x_for(shape, n=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(np.float32)


@pytest.fixture(scope="module")
def solo():
    with shmrt.Runtime(workers=0) as rt:
        yield rt


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("which", ["mlp", "lstm", "gru", "rnn"])
def test_every_strategy_gives_the_in_process_result(rt, solo, fmt, which):
    model, shape = (mlp(), (96,)) if which == "mlp" else (rnn(which), (6, 12))
    x = x_for(shape)
    kw = dict(max_batch=8, input_shape=shape)
    want = solo.compile(model, weights=fmt, **kw)(x)
    for strategy in ("data", "model", "hybrid", "pipeline"):
        got = rt.compile(model, strategy=strategy, weights=fmt, **kw)(x)
        if fmt == "bf16":  # float arithmetic: the tile's blocking depends on the rows a worker has
            assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max(), strategy
        else:  # integer sums, and each row's scale from the whole row: the same on any split
            assert np.array_equal(got, want), (strategy, np.abs(got - want).max())
    ref = reference.forward(model, x.astype(np.float64))
    err = np.abs(want - ref).max() / np.abs(ref).max()
    bound = {"bf16": 2e-2, "int8": 5e-2, "int4": 0.3}[fmt]  # weights ~2^-8, 1/254, 1/16 off; activations 1/254
    assert err < bound, err
    f32 = solo.compile(model, weights="float32", **kw)(x)
    assert not np.array_equal(f32, want)  # the format did run


def test_float32_is_the_default(solo):
    model = mlp()
    x = x_for((96,))
    assert np.array_equal(solo.compile(model)(x), solo.compile(model, weights="float32")(x))


def test_explain_names_formats_and_errors(rt):
    cm = rt.compile(mlp(), max_batch=4, weights="int8")
    text = cm.explain(1)
    assert text.count("weights: int8 (per-output-channel scales), relative error") == 3, text
    cm4 = rt.compile(rnn("lstm"), max_batch=4, weights="int4", input_shape=(6, 12))
    assert "weights: int4 (a scale per 32 weights)" in cm4.explain(1)


def test_small_linear_stays_float32(rt):
    shmrt.manual_seed(3)
    model = shmrt.Sequential([shmrt.Linear(16, 4)])  # fewer outputs than a packed panel needs
    text = rt.compile(model, weights="int8").explain(1)
    assert "weights: float32" in text and "int8" not in text.split("\n", 1)[1]


@pytest.mark.parametrize("bad", ["int3", "fp16", 8, ""])
def test_bad_format_is_refused(solo, bad):
    with pytest.raises(ValueError, match=r"weights must be one of 'float32', 'bf16', 'int8', 'int4' \(or None\), got"):
        solo.compile(mlp(), weights=bad)


def test_weights_shrink(solo):
    sizes = {}
    for fmt in ("float32", "bf16", "int8", "int4"):
        cm = solo.compile(mlp(), weights=fmt)
        sizes[fmt] = sum(v.nbytes for v in cm.plan.tensors.values())
    assert sizes["float32"] > 1.9 * sizes["bf16"] > 1.9 * 1.9 * sizes["int8"] / 1.2 and sizes["int8"] > sizes["int4"]


def test_compare_reports_agreement():
    shmrt.manual_seed(5)
    model = shmrt.Sequential([shmrt.Linear(64, 128), shmrt.ReLU(), shmrt.Linear(128, 10)])
    x = x_for((64,), n=200, seed=3)
    got = shmrt.compare(model, x, weights="int8", workers=0)
    with shmrt.Runtime(workers=0) as rt:
        a = rt.compile(model, max_batch=200)(x)
        b = rt.compile(model, max_batch=200, weights="int8")(x)
    assert got["max_abs"] == pytest.approx(float(np.abs(a.astype(np.float64) - b).max()))
    assert got["top1_agreement"] == pytest.approx(float(np.mean(a.argmax(1) == b.argmax(1))))
    assert 0.9 < got["top1_agreement"] <= 1.0 and 0 < got["rel_err"] < 0.05
    assert set(got["format"].values()) == {"int8"} and len(got["weights_rel_err"]) == 2
    assert all(0 < e < 0.02 for e in got["weights_rel_err"].values())
