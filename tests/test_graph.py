"""Graph models written by hand (shmrt.Input, layers called on values, shmrt.Graph): residual adds,
branches joined by Concat, broadcasting Mul/Sub/Div; every strategy, 1-3 workers, several batch
sizes, against the float64 numpy reference; the arena's reuse by liveness; save/load; errors."""
from __future__ import annotations

import numpy as np
import pytest

import shmrt
from shmrt.compile import plan as planner
from shmrt.ir.reference import forward

STRATEGIES = ("data", "model", "hybrid", "pipeline")


def _block(x, c, stride=1, cin=None):
    cin = cin or c
    h = shmrt.ReLU()(shmrt.BatchNorm2d(c)(shmrt.Conv2d(cin, c, 3, stride=stride, padding=1, bias=False)(x)))
    h = shmrt.BatchNorm2d(c)(shmrt.Conv2d(c, c, 3, padding=1, bias=False)(h))
    skip = x if stride == 1 and cin == c else shmrt.Conv2d(cin, c, 1, stride=stride, bias=False)(x)
    return shmrt.ReLU()(shmrt.Add()(h, skip))


def residual_net():
    shmrt.manual_seed(3)
    x = shmrt.Input((3, 12, 12))
    h = shmrt.ReLU()(shmrt.Conv2d(3, 8, 3, padding=1)(x))
    h = _block(h, 8)
    h = _block(h, 12, stride=2, cin=8)
    return shmrt.Graph(x, shmrt.Linear(12, 5)(shmrt.Flatten()(shmrt.AdaptiveAvgPool2d(1)(h))))


def branchy_net():
    """Inception-like branches, a squeeze-and-excitation gate, Sub and Div of activations."""
    shmrt.manual_seed(4)
    x = shmrt.Input((4, 8, 8))
    a = shmrt.ReLU()(shmrt.Conv2d(4, 6, 1)(x))
    b = shmrt.ReLU()(shmrt.Conv2d(4, 5, 3, padding=1)(x))
    c = shmrt.Conv2d(4, 3, 3, padding=1)(shmrt.MaxPool2d(3, stride=1, padding=1)(x))
    h = shmrt.Concat(dim=1)(a, b, c)  # 14 channels
    gate = shmrt.Sigmoid()(shmrt.AdaptiveAvgPool2d(1)(h))  # [N, 14, 1, 1]
    h = shmrt.Mul()(h, gate)
    d = shmrt.Sub()(h, shmrt.Hardswish()(h))
    e = shmrt.Div()(d, shmrt.Add()(shmrt.Sigmoid()(h), shmrt.Sigmoid()(d)))
    f = shmrt.Concat(dim=-1)(e, h)  # along W
    return shmrt.Graph(x, shmrt.Flatten()(shmrt.AdaptiveAvgPool2d((2, 4))(f)))


def dense_net():
    """Dense (feature) graph: two branches of Linear layers concatenated, a residual of features."""
    shmrt.manual_seed(5)
    x = shmrt.Input((10,))
    a = shmrt.ReLU()(shmrt.Linear(10, 16)(x))
    b = shmrt.Tanh()(shmrt.Linear(10, 8)(x))
    h = shmrt.Concat(1)(a, b)
    h = shmrt.Add()(shmrt.Linear(24, 24)(h), h)
    return shmrt.Graph(x, shmrt.Softmax()(shmrt.Linear(24, 4)(h)))


