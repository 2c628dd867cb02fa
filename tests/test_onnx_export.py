"""ONNX importer on torch exports (legacy and dynamo exporters): every strategy matches onnxruntime
and torch.  Needs torch; the torch-free importer tests (hand-built graphs, refusals, importer bugs,
external data, files) are in test_onnx_import.py, whose helpers this file shares."""
import contextlib
import copy
import functools
import io
import warnings

import pytest

onnx = pytest.importorskip("onnx")
torch = pytest.importorskip("torch")

import shmrt  # noqa: E402
from models import rnd  # noqa: E402
from reference import rel_err  # noqa: E402
from shmrt.frontends.onnx_import import from_onnx  # noqa: E402
from test_onnx_import import ort_run, run_all  # noqa: E402


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
