"""ConvTranspose2d: the layer (PyTorch's arguments, shapes and output size) and the float64 numpy
reference against torch's F.conv_transpose2d in float64; the kernel through the real runtime with
every strategy on 1-2 workers at batch 1 and 5 (strides 1-3, padding, output_padding, dilation,
groups and depthwise, with and without bias, an activation fused after it, a BatchNorm folded into
it); a small U-Net decoder loaded from the torch module and from its ONNX export; ONNX's
asymmetric pads, output_shape and auto_pad against onnxruntime; save/load bit-exact; refusals."""
from __future__ import annotations

import numpy as np
import pytest

import shmrt
from shmrt.ir.reference import forward

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

STRATEGIES = ("data", "model", "hybrid", "pipeline", "auto")

# (in, out, kernel, stride, padding, output_padding, groups, dilation, bias, input H x W)
CASES = {
    "s1": (3, 5, 3, 1, 0, 0, 1, 1, True, (5, 6)),
    "s1_pad1": (4, 6, 3, 1, 1, 0, 1, 1, False, (6, 5)),
    "s2_k4_p1": (4, 6, 4, 2, 1, 0, 1, 1, True, (5, 5)),
    "s2_k3_p1_op1": (5, 4, 3, 2, 1, 1, 1, 1, True, (4, 6)),
    "s3_k3_p2_d2_op1": (3, 4, 3, 3, 2, 1, 1, 2, False, (4, 5)),
    "rect": (2, 3, (2, 4), (3, 2), (0, 1), (2, 1), 1, (1, 2), True, (5, 4)),
    "groups2": (4, 6, 3, 2, 1, 1, 2, 1, True, (5, 6)),
    "depthwise": (6, 6, 4, 2, 1, 0, 6, 1, True, (6, 5)),
    "k1_s2": (5, 7, 1, 2, 0, 1, 1, 1, True, (4, 4)),  # phases with no tap: bias only
    "one_channel": (3, 1, 3, 2, 0, 0, 1, 1, True, (5, 5)),  # model plans split its output rows
}


def _layer(case):
    cin, cout, k, s, p, op, g, d, bias, _ = CASES[case]
    return shmrt.ConvTranspose2d(cin, cout, k, stride=s, padding=p, output_padding=op, groups=g, bias=bias,
                                 dilation=d)


def _torch_ref(layer, x, act=None):
    w = torch.from_numpy(layer.params["weight"]).double()
    b = torch.from_numpy(layer.params["bias"]).double() if "bias" in layer.params else None
    y = F.conv_transpose2d(torch.from_numpy(x).double(), w, b, stride=layer.stride, padding=layer.padding,
                           output_padding=layer.output_padding, groups=layer.groups, dilation=layer.dilation)
    return (act(y) if act is not None else y).numpy()


def _rel(got, ref):
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


@pytest.fixture(scope="module", params=[1, 2], ids=["1worker", "2workers"])
def runtime(request):
    with shmrt.Runtime(workers=request.param) as rt:
        yield rt


