"""Compressed weights (weights="bf16" | "int8" | "int4"): the error they cost, bounded, on trained models
and on the bench models, against float32 shmrt and the float64 reference.

Trained models (tests/quant_models.py): scikit-learn's digits with an MLPClassifier(256, 128), and a
torch LSTM(8, 64) -> Linear(64, 10) trained on noisy prototype sequences; held-out data.  The bench
models (shmrt/bench/workloads.py: mlp, lstm, cnn) with their seeded random weights and random inputs.
Every figure is also printed: ``pytest -s tests/test_quant_accuracy.py`` ends with the table.

Why the bounds are what they are.  Per weight, rounding costs at most: bf16 2^-8 |w| (8 significant
bits, to nearest: half a unit in the last place is 2^-8 of the binade's floor); int8 max|row| / 254
(scale max|row| / 127, to nearest); int4 max|block| / 16, or / 8 for a weight clipped at +7 (Q4_0's
blocks of 32 inputs: scale = the block's extreme / -8, q in -8..7).  Against the layer's largest weight
that is 0.39 %, 0.39 % and 12.5 % (test_weight_rounding checks those).  An output sums K products whose
rounding errors are independent and of either sign: they grow as sqrt(K), as the output itself does, so
the output's relative error is of the order of the per-weight rms error relative to the weights' rms
(about bound / sqrt(3) times max|w| / rms|w|), not K times the bound; layers add theirs, and an LSTM
feeds its error back through 20 (bench: 64) steps.  int8 and int4 also quantize the activations per row
(max|x| / 127), an error of the order of int8's weights'.  The ``weights-only`` column is that estimate
made exactly: the float64 reference with the weights rounded by an independent numpy model of each
format (quant_models.py); each run's error must lie within a stated factor of it (EMU_RATIO).  The
bounds on the error itself are the measured figures (the table) with a margin of about 2x: tight
enough that a kernel using a wrong scale, block or row fails, loose enough for a different but valid
rounding of ties or activations.
"""
from __future__ import annotations

import numpy as np
import pytest

import shmrt
import quant_models as Q
from shmrt.bench import workloads

pytest.importorskip("sklearn")
pytest.importorskip("torch")

TOP1 = {"bf16": 0.99, "int8": 0.99, "int4": 0.97}  # the targets: agreement with float32 (and float64)
# max |y - y_f32| / max |y_f32| of the trained models' logits, per format: the measured figure (every workers
# and strategy gave the same, bit for bit) x ~2.  Measured: digits 1.11e-3, 6.94e-3, 4.81e-2; lstm 5.26e-3,
# 1.39e-2, 1.33e-1 (bf16, int8, int4).
REL_TRAINED = {"digits-mlp": {"bf16": 2.5e-3, "int8": 1.5e-2, "int4": 1e-1},
               "seq-lstm": {"bf16": 1.2e-2, "int8": 3e-2, "int4": 2.7e-1}}
# The bench models' outputs (cnn: its logits) against the float64 reference, measured x ~2.  Measured: mlp
# 2.56e-3, 1.85e-2, 1.26e-1; lstm 1.71e-3, 1.06e-2, 8.16e-2; cnn 2.27e-3, 1.81e-2, 2.01e-1.  The cnn's
# int4 figure is its Linear(4096, 256)'s (convolutions stay float32): the weights-only model gives 2.08e-1.
REL_BENCH = {"mlp": {"bf16": 5e-3, "int8": 4e-2, "int4": 2.5e-1},
             "lstm": {"bf16": 4e-3, "int8": 2.5e-2, "int4": 1.6e-1},
             "cnn": {"bf16": 5e-3, "int8": 4e-2, "int4": 4e-1}}
# The error against float64 over the error the format's rounded weights alone cause (the weights-only
# column), bounded on both sides.  Below: a compile that silently ran float32 (error ~1e-7) fails.  Above:
# bf16 keeps float32 activations, so its error is its weights' (measured ratio 1.00); int8 adds the
# activations' per-row rounding, of the order of its weights' own (measured 2.2 - 2.6); int4's weights
# dominate (measured 0.97 - 1.02).
EMU_RATIO = {"bf16": (0.5, 1.5), "int8": (0.5, 4.0), "int4": (0.5, 2.0)}


