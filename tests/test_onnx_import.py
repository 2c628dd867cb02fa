"""ONNX importer: torch exports (legacy and dynamo), hand-built graphs, refusals, external data."""
import contextlib
import copy
import functools
import io
import os
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import shmrt  # noqa: E402
from models import rnd, STRATEGIES  # noqa: E402
from reference import rel_err  # noqa: E402
from shmrt.onnx_import import from_onnx, load_onnx_file  # noqa: E402

def ort_run(data, x):
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def run_all(rt, model, x, strategies=STRATEGIES, max_batch=5):
    outs = []
    for s in strategies:
        cm = rt.compile(model, strategy=s, max_batch=max_batch)
        try:
            outs.append((s, cm(x)))
        finally:
            cm.close()
    return outs


# -- torch models ------------------------------------------------------------------------------------

class RNNClassifier(torch.nn.Module):
    def __init__(self, cls, num_layers=1):
        super().__init__()
        self.rnn = cls(6, 12, num_layers=num_layers, batch_first=True)
        self.fc = torch.nn.Linear(12, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.c2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.avg = torch.nn.AvgPool2d(2)
        self.fc = torch.nn.Linear(8 * 2 * 2, 5)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.c1(x))))
        x = self.avg(torch.tanh(self.c2(x)))
        return self.fc(torch.flatten(x, 1))


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.GELU(),
                               torch.nn.LayerNorm(16), torch.nn.Linear(16, 16), torch.nn.Sigmoid(),
                               torch.nn.Linear(16, 5), torch.nn.Softmax(dim=-1))


def _cnn():
    m = CNN()
    with torch.no_grad():  # non-trivial running statistics
        m.bn.running_mean.uniform_(-0.5, 0.5)
        m.bn.running_var.uniform_(0.5, 2.0)
        m.bn.weight.uniform_(0.5, 1.5)
        m.bn.bias.uniform_(-0.5, 0.5)
    return m


MODELS = {
    "mlp": (_mlp, (10,)),
    "cnn": (_cnn, (3, 8, 8)),
    "lstm": (lambda: RNNClassifier(torch.nn.LSTM), (5, 6)),
    "gru": (lambda: RNNClassifier(torch.nn.GRU), (5, 6)),
    "lstm2": (lambda: RNNClassifier(torch.nn.LSTM, num_layers=2), (5, 6)),
}


@functools.lru_cache(maxsize=None)
def torch_model(name):
    torch.manual_seed(0)
    make, shape = MODELS[name]
    return make().eval(), shape


@functools.lru_cache(maxsize=None)
def export(name, exporter, folding=True, opset=None):
    m, shape = torch_model(name)
    x = torch.from_numpy(rnd(3, *shape, seed=99))
    f = io.BytesIO()
    kw = {} if opset is None else {"opset_version": opset}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(m, (x,), f, dynamo=False, dynamic_axes={"x": {0: "N"}}, input_names=["x"],
                              do_constant_folding=folding, **kw)
        else:
            torch.onnx.export(m, (x,), f, dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("N")},), **kw)
    return f.getvalue()


CASES = [("mlp", "legacy", True), ("mlp", "dynamo", True),
         ("cnn", "legacy", True), ("cnn", "legacy", False), ("cnn", "dynamo", True),
         ("lstm", "legacy", True), ("lstm", "legacy", False), ("lstm", "dynamo", True),
         ("gru", "legacy", True), ("gru", "dynamo", True),
         ("lstm2", "legacy", True), ("lstm2", "dynamo", True)]


