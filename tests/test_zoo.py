"""The model zoo against the float64 reference: every strategy, workers 1..4, odd sizes."""
import re

import numpy as np
import pytest

import shmrt
from reference import forward, rel_err


@pytest.fixture(scope="module", params=[1, 2, 3, 4])
def rt(request):
    with shmrt.Runtime(workers=request.param) as rt:
        yield rt


def check(rt, model, x, strategies=("auto", "data", "model", "hybrid", "pipeline"), max_batch=4, input_shape=None, tol=1e-5):
    ref = forward(model, x)
    for s in strategies:
        cm = rt.compile(model, strategy=s, max_batch=max_batch, input_shape=input_shape)
        try:
            for _ in range(2):  # a second call reuses the arena and the state buffers
                assert rel_err(cm(x), ref) <= tol, (s, rt.workers)
        finally:
            cm.close()


def rnd(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("cls, kw", [(shmrt.LSTM, {}), (shmrt.GRU, {}), (shmrt.RNN, {}),
                                     (shmrt.RNN, {"nonlinearity": "relu"}), (shmrt.LSTM, {"bias": False}),
                                     (shmrt.GRU, {"num_layers": 2})], ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("T, N", [(1, 1), (6, 5)])
def test_recurrent_classifier(rt, cls, kw, T, N):
    shmrt.manual_seed(T + N)
    model = shmrt.Sequential([cls(7, 37, return_sequences=False, **kw), shmrt.Linear(37, 5), shmrt.Softmax()])
    check(rt, model, rnd(N, T, 7, seed=T), input_shape=(T, 7))


def test_stacked_lstm_sequences_and_initial_state(rt):
    shmrt.manual_seed(5)
    H = 33
    lstm = shmrt.LSTM(4, H, num_layers=2, h0=rnd(2, H, seed=1, scale=0.5), c0=rnd(2, H, seed=2, scale=0.5))
    model = shmrt.Sequential([lstm])
    x = rnd(3, 5, 4, seed=3)
    check(rt, model, x, input_shape=(5, 4))
    with shmrt.Runtime(workers=0) as rt0:
        assert rt0.compile(model, input_shape=(5, 4))(x).shape == (3, 5, H)


def test_hidden_1000_on_odd_split(rt):
    """Hidden 1000 does not divide by 3 workers; long enough to exercise many barriers."""
    shmrt.manual_seed(9)
    model = shmrt.Sequential([shmrt.GRU(16, 1000, return_sequences=False), shmrt.Linear(1000, 3)])
    check(rt, model, rnd(2, 9, 16, seed=4), strategies=("model", "data"), input_shape=(9, 16))


def test_preprocessing_and_normalisation(rt):
    shmrt.manual_seed(11)
    F = 23
    mean, std = rnd(F, seed=1), np.abs(rnd(F, seed=2)) + 0.5
    bn = shmrt.BatchNorm1d(40, running_mean=rnd(40, seed=3), running_var=np.abs(rnd(40, seed=4)) + 0.1,
                           weight=rnd(40, seed=5), bias=rnd(40, seed=6))
    model = shmrt.Sequential([
        shmrt.Standardize(mean, std), shmrt.Select([0, 5, 7, 22, 3, 3, 11, 19, 2]), shmrt.Linear(9, 40), bn,
        shmrt.ReLU(), shmrt.Dropout(0.3), shmrt.Linear(40, 17), shmrt.LayerNorm(17), shmrt.GELU(),
        shmrt.MinMaxScale(-np.ones(17), np.full(17, 2.0)), shmrt.Linear(17, 6), shmrt.LogSoftmax()])
    check(rt, model, rnd(5, F, seed=7) * 3 + 1)
    check(rt, model, rnd(1, F, seed=8))


def test_standalone_batchnorm_and_slice(rt):
    shmrt.manual_seed(12)
    model = shmrt.Sequential([shmrt.Select(slice(2, 30, 3)), shmrt.BatchNorm1d(10, running_var=np.full(10, 4.0)),
                              shmrt.Tanh(), shmrt.Linear(10, 4)])
    check(rt, model, rnd(5, 31, seed=9), input_shape=(31,))


def test_regressions(rt):
    coef, b = rnd(64, seed=1), 0.25
    lin = shmrt.linear_regression(coef, b)
    x = rnd(5, 64, seed=2)
    check(rt, lin, x)
    binary = shmrt.logistic_regression(coef, b)
    assert isinstance(binary.layers[-1], shmrt.Sigmoid)
    check(rt, binary, x)
    multi = shmrt.logistic_regression(rnd(3, 64, seed=3), rnd(3, seed=4))
    assert isinstance(multi.layers[-1], shmrt.Softmax)
    check(rt, multi, x)


def test_explain_shows_hidden_split(rt):
    model = shmrt.Sequential([shmrt.LSTM(8, 64, return_sequences=False), shmrt.Linear(64, 2)])
    cm = rt.compile(model, strategy="model", input_shape=(4, 8))
    text = cm.explain()
    cm.close()
    if rt.workers > 1:
        assert "hidden units, one barrier per time step (4 steps" in text
    assert "units 0:" in text or "rows 0/1" in text


def test_recurrent_layers_match_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    for tcls, scls in ((torch.nn.LSTM, shmrt.LSTM), (torch.nn.GRU, shmrt.GRU), (torch.nn.RNN, shmrt.RNN)):
        t = tcls(6, 20, num_layers=2, batch_first=True).eval()
        params = {k: v.detach().numpy() for k, v in t.state_dict().items()}
        model = shmrt.Sequential([scls(6, 20, num_layers=2, **params)])
        x = rnd(3, 7, 6, seed=5)
        with torch.inference_mode():
            ref = t(torch.from_numpy(x))[0].double().numpy()
        with shmrt.Runtime(workers=2) as rt:
            for s in ("data", "model"):
                assert rel_err(rt.compile(model, strategy=s, input_shape=(7, 6))(x), ref) <= 1e-5


# -- convolutional networks ---------------------------------------------------------

def bn2d(c, seed):
    return shmrt.BatchNorm2d(c, running_mean=rnd(c, seed=seed), running_var=np.abs(rnd(c, seed=seed + 1)) + 0.2,
                             weight=rnd(c, seed=seed + 2), bias=rnd(c, seed=seed + 3))


@pytest.mark.parametrize("N", [1, 5])
def test_cnn_odd_shapes(rt, N):
    """7 channels, stride, dilation, grouped and depthwise convs, a kernel larger
    than its input (with padding), pooling following a channel split."""
    shmrt.manual_seed(21)
    model = shmrt.Sequential([
        shmrt.Conv2d(3, 7, 3, padding=1), bn2d(7, 1), shmrt.ReLU(),
        shmrt.MaxPool2d(2),
        shmrt.Conv2d(7, 14, 3, stride=2, padding=2, dilation=2, groups=7),  # grouped, 9x9 -> 5x5
        shmrt.AvgPool2d(3, stride=1, padding=1),
        shmrt.Conv2d(14, 14, 3, padding=1, groups=14, bias=False),  # depthwise
        bn2d(14, 5),  # folded
        shmrt.Tanh(),
        shmrt.Conv2d(14, 5, 7, padding=3),  # kernel larger than the 5x5 input
        shmrt.Flatten(), shmrt.Linear(5 * 5 * 5, 6), shmrt.Softmax()])
    x = rnd(N, 3, 19, 19, seed=N)
    check(rt, model, x, input_shape=(3, 19, 19))


def test_cnn_spatial_split_and_standalone_bn(rt):
    """Few channels (spatial rows split), a BatchNorm not after a conv, global pooling."""
    shmrt.manual_seed(22)
    model = shmrt.Sequential([
        shmrt.Conv2d(1, 2, 5, padding=2), shmrt.MaxPool2d(3, stride=2, padding=1), bn2d(2, 9), shmrt.ReLU(),
        shmrt.Conv2d(2, 3, (3, 5), padding=(1, 2)), shmrt.AvgPool2d(2, count_include_pad=False),
        shmrt.GlobalAvgPool(), shmrt.Linear(3, 2)])
    check(rt, model, rnd(1, 1, 13, 11, seed=3), input_shape=(1, 13, 11))
    check(rt, model, rnd(5, 1, 13, 11, seed=4), input_shape=(1, 13, 11))


def test_cnn_stride1_padded_rows_and_pool_inside(rt):
    """Stride-1 convolutions take the padded-plane im2col path: unequal
    padding, a dilation taller than wide, no padding at all, a 1x1 conv;
    pools without padding take the bounds-free path (dilated, overlapping)."""
    shmrt.manual_seed(23)
    model = shmrt.Sequential([
        shmrt.Conv2d(4, 6, (3, 5), padding=(0, 2), dilation=(2, 1)), shmrt.ReLU(),  # 17x15 -> 13x15
        shmrt.MaxPool2d(3, stride=2, dilation=2),  # -> 5x6 (windows overlap)
        shmrt.Conv2d(6, 5, 1),
        shmrt.Conv2d(5, 3, 2), shmrt.AvgPool2d((2, 1), stride=1),  # -> 4x5 -> 3x5
        shmrt.Flatten(), shmrt.Linear(3 * 3 * 5, 4)])
    for n in (1, 3):
        check(rt, model, rnd(n, 4, 17, 15, seed=n), input_shape=(4, 17, 15))


def test_cnn_nan_propagates_through_max_pool(rt):
    model = shmrt.Sequential([shmrt.MaxPool2d(2), shmrt.Flatten()])
    x = rnd(2, 1, 4, 4, seed=1)
    x[0, 0, 0, 1] = np.nan  # the second element of the first window
    x[1, 0, 3, 3] = np.nan  # the last element of the last window
    cm = rt.compile(model, input_shape=(1, 4, 4))
    y = cm(x).reshape(2, 2, 2)
    assert np.isnan(y[0, 0, 0]) and np.isnan(y[1, 1, 1])
    assert np.isfinite(y[0].ravel()[1:]).all() and np.isfinite(y[1].ravel()[:-1]).all()
    cm.close()


def test_cnn_explain_partitions():
    model = shmrt.Sequential([shmrt.Conv2d(3, 8, 3), shmrt.ReLU(), shmrt.AvgPool2d(2), shmrt.Flatten(),
                              shmrt.Linear(8 * 3 * 3, 4), shmrt.Softmax()])
    with shmrt.Runtime(workers=2) as rt:
        text = rt.compile(model, strategy="model", input_shape=(3, 8, 8)).explain()
        assert "output channels" in text and "channels (follows producer)" in text
        assert "rows (input features) + reduce-scatter" in text  # the FC after a channel split needs no gather
        model.layers[2] = shmrt.MaxPool2d(2)  # fused into the convolution's epilogue: no pooling step
        text = rt.compile(model, strategy="model", input_shape=(3, 8, 8)).explain()
        assert "Conv2d(3, 8" in text and "+ ReLU + MaxPool2d(kernel_size=(2, 2)" in text
        assert "follows producer" not in text


def test_cnn_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 6, 3, groups=3, dilation=2, padding=2), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(6 * 4 * 4, 5)).eval()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    model = shmrt.Sequential([
        shmrt.Conv2d(3, 6, 3, padding=1, weight=sd["0.weight"], bias=sd["0.bias"]),
        shmrt.BatchNorm2d(6, weight=sd["1.weight"], bias=sd["1.bias"], running_mean=sd["1.running_mean"],
                          running_var=sd["1.running_var"]),
        shmrt.ReLU(), shmrt.MaxPool2d(2),
        shmrt.Conv2d(6, 6, 3, groups=3, dilation=2, padding=2, weight=sd["4.weight"], bias=sd["4.bias"]),
        shmrt.AvgPool2d(2), shmrt.Flatten(), shmrt.Linear(96, 5, weight=sd["7.weight"], bias=sd["7.bias"])])
    x = rnd(4, 3, 16, 16, seed=1)
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).double().numpy()
    with shmrt.Runtime(workers=2) as rt:
        for s in ("data", "model"):
            assert rel_err(rt.compile(model, strategy=s, input_shape=(3, 16, 16))(x), ref) <= 1e-5