def ran_as_rounded(r):
    lo, hi = EMU_RATIO[r["fmt"]]
    return lo * r["emu64"] <= r["rel64"] <= hi * r["emu64"]


@pytest.fixture(scope="module", params=[0, 2], ids=["in-process", "2-workers"])
def runtime(request):
    with shmrt.Runtime(workers=request.param) as rt:
        yield rt


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if Q.ROWS:
        print("\n\ncompressed weights: top-1 agreement and output error per model, format, workers, strategy\n"
              + Q.table())


def trained(name):
    """(model, held-out x, labels, float64 output of the model's own float forward)."""
    if name == "digits-mlp":
        est, model, x, labels = Q.digits_mlp()
        return model, x, labels, Q.reference64(model, x)  # sklearn's own forward is checked against it below
    m, model, x, labels = Q.sequence_lstm()
    return model, x, labels, Q.torch_forward64(m, x)


_float32 = {}  # (name, workers, strategy) -> float32 shmrt output


def float32_output(runtime, name, strategy):
    key = (name, runtime.workers, strategy)
    if key not in _float32:
        model, x, _, _ = trained(name)
        with runtime.compile(model, strategy=strategy, max_batch=256) as cm:
            _float32[key] = cm(x)
    return _float32[key]


@pytest.mark.parametrize("strategy", ["data", "model"])
@pytest.mark.parametrize("name", ["digits-mlp", "seq-lstm"])
def test_trained_float32(runtime, name, strategy):
    """The yardsticks first: float32 shmrt against the model's own float64 forward, and the trained
    models good enough that agreement means something."""
    model, x, labels, y64 = trained(name)
    y32 = float32_output(runtime, name, strategy)
    assert Q.rel(y32, y64) <= 1e-5, (name, strategy, Q.rel(y32, y64))
    assert Q.top1(y32, y64) == 1.0, (name, strategy, Q.top1(y32, y64))
    acc = float(np.mean(np.argmax(y64, -1) == labels))
    assert acc >= 0.95, (name, acc)
    if strategy == "data" and runtime.workers == 2:
        Q.figures(name, "float32", y32, y32, y64, labels, workers=runtime.workers, strategy=strategy)


def test_reference_is_the_estimators_forward():
    """The digits model's float64 yardstick (shmrt.ir.reference on the loaded layers) is sklearn's
    own predict_proba; the LSTM's is torch's own forward in float64 (trained())."""
    est, model, x, _ = Q.digits_mlp()
    z = Q.reference64(model, x)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.abs(p - est.predict_proba(x)).max() <= 1e-6
    assert (np.argmax(z, 1) == est.predict(x)).all()
    m, model, x, _ = Q.sequence_lstm()
    assert Q.rel(Q.reference64(model, x), Q.torch_forward64(m, x)) <= 1e-6


@pytest.mark.parametrize("fmt", Q.FORMATS)
@pytest.mark.parametrize("strategy", ["data", "model"])
@pytest.mark.parametrize("name", ["digits-mlp", "seq-lstm"])
def test_trained_format(runtime, name, strategy, fmt):
    model, x, labels, y64 = trained(name)
    y32 = float32_output(runtime, name, strategy)
    with runtime.compile(model, strategy=strategy, max_batch=256, weights=fmt) as cm:
        y = cm(x)
    r = Q.figures(name, fmt, y, y32, y64, labels, emulated=Q.reference64(Q.dequantized(model, fmt), x),
                  workers=runtime.workers, strategy=strategy)
    assert r["agree32"] >= TOP1[fmt] and r["agree64"] >= TOP1[fmt], r
    assert r["rel32"] <= REL_TRAINED[name][fmt], r
    assert r["rel64"] <= REL_TRAINED[name][fmt], r
    assert ran_as_rounded(r), r


