"""ONNX ops widened for the backend-test conformance (issue 16): LayerNormalization over any trailing
axes (with its Mean and InvStdDev outputs), ReduceMean over axes after the batch, Clip with any bounds,
HardSigmoid with any alpha and beta.  Each model is built with onnx.helper, its batch axis symbolic,
and shmrt's answer is compared with onnx's ReferenceEvaluator and with onnxruntime (batches 1 and 3,
1 and 2 workers, strategies "data" and "model"); what stays out of scope is refused with the node,
its op and what was expected named.  The public layers behind them (LayerNorm over several dims,
Hardtanh, Mean) are checked against torch and through the native file format."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

import shmrt  # noqa: E402
from shmrt.frontends.onnx import from_onnx  # noqa: E402
from shmrt.ir.reference import forward  # noqa: E402

RTOL = 1e-5
_RNG = np.random.default_rng(16)


@pytest.fixture(scope="module")
def runtimes():
    with shmrt.Runtime(workers=1) as r1, shmrt.Runtime(workers=2) as r2:
        yield (r1, r2)


def _model(nodes, shape, outputs, inits=(), opset=18):
    """One float input x of [N, *shape] (N symbolic); outputs: [(name, ONNX shape with "N")]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs]
    g = helper.make_graph(nodes, "g", [x], outs, [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _err(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.size == ref.size, (got.shape, ref.shape)
    return np.abs(got.reshape(-1) - ref.reshape(-1)).max() / max(np.abs(ref).max(), 1e-30)


def _check(m, shape, runtimes, ties=False):
    """shmrt against ReferenceEvaluator and onnxruntime, every output, batches 1 and 3, 1 and 2
    workers, strategies data and model; returns the worst relative error seen."""
    model = from_onnx(m)
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ev = ReferenceEvaluator(m)
    worst = 0.0
    for n in (1, 3):
        x = _RNG.standard_normal((n, *shape)).astype(np.float32) * 2
        if ties:  # few distinct values: ties decide the index
            x = np.round(x / 2)
        refs = ev.run(None, {m.graph.input[0].name: x})
        outs = sess.run(None, {m.graph.input[0].name: x})
        for a, b in zip(refs, outs):  # the two references agree first
            assert _err(b, a) <= RTOL
        for rt in runtimes:
            for s in ("data", "model"):
                got = rt.compile(model, strategy=s, max_batch=3)(x)
                got = got if isinstance(got, (tuple, list)) else (got,)
                assert len(got) == len(refs)
                for g, a, b in zip(got, refs, outs):
                    assert np.shape(g)[0] == n
                    if a.dtype.kind == "i":  # indices: exactly
                        assert np.array_equal(np.reshape(g, a.shape), a) and np.array_equal(a, b), (s, g, a)
                        continue
                    e = max(_err(g, a), _err(g, b))
                    assert e <= RTOL, (s, rt.workers if hasattr(rt, "workers") else "", e)
                    worst = max(worst, e)
    return worst


def _refused(m, *words):
    with pytest.raises(ValueError) as e:
        from_onnx(m)
    msg = str(e.value)
    for w in ("ONNX node",) + words:
        assert w in msg, msg
    return msg


# -- LayerNormalization ---------------------------------------------------------------------------

def _layernorm(shape, axis, stats=False, eps=1e-5, bias=True, stash=None, scale_shape=None):
    r = len(shape) + 1
    a = axis % r
    norm = shape[a - 1:]
    inits = [("s", _RNG.standard_normal(scale_shape or norm).astype(np.float32))]
    if bias:
        inits.append(("b", _RNG.standard_normal(norm).astype(np.float32)))
    outs = ["y", "mean", "inv"] if stats else ["y"]
    kw = {"axis": axis, "epsilon": eps}
    if stash is not None:
        kw["stash_type"] = stash
    node = helper.make_node("LayerNormalization", ["x", "s"] + (["b"] if bias else []), outs, **kw)
    st = ["N", *shape[:a - 1]] + [1] * (r - a)
    return _model([node], shape, [("y", ["N", *shape])] + ([("mean", st), ("inv", st)] if stats else []), inits)


@pytest.mark.parametrize("shape,axis", [((5,), 1), ((5,), -1), ((3, 5), 1), ((3, 5), 2), ((3, 5), -1),
                                        ((3, 4, 5), 1), ((3, 4, 5), 2), ((3, 4, 5), 3), ((3, 4, 5), -2),
                                        ((3, 4, 5), -3)])
@pytest.mark.parametrize("stats", [False, True])
def test_layernorm_over_trailing_axes_with_mean_and_invstddev(shape, axis, stats, runtimes):
    e = _check(_layernorm(shape, axis, stats, eps=1e-3 if stats else 1e-5), shape, runtimes)
    print(f"\nLayerNormalization {shape} axis {axis} stats {stats}: worst relative error {e:.2e}")


def test_layernorm_without_bias_broadcast_scale_and_explicit_stash(runtimes):
    _check(_layernorm((3, 4, 5), 2, bias=False, stash=1, scale_shape=(5,)), (3, 4, 5), runtimes)


@pytest.mark.parametrize("axis", [0, -4])
def test_layernorm_over_the_batch_axis_is_refused(axis):
    msg = _refused(_layernorm((3, 4, 5), axis), "op LayerNormalization", "axis 0", "batch")
    print("\n" + msg)


def test_layernorm_with_a_scale_that_does_not_broadcast_is_refused():
    _refused(_layernorm((3, 4, 5), 2, scale_shape=(3,)), "op LayerNormalization", "Scale", "[4, 5]")


# -- ReduceMean -----------------------------------------------------------------------------------

def _reduce_mean(shape, axes, keepdims, as_input=True):
    r = len(shape) + 1
    kept = [1 if k in [a % r for a in axes] else n for k, n in enumerate(["N", *shape])]
    out = kept if keepdims else [n for k, n in enumerate(["N", *shape]) if k not in [a % r for a in axes]]
    if as_input:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)
        return _model([node], shape, [("y", out)], [("axes", np.array(axes, np.int64))])
    node = helper.make_node("ReduceMean", ["x"], ["y"], keepdims=keepdims, axes=axes)
    return _model([node], shape, [("y", out)], opset=13)


@pytest.mark.parametrize("shape,axes", [((2, 3), [1]), ((2, 3), [-2]), ((2, 3), [2]), ((2, 3), [1, 2]),
                                        ((3, 4, 5), [2]), ((3, 4, 5), [2, 3]), ((3, 4, 5), [1, 3]),
                                        ((3, 4, 5), [1, 2, 3]), ((6,), [1])])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_mean_over_axes_after_the_batch(shape, axes, keepdims, runtimes):
    _check(_reduce_mean(shape, axes, keepdims), shape, runtimes)


def test_reduce_mean_axes_as_attribute_opset13(runtimes):
    _check(_reduce_mean((3, 4), [1], 1, as_input=False), (3, 4), runtimes)


def test_reduce_mean_over_the_batch_or_every_axis_is_refused():
    _refused(_reduce_mean((2, 3), [0, 1], 1), "ReduceMean", "axis 0 is the batch")
    node = helper.make_node("ReduceMean", ["x"], ["y"], keepdims=1)
    _refused(_model([node], (2, 3), [("y", [1, 1, 1])]), "ReduceMean", "axis 0 is the batch")


# -- Clip, HardSigmoid ----------------------------------------------------------------------------

def _clip(lo, hi, opset=13):
    ins = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
    while ins[-1] == "":
        ins.pop()
    inits = [(k, np.array(v, np.float32)) for k, v in (("lo", lo), ("hi", hi)) if v is not None]
    return _model([helper.make_node("Clip", ins, ["y"])], (3, 4), [("y", ["N", 3, 4])], inits, opset=opset)


@pytest.mark.parametrize("lo,hi,opset", [(-1.0, 1.0, 13), (None, 0.0, 13), (-0.5, None, 13), (2.0, 1.0, 13),
                                         (-1.0, 1.0, 18), (0.0, 6.0, 13), (0.0, None, 13), (None, None, 13)])
def test_clip_any_bounds(lo, hi, opset, runtimes):
    _check(_clip(lo, hi, opset), (3, 4), runtimes)


def test_clip_with_a_bound_from_the_input_is_refused():
    node = helper.make_node("Clip", ["x", "m"], ["y"])
    g = helper.make_graph([helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0, axes=[0, 1, 2]), node], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(ValueError) as e:
        from_onnx(m)
    assert "ONNX node" in str(e.value) and "ReduceMax" in str(e.value), str(e.value)


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.6), (0.2, 0.5), (1 / 6, 0.5), (-0.3, 0.1)])
def test_hardsigmoid_any_alpha_beta(alpha, beta, runtimes):
    node = helper.make_node("HardSigmoid", ["x"], ["y"], alpha=alpha, beta=beta)
    _check(_model([node], (3, 4), [("y", ["N", 3, 4])]), (3, 4), runtimes)