@pytest.mark.parametrize("strategy", ["data", "model"])
def test_full_batch_of_long_sequences(rt, strategy):
    """A full max_batch of long sequences: views of the last step reach past
    the last row's used columns (the arena keeps slack for them)."""
    shmrt.manual_seed(31)
    model = shmrt.Sequential([shmrt.LSTM(4, 64, return_sequences=False)])
    check(rt, model, rnd(2, 20, 4, seed=2), strategies=(strategy,), max_batch=2, input_shape=(20, 4))


# -- pipeline and hybrid plans ----------------------------------------------------------

def deep_odd_model():
    """12 layers, odd sizes: convs, pools, BN, a large Linear (model-split
    in hybrid plans) between small ones, LayerNorm, a softmax head."""
    shmrt.manual_seed(31)
    return shmrt.Sequential([
        shmrt.Conv2d(3, 5, 3, padding=1), bn2d(5, 11), shmrt.ReLU(), shmrt.MaxPool2d(2),   # 5x11x9 -> 5x5x4
        shmrt.Conv2d(5, 7, (2, 3), padding=(0, 1)), shmrt.Tanh(),                         # -> 7x4x4
        shmrt.Flatten(), shmrt.Linear(112, 1031), shmrt.GELU(),                           # 0.44 MiB
        shmrt.Linear(1031, 517), shmrt.ReLU(),                                            # 2 MiB: model-split
        shmrt.LayerNorm(517), shmrt.Linear(517, 9), shmrt.Sigmoid(), shmrt.Linear(9, 5), shmrt.Softmax()])


