"""Public API contract: names, errors that say what was expected, explain()."""
import numpy as np
import pytest

import shmrt
from reference import forward, rel_err


def small():
    shmrt.manual_seed(7)
    return shmrt.Sequential([shmrt.Linear(10, 33), shmrt.GELU(), shmrt.Linear(33, 4), shmrt.Softmax()])


def test_public_names():
    for name in ["Runtime", "run", "Sequential", "Linear", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
                 "LogSoftmax", "ArgMax", "TopK", "WorkerError", "manual_seed"]:
        assert hasattr(shmrt, name), name


def test_explicit_parameters_and_seeded_init():
    W = np.arange(12, dtype=np.float64).reshape(3, 4)
    lin = shmrt.Linear(4, 3, weight=W, bias=np.ones(3))
    assert lin.params["weight"].dtype == np.float32 and np.array_equal(lin.params["weight"], W)
    shmrt.manual_seed(1)
    a = shmrt.Linear(5, 6).params["weight"]
    shmrt.manual_seed(1)
    b = shmrt.Linear(5, 6).params["weight"]
    assert np.array_equal(a, b)
    assert "bias" not in shmrt.Linear(5, 6, bias=False).params


@pytest.mark.parametrize("make, match", [
    (lambda: shmrt.Linear(4, 3, weight=np.zeros((4, 3))), r"weight must have shape \(3, 4\)"),
    (lambda: shmrt.Linear(0, 3), "in_features must be a positive int"),
    (lambda: shmrt.Linear(4, 3, bias=np.zeros(4)), r"bias must have shape \(3,\)"),
    (lambda: shmrt.TopK(0), "k must be a positive int"),
    (lambda: shmrt.GELU("fast"), "approximate must be 'none' or 'tanh'"),
    (lambda: shmrt.Sequential([]), "at least one layer"),
    (lambda: shmrt.Sequential([shmrt.Linear(2, 2), "relu"]), "item 1 must be a shmrt layer"),
    (lambda: shmrt.Sequential([shmrt.ArgMax(), shmrt.Linear(2, 2)]), "must be the last layer"),
])
def test_constructor_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_compile_and_call_errors():
    with shmrt.Runtime(workers=0) as rt:
        with pytest.raises(ValueError, match="strategy must be one of"):
            rt.compile(small(), strategy="fast")
        with pytest.raises(ValueError, match="max_batch must be a positive int"):
            rt.compile(small(), max_batch=0)
        with pytest.raises(ValueError, match="Linear.*expects inputs of shape"):
            rt.compile(shmrt.Sequential([shmrt.Linear(3, 4), shmrt.Linear(5, 2)]))
        with pytest.raises(ValueError, match="input_shape"):
            rt.compile(shmrt.Sequential([shmrt.ReLU()]))
        with pytest.raises(TypeError, match="expected a shmrt.Sequential"):
            rt.compile("model.onnx")
        with pytest.raises(ValueError, match="TopK"):
            rt.compile(shmrt.Sequential([shmrt.Linear(3, 2), shmrt.TopK(3)]))
        cm = rt.compile(small(), max_batch=4)
        with pytest.raises(ValueError, match=r"expected input of shape \(N, 10\)"):
            cm(np.zeros((2, 9)))
        with pytest.raises(ValueError, match=r"expected input of shape \(N, 10\)"):
            cm(np.zeros((2, 2, 10)))
        for bad in (np.zeros((2, 10), complex), np.array([["a"] * 10]), np.zeros((1, 10), "datetime64[s]"),
                    np.array([[object()] * 10])):
            with pytest.raises(TypeError, match=r"float32.*\(N, 10\)"):
                cm(bad)
        with pytest.raises(ValueError, match="n must be an int in 0..max_batch=4"):
            cm.input_buffer(5)
        assert cm(np.ones((2, 10), dtype=bool)).shape == (2, 4)
        assert cm([[0.5] * 10]).shape == (1, 4)  # lists are accepted
    with pytest.raises(RuntimeError, match="closed"):
        cm(np.zeros((1, 10)))
    with pytest.raises(RuntimeError, match="closed"):
        rt.compile(small())
    with pytest.raises(ValueError, match="workers must be None"):
        shmrt.Runtime(workers=-2)


def test_explain_names_partitions():
    with shmrt.Runtime(workers=2) as rt:
        text = rt.compile(small(), strategy="model", max_batch=64).explain(batch=1)
        for part in ["columns (output features)", "rows (input features) + reduce-scatter", "workers 0..1",
                     "w0:", "w1:", "flops", "bytes read per worker", "barriers", "predicted"]:
            assert part in text, part
        assert "batch rows" in rt.compile(small(), strategy="data", max_batch=64).explain(batch=1)
        assert "stage 1: worker 1" in rt.compile(small(), strategy="pipeline", max_batch=64).explain()