def _const(name, v):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.float32)))


@pytest.mark.parametrize("lo,hi,const_first", [(0.0, 1.0, False), (-0.5, 0.25, True), (0.0, None, False),
                                               (None, 0.3, True)])
def test_max_min_with_constants_and_castlike_as_function_bodies_write_them(lo, hi, const_first, runtimes):
    """HardSigmoid's and Relu's bodies: constants CastLike(c, x), Mul, Add, then Min / Max with a constant."""
    nodes = [_const("a", 0.4), _const("b", 0.1), helper.make_node("CastLike", ["a", "x"], ["ac"]),
             helper.make_node("CastLike", ["b", "x"], ["bc"]), helper.make_node("Mul", ["x", "ac"], ["h1"]),
             helper.make_node("Add", ["h1", "bc"], ["h"])]
    cur = "h"
    for k, (op, v) in enumerate((("Min", hi), ("Max", lo))):
        if v is None:
            continue
        nodes += [_const(f"c{k}", v), helper.make_node("CastLike", [f"c{k}", "x"], [f"cc{k}"])]
        ins = [f"cc{k}", cur] if const_first else [cur, f"cc{k}"]
        nodes.append(helper.make_node(op, ins, [f"o{k}"]))
        cur = f"o{k}"
    nodes.append(helper.make_node("Identity", [cur], ["y"]))
    _check(_model(nodes, (3, 4), [("y", ["N", 3, 4])]), (3, 4), runtimes)