@pytest.mark.parametrize("name, exporter, folding", CASES, ids=lambda v: str(v))
def test_torch_export(rt, name, exporter, folding):
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    data = export(name, exporter, folding)
    proto = onnx.load_from_string(data)
    if name == "cnn" and not folding:
        assert any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    model = from_onnx(proto)
    m, shape = torch_model(name)
    assert model.input_shape() == shape
    if name == "cnn" and not folding:
        assert any(isinstance(l, shmrt.BatchNorm2d) for l in model.layers)
    if name == "lstm2":
        assert [type(l) for l in model.layers] == [shmrt.LSTM, shmrt.Linear]
        assert model.layers[0].num_layers == 2
    m64 = copy.deepcopy(m).double()
    worst = [0.0, 0.0]
    for n in (3, 5):
        x = rnd(n, *shape, seed=n)
        ref_ort = ort_run(data, x)[0]
        with torch.no_grad():
            ref_torch = m64(torch.from_numpy(x).double()).numpy()
        assert rel_err(ref_ort, ref_torch) <= 1e-5
        for s, y in run_all(rt, model, x):
            assert rel_err(y, ref_ort) <= 1e-5, (s, n)
            assert rel_err(y, ref_torch) <= 1e-5, (s, n)
            worst = [max(worst[0], rel_err(y, ref_ort)), max(worst[1], rel_err(y, ref_torch))]
    print(f"\n{name} ({exporter} export{'' if folding else ', no constant folding'}): every strategy at "
          f"batch 3 and 5, max relative error {worst[0]:.1e} against onnxruntime, {worst[1]:.1e} against torch")


@pytest.mark.parametrize("name", list(MODELS))
def test_same_module_loads_directly_and_through_onnx(rt, name, tmp_path):
    """shmrt.load(module) and shmrt.load(exported .onnx file) of the same torch module: every strategy
    matches torch (float64), and the two imports give the same layers."""
    m, shape = torch_model(name)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(export(name, "legacy", True))
    direct, via_onnx = shmrt.load(m, input_shape=shape), shmrt.load(path)
    assert [type(l) for l in direct.layers if not isinstance(l, shmrt.BatchNorm2d)] == \
        [type(l) for l in via_onnx.layers]  # the exporter folds BatchNorm into the conv
    m64 = copy.deepcopy(m).double()
    x = rnd(5, *shape, seed=7)
    with torch.no_grad():
        ref = m64(torch.from_numpy(x).double()).numpy()
    worst = 0.0
    for model in (direct, via_onnx):
        for s, y in run_all(rt, model, x):
            assert rel_err(y, ref) <= 1e-5, (s, model)
            worst = max(worst, rel_err(y, ref))
    print(f"\n{name}: shmrt.load(module) and shmrt.load('{name}.onnx'), every strategy, max relative error "
          f"{worst:.1e} against torch")


@pytest.mark.parametrize("opset", [13, 17])
def test_legacy_old_opsets_erf_gelu_and_layernorm(rt, opset):
    """Before opset 20 the exporter writes exact GELU as Div, Erf, Add, Mul, Mul; before 17 LayerNorm as
    ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add."""
    data = export("mlp", "legacy", True, opset=opset)
    proto = onnx.load_from_string(data)
    assert any(n.op_type == "Erf" for n in proto.graph.node)
    model = from_onnx(proto)
    assert [type(l) for l in model.layers] == [type(l) for l in from_onnx(export("mlp", "legacy", True)).layers]
    assert any(isinstance(l, shmrt.GELU) and l.approximate == "none" for l in model.layers)
    x = rnd(3, 10, seed=4)
    ref = ort_run(data, x)[0]
    for s, y in run_all(rt, model, x, ("auto", "model")):
        assert rel_err(y, ref) <= 1e-5, s


# -- hand-built graphs --------------------------------------------------------------------------------

def make(nodes, in_shape, out_shape, inits=(), opset=20, out_type=TensorProto.FLOAT, outputs=None):
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])
    shape = None if out_shape is None else ["N", *out_shape]
    outs = outputs or [helper.make_tensor_value_info("y", out_type, shape)]
    g = helper.make_graph(nodes, "g", [inp], outs, [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def check_ort(rt, proto, x, strategies=("auto", "data", "model"), tol=1e-5, reshape=None):
    model = from_onnx(proto)
    refs = ort_run(proto.SerializeToString(), x)
    for s, y in run_all(rt, model, x, strategies):
        if isinstance(y, tuple):
            for a, b in zip(y, refs):
                assert rel_err(a, b) <= tol, s
        else:
            ref = refs[0] if reshape is None else refs[0].reshape(reshape)
            assert rel_err(y, ref) <= tol, s
    return model


def test_matmul_add(rt):
    W, b = rnd(7, 4, seed=1), rnd(4, seed=2)
    proto = make([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])],
                 [7], [4], [("W", W), ("b", b)])
    model = check_ort(rt, proto, rnd(3, 7, seed=3))
    assert len(model.layers) == 1 and isinstance(model.layers[0], shmrt.Linear)
    np.testing.assert_allclose(model.layers[0].params["bias"], b)