def test_auto_explains_its_choice():
    """auto names every candidate plan with its predicted time, and runs the
    one it names as chosen (the cheapest predicted)."""
    with shmrt.Runtime(workers=2) as rt:
        cm = rt.compile(small(), strategy="auto", max_batch=64)
        for n in (1, 64):
            text = cm.explain(batch=n)
            pred = cm.plan.predictions(n)
            assert set(pred) == {"data", "model", "hybrid", "pipeline"}
            best = min(pred, key=pred.get)
            assert cm.plan.strategy_for("auto", n) == best
            assert f"auto at batch {n} -> '{best}', predicted fastest" in text
            for name in pred:
                assert f"{name} " in text.split("\n")[1], name


def test_run_one_shot():
    m = small()
    x = np.random.default_rng(0).standard_normal((3, 10))
    assert rel_err(shmrt.run(m, x), forward(m, x)) <= 1e-5
    assert rel_err(shmrt.run(m, x), forward(m, x)) <= 1e-5  # cached compile


@pytest.mark.parametrize("strategy", ["data", "model"])
def test_profile_measures_each_part(strategy):
    """profile() runs the real call (its output is right), and each part is
    measured from its own stamps: per-worker step times sum to kernels +
    barrier waits; every worker starts after the command was published
    (dispatch >= 0) and the parent sees DONE after the last worker's end
    (return >= 0); the critical worker is the one that ended last; the
    stamps chain from the copy in to the copy out (nothing unaccounted
    beyond clock rounding); a barrier's latency is no longer than the
    longest wait at it."""
    model = shmrt.Sequential([shmrt.Conv2d(3, 6, 3, padding=1), shmrt.ReLU(), shmrt.MaxPool2d(2), shmrt.Flatten(),
                              shmrt.Linear(6 * 4 * 4, 5), shmrt.Softmax()])
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, strategy=strategy, max_batch=4,
                                                    input_shape=(3, 8, 8)) as cm:
        p = cm.profile(x)
        assert rel_err(cm.run_in_place(4), forward(model, x)) <= 1e-5  # the profiled call's output was kept
        assert p.workers == 2 and p.batch == 4 and p.strategy == strategy
        assert len(p.kernel_us) == len(p.wait_us) == len(p.dispatch_us) == 2
        names = [name for name, _ in p.per_worker[0]]
        # the ReLU and the MaxPool2d(2) run in the convolution's epilogue
        assert names[0].startswith("conv: layer 0,1,2 Conv2d") and names[-1].startswith("softmax: layer 5")
        assert any(n.startswith("barrier") for n in names) == (strategy == "model")
        assert (len(p.barrier_us) > 0) == (strategy == "model")
        ends = []
        for w in range(2):
            assert np.isclose(sum(us for _, us in p.per_worker[w]), p.kernel_us[w] + p.wait_us[w])
            ends.append(p.dispatch_us[w] + p.kernel_us[w] + p.wait_us[w])
        assert p.critical == int(np.argmax(ends))
        assert min(p.kernel_us) > 0 and min(p.dispatch_us) >= 0 and p.return_us >= 0
        assert p.copy_in_us >= 0 and p.copy_out_us >= 0 and p.launch_us >= 0 and p.finish_us >= 0
        assert abs(p.unaccounted_us) <= 0.01, p.as_dict()
        c = p.critical
        assert p.coordination_us == p.dispatch_us[c] + p.wait_us[c] + p.return_us
        for lat in p.barrier_us:
            assert 0 <= lat <= max(p.wait_us) + 1e-3
        assert "kernels" in str(p) and p.as_dict()["coordination_us"] == p.coordination_us
        with pytest.raises(ValueError, match="expected 1..max_batch=4 rows, got 5"):
            cm.profile(np.zeros((5, 3, 8, 8), np.float32))


def test_profile_in_place_tier():
    """profile(n=...) times run_in_place on the rows already in the input buffer: no copy, same output."""
    model = small()
    x = np.random.default_rng(1).standard_normal((3, 10)).astype(np.float32)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, max_batch=4) as cm:
        cm.input_buffer(3)[...] = x
        p = cm.profile(n=3)
        assert p.batch == 3 and rel_err(cm.run_in_place(3), forward(model, x)) <= 1e-5
        assert p.copy_out_us < 1000 and p.total_us > 0
        with pytest.raises(TypeError, match="either x .* or n="):
            cm.profile(x, n=3)
        with pytest.raises(TypeError, match="expected exactly one, got neither"):
            cm.profile()
        with pytest.raises(ValueError, match="expected 1..max_batch=4 rows, got 0"):
            cm.profile(n=0)


def test_profile_needs_workers():
    with shmrt.Runtime(workers=0) as rt:
        cm = rt.compile(small(), max_batch=2)
        with pytest.raises(ValueError, match="workers >= 1"):
            cm.profile(np.zeros((1, 10), np.float32))