@pytest.mark.parametrize("lo,hi", [(-0.5, 0.7), (None, 0.2), (0.3, None), (0.9, 0.1)])
def test_clip_function_body_where_less_runs_as_clip(lo, hi, runtimes):
    nodes, cur, inits = [], "x", []
    if lo is not None:
        nodes += [helper.make_node("Less", [cur, "lo"], ["c0"]), helper.make_node("Where", ["c0", "lo", cur], ["t"])]
        cur = "t"
        inits.append(("lo", np.array(lo, np.float32)))
    if hi is not None:
        nodes += [helper.make_node("Less", ["hi", cur], ["c1"]), helper.make_node("Where", ["c1", "hi", cur], ["y"])]
        inits.append(("hi", np.array(hi, np.float32)))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["y"]))
    _check(_model(nodes, (3, 4), [("y", ["N", 3, 4])], inits), (3, 4), runtimes)


def test_leakyrelu_function_body_runs_as_leakyrelu(runtimes):
    nodes = [helper.make_node("Constant", [], ["a"], value_float=0.15),
             helper.make_node("Constant", [], ["z"], value_float=0.0),
             helper.make_node("CastLike", ["a", "x"], ["ac"]), helper.make_node("CastLike", ["z", "x"], ["zc"]),
             helper.make_node("Less", ["x", "zc"], ["neg"]), helper.make_node("Mul", ["ac", "x"], ["ax"]),
             helper.make_node("Where", ["neg", "ax", "x"], ["y"])]
    m = _model(nodes, (3, 4), [("y", ["N", 3, 4])])
    assert any(type(layer).__name__ == "LeakyReLU" for layer in from_onnx(m).layers)
    _check(m, (3, 4), runtimes)