def test_gemm_transb0_alpha_beta_and_affine(rt):
    W, c = rnd(6, 5, seed=1), rnd(1, 5, seed=2)
    nodes = [helper.make_node("Gemm", ["x", "W", "c"], ["h"], transB=0, alpha=0.5, beta=2.0),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "k"], ["a"]),          # no Linear right before: an affine layer
             helper.make_node("Mul", ["a", "s"], ["y"])]
    proto = make(nodes, [6], [5], [("W", W), ("c", c), ("k", rnd(5, seed=3)), ("s", np.float32(1.5))])
    check_ort(rt, proto, rnd(5, 6, seed=4), strategies=STRATEGIES)


@pytest.mark.parametrize("order", ["div_first", "mul_half_first", "half_times_one_plus"])
def test_gelu_op_and_erf_pattern(rt, order):
    W = rnd(8, 8, seed=1)
    s2 = np.float32(np.sqrt(2.0))
    x_ = ["h"]
    n = [helper.make_node("MatMul", ["x", "W"], x_)]
    if order == "div_first":
        n += [helper.make_node("Div", ["h", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
              helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["h", "a"], ["m"]),
              helper.make_node("Mul", ["m", "half"], ["g"])]
    elif order == "mul_half_first":
        n += [helper.make_node("Mul", ["h", "inv"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
              helper.make_node("Add", ["one", "e"], ["a"]), helper.make_node("Mul", ["h", "half"], ["m"]),
              helper.make_node("Mul", ["m", "a"], ["g"])]
    else:
        n += [helper.make_node("Div", ["h", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
              helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["a", "half"], ["m"]),
              helper.make_node("Mul", ["h", "m"], ["g"])]
    n += [helper.make_node("Gelu", ["g"], ["y"], approximate="tanh")]
    inits = [("W", W), ("s2", s2), ("inv", np.float32(1 / np.sqrt(2.0))), ("one", np.float32(1.0)),
             ("half", np.float32(0.5))]
    proto = make(n, [8], [8], inits)
    model = check_ort(rt, proto, rnd(3, 8, seed=2) * 2)
    assert [type(l) for l in model.layers] == [shmrt.Linear, shmrt.GELU, shmrt.GELU]
    assert [l.approximate for l in model.layers[1:]] == ["none", "tanh"]


def test_layernorm_logsoftmax(rt):
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1, epsilon=1e-3),
             helper.make_node("LogSoftmax", ["h"], ["y"], axis=1)]
    proto = make(nodes, [9], [9], [("g", rnd(9, seed=1)), ("b", rnd(9, seed=2))])
    check_ort(rt, proto, rnd(5, 9, seed=3))


def test_topk(rt):
    out = [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 3]),
           helper.make_tensor_value_info("i", TensorProto.INT64, ["N", 3])]
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
             helper.make_node("TopK", ["h", "k"], ["v", "i"], axis=-1)]
    proto = make(nodes, [6], None, [("W", rnd(10, 6, seed=1)), ("k", np.array([3], np.int64))], outputs=out)
    model = check_ort(rt, proto, rnd(5, 6, seed=2))
    assert isinstance(model.layers[-1], shmrt.TopK) and model.layers[-1].k == 3


@pytest.mark.parametrize("keepdims", [0, 1])
def test_argmax(rt, keepdims):
    nodes = [helper.make_node("Gemm", ["x", "W"], ["h"], transB=1),
             helper.make_node("ArgMax", ["h"], ["y"], axis=1, keepdims=keepdims)]
    proto = make(nodes, [6], [1] if keepdims else [], [("W", rnd(7, 6, seed=1))], out_type=TensorProto.INT64)
    x = rnd(5, 6, seed=2)
    check_ort(rt, proto, x, reshape=(5,))  # shmrt's ArgMax gives [N] (same memory as ONNX's [N, 1])


