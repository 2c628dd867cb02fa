"""LeakyReLU(negative_slope), SiLU, Hardswish, ReLU6 and Hardsigmoid: from torch modules, torch functions
and ONNX files (LeakyRelu, Sigmoid * x, HardSwish, Clip 0..6, HardSigmoid), in data and model plans on 1-3
workers, against torch in float64; from hand-built ONNX graphs (no torch) against a numpy float64 reference."""
import contextlib
import copy
import io
import warnings

import numpy as np
import pytest

import shmrt
from models import rnd
from reference import forward, rel_err

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

WORKERS = (1, 2, 3)
STRATEGIES = ("data", "model")


class Functional(nn.Module):
    """The same activations written as torch functions."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 40), nn.Linear(40, 24), nn.Linear(24, 6)

    def forward(self, x):
        return F.hardswish(self.c(F.silu(self.b(F.leaky_relu(self.a(x), 0.3)))))


class Bounded(nn.Module):
    """ReLU6 and Hardsigmoid, as modules and as functions."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(12, 20), nn.Linear(20, 16), nn.Linear(16, 6)
        self.r6, self.hs = nn.ReLU6(), nn.Hardsigmoid()

    def forward(self, x):
        return F.hardsigmoid(self.c(F.relu6(self.b(self.hs(self.r6(self.a(x)))))))


