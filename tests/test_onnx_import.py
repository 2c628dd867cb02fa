"""ONNX importer without torch: hand-built graphs checked against onnxruntime, refusals, importer
bugs that must not pass for refusals, external data and files.  Needs onnx (and onnxruntime for the
tests that compare numbers); the torch exports are in test_onnx_export.py."""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import shmrt  # noqa: E402
import shmrt.frontends.onnx_import as onnx_import  # noqa: E402
import shmrt.frontends.onnx.patterns as onnx_patterns  # noqa: E402
from models import rnd, STRATEGIES  # noqa: E402
from reference import rel_err  # noqa: E402
from shmrt.frontends.onnx_import import ONNXImporterBug, UnsupportedONNX, from_onnx, load_onnx_file  # noqa: E402


def ort_run(data, x):
    ort = pytest.importorskip("onnxruntime")
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
    (lambda: _one("Conv", (2, 5, 5), [("w", rnd(2, 2, 2, 2))], pads=[0, 0, 1]), "pads"),
    (lambda: _one("AveragePool", (2, 5, 5), kernel_shape=[2, 2], auto_pad="SAME_UPPER", ceil_mode=1), "ceil_mode"),
    (lambda: _one("GRU", (3, 4), [("W", rnd(1, 9, 4)), ("R", rnd(1, 9, 3))], hidden_size=3, layout=1, clip=1.0),
     "clip"),
    (lambda: _one("LSTM", (3, 4), [("W", rnd(1, 12, 4)), ("R", rnd(1, 12, 3))], hidden_size=3, layout=1,
                  direction="bidirectional"), "direction"),
    # malformed nodes (checked against the op's schema before any handler sees them)
    (lambda: _one("MaxPool", (2, 5, 5)), "required attribute kernel_shape is missing"),
    (lambda: _one("Gemm"), "has 1 inputs; Gemm-13 takes 2..3"),
    (lambda: _one("Softmax", axis=[1]), "attribute axis has type INTS; expected INT"),
    # a shmrt layer's own argument check (BatchNorm1d: running_var >= 0)
    (lambda: _one("BatchNormalization", (4,), [(k, rnd(4, seed=i)) for i, k in enumerate("sbm")]
                  + [("v", -np.ones(4, np.float32))]), "running_var must be >= 0"),
], ids=["Foo", "Hardmax", "softmax_axis0", "conv_pads", "avgpool_ceil", "gru_clip", "lstm_bidir",
        "maxpool_no_kernel_shape", "gemm_one_input", "softmax_axis_ints", "batchnorm_negative_var"])
def test_unsupported_raises(proto, match):
    with pytest.raises(ValueError, match=match) as e:
        from_onnx(proto())
    assert "my_" in str(e.value)  # the node is named
    assert isinstance(e.value, UnsupportedONNX)


def test_refusals_graph_level():
    p = _one("Relu")
    p.opset_import[0].version = 11
    with pytest.raises(ValueError, match="opset 11"):
        from_onnx(p)
    p.opset_import[0].version = 26  # beyond what shmrt reads: named with the range it does read
    with pytest.raises(ValueError, match=r"opset 26 .*13-25"):
        from_onnx(p)
    p.opset_import[0].version = 25  # 23-25 changed element types only: read as 22
    from_onnx(p)
    # residual connections and branches are graphs now (test_onnx_graph.py); what stays refused is named there
    # an initializer that is also a graph input (IR < 4, keep_initializers_as_inputs=True): its value is used
    w = rnd(4, 2)
    p = _one("MatMul", (4,), [("W", w)])
    p.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 2]))
    (lin,) = from_onnx(p).layers
    np.testing.assert_array_equal(lin.params["weight"], w.T)


# -- importer bugs are not refusals -------------------------------------------------------------------------

def test_a_handler_bug_is_reported_as_a_bug_not_a_refusal(monkeypatch):
    def broken(self, node, idx, ins, a):
        return self.no_such_attribute  # an AttributeError inside a handler: a bug in shmrt

    monkeypatch.setattr(onnx_import._Converter, "op_Relu", broken)
    with pytest.raises(ONNXImporterBug) as e:
        from_onnx(_one("Relu"))
    assert not isinstance(e.value, (UnsupportedONNX, ValueError, NotImplementedError)), type(e.value).__mro__
    msg = str(e.value)
    assert "my_Relu" in msg and "op Relu" in msg and "bug in shmrt's ONNX importer" in msg and "report" in msg, msg
    assert isinstance(e.value.__cause__, AttributeError)  # chained: the traceback shows where