NETS = {"residual": (residual_net, (3, 12, 12)), "branchy": (branchy_net, (4, 8, 8)), "dense": (dense_net, (10,))}


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("name", list(NETS))
def test_graph_matches_reference(name, workers):
    make, shape = NETS[name]
    g = make()
    x = np.random.default_rng(7).standard_normal((9, *shape)).astype(np.float32)
    ref = forward(g, x)
    worst = 0.0
    with shmrt.Runtime(workers=workers) as rt:
        for s in STRATEGIES if workers > 1 else ("data",):
            cm = rt.compile(g, strategy=s, max_batch=8)
            for n in (1, 3, 8, 9):  # 9: chunked over max_batch
                got = cm(x[:n])
                assert got.shape == ref[:n].shape, (s, n)
                err = float(np.abs(got - ref[:n]).max() / np.abs(ref[:n]).max())
                assert err <= 1e-4, (name, s, n, err)
                worst = max(worst, err)
    print(f"\n{name} workers={workers}: worst relative error {worst:.2e}")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_arena_reuses_slots_by_liveness(strategy):
    """A deep residual chain: the arena's activation part stays near the few values alive at once,
    not the sum of all of them; and a value's slot is reused only when that is safe (checked by the
    numbers of every strategy above)."""
    shmrt.manual_seed(1)
    x = shmrt.Input((8, 16, 16))
    h = x
    for _ in range(8):
        h = _block(h, 8)
    g = shmrt.Graph(x, h)
    p = planner.build(g, 2, strategy, max_batch=4)
    one = 4 * 8 * 16 * 16  # one activation at max_batch (every op's output here is one)
    ops = len(p.explain_rows[strategy])  # 8 blocks of conv + BN + ReLU, conv + BN, add + ReLU
    assert ops == 24
    slots = p.memory["slots"][strategy]
    if strategy == "pipeline":  # stages work on different micro-batches at once: a slot per value but the output
        assert slots == (ops - 1) * one, slots / one
    elif strategy == "data":  # alive at once: a block's input, its first convolution's output, the second's
        #    (the add writes into a freed slot): three, where the 23 values besides the output would take 23
        assert slots == 3 * one, slots / one
    else:  # split by channels, the add needs no barrier (each worker adds its own channels), so a slot
        #    freed by it waits for the next convolution's barrier: one more
        assert slots <= 4 * one, slots / one
    assert p.memory["peak"][strategy] <= p.arena_floats


def test_explain_shows_the_arena_peak():
    with shmrt.Runtime(workers=2) as rt:
        cm = rt.compile(residual_net(), max_batch=4)
        text = cm.explain(1)
    assert "arena: activations peak" in text and "largest input + output of one layer" in text, text


def test_graph_save_load_roundtrip(tmp_path):
    g = branchy_net()
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    for name in ("g.shmrt", "g.npz"):
        g.save(tmp_path / name)
        back = shmrt.load(tmp_path / name)
        assert isinstance(back, shmrt.Graph)
        assert [repr(n) for n in back.nodes] == [repr(n) for n in g.nodes]
        np.testing.assert_array_equal(forward(back, x), forward(g, x))


def test_layer_called_on_an_array_says_what_it_expects():
    with pytest.raises(TypeError, match="called on graph values"):
        shmrt.ReLU()(np.zeros((2, 3), np.float32))


def test_bad_graphs_are_refused_with_the_node_named():
    x = shmrt.Input((4, 8, 8))
    a = shmrt.Conv2d(4, 6, 1)(x)
    b = shmrt.Conv2d(4, 5, 1)(x)
    with pytest.raises(ValueError, match=r"add_\d.*do not broadcast"):
        shmrt.Graph(x, shmrt.Add()(a, b)).shapes((4, 8, 8))
    with pytest.raises(ValueError, match="must match in every dim but 2"):
        shmrt.Graph(x, shmrt.Concat(2)(a, b)).shapes((4, 8, 8))
    with pytest.raises(ValueError, match="dim 0 is the batch"):
        shmrt.Concat(0)
    with pytest.raises(ValueError, match="takes 2 inputs, got 3"):
        shmrt.Graph(x, shmrt.Add()(a, a, a)).shapes((4, 8, 8))
    with pytest.raises(TypeError, match="inputs must be shmrt.Input"):
        shmrt.Graph(a, b)
    other = shmrt.Input((4, 8, 8), name="other")
    with pytest.raises(ValueError, match="not listed in inputs"):
        shmrt.Graph(x, shmrt.Add()(x, other))


def test_uneven_adaptive_pool_is_planned_as_itself():
    # PyTorch's uneven windows: one POOL step of adaptive windows (numerics: test_pool_semantics.py)
    x = shmrt.Input((2, 7, 7))
    g = shmrt.Graph(x, shmrt.AdaptiveAvgPool2d(3)(x))
    assert planner.build(g, 1, "data", 4) is not None