def test_global_average_pool_flatten(rt):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["n"], epsilon=1e-3),
             helper.make_node("Relu", ["n"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W"], ["y"], transB=1)]
    inits = [("w", rnd(6, 3, 3, 3, seed=1)), ("b", rnd(6, seed=2)), ("s", rnd(6, seed=3)), ("bb", rnd(6, seed=4)),
             ("m", rnd(6, seed=5)), ("v", np.abs(rnd(6, seed=6)) + 0.5), ("W", rnd(4, 6, seed=7))]
    proto = make(nodes, [3, 7, 7], [4], inits)
    model = check_ort(rt, proto, rnd(3, 3, 7, 7, seed=8), strategies=STRATEGIES)
    assert model.input_shape() == (3, 7, 7)


def test_conv_same_upper_and_padded_pools(rt):
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad="SAME_UPPER", group=2),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              count_include_pad=0),
             helper.make_node("Add", ["a", "cb"], ["ab"]),  # a per-channel constant: folded into nothing, a BN
             helper.make_node("GlobalAveragePool", ["ab"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("Softmax", ["f"], ["y"])]
    inits = [("w", rnd(4, 1, 3, 3, seed=1)), ("cb", rnd(1, 4, 1, 1, seed=2)), ("shape", np.array([-1, 4], np.int64))]
    proto = make(nodes, [2, 9, 9], [4], inits)
    check_ort(rt, proto, rnd(3, 2, 9, 9, seed=3))


def test_gru_y_h_and_zero_state(rt):
    """GRU read through Y_h ([1, N, H] -> Squeeze) becomes return_sequences=False."""
    H, F, T = 5, 4, 3
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
             helper.make_node("GRU", ["t", "W", "R", "B"], ["", "yh"], hidden_size=H, linear_before_reset=1),
             helper.make_node("Squeeze", ["yh", "ax"], ["y"])]
    inits = [("W", rnd(1, 3 * H, F, seed=1)), ("R", rnd(1, 3 * H, H, seed=2)), ("B", rnd(1, 6 * H, seed=3)),
             ("ax", np.array([0], np.int64))]
    proto = make(nodes, [T, F], [H], inits)
    model = check_ort(rt, proto, rnd(5, T, F, seed=4))
    assert model.layers[0].return_sequences is False


def _lstm_rnn(layout):
    H, F, T = 4, 3, 5
    h0, c0 = rnd(H, seed=9) * 0.5, rnd(H, seed=10) * 0.5
    # the state shape [1, N, H] (layout 0) or [N, 1, H] is computed from the input's shape, as exporters do
    nodes = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
             helper.make_node("Concat", ["one1", "n1", "hh"] if layout == 0 else ["n1", "one1", "hh"], ["sshape"],
                              axis=0),
             helper.make_node("Expand", ["h0", "sshape"], ["h0e"]), helper.make_node("Expand", ["c0", "sshape"], ["c0e"])]
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]))
    nodes += [helper.make_node("LSTM", ["t" if layout == 0 else "x", "W", "R", "B", "", "h0e", "c0e"], ["y1"],
                               hidden_size=H, layout=layout),
              helper.make_node("Squeeze", ["y1", "ax"], ["s1"]),
              helper.make_node("RNN", ["s1", "W2", "R2", "B2"], ["y2"], hidden_size=H, layout=layout,
                               activations=["Relu"]),
              helper.make_node("Squeeze", ["y2", "ax"], ["s2"])]
    if layout == 0:
        nodes.append(helper.make_node("Transpose", ["s2"], ["y"], perm=[1, 0, 2]))
    else:
        nodes[-1].output[0] = "y"
    inits = [("W", rnd(1, 4 * H, F, seed=1)), ("R", rnd(1, 4 * H, H, seed=2)), ("B", rnd(1, 8 * H, seed=3)),
             ("h0", h0), ("c0", c0), ("ax", np.array([1 if layout == 0 else 2], np.int64)),
             ("W2", rnd(1, H, H, seed=4)), ("R2", rnd(1, H, H, seed=5)), ("B2", rnd(1, 2 * H, seed=6)),
             ("zero", np.array(0, np.int64)), ("zero1", np.array([0], np.int64)), ("one1", np.array([1], np.int64)),
             ("hh", np.array([H], np.int64))]
    return make(nodes, [T, F], [T, H], inits)