@pytest.mark.parametrize("case", list(CASES))
def test_layer_shape_and_reference_match_torch(case):
    shmrt.manual_seed(1)
    l = _layer(case)
    cin, cout, k, *_ = CASES[case]
    H, W = CASES[case][-1]
    t = nn.ConvTranspose2d(cin, cout, k, stride=l.stride, padding=l.padding, output_padding=l.output_padding,
                           groups=l.groups, bias="bias" in l.params, dilation=l.dilation)
    assert tuple(t.weight.shape) == l.params["weight"].shape  # PyTorch's parameter shapes
    x = np.random.default_rng(2).standard_normal((3, cin, H, W)).astype(np.float32)
    ref = _torch_ref(l, x)
    assert l.output_shape((cin, H, W)) == ref.shape[1:]
    np.testing.assert_allclose(forward(shmrt.Sequential([l]), x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", list(CASES))
def test_runtime_matches_torch_every_strategy(case, runtime):
    shmrt.manual_seed(2)
    l = _layer(case)
    cin, H, W = CASES[case][0], *CASES[case][-1]
    model = shmrt.Sequential([l], input_shape=(cin, H, W))
    x = np.random.default_rng(3).standard_normal((5, cin, H, W)).astype(np.float32)
    ref = _torch_ref(l, x)
    for s in STRATEGIES if runtime.workers > 1 else ("data", "auto"):
        cm = runtime.compile(model, strategy=s, max_batch=5)
        for n in (1, 5):
            got = cm(x[:n])
            assert got.shape == ref[:n].shape, (s, n)
            assert _rel(got, ref[:n]) <= 1e-4, (case, s, n, _rel(got, ref[:n]))


@pytest.mark.parametrize("act", ["relu", "sigmoid", "gelu"])
def test_fused_activation_and_folded_batchnorm(act, runtime):
    """An activation after it fuses into its epilogue, a BatchNorm2d before that folds into its weights."""
    shmrt.manual_seed(4)
    l = shmrt.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    rng = np.random.default_rng(5)
    bn = shmrt.BatchNorm2d(6, weight=rng.uniform(0.5, 1.5, 6), bias=rng.uniform(-0.5, 0.5, 6),
                           running_mean=rng.uniform(-1, 1, 6), running_var=rng.uniform(0.3, 1.8, 6))
    layer_act = {"relu": shmrt.ReLU(), "sigmoid": shmrt.Sigmoid(), "gelu": shmrt.GELU()}[act]
    model = shmrt.Sequential([l, bn, layer_act], input_shape=(4, 5, 5))
    x = rng.standard_normal((5, 4, 5, 5)).astype(np.float32)
    y = torch.from_numpy(_torch_ref(l, x))
    p = {k: torch.from_numpy(v).double() for k, v in bn.params.items()}
    y = F.batch_norm(y, p["running_mean"], p["running_var"], p["weight"], p["bias"], eps=bn.eps)
    ref = {"relu": torch.relu, "sigmoid": torch.sigmoid, "gelu": F.gelu}[act](y).numpy()
    for s in STRATEGIES if runtime.workers > 1 else ("data",):
        cm = runtime.compile(model, strategy=s, max_batch=5)
        rows = cm.plan.explain_rows[cm.plan.strategy_for(s, 5)]
        assert len(rows) == 1, [r["layer"] for r in rows]  # one op: the BatchNorm and activation went into it
        for n in (1, 5):
            assert _rel(cm(x[:n]), ref[:n]) <= 1e-4, (act, s, n)


class Decoder(nn.Module):
    """A U-Net-style decoder step: Conv -> ConvTranspose (stride 2) -> torch.cat with the skip -> Conv."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.skip = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.down(x))
        u = torch.relu(self.up(h))
        return self.head(torch.cat([u, self.skip(x)], dim=1))


def _decoder():
    torch.manual_seed(0)
    return Decoder().eval()


@pytest.mark.parametrize("route", ["module", "onnx"])
def test_unet_decoder_from_module_and_onnx(route, runtime, tmp_path):
    m = _decoder()
    shape = (3, 8, 10)
    x = np.random.default_rng(6).standard_normal((5, *shape)).astype(np.float32)
    with torch.no_grad():
        import copy
        ref = copy.deepcopy(m).double()(torch.from_numpy(x).double()).numpy()
    if route == "module":
        model = shmrt.load(m, input_shape=shape)
    else:
        path = tmp_path / "decoder.onnx"
        torch.onnx.export(m, (torch.zeros((1, *shape)),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, opset_version=17, dynamo=False)
        model = shmrt.load(str(path))
    assert any(isinstance(l, shmrt.ConvTranspose2d) for l in model.layers)
    assert _rel(forward(model, x), ref) <= 1e-6
    for s in STRATEGIES if runtime.workers > 1 else ("data",):
        cm = runtime.compile(model, strategy=s, max_batch=5, input_shape=shape)
        for n in (1, 5):
            got = cm(x[:n])
            assert got.shape == ref[:n].shape, (route, s, n)
            assert _rel(got, ref[:n]) <= 1e-4, (route, s, n, _rel(got, ref[:n]))


def _onnx_node_model(attrs, x_shape, w):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    b = np.linspace(-0.5, 0.5, w.shape[1] * attrs.get("group", 1)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *x_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], pads=[1, 0, 0, 1]),  # asymmetric: more at the start, and more at the end
    dict(strides=[2, 3], pads=[0, 2, 1, 1], dilations=[2, 1], group=2),
    dict(strides=[2, 2], output_shape=[9, 11]),
    dict(strides=[3, 2], output_padding=[2, 1], pads=[1, 1, 1, 1]),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(strides=[2, 2], auto_pad="VALID"),
], ids=["asym", "asym_dil_group", "output_shape", "output_padding", "same_lower", "valid"])
def test_onnx_attributes_match_onnxruntime(attrs, runtime):
    ort = pytest.importorskip("onnxruntime")
    w = np.random.default_rng(7).standard_normal((4, 3, 3, 3)).astype(np.float32)
    proto = _onnx_node_model(attrs, (4, 5, 6), w)
    x = np.random.default_rng(8).standard_normal((5, 4, 5, 6)).astype(np.float32)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    model = shmrt.load(proto)
    got = runtime.compile(model, max_batch=5, input_shape=(4, 5, 6))(x)
    assert got.shape == ref.shape
    assert _rel(got, ref) <= 1e-5, _rel(got, ref)


def test_onnx_refuses_1d_and_3d_with_a_clear_message():
    from shmrt.frontends.onnx.errors import UnsupportedONNX
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    w = np.ones((2, 3, 3), np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    with pytest.raises((UnsupportedONNX, ValueError), match="only 2-D ConvTranspose"):
        shmrt.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert onnx is not None


def test_save_load_roundtrip_is_bit_exact(tmp_path):
    shmrt.manual_seed(9)
    x_in = shmrt.Input((3, 6, 6))
    h = shmrt.ReLU()(shmrt.Conv2d(3, 6, 3, stride=2, padding=1)(x_in))
    h = shmrt.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2, bias=False, dilation=1)(h)
    g = shmrt.Graph(x_in, shmrt.Concat(dim=1)(h, x_in))
    seq = shmrt.Sequential([shmrt.ConvTranspose2d(3, 2, (2, 3), stride=(3, 2), padding=(0, 1), output_padding=(2, 0),
                                                  dilation=(1, 2))], input_shape=(3, 4, 4))
    x = np.random.default_rng(10).standard_normal((2, 3, 6, 6)).astype(np.float32)
    for model, xs in ((g, x), (seq, x[:, :, :4, :4])):
        for name in ("m.shmrt", "m.npz"):
            model.save(tmp_path / name)
            back = shmrt.load(tmp_path / name)
            assert [repr(l) for l in back.layers] == [repr(l) for l in model.layers]
            for a, b in zip(back.layers, model.layers):
                assert a.params.keys() == b.params.keys()
                for k in a.params:
                    np.testing.assert_array_equal(a.params[k], b.params[k])
            with shmrt.Runtime(workers=1) as rt:
                np.testing.assert_array_equal(rt.compile(back, max_batch=2, input_shape=xs.shape[1:])(xs),
                                              rt.compile(model, max_batch=2, input_shape=xs.shape[1:])(xs))


def test_bad_arguments_are_refused_with_the_value_named():
    with pytest.raises(ValueError, match="output_padding=2 must be smaller than either the stride"):
        shmrt.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"weight must have shape \(2, 3, 3, 3\)"):
        shmrt.ConvTranspose2d(2, 3, 3, weight=np.zeros((3, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="divisible by groups=2"):
        shmrt.ConvTranspose2d(3, 4, 3, groups=2)
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        shmrt.ConvTranspose2d(2, 2, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="empty output"):
        shmrt.ConvTranspose2d(2, 2, 1, padding=1).output_shape((2, 1, 1))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(N, 2, H, W\)"):
        shmrt.ConvTranspose2d(2, 2, 3).output_shape((3, 4, 4))
    m = nn.Sequential(nn.ConvTranspose2d(2, 2, 3, padding_mode="zeros"))
    m[0].padding_mode = "circular"
    with pytest.raises(ValueError, match="padding_mode='circular'"):
        shmrt.load(m, input_shape=(2, 4, 4))
