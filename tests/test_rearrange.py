"""Permute / Transpose / Slice (and Split as Slices): written by hand, from a torch module's own
forward (permute, transpose, split, chunk, narrow, slicing) and from its ONNX export (Transpose,
Split, Slice), every strategy, 1-2 workers, against the float64 reference and torch in float64."""
import contextlib
import io
import warnings

import numpy as np
import pytest

import shmrt
from shmrt.ir.reference import forward

STRATEGIES = ("data", "model", "hybrid", "pipeline", "auto")
RNG = np.random.default_rng(7)


def _x(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _check(rt, model, x, ref, strategies=STRATEGIES, max_batch=8):
    worst = 0.0
    for st in strategies:
        cm = rt.compile(model, strategy=st, max_batch=max_batch)
        got = cm(x)
        got = got if isinstance(got, tuple) else (got,)
        ref_t = ref if isinstance(ref, (tuple, list)) else (ref,)
        assert len(got) == len(ref_t)
        for g, r in zip(got, ref_t):
            assert g.shape == r.shape, (st, g.shape, r.shape)
            err = float(np.abs(g - r).max() / max(np.abs(r).max(), 1e-30))
            assert err <= 1e-4, (st, err)
            worst = max(worst, err)
    return worst


@pytest.fixture(scope="module", params=[1, 2], ids=["w1", "w2"])
def rt(request):
    with shmrt.Runtime(workers=request.param) as r:
        yield r


def _graph():
    x = shmrt.Input((6, 5, 4))
    a = shmrt.Permute(0, 3, 1, 2)(x)  # (4, 6, 5)
    b = shmrt.Transpose(1, -1)(x)  # (4, 5, 6)
    c = shmrt.Slice(2, 1, None, 2)(x)  # (6, 2, 4)
    d = shmrt.ReLU()(shmrt.Conv2d(4, 3, 3, padding=1)(a))  # (3, 6, 5)
    e = shmrt.Slice(-1, chunk=(1, 2))(d)  # (3, 6, 2): the second of two chunks of 5 (3 + 2)
    f = shmrt.Add()(b, shmrt.Permute(0, 1, 3, 2)(a))  # (4, 5, 6)
    return shmrt.Graph(x, [a, c, e, f])


def test_by_hand_every_strategy(rt):
    g = _graph()
    for n in (1, 5):
        x = _x(n, 6, 5, 4)
        ref = forward(g, x.astype(np.float64))
        assert [r.shape[1:] for r in ref] == [(4, 6, 5), (6, 2, 4), (3, 6, 2), (4, 5, 6)]
        worst = _check(rt, g, x, ref)
        print(f"by hand, batch {n}, {rt.workers} workers: worst relative error {worst:.2e}")


def test_save_load_round_trip(tmp_path):
    g = _graph()
    g.save(tmp_path / "g.shmrt")
    back = shmrt.load(str(tmp_path / "g.shmrt"))
    x = _x(3, 6, 5, 4).astype(np.float64)
    for u, v in zip(forward(g, x), forward(back, x)):
        np.testing.assert_array_equal(u, v)


def test_refusals():
    with pytest.raises(ValueError, match=r"keeps dim 0 .* got \(1, 0, 2\)"):
        shmrt.Permute(1, 0, 2)
    with pytest.raises(ValueError, match="permutation of 0..2"):
        shmrt.Permute(0, 1, 1)
    with pytest.raises(ValueError, match="dim 0 is the batch"):
        shmrt.Slice(0, 1, 2)
    with pytest.raises(ValueError, match="dim 0 is the batch"):
        shmrt.Transpose(0, 1)
    with pytest.raises(ValueError, match="step must be a positive int"):
        shmrt.Slice(1, 0, 4, -1)
    with pytest.raises(ValueError, match="selects nothing of dim 1"):
        shmrt.Sequential([shmrt.Slice(1, 5, 9)]).shapes((4,))
    with pytest.raises(ValueError, match="out of range"):
        shmrt.Sequential([shmrt.Transpose(1, 3)]).shapes((4, 5))
    with pytest.raises(ValueError, match="permutes 4 dims, got inputs of shape"):
        shmrt.Sequential([shmrt.Permute(0, 2, 1, 3)]).shapes((4, 5))


torch = pytest.importorskip("torch")
nn = torch.nn


class Rearranging(nn.Module):
    """A gated conv (split), chunk, permute, transpose, slicing, narrow; two outputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(18, 5)

    def forward(self, x):  # [N, 4, 6, 5]
        y = self.conv(x)  # [N, 6, 6, 5]
        a, b = y.split(3, dim=1)
        g = a * torch.sigmoid(b)  # [N, 3, 6, 5]
        c, d = torch.chunk(y, 2, 1)
        h = g + d - c
        t = h.permute(0, 2, 3, 1)  # [N, 6, 5, 3]
        u = t.transpose(1, 2)  # [N, 5, 6, 3]
        v = u[:, 1:4, ::2]  # [N, 3, 3, 3]
        w = torch.narrow(v, 3, 1, 2)  # [N, 3, 3, 2]
        return self.head(torch.flatten(w, 1)), t


def _torch_ref(m, x):
    with torch.no_grad():
        return tuple(o.numpy() for o in m.double()(torch.from_numpy(x.astype(np.float64))))


def test_torch_module(rt):
    torch.manual_seed(0)
    m = Rearranging().eval()
    model = shmrt.load(m, input_shape=(4, 6, 5))
    assert isinstance(model, shmrt.Graph)
    x = _x(5, 4, 6, 5)
    ref = _torch_ref(m, x)
    worst = _check(rt, model, x, ref)
    print(f"torch module, {rt.workers} workers: worst relative error {worst:.2e}")


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_onnx_export(rt, exporter):
    torch.manual_seed(1)
    m = Rearranging().eval()
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(m, (torch.zeros(2, 4, 6, 5),), f, dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y", "t"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}, "t": {0: "N"}})
        else:
            torch.onnx.export(m, (torch.zeros(2, 4, 6, 5),), f, dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("N")},))
    import onnx
    proto = onnx.load_from_string(f.getvalue())
    ops = {n.op_type for n in proto.graph.node}
    assert {"Split", "Transpose", "Slice"} <= ops, ops
    model = shmrt.load(proto)
    x = _x(3, 4, 6, 5)
    ref = _torch_ref(m, x)
    worst = _check(rt, model, x, ref)
    print(f"ONNX export ({exporter}), {rt.workers} workers: worst relative error {worst:.2e}")


def test_torch_refusals():
    class Bad(nn.Module):
        def forward(self, x):
            return x[:, 0]  # an int index drops a dim

    with pytest.raises(ValueError, match=r"indexing x\[:, 0\] is not supported"):
        shmrt.load(Bad(), input_shape=(4, 3))

    class BadPiece(nn.Module):
        def forward(self, x):
            return torch.chunk(x, 2, 1)[2]

    with pytest.raises(ValueError, match=r"piece 2 of chunk\(2\)"):
        shmrt.load(BadPiece(), input_shape=(4, 3))


@pytest.mark.parametrize("dim", [1, 2, -1, -2, 3])
def test_softmax_any_dim(rt, dim):
    for cls, tcls in ((shmrt.Softmax, nn.Softmax), (shmrt.LogSoftmax, nn.LogSoftmax)):
        model = shmrt.Sequential([shmrt.Conv2d(3, 4, 1), cls(dim=dim)], input_shape=(3, 5, 6))
        x = _x(4, 3, 5, 6)
        ref = forward(model, x.astype(np.float64))
        conv = nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(model.layers[0].params["weight"]))
            conv.bias.copy_(torch.from_numpy(model.layers[0].params["bias"]))
        tref = nn.Sequential(conv, tcls(dim=dim)).double()(torch.from_numpy(x.astype(np.float64))).detach().numpy()
        np.testing.assert_allclose(ref, tref, rtol=1e-10, atol=1e-12)
        _check(rt, model, x, tref, strategies=("data", "model", "auto"))
        loaded = shmrt.load(nn.Sequential(conv, tcls(dim=dim)), input_shape=(3, 5, 6))
        _check(rt, loaded, x, tref, strategies=("auto",))


def test_softmax_refusals():
    with pytest.raises(ValueError, match="dim must be a non-zero int"):
        shmrt.Softmax(dim=0)
    with pytest.raises(ValueError, match="dim 4 is out of range"):
        shmrt.Sequential([shmrt.Softmax(dim=4)]).shapes((3, 5, 6))


def test_onnx_gemm_trans_a_of_a_transposed_activation(rt):
    """Transpose [N, K] -> [K, N], then Gemm(transA=1): A^T is the activation again."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    W, b = _x(5, 3), _x(3)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0]),
             helper.make_node("Gemm", ["xt", "W", "b"], ["y"], transA=1, alpha=0.5)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = _x(4, 5)
    ref = 0.5 * x.astype(np.float64) @ W + b
    _check(rt, shmrt.load(proto), x, ref, strategies=("data", "model"))
    nodes[0] = helper.make_node("Identity", ["x"], ["xt"])  # A = [N, K] itself: A^T has the batch last
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")])
    with pytest.raises(ValueError, match="batch-first"):
        shmrt.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_binary_with_a_broadcast_constant(rt):
    """x <op> c and c <op> x with c broadcast along any per-sample axis (ONNX's Add of a [F] constant
    on [N, T, F], a [T, 1] one, ...), by hand and from ONNX, against float64."""
    x = _x(5, 4, 6) + 3.0  # away from 0 for the divisions
    rng = np.random.default_rng(3)
    for shape in [(6,), (4, 1), (4, 6), ()]:
        c = rng.uniform(0.5, 2.0, shape).astype(np.float32)
        for cls in (shmrt.Add, shmrt.Sub, shmrt.Mul, shmrt.Div):
            for reverse in (False, True):
                inp = shmrt.Input((4, 6))
                g = shmrt.Graph(inp, shmrt.ReLU()(cls(constant=c, reverse=reverse)(inp)))
                ref = forward(g, x.astype(np.float64))
                op = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[cls.__name__]
                x64, c64 = x.astype(np.float64), c.astype(np.float64)
                np.testing.assert_allclose(ref, np.maximum(op(c64, x64) if reverse else op(x64, c64), 0), rtol=1e-12)
                _check(rt, g, x, ref, strategies=("data", "model"))
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    for op, first in (("Add", False), ("Sub", True), ("Div", True), ("Mul", False)):
        c = rng.uniform(0.5, 2.0, (4, 1)).astype(np.float32)
        ins = ["c", "x"] if first else ["x", "c"]
        g = helper.make_graph([helper.make_node(op, ins, ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6])],
                              [numpy_helper.from_array(c, "c")])
        model = shmrt.load(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
        fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op]
        x64, c64 = x.astype(np.float64), c.astype(np.float64)
        _check(rt, model, x, fn(c64, x64) if first else fn(x64, c64), strategies=("data", "model"))


def test_binary_constant_refusals():
    with pytest.raises(ValueError, match="does not broadcast to inputs"):
        shmrt.Sequential([shmrt.Add(constant=np.ones((3, 6), np.float32))]).shapes((4, 6))
    with pytest.raises(ValueError, match="reverse=True needs a constant"):
        shmrt.Sub(reverse=True)


def test_argmax_select_last_index(rt):
    """Ties go to the first index, or the last with ONNX's select_last_index."""
    x = np.array([[1, 3, 3, 0], [2, 2, 2, 2], [0, 1, 5, 5], [np.nan, 1, np.nan, 0]], np.float32)
    for last in (False, True):
        model = shmrt.Sequential([shmrt.ArgMax(select_last_index=last)], input_shape=(4,))
        ref = forward(model, x[:3].astype(np.float64))
        assert ref.tolist() == ([1, 0, 2] if not last else [2, 3, 3])
        for st in ("data", "model"):
            got = rt.compile(model, strategy=st, max_batch=4)(x)
            assert got[:3].tolist() == ref.tolist() and got[3] == 0, (st, got)