@pytest.mark.parametrize("fmt", Q.FORMATS)
def test_weight_rounding(fmt):
    """The numpy model of the formats rounds within the per-weight bounds the module docstring uses."""
    bound = {"bf16": 2.0 ** -8, "int8": 1 / 254, "int4": 1 / 8}[fmt]
    for name in ("digits-mlp", "seq-lstm"):
        errs = Q.weight_errors(trained(name)[0], fmt)
        assert errs and max(errs.values()) <= bound * (1 + 1e-6), (name, errs)
        assert min(errs.values()) >= bound / 4, (name, errs)  # it rounds: the worst weight of a layer is near the bound


BENCH = {"mlp": (workloads.mlp, 16), "lstm": (workloads.lstm, 4), "cnn": (workloads.cnn, 16)}


@pytest.fixture(scope="module")
def bench_model():
    cache = {}

    def get(name):
        if name not in cache:
            make, batch = BENCH[name]
            wl = make()
            model = wl.model
            if isinstance(model.layers[-1], shmrt.Softmax):  # the cnn: its logits (the softmax hides errors)
                model = shmrt.Sequential(model.layers[:-1])
            x = np.random.default_rng(sum(map(ord, name))).standard_normal((batch, *wl.input_shape))
            x = x.astype(np.float32)
            cache[name] = model, x, Q.reference64(model, x), wl.input_shape, name == "cnn"
        return cache[name]

    return get


@pytest.mark.parametrize("runtime", [2], indirect=True)
@pytest.mark.parametrize("name", list(BENCH))
def test_bench_model(runtime, bench_model, name):
    model, x, y64, shape, classes = bench_model(name)
    with runtime.compile(model, max_batch=len(x), input_shape=shape) as cm:
        y32 = cm(x)
    assert Q.rel(y32, y64) <= 1e-5, (name, Q.rel(y32, y64))
    Q.figures(f"bench-{name}", "float32", y32, y32, y64, classes=classes, workers=runtime.workers, strategy="auto")
    bad = []
    for fmt in Q.FORMATS:
        with runtime.compile(model, max_batch=len(x), input_shape=shape, weights=fmt) as cm:
            y = cm(x)
        r = Q.figures(f"bench-{name}", fmt, y, y32, y64, emulated=Q.reference64(Q.dequantized(model, fmt), x),
                      classes=classes, workers=runtime.workers, strategy="auto")
        if not (r["rel64"] <= REL_BENCH[name][fmt] and ran_as_rounded(r)):
            bad.append(r)
    assert not bad, bad


@pytest.mark.parametrize("fmt", Q.FORMATS)
@pytest.mark.parametrize("name", ["digits-mlp", "seq-lstm"])
def test_compare_reports_the_same_figures(runtime, name, fmt):
    """shmrt.compare on the user's data gives the figures this file computes itself: output error and
    top-1 agreement against float32 (same workers, same strategy), and each compressed layer's weight
    error as the independent numpy model of the format rounds it."""
    model, x, _, _ = trained(name)
    got = shmrt.compare(model, x, weights=fmt, workers=runtime.workers, strategy="data")
    y32 = float32_output(runtime, name, "data")
    with runtime.compile(model, strategy="data", max_batch=256, weights=fmt) as cm:
        y = cm(x)
    want = {"max_abs": float(np.abs(y.astype(np.float64) - y32).max()), "rel_err": Q.rel(y, y32),
            "top1_agreement": Q.top1(y, y32)}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-6, abs=1e-12), (k, got[k], v)
    layers = {int(key.split(":")[0].split(",")[0]): v for key, v in got["weights_rel_err"].items()}
    ours = Q.weight_errors_fro(model, fmt)
    assert set(layers) == set(ours), (got["weights_rel_err"], ours)
    for i, v in ours.items():
        assert layers[i] == pytest.approx(v, rel=1e-3), (i, layers[i], v)
    assert set(got["format"][k] for k in got["weights_rel_err"]) == {fmt}, got["format"]