@pytest.mark.parametrize("strategy", ["pipeline", "hybrid", "auto"])
@pytest.mark.parametrize("N", [1, 7, 23])
def test_deep_model_every_plan(rt, strategy, N):
    """Every batch size splits into micro-batches differently (N < stages,
    uneven, more rows than max_batch); the stages meet through their ready
    counts, and repeated calls start them from zero again."""
    check(rt, deep_odd_model(), rnd(N, 3, 11, 9, seed=N), strategies=(strategy,), max_batch=16,
          input_shape=(3, 11, 9))


def test_pipeline_stages_are_balanced_and_explained():
    with shmrt.Runtime(workers=3) as rt:
        cm = rt.compile(deep_odd_model(), strategy="pipeline", max_batch=16, input_shape=(3, 11, 9))
        text = cm.explain()
        for s in range(3):
            assert f"stage {s}: worker {s}" in text
        stages = [{w for w in r["steps"]} for r in cm.plan.explain_rows["pipeline"]]
        assert stages[0] == {0} and stages[-1] == {2}  # consecutive layers, first stage first
        assert all(len(s) == 1 for s in stages)
        cm.close()


def test_hybrid_splits_each_layer_the_cheaper_way():
    """With the runtime's rates, each layer of a hybrid plan takes the split the
    cost model predicts cheaper for it, and says so; without rates (the
    planner alone) large layers go by model, the rest by batch rows."""
    from shmrt.compile.plan import build
    bare = build(deep_odd_model(), 2, "hybrid", 4, (3, 11, 9)).explain_rows["hybrid"]
    parts = {r["layer"].split(", bias")[0]: r["partition"] for r in bare}
    assert parts["Linear(112, 1031"] == "batch rows"  # 0.44 MiB
    assert parts["Linear(1031, 517"] == "columns (output features)"  # 2 MiB
    with shmrt.Runtime(workers=2) as rt:
        cm = rt.compile(deep_odd_model(), strategy="hybrid", max_batch=4, input_shape=(3, 11, 9))
        for r in cm.plan.explain_rows["hybrid"]:
            by_model = r["why"].startswith("split by model")
            t = [float(v) for v in re.findall(r"([0-9.]+) us by", r["why"])]
            assert len(t) == 2 and (t[0] < t[1]) == by_model, r["why"]
        assert "split by" in cm.explain()
        cm.close()