def test_where_less_whose_condition_is_also_read_elsewhere_is_not_fused_and_is_refused():
    nodes = [helper.make_node("Less", ["x", "lo"], ["c"]), helper.make_node("Where", ["c", "lo", "x"], ["y"]),
             helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT), helper.make_node("Add", ["y", "cf"], ["z"])]
    _refused(_model(nodes, (3, 4), [("z", ["N", 3, 4])], [("lo", np.array(0.2, np.float32))]), "op Less")


def test_max_of_two_activations_is_refused():
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Max", ["x", "r"], ["y"])]
    _refused(_model(nodes, (3, 4), [("y", ["N", 3, 4])]), "op Max", "expected the model input and one constant")


# -- the public layers: PyTorch's semantics, the native format --------------------------------------

def test_layers_match_torch_and_save_load(tmp_path, runtimes):
    torch = pytest.importorskip("torch")
    ln = torch.nn.LayerNorm((4, 5), eps=1e-4)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    model = shmrt.Sequential([shmrt.LayerNorm([4, 5], eps=1e-4, weight=ln.weight.detach().numpy(),
                                              bias=ln.bias.detach().numpy()),
                              shmrt.Hardtanh(-0.5, 0.7), shmrt.Mean(dim=-1)], input_shape=(3, 4, 5))
    x = _RNG.standard_normal((3, 3, 4, 5)).astype(np.float32)
    with torch.no_grad():
        ref = torch.nn.functional.hardtanh(ln(torch.from_numpy(x)), -0.5, 0.7).mean(-1).numpy()
    assert _err(forward(model, x), ref) <= RTOL
    path = tmp_path / "m.shmrt"
    model.save(path)
    back = shmrt.load(path)
    assert [repr(layer) for layer in back.layers] == [repr(layer) for layer in model.layers]
    for rt in runtimes:
        for m in (model, back):
            assert _err(rt.compile(m, strategy="data", max_batch=3)(x), ref) <= RTOL


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="min_val must be a number"):
        shmrt.Hardtanh(float("nan"), 1.0)
    with pytest.raises(ValueError, match="trailing dims"):
        shmrt.Mean(dim=(1, 3))
    with pytest.raises(ValueError, match=r"weight must have shape \(4, 5\)"):
        shmrt.LayerNorm([4, 5], weight=np.ones(3))
    with pytest.raises(ValueError, match="expects inputs of shape"):
        shmrt.Sequential([shmrt.LayerNorm([4, 5])], input_shape=(5, 4)).shapes((5, 4))