def two_in_three_out():
    shmrt.manual_seed(6)
    a, b = shmrt.Input((3, 8, 8), name="img"), shmrt.Input((5,), name="meta")
    h = shmrt.ReLU()(shmrt.Conv2d(3, 4, 3, padding=1)(a))
    f = shmrt.Add()(shmrt.Flatten()(shmrt.AdaptiveAvgPool2d(1)(h)), shmrt.Linear(5, 4)(b))
    return a, b, f, shmrt.Softmax()(shmrt.Linear(4, 3)(f)), h


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_several_inputs_and_outputs(strategy):
    a, b, f, p, h = two_in_three_out()
    g = shmrt.Graph([a, b], [f, p, h])
    named = shmrt.Graph([a, b], {"probs": p, "features": f})
    rng = np.random.default_rng(2)
    xa, xb = rng.standard_normal((6, 3, 8, 8)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    ref, refn = forward(g, [xa, xb]), forward(named, {"img": xa, "meta": xb})
    with shmrt.Runtime(workers=2) as rt:
        cm = rt.compile(g, strategy=strategy, max_batch=4)  # 6 rows: chunked
        got = cm(xa, xb)
        assert isinstance(got, tuple) and [o.shape for o in got] == [r.shape for r in ref]
        for o, r in zip(got, ref):
            assert np.abs(o - r).max() <= 1e-5 * np.abs(r).max()
        one = cm(xa[0], xb[0])  # single samples: no batch axis on the way out either
        assert [o.shape for o in one] == [r.shape[1:] for r in ref]
        got = rt.compile(named, strategy=strategy, max_batch=8)({"meta": xb, "img": xa})
        assert list(got) == ["probs", "features"]
        for k in got:
            assert np.abs(got[k] - refn[k]).max() <= 1e-5 * np.abs(refn[k]).max()
        with pytest.raises(TypeError, match=r"takes 2 inputs, img \(N, 3, 8, 8\), meta \(N, 5\)"):
            cm(xa)
        with pytest.raises(TypeError, match=r"expected the inputs \['img', 'meta'\] by name"):
            cm({"img": xa})
        with pytest.raises(ValueError, match="one batch size"):
            cm(xa, xb[:5])
        with pytest.raises(ValueError, match=r"input 'meta': expected shape \(N, 5\)"):
            cm(xa, xb[:, :4])


@pytest.mark.parametrize("up", [dict(scale_factor=2), dict(scale_factor=(2, 3), mode="bilinear"),
                                dict(size=(7, 5), mode="bilinear", align_corners=True), dict(size=(9, 12))],
                         ids=["nearest2", "bilinear2x3", "bilinear_aligned_size", "nearest_size"])
def test_upsample_matches_torch(up):
    torch = pytest.importorskip("torch")
    shmrt.manual_seed(8)
    x = shmrt.Input((3, 4, 6))
    g = shmrt.Graph(x, shmrt.Upsample(**up)(shmrt.Conv2d(3, 4, 1)(x)))
    xs = np.random.default_rng(3).standard_normal((5, 3, 4, 6)).astype(np.float32)
    conv = g.nodes[0].layer
    h = torch.nn.functional.conv2d(torch.from_numpy(xs).double(), torch.from_numpy(conv.params["weight"]).double(),
                                   torch.from_numpy(conv.params["bias"]).double())
    kw = dict(up)
    ref = torch.nn.functional.interpolate(h, **kw).numpy()
    np.testing.assert_allclose(forward(g, xs), ref, rtol=1e-9, atol=1e-9)
    with shmrt.Runtime(workers=2) as rt:
        for s in ("data", "model"):
            got = rt.compile(g, strategy=s, max_batch=4)(xs)
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), s


def test_pipeline_cuts_where_the_fewest_bytes_cross():
    """Of the stage cuts nearly as balanced as the best, the one where the fewest values cross."""
    from types import SimpleNamespace as Op

    from shmrt.compile.pipeline import balance, crossing
    # a -> b -> c -> d, and a skip a -> d: a cut after b carries a and b's wide output, one after c
    # carries a and c
    ops = [Op(inputs=["x"], out="a", shape=(10,)), Op(inputs=["a"], out="b", shape=(100,)),
           Op(inputs=["b"], out="c", shape=(10,)), Op(inputs=["c", "a"], out="d", shape=(10,))]
    assert crossing(ops).tolist() == [0, 10, 110, 20, 0]
    costs = [0.5, 1.5, 0.1, 1.0]  # a cut after a alone would leave 0.5 | 2.6: too unbalanced
    assert balance(costs, [1, 1]) == [2, 4]  # balance alone: 2 | 1.1
    assert balance(costs, [1, 1], crossing(ops)) == [3, 4]  # 2.1 | 1, within 1.25x, 20 floats cross, not 110
    assert balance(costs, [1, 1], crossing(ops), slack=1.0) == [2, 4]