def test_a_numpy_error_inside_a_handler_is_a_bug_not_a_refusal(monkeypatch):
    """A ValueError that numpy (not a shmrt check) raises is no refusal either."""
    def broken(self, node, idx, ins, a):
        np.broadcast_to(np.zeros(3), (4,))

    monkeypatch.setattr(onnx_import._Converter, "op_Sigmoid", broken)
    with pytest.raises(ONNXImporterBug, match="my_Sigmoid.*ValueError") as e:
        from_onnx(_one("Sigmoid"))
    assert not isinstance(e.value, ValueError) and isinstance(e.value.__cause__, ValueError)


def test_folding_constants_numpy_rejects_is_a_refusal_only_if_onnx_rejects_them_too(monkeypatch):
    """Constant folding: a numpy error on constants that onnx's reference implementation rejects too
    (an invalid graph) refuses the node; one on constants onnx folds is a bug in shmrt's folding."""
    def graph(perm):
        return make([helper.make_node("Transpose", ["c"], ["t"], name="my_Transpose", perm=perm),
                     helper.make_node("Add", ["x", "t"], ["y"])], [4], [4], [("c", rnd(4, 1))])

    assert isinstance(from_onnx(graph([1, 0])).layers[0], shmrt.BatchNorm1d)
    with pytest.raises(UnsupportedONNX, match="my_Transpose.*could not be folded"):
        from_onnx(graph([0, 0]))  # a repeated axis: numpy and onnx both reject it

    def broken(self, node, idx, op, ins, a):
        return ins[0][(0,) * (ins[0].ndim + 1)]  # an IndexError of shmrt's own making

    monkeypatch.setattr(onnx_import._Converter, "_fold", broken)
    with pytest.raises(ONNXImporterBug, match="my_Transpose.*IndexError.*bug in shmrt") as e:
        from_onnx(graph([1, 0]))
    assert isinstance(e.value.__cause__, IndexError)


def _gelu_chain():
    nodes = [helper.make_node("Div", ["x", "s2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["x", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["y"])]
    return make(nodes, [4], [4], [("s2", np.float32(np.sqrt(2.0))), ("one", np.float32(1.0)),
                                  ("half", np.float32(0.5))])


@pytest.mark.parametrize("rewrite, helper_name, proto", [
    ("rewrite_gelu", "_other", _gelu_chain),
    ("rewrite_layernorm", "attrs", lambda: make([helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1])], [4], [1],
                                                opset=13)),
])
def test_a_pattern_rewrite_that_raises_is_not_swallowed(monkeypatch, rewrite, helper_name, proto):
    """A helper the rewrite calls raises: from_onnx reports a bug naming the rewrite (it used to be
    swallowed, leaving the pattern to the node walk)."""
    assert isinstance(from_onnx(_gelu_chain()).layers[0], shmrt.GELU)  # unpatched, the GELU pattern fits
    g = proto().graph
    getattr(onnx_patterns, rewrite)(onnx, g, list(enumerate(g.node)))  # and the rewrite runs on this graph

    def broken(*args, **kw):
        raise KeyError("a bug inside the rewrite")

    monkeypatch.setattr(onnx_patterns, helper_name, broken)
    with pytest.raises(ONNXImporterBug, match=f"{rewrite}.*KeyError.*bug in shmrt") as e:
        from_onnx(proto())
    assert isinstance(e.value.__cause__, KeyError)


def test_pattern_rewrites_leave_odd_nodes_alone_without_raising():
    """Nodes with missing inputs/outputs or odd constants near the patterns: no exception, no rewrite."""
    nodes = [helper.make_node("Erf", [], ["e0"]), helper.make_node("Div", ["x"], ["d"]),
             helper.make_node("Erf", ["d"], []), helper.make_node("Add", ["e0"], ["a"]),
             helper.make_node("Constant", [], ["c"], value_int=3), helper.make_node("Constant", [], []),
             helper.make_node("Mul", ["a", "c"], ["m"]), helper.make_node("Mul", ["m", "", "s"], ["y"]),
             helper.make_node("ReduceMean", ["x"], [], axes=[-1]), helper.make_node("ReduceMean", [], ["r"]),
             helper.make_node("Sub", ["x", "r"], ["sub"]), helper.make_node("Pow", ["sub"], ["p"]),
             helper.make_node("Div", ["sub", ""], ["q"])]
    g = make(nodes, [4], [4], [("s", np.array(["text"]))]).graph
    pairs = list(enumerate(g.node))
    for rewrite in (onnx_patterns.rewrite_gelu, onnx_patterns.rewrite_layernorm):
        assert rewrite(onnx, g, pairs) == pairs


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


def test_truncated_and_garbage_files(tmp_path):
    """A truncated file and a file that is not a protobuf are refused naming the file; the whole file loads."""
    data = make([helper.make_node("MatMul", ["x", "W"], ["y"])], [16], [8], [("W", rnd(16, 8))]).SerializeToString()
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