@pytest.mark.parametrize("layout", [0, 1])
def test_lstm_layout_initial_state_and_rnn_relu(rt, layout):
    """A constant initial state broadcast over the batch becomes h0/c0 (LSTM, then an RNN with Relu)."""
    x = rnd(3, 5, 3, seed=7)
    ref = ort_run(_lstm_rnn(0).SerializeToString(), x)[0]  # onnxruntime runs layout 0 only: same weights
    model = from_onnx(_lstm_rnn(layout))
    for s, y in run_all(rt, model, x, ("auto", "data", "model")):
        assert rel_err(y, ref) <= 1e-5, s
    assert [type(l) for l in model.layers] == [shmrt.LSTM, shmrt.RNN]
    assert "h0" in model.layers[0].params and "c0" in model.layers[0].params


def test_feature_slice_and_scalar_ops(rt):
    """Slice/Gather of dense features become Select; Sub/Div by constants an affine layer."""
    nodes = [helper.make_node("Slice", ["x", "st", "en", "axs"], ["s"]),
             helper.make_node("Gather", ["s", "idx"], ["g"], axis=1),
             helper.make_node("Sub", ["g", "mu"], ["c"]),
             helper.make_node("Div", ["c", "sd"], ["d"]),
             helper.make_node("Gemm", ["d", "W", "b"], ["y"], transB=1)]
    inits = [("st", np.array([1], np.int64)), ("en", np.array([9], np.int64)), ("axs", np.array([1], np.int64)),
             ("idx", np.array([0, 7, 3, 3], np.int64)), ("mu", rnd(4, seed=1)), ("sd", np.abs(rnd(4, seed=2)) + 1),
             ("W", rnd(2, 4, seed=3)), ("b", rnd(2, seed=4))]
    proto = make(nodes, [10], [2], inits)
    check_ort(rt, proto, rnd(5, 10, seed=5))


# -- refusals ---------------------------------------------------------------------------------------------

def _one(op, in_shape=(4,), inits=(), **attrs):
    names = ["x"] + [k for k, _ in inits]
    return make([helper.make_node(op, names, ["y"], name=f"my_{op}", **attrs)], list(in_shape), None, inits)


@pytest.mark.parametrize("proto, match", [
    (lambda: _one("Foo"), "Foo"),
    (lambda: _one("Hardmax"), "Hardmax"),
    (lambda: _one("Softmax", axis=0), "axis=0"),
    (lambda: _one("Conv", (2, 5, 5), [("w", rnd(2, 2, 2, 2))], pads=[0, 0, 1, 1]), "pads"),
    (lambda: _one("AveragePool", (2, 5, 5), kernel_shape=[2, 2], ceil_mode=1), "ceil_mode"),
    (lambda: _one("GRU", (3, 4), [("W", rnd(1, 9, 4)), ("R", rnd(1, 9, 3))], hidden_size=3, layout=1), "linear_before_reset"),
    (lambda: _one("LSTM", (3, 4), [("W", rnd(1, 12, 4)), ("R", rnd(1, 12, 3))], hidden_size=3, layout=1,
                  direction="bidirectional"), "direction"),
], ids=["Foo", "Hardmax", "softmax_axis0", "conv_pads", "avgpool_ceil", "gru_lbr0", "lstm_bidir"])
def test_unsupported_raises(proto, match):
    with pytest.raises(ValueError, match=match) as e:
        from_onnx(proto())
    assert "my_" in str(e.value)  # the node is named


