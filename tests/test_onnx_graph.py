"""ONNX graphs with branches, from torch.onnx.export: residual adds, gates, concatenations load as
shmrt graphs (tests/test_architectures.py runs whole networks); a branch shmrt cannot run yet is
refused with the node, its op and what is missing named -- never a wrong answer."""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

import shmrt  # noqa: E402
from shmrt.frontends.onnx import from_onnx  # noqa: E402
from shmrt.ir.reference import forward  # noqa: E402

nn = torch.nn


def _export(m, shape):
    f = io.BytesIO()
    torch.onnx.export(m.eval(), (torch.zeros((2, *shape)),), f, input_names=["x"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    return f.getvalue()


class Gate(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(fc(mean(x))) viewed [N, C, 1, 1]; and x - relu(x)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        h = self.conv(x)
        g = torch.sigmoid(self.fc(h.mean((2, 3)))).view(h.size(0), 6, 1, 1)
        return (h * g - torch.relu(h)).flatten(1)


class Attention(nn.Module):
    """Two branches joined by a product of activations (attention scores): not a shmrt layer yet."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.matmul(self.q(x).unsqueeze(2), self.k(x).unsqueeze(1)).flatten(1)


def test_gate_and_difference_of_activations_match_torch():
    torch.manual_seed(0)
    m = Gate()
    model = from_onnx(_export(m, (3, 6, 6)))
    assert isinstance(model, shmrt.Graph)
    x = np.random.default_rng(0).standard_normal((3, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        ref = m.double()(torch.from_numpy(x).double()).numpy()
    np.testing.assert_allclose(forward(model, x), ref, rtol=1e-5, atol=1e-6)
    with shmrt.Runtime(workers=2) as rt:
        for s in ("data", "model"):
            got = rt.compile(model, strategy=s, max_batch=4)(x)
            assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5, s


def test_a_branch_shmrt_cannot_run_is_refused_naming_node_op_and_what_is_missing():
    torch.manual_seed(0)
    with pytest.raises(ValueError) as e:
        from_onnx(_export(Attention(), (8,)))
    msg = str(e.value)
    print("\n" + msg)
    assert "ONNX node" in msg and "op MatMul" in msg and "product of two activations" in msg, msg
    assert "not supported yet" in msg, msg


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_tutorial_lstm_initial_state_from_the_batch_size(exporter):
    """The tutorials' classifier builds h0 = torch.zeros(layers, x.size(0), hidden): Shape -> Gather ->
    Concat -> ConstantOfShape (legacy) or Shape -> Concat -> Expand (dynamo), folded in the batch size."""
    import contextlib
    import warnings

    from test_torch_import import TutorialLSTM
    torch.manual_seed(3)
    m = TutorialLSTM().eval()
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(m, (torch.zeros(2, 7, 6),), f, dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "N"}}, opset_version=17)
        else:
            torch.onnx.export(m, (torch.zeros(2, 7, 6),), f, dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("N")},))
    model = from_onnx(f.getvalue())
    x = np.random.default_rng(1).standard_normal((4, 7, 6)).astype(np.float32)
    with torch.no_grad():
        ref = m.double()(torch.from_numpy(x).double()).numpy()
    with shmrt.Runtime(workers=2) as rt:
        for st in ("data", "model", "auto"):
            cm = rt.compile(model, strategy=st, max_batch=4)
            for n in (1, 4):
                got = cm(x[:n])
                assert np.abs(got - ref[:n]).max() <= 1e-5 * np.abs(ref[:n]).max(), (st, n)