def test_autotune_measures_once_then_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = deep_odd_model()
    x = rnd(5, 3, 11, 9, seed=2)
    with shmrt.Runtime(workers=2) as rt:
        cm = rt.compile(model, max_batch=16, input_shape=(3, 11, 9), autotune=True)
        assert sorted(cm.plan.tuned) == [1, 4, 16]
        assert set(cm.plan.tuned.values()) <= set(cm.plan.programs)
        assert rel_err(cm(x), forward(model, x)) <= 1e-5
        assert "measured fastest" in cm.explain(4)
        cache = tmp_path / "shmrt" / "autotune.json"
        stamp = cache.stat().st_mtime_ns
        cm2 = rt.compile(model, max_batch=16, input_shape=(3, 11, 9), autotune=True)
        assert cm2.plan.tuned == cm.plan.tuned and cache.stat().st_mtime_ns == stamp  # from the cache
        with pytest.raises(TypeError, match="autotune must be True or False"):
            rt.compile(model, max_batch=16, input_shape=(3, 11, 9), autotune="yes")


def test_pipeline_stage_groups_split_by_model():
    """4 workers: 2 stages of 2. The LSTM (1.5 MiB) splits its hidden units
    over its group, meeting at the group's own barrier every step, while the
    other stage runs the head; micro-batches of 8 rows flow between them."""
    shmrt.manual_seed(32)
    model = shmrt.Sequential([shmrt.LSTM(16, 300, return_sequences=False), shmrt.Linear(300, 1200), shmrt.ReLU(),
                              shmrt.Linear(1200, 5)])
    with shmrt.Runtime(workers=4) as rt:
        # Which way a stage splits a layer is the cost model's choice from the runtime's measured rates. With 4
        # workers on 2 cores this VM measured a barrier at 12.5 us in one calibration and 26 us in another, and
        # the LSTM went by batch rows in the second (a CI run failed on it). These are the rates of the first
        # (tests/test_auto_choice.py tests the choices themselves), so this test runs the split it is about.
        from shmrt.compile.roofline import Rates
        rt._rates = Rates(gflops=128.9, read_gbs=21.1, cache_gbs=40.0, l2_bytes=2 << 20, barrier_us=12.5,
                          dispatch_us=50.7, source="fixed: a calibration of 4 workers on the 2-core VM")
        x = rnd(21, 7, 16, seed=5)
        check(rt, model, x, strategies=("pipeline",), max_batch=32, input_shape=(7, 16))
        cm = rt.compile(model, strategy="pipeline", max_batch=32, input_shape=(7, 16))
        rows = cm.plan.explain_rows["pipeline"]
        assert rows[0]["workers"] == "stage 0: workers 0..1" and rows[0]["partition"].startswith("hidden units")
        assert rows[-1]["workers"] == "stage 1: workers 2..3"
        p = cm.profile(x[:16])
        assert any(name.startswith("wait for stage") for name, _ in p.per_worker[2])
        cm.close()


@pytest.mark.parametrize("cls, kw", [(shmrt.LSTM, {}), (shmrt.GRU, {}), (shmrt.RNN, {}),
                                     (shmrt.RNN, {"nonlinearity": "relu"})], ids=["LSTM", "GRU", "RNN", "RNN-relu"])
def test_recurrent_nan_propagates(cls, kw):
    """A NaN in one sequence makes that row NaN and leaves the others alone
    (the cells' rational tanh clamps, which must not swallow NaN); the
    worker does not die (a fastmath division by zero used to raise there)."""
    shmrt.manual_seed(33)
    model = shmrt.Sequential([cls(4, 8, return_sequences=False, **kw)])
    x = rnd(3, 5, 4, seed=6)
    x[1, 2, 3] = np.nan
    with shmrt.Runtime(workers=1) as rt:
        y = rt.compile(model, input_shape=(5, 4))(x)
        assert np.isnan(y[1]).any() and np.isfinite(y[[0, 2]]).all()
        ref = forward(model, x[[0, 2]])
        assert rel_err(y[[0, 2]], ref) <= 1e-5