class ConvNet(nn.Module):
    """Conv epilogues: SiLU and Hardswish fused into the convolution, LeakyReLU a step of its own."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.act1, self.act2, self.act3 = nn.SiLU(), nn.LeakyReLU(0.05), nn.Hardswish()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = self.act2(self.act1(self.c1(x)))
        x = self.act3(self.c2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


NEW = {"LeakyReLU", "SiLU", "Hardswish"}
BOUNDED = {"ReLU6", "Hardsigmoid"}


def modules():
    """name -> (torch module, input shape, the shmrt layers it must import to, the ONNX ops its export holds)"""
    torch.manual_seed(7)
    return {
        "sequential": (nn.Sequential(nn.Linear(12, 40), nn.LeakyReLU(0.2), nn.Linear(40, 24), nn.SiLU(),
                                     nn.Linear(24, 16), nn.Hardswish(), nn.Linear(16, 6), nn.LeakyReLU()), (12,),
                       NEW, {"LeakyRelu", "HardSwish", "Sigmoid", "Mul"}),
        "functional": (Functional(), (12,), NEW, {"LeakyRelu", "HardSwish", "Sigmoid", "Mul"}),
        "conv": (ConvNet(), (3, 8, 8), NEW, {"LeakyRelu", "HardSwish", "Sigmoid", "Mul"}),
        "bounded": (Bounded(), (12,), BOUNDED, {"Clip", "HardSigmoid"}),
    }


def onnx_bytes(m, shape):
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.from_numpy(rnd(2, *shape)),), f, dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}}, opset_version=17)
    return f.getvalue()


def check(model, m, shape, label):
    m64 = copy.deepcopy(m).double().eval()
    x = rnd(7, *shape, seed=3) * 4.0  # both sides of every kink (Hardswish at -3 and 3, ReLU6 at 0 and 6)
    with torch.no_grad():
        ref = m64(torch.from_numpy(x).double()).numpy()
    worst = 0.0
    for P in WORKERS:
        with shmrt.Runtime(workers=P) as rt:
            for s in STRATEGIES:
                with rt.compile(model, strategy=s, max_batch=8) as cm:
                    err = rel_err(cm(x), ref)
                    assert err <= 1e-5, f"{label}, {s} plan on {P} worker(s): relative error {err:.2e}"
                    worst = max(worst, err)
    print(f"\n{label}: data and model plans on 1-3 workers, max relative error {worst:.1e} against torch float64")


@pytest.mark.parametrize("name", ["sequential", "functional", "conv", "bounded"])
def test_from_torch_module(name):
    m, shape, layers, _ = modules()[name]
    model = shmrt.load(m.eval(), input_shape=shape)
    names = {type(l).__name__ for l in model.layers}
    assert layers <= names, names
    check(model, m, shape, f"torch {name}")


@pytest.mark.parametrize("name", ["sequential", "functional", "conv", "bounded"])
def test_from_onnx_export(name):
    m, shape, layers, onnx_ops = modules()[name]
    proto = onnx.load_from_string(onnx_bytes(m.eval(), shape))
    ops = {n.op_type for n in proto.graph.node}
    assert onnx_ops <= ops, ops  # SiLU is exported as Sigmoid * x, ReLU6 as Clip(x, 0, 6)
    model = shmrt.load(proto)
    names = [type(l).__name__ for l in model.layers]
    assert layers <= set(names) and "Sigmoid" not in names, names
    check(model, m, shape, f"ONNX export of {name}")


def test_leaky_relu_slope_reaches_the_kernel():
    m = nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(0.5))
    model = shmrt.load(m)
    assert repr(model.layers[1]) == "LeakyReLU(negative_slope=0.5)"
    assert model.layers[1].negative_slope == 0.5


@pytest.mark.parametrize("bad", [float("nan"), "0.1", True, None])
def test_leaky_relu_rejects_a_bad_slope(bad):
    with pytest.raises(ValueError, match="negative_slope must be a finite number"):
        shmrt.LeakyReLU(bad)


def test_save_and_load_keep_them(tmp_path):
    model = shmrt.Sequential([shmrt.Linear(5, 6), shmrt.LeakyReLU(0.125), shmrt.SiLU(), shmrt.Hardswish(),
                              shmrt.ReLU6(), shmrt.Hardsigmoid()])
    path = tmp_path / "m.shmrt"
    model.save(path)
    back = shmrt.load(str(path))
    assert [repr(l) for l in back.layers] == [repr(l) for l in model.layers]


def _graph(op_nodes, width=6):
    from onnx import TensorProto, helper
    rng = np.random.default_rng(5)
    w = rng.standard_normal((width, width)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w"], ["h"], transB=1)] + op_nodes
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])],
                          [onnx.numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w


@pytest.mark.parametrize("kind", ["LeakyRelu", "HardSwish", "SiLU pattern", "SiLU pattern, Mul operands swapped",
                                  "Clip 0..6", "HardSigmoid"])
def test_hand_built_onnx(rt, kind):
    from onnx import helper
    if kind == "Clip 0..6":
        nodes = [helper.make_node("Constant", [], ["lo"], value_float=0.0),
                 helper.make_node("Constant", [], ["hi"], value_float=6.0),
                 helper.make_node("Clip", ["h", "lo", "hi"], ["y"])]
        layer = shmrt.ReLU6()
    elif kind == "HardSigmoid":
        nodes, layer = [helper.make_node("HardSigmoid", ["h"], ["y"], alpha=1 / 6, beta=0.5)], shmrt.Hardsigmoid()
    elif kind == "LeakyRelu":
        nodes, layer = [helper.make_node("LeakyRelu", ["h"], ["y"], alpha=0.25)], shmrt.LeakyReLU(0.25)
    elif kind == "HardSwish":
        nodes, layer = [helper.make_node("HardSwish", ["h"], ["y"])], shmrt.Hardswish()
    else:
        mul = ["h", "s"] if "swapped" not in kind else ["s", "h"]
        nodes, layer = [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", mul, ["y"])], shmrt.SiLU()
    proto, w = _graph(nodes)
    model = shmrt.load(proto)
    assert [type(l).__name__ for l in model.layers] == ["Linear", type(layer).__name__]
    x = rnd(9, 6, seed=2) * 8.0
    ref = forward(shmrt.Sequential([shmrt.Linear(6, 6, bias=False, weight=w), layer]), x)
    for s in STRATEGIES:
        with rt.compile(model, strategy=s, max_batch=16) as cm:
            assert rel_err(cm(x), ref) <= 1e-5, s


def test_sigmoid_times_something_else_is_not_silu(rt):
    """Sigmoid(h) * z with z not h is not SiLU: the pattern must not fire; s * s is then a product of
    two activations (a graph's Mul) and computes sigmoid(h) squared."""
    from onnx import helper
    nodes = [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["s", "s"], ["y"])]
    proto, w = _graph(nodes)
    model = shmrt.load(proto)
    assert not any(isinstance(l, shmrt.SiLU) for l in model.layers), model
    assert any(isinstance(l, shmrt.Mul) for l in model.layers), model
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)
    h = x.astype(np.float64) @ w.astype(np.float64).T
    ref = (1 / (1 + np.exp(-h))) ** 2
    assert rel_err(rt.compile(model, max_batch=8)(x), ref) <= 1e-5


@pytest.mark.parametrize("op, attrs, inputs, layer, ref", [
    ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}, ["h"], "HardSigmoid", lambda h: np.clip(0.2 * h + 0.5, 0.0, 1.0)),
    ("Clip", {}, ["h", "lo", "hi"], "Hardtanh", lambda h: np.clip(h, -1.0, 6.0)),
])
def test_onnx_general_hardsigmoid_and_clip_are_imported(op, attrs, inputs, layer, ref, rt):
    """ONNX's general HardSigmoid and Clip are not shmrt's Hardsigmoid and ReLU6: they import as
    shmrt.HardSigmoid(alpha, beta) and shmrt.Hardtanh(min, max)."""
    from onnx import helper
    nodes = [helper.make_node("Constant", [], ["lo"], value_float=-1.0),
             helper.make_node("Constant", [], ["hi"], value_float=6.0),
             helper.make_node(op, inputs, ["y"], **attrs)]
    proto, w = _graph(nodes)
    model = shmrt.load(proto)
    assert any(isinstance(l, getattr(shmrt, layer)) for l in model.layers), model
    x = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32) * 3
    h = x.astype(np.float64) @ w.astype(np.float64).T
    assert rel_err(rt.compile(model, max_batch=8)(x), ref(h)) <= 1e-5