def test_refusals_graph_level():
    p = _one("Relu")
    p.opset_import[0].version = 11
    with pytest.raises(ValueError, match="opset 11"):
        from_onnx(p)
    # a residual connection is not a chain
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    with pytest.raises(ValueError, match="Add"):
        from_onnx(make(nodes, [4], [4]))
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Mul", ["r", "s"], ["y"])]
    with pytest.raises(ValueError, match="Sigmoid.*branches"):
        from_onnx(make(nodes, [4], [4]))
    # an initializer that is also a graph input (overridable)
    p = _one("MatMul", (4,), [("W", rnd(4, 2))])
    p.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 2]))
    with pytest.raises(ValueError, match="initializer"):
        from_onnx(p)


# -- files and external data -------------------------------------------------------------------------------

def _external_model(tmp_path, location, W):
    proto = make([helper.make_node("MatMul", ["x", "W"], ["y"])], [4], [3], [("W", W)])
    t = proto.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "16"), ("length", str(W.nbytes))):
        e = t.external_data.add()
        e.key, e.value = k, v
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    path = d / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def test_external_data(rt, tmp_path):
    W = rnd(4, 3, seed=1)
    path = _external_model(tmp_path, "w.bin", W)
    (path.parent / "w.bin").write_bytes(b"\0" * 16 + W.tobytes() + b"tail")
    model = load_onnx_file(path)
    np.testing.assert_array_equal(model.layers[0].params["weight"], W.T)
    x = rnd(3, 4, seed=2)
    y = rt.compile(model, strategy="data", max_batch=4)(x)
    assert rel_err(y, x @ W) <= 1e-5
    # the data file cut short, or missing
    (path.parent / "w.bin").write_bytes(b"\0" * 20)
    with pytest.raises(ValueError, match="w.bin"):
        load_onnx_file(path)
    os.remove(path.parent / "w.bin")
    with pytest.raises(ValueError, match="w.bin"):
        load_onnx_file(path)
    # from_onnx without a folder
    with pytest.raises(ValueError, match="external"):
        from_onnx(onnx.load(str(path), load_external_data=False))


@pytest.mark.parametrize("where", ["dotdot", "absolute", "symlink"])
def test_external_data_escaping_the_folder(tmp_path, where):
    W = rnd(4, 3, seed=1)
    outside = tmp_path / "x.bin"
    outside.write_bytes(b"\0" * 16 + W.tobytes())
    if where == "dotdot":
        loc = "../x.bin"
    elif where == "absolute":
        loc = str(outside)
    else:
        loc = "link.bin"
    path = _external_model(tmp_path, loc, W)
    if where == "symlink":
        os.symlink(outside, path.parent / "link.bin")
    with pytest.raises(ValueError, match="W.*" + ("link.bin" if where == "symlink" else "x.bin")):
        load_onnx_file(path)


def test_external_data_in_any_tensor_attribute_is_confined(tmp_path, monkeypatch):
    """ConstantOfShape's value (not an initializer, not a Constant) with external data: read from the
    model's folder or refused, never resolved against the current directory."""
    shape = helper.make_node("Shape", ["x"], ["s"])
    value = numpy_helper.from_array(np.array([42.0], np.float32), "v")
    value.ClearField("raw_data")
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    e = value.external_data.add()
    e.key, e.value = "location", "leak.bin"
    cos = helper.make_node("ConstantOfShape", ["s"], ["c"], value=value)
    proto = make([shape, cos, helper.make_node("Add", ["x", "c"], ["y"])], [4], [4])
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "leak.bin").write_bytes(np.array([42.0], np.float32).tobytes())
    monkeypatch.chdir(cwd)
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(ValueError, match="leak.bin"):  # not in the model's folder: missing
        shmrt.load(path)
    with pytest.raises(ValueError, match="external"):  # a bare proto has no folder to read from
        from_onnx(onnx.load(str(path), load_external_data=False))


def test_truncated_and_garbage_files(tmp_path):
    data = export("mlp", "legacy", True)
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.onnx"):
        load_onnx_file(p)
    p.write_bytes(b"\x80\x04\x95 not a protobuf, a pickle header")
    with pytest.raises(ValueError, match="cut.onnx"):
        load_onnx_file(p)
    ok = tmp_path / "ok.onnx"
    ok.write_bytes(data)
    assert isinstance(load_onnx_file(ok).layers[0], shmrt.Linear)