def test_torch_layernorm_over_two_dims_hardtanh_and_mean_load(runtimes):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = torch.nn.LayerNorm((4, 5))
            self.act = torch.nn.Hardtanh(-0.3, 0.4)

        def forward(self, x):
            return self.act(self.ln(x)).mean(-1, keepdim=True) + torch.nn.functional.hardtanh(x, -1.0, 0.5).mean(-1, keepdim=True)

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.ln.weight.normal_()
        net.ln.bias.normal_()
    model = shmrt.load(net, input_shape=(3, 4, 5))
    x = _RNG.standard_normal((3, 3, 4, 5)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    for rt in runtimes:
        for s in ("data", "model"):
            assert _err(rt.compile(model, strategy=s, max_batch=3)(x), ref) <= RTOL


# -- ArgMax ---------------------------------------------------------------------------------------

def _argmax(shape, axis, keepdims, last):
    r = len(shape) + 1
    a = axis % r
    out = [1 if k == a else n for k, n in enumerate(["N", *shape]) if keepdims or k != a]
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=axis, keepdims=keepdims, select_last_index=last)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                          [helper.make_tensor_value_info("y", TensorProto.INT64, out)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("shape,axis", [((5,), 1), ((5,), -1), ((3, 4), 1), ((3, 4), 2), ((3, 4), -1),
                                        ((2, 3, 4), 1), ((2, 3, 4), 2), ((2, 3, 4), 3)])
@pytest.mark.parametrize("keepdims,last", [(1, 0), (0, 0), (1, 1), (0, 1)])
def test_argmax_along_any_axis_after_the_batch(shape, axis, keepdims, last, runtimes):
    _check(_argmax(shape, axis, keepdims, last), shape, runtimes, ties=True)


def test_argmax_along_the_batch_axis_is_refused():
    _refused(_argmax((3, 4), 0, 1, 0), "op ArgMax", "axis=0", "batch")


# -- Softmax / LogSoftmax written out as their function bodies -------------------------------------

def _softmax_body(shape, axis, log, opset, expose=False):
    ax = helper.make_tensor("axes", TensorProto.INT64, [1], [axis])
    nodes = [helper.make_node("Constant", [], ["ax"], value=ax)]
    if opset >= 18:
        nodes.append(helper.make_node("ReduceMax", ["x", "ax"], ["m"], keepdims=1))
    else:
        nodes.append(helper.make_node("ReduceMax", ["x"], ["m"], keepdims=1, axes=[axis]))
    nodes += [helper.make_node("Sub", ["x", "m"], ["d"]), helper.make_node("Exp", ["d"], ["e"]),
              helper.make_node("ReduceSum", ["e", "ax"], ["s"], keepdims=1)]
    if log:
        nodes += [helper.make_node("Log", ["s"], ["l"]), helper.make_node("Sub", ["d", "l"], ["y"])]
    else:
        nodes.append(helper.make_node("Div", ["e", "s"], ["y"]))
    outs = [("y", ["N", *shape])] + ([("e", ["N", *shape])] if expose else [])
    return _model(nodes, shape, outs, opset=opset)


@pytest.mark.parametrize("axis", [1, 2, -1])
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("opset", [13, 18])
def test_softmax_function_body_runs_as_softmax(axis, log, opset, runtimes):
    m = _softmax_body((3, 4), axis, log, opset)
    model = from_onnx(m)
    assert any(type(layer).__name__ == ("LogSoftmax" if log else "Softmax") for layer in model.layers)
    _check(m, (3, 4), runtimes)


def test_softmax_body_whose_exp_is_also_an_output_is_not_fused_and_is_refused():
    _refused(_softmax_body((3, 4), 1, False, 18, expose=True), "op ReduceMax", "not supported")


def test_softmax_body_over_the_batch_axis_is_refused():
    _refused(_softmax_body((3, 4), 0, False, 18), "op Softmax", "axis=0", "batch")


# -- LayerNormalization written out as its function body (ONNX's own expanded test models) -----------

def _expanded_layernorm(name, extra_output=None):
    """The expanded model ONNX ships, Scale and B made initializers, the batch axis symbolic."""
    from onnx.backend.test.loader import load_model_tests
    t = next(t for t in load_model_tests(kind="node") if t.name == name)
    m = onnx.ModelProto()  # a copy: the loader's model is shared with tests/test_onnx_nodes.py, which
    # compares it with ONNX's stored outputs (editing it in place made those cases fail after this file)
    m.CopyFrom(onnx.load(f"{t.model_dir}/model.onnx") if getattr(t, "model_dir", None) else t.model)
    g = m.graph
    x = g.input[0]
    shape = tuple(d.dim_value for d in x.type.tensor_type.shape.dim)
    for vi in list(g.input[1:]):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        g.initializer.append(numpy_helper.from_array(_RNG.standard_normal(dims).astype(np.float32), vi.name))
        g.input.remove(vi)
    x.type.tensor_type.shape.dim[0].ClearField("dim_value")
    x.type.tensor_type.shape.dim[0].dim_param = "N"
    for o in g.output:
        o.type.tensor_type.shape.dim[0].ClearField("dim_value")
        o.type.tensor_type.shape.dim[0].dim_param = "N"
    if extra_output:
        g.output.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    return m, shape[1:]


@pytest.mark.parametrize("name", ["test_layer_normalization_2d_axis1_expanded",
                                  "test_layer_normalization_3d_axis2_epsilon_expanded_ver18",
                                  "test_layer_normalization_4d_axis1_expanded_ver18",
                                  "test_layer_normalization_4d_axis_negative_3_expanded"])
def test_layernorm_function_body_runs_as_layernorm(name, runtimes):
    m, shape = _expanded_layernorm(name)
    assert sum(type(layer).__name__ == "LayerNorm" for layer in from_onnx(m).layers) == 1
    _check(m, shape, runtimes)


def test_layernorm_function_body_over_the_batch_axis_or_with_an_intermediate_output_is_refused():
    m, _ = _expanded_layernorm("test_layer_normalization_4d_axis0_expanded")
    _refused(m, "op Flatten", "batch")
    m, _ = _expanded_layernorm("test_layer_normalization_4d_axis1_expanded",
                               "LayerNormalization_test_layer_normalization_4d_axis1_expanded_function_Var")
    _refused(m, "not supported")


# -- a graph that only re-labels its input ----------------------------------------------------------

@pytest.mark.parametrize("op,kw,out", [("Identity", {}, ["N", 3, 4]), ("Unsqueeze", {"axes": [1]}, ["N", 1, 3, 4]),
                                       ("Transpose", {"perm": [0, 1, 2]}, ["N", 3, 4])])
def test_a_graph_that_computes_nothing_runs_as_a_copy(op, kw, out, runtimes):
    if op == "Unsqueeze":
        node = helper.make_node(op, ["x", "axes"], ["y"])
        m = _model([node], (3, 4), [("y", out)], [("axes", np.array(kw["axes"], np.int64))])
    else:
        m = _model([helper.make_node(op, ["x"], ["y"], **kw)], (3, 4), [("y", out)])
    _check(m, (3, 4), runtimes)


def test_a_graph_moving_the_batch_axis_is_still_refused():
    m = _model([helper.make_node("Unsqueeze", ["x", "axes"], ["y"])], (3, 4), [("y", [1, "N", 3, 4])],
               [("axes", np.array([0], np.int64))])
    with pytest.raises(ValueError, match="not in batch-first order"):
        from_onnx(m)


def test_mean_of_constant_rows(runtimes):
    """shmrt.Mean shares LayerNorm's statistics kernel but has no eps: a row whose values are all
    equal (clamped by a Hardtanh here) has variance 0, and its mean must not compute 1 / sqrt(0)."""
    model = shmrt.Sequential([shmrt.Hardtanh(-0.5, 0.7), shmrt.Mean(dim=-1)], input_shape=(3, 4))
    x = np.full((2, 3, 4), 5.0, np.float32)
    x[1, 1] = [-9.0, 0.1, 0.2, 9.0]
    ref = np.clip(x.astype(np.float64), -0.5, 0.7).mean(-1)
    for rt in runtimes:
        got = rt.compile(model, strategy="data", max_batch=2)(x)
        assert got.shape == ref.shape and _err(got, ref) <= RTOL


def test_rstd_with_eps_0_of_constant_rows_is_inf(runtimes):
    """RStd with eps 0 divides by a variance of 0 on a constant row: inf, as torch's rsqrt gives,
    not a ZeroDivisionError in the worker; the other rows stay exact."""
    model = shmrt.Sequential([shmrt.RStd([4], eps=0.0)], input_shape=(3, 4))
    x = np.full((2, 3, 4), 5.0, np.float32)
    x[1, 1] = [-9.0, 0.1, 0.2, 9.0]
    x64 = x.astype(np.float64)
    with np.errstate(divide="ignore"):
        ref = 1.0 / np.sqrt(((x64 - x64.mean(-1, keepdims=True)) ** 2).mean(-1, keepdims=True))
    for rt in runtimes:
        got = rt.compile(model, strategy="data", max_batch=2)(x)
        assert got.shape == ref.shape
        assert np.array_equal(np.isinf(got), np.isinf(ref)) and np.isinf(ref).sum() == 5
        assert _err(got[~np.isinf(ref)], ref[~np.isinf(ref)]) <= RTOL
