"""The MLP end to end: every strategy, workers 0..4, sizes that don't divide."""
import numpy as np
import pytest

import shmrt
from reference import forward, rel_err

STRATEGIES = ["auto", "data", "model", "hybrid", "pipeline"]
MAX_BATCH = 8


@pytest.fixture(scope="module", params=[0, 1, 2, 3, 4])
def runtime(request):
    with shmrt.Runtime(workers=request.param) as rt:
        yield rt


def odd_mlp(head=None):
    shmrt.manual_seed(0)
    layers = [shmrt.Linear(37, 1000), shmrt.ReLU(), shmrt.Linear(1000, 513), shmrt.Tanh(),
              shmrt.Linear(513, 7)]
    return shmrt.Sequential(layers + ([head] if head else []))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("batch", [1, 3, MAX_BATCH + 5])
def test_mlp_matches_float64(runtime, strategy, batch):
    model = odd_mlp()
    x = np.random.default_rng(batch).standard_normal((batch, 37)).astype(np.float32)
    cm = runtime.compile(model, strategy=strategy, max_batch=MAX_BATCH)
    try:
        assert rel_err(cm(x), forward(model, x)) <= 1e-5
    finally:
        cm.close()


@pytest.mark.parametrize("head", [shmrt.Softmax(), shmrt.LogSoftmax(), shmrt.Sigmoid(), shmrt.GELU(),
                                  shmrt.GELU("tanh")], ids=repr)
@pytest.mark.parametrize("strategy", ["data", "model"])
def test_heads(runtime, head, strategy):
    model = odd_mlp(head)
    x = np.random.default_rng(1).standard_normal((5, 37)).astype(np.float32) * 3
    cm = runtime.compile(model, strategy=strategy, max_batch=4)
    try:
        assert rel_err(cm(x), forward(model, x)) <= 1e-5
    finally:
        cm.close()


@pytest.mark.parametrize("strategy", ["data", "model"])
def test_argmax_and_topk(runtime, strategy):
    x = np.random.default_rng(2).standard_normal((6, 37)).astype(np.float32)
    m = odd_mlp(shmrt.ArgMax())
    cm = runtime.compile(m, strategy=strategy, max_batch=4)
    y = cm(x)
    assert y.dtype == np.int64 and np.array_equal(y, forward(m, x))
    m = odd_mlp(shmrt.TopK(3))
    cm2 = runtime.compile(m, strategy=strategy, max_batch=4)
    vals, idx = cm2(x)
    rv, ri = forward(m, x)
    assert idx.dtype == np.int64 and np.array_equal(idx, ri)
    assert rel_err(vals, rv) <= 1e-5
    cm.close()
    cm2.close()


def test_deep_chain_without_bias(runtime):
    """Row-parallel layers back to back (partial-sum regions alternate)."""
    shmrt.manual_seed(3)
    dims = [19, 300, 257, 129, 65, 33, 17]
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [shmrt.Linear(a, b, bias=(a % 2 == 1)), shmrt.ReLU()]
    model = shmrt.Sequential(layers[:-1])
    x = np.random.default_rng(4).standard_normal((3, 19)).astype(np.float32)
    for strategy in STRATEGIES:
        cm = runtime.compile(model, strategy=strategy, max_batch=3)
        for _ in range(3):  # repeated calls reuse the arena
            assert rel_err(cm(x), forward(model, x)) <= 1e-5
        cm.close()


def test_single_sample_and_dtypes(runtime):
    model = odd_mlp()
    cm = runtime.compile(model, max_batch=4)
    x = np.arange(37)
    y = cm(x)  # 1-D in, 1-D out; int cast to float32
    assert y.shape == (7,)
    assert rel_err(y, forward(model, x[None])[0]) <= 1e-5
    assert cm(np.zeros((0, 37))).shape == (0, 7)
    cm.close()


def test_zero_copy_tier(runtime):
    model = odd_mlp()
    cm = runtime.compile(model, strategy="data", max_batch=16)
    x = np.random.default_rng(5).standard_normal((10, 37)).astype(np.float32)
    buf = cm.input_buffer(10)
    buf[...] = x
    out = cm.run_in_place(10)
    assert out.shape == (10, 7)
    assert rel_err(out, forward(model, x)) <= 1e-5
    assert np.shares_memory(out, cm.arena)  # a view of shared memory, not a copy
    cm.close()
