"""shmrt.frontends.torch_import.from_torch: live torch modules against a float64 torch forward, every strategy."""
import copy
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import shmrt  # noqa: E402
from models import rnd, STRATEGIES  # noqa: E402
from reference import forward, rel_err  # noqa: E402
from shmrt.frontends.torch_import import from_torch  # noqa: E402

def torch_ref(m, x):
    """The module's own forward in float64 (eval mode), on a copy."""
    with torch.no_grad():
        return copy.deepcopy(m).double().eval()(torch.from_numpy(x).double()).numpy()


def randomize_bn(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for b in m.modules():
            if isinstance(b, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = b.num_features
                b.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                b.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.3)
                b.weight.copy_(torch.rand(n, generator=g) + 0.5)
                b.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return m


# -- the models ---------------------------------------------------------------------

def mlp():
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 5),
                         nn.Softmax(dim=1))


def cnn():
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),        # 10x10 -> 5x5
        nn.Conv2d(6, 8, 3, padding="same", bias=False), nn.BatchNorm2d(8), nn.Sigmoid(),
        nn.AvgPool2d(2, stride=1),                                                        # -> 4x4
        nn.Flatten(), nn.Linear(8 * 4 * 4, 5)), seed=1)


class Nested(nn.Module):
    """features -> torch.flatten(x, 1) -> classifier, with global average pooling."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(inplace=True), nn.Conv2d(8, 12, 3, padding=1, groups=4),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Identity(), nn.Tanh())
        self.classifier = nn.Sequential(nn.Dropout(0.3), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class NestedView(nn.Module):
    """A hand-written forward: functional activations, x.view(x.size(0), -1), F.log_softmax."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2, stride=2, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 6)

    def forward(self, x):
        x = self.pool(F.relu(self.bn(self.conv(x))))
        x = x.view(x.size(0), -1)
        return F.log_softmax(torch.tanh(self.fc(x)), dim=-1)


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, batch_first=True)
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class GRUClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.gru = nn.GRU(6, 10, batch_first=True, num_layers=2)
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        _, h = self.gru(x)
        return self.fc(h[-1])


class LSTM2(nn.Module):
    """Two layers, the whole output sequence."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 9, num_layers=2, batch_first=True)

    def forward(self, x):
        out, _ = self.lstm(x)
        return out


class LSTMState(nn.Module):
    """_, (h, c) = lstm(x); h[-1], with dropout between the layers (ignored at eval)."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 7, num_layers=2, batch_first=True, dropout=0.5)
        self.head = nn.Sequential(nn.Linear(7, 3), nn.Softmax(dim=-1))

    def forward(self, x):
        _, (h, c) = self.lstm(x)
        return self.head(h[-1])


class RNNRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.RNN(4, 8, nonlinearity="relu", batch_first=True)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        _, h = self.rnn(x)
        return torch.sigmoid(self.fc(h.squeeze(0)))


class MeanPool(nn.Module):
    """Global average pooling written as x.mean((2, 3)); torch.softmax with a positional dim."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, dilation=2)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return torch.softmax(self.fc(self.conv(x).mean((2, 3))), -1)


def gelu_ln_mlp():
    return nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.LayerNorm(24), nn.Linear(24, 16),
                         nn.GELU(approximate="tanh"), nn.Dropout(0.1), nn.LayerNorm(16, eps=1e-3), nn.Linear(16, 6),
                         nn.LogSoftmax(dim=-1))


CASES = {
    "mlp": (mlp, None, (20,)),
    "cnn": (cnn, (3, 10, 10), (3, 10, 10)),
    "nested": (Nested, (3, 11, 11), (3, 11, 11)),
    "nested_view": (lambda: randomize_bn(NestedView(), seed=2), (2, 8, 8), (2, 8, 8)),
    "lstm_classifier": (LSTMClassifier, (7, 6), (7, 6)),
    "gru_h_n": (GRUClassifier, (5, 6), (5, 6)),
    "lstm_2_layers": (LSTM2, (6, 5), (6, 5)),
    "lstm_state": (LSTMState, (4, 5), (4, 5)),
    "rnn_relu": (RNNRelu, (5, 4), (5, 4)),
    "mean_pool": (MeanPool, (3, 9, 8), (3, 9, 8)),
    "gelu_layernorm_mlp": (gelu_ln_mlp, None, (12,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch_every_strategy(rt, name):
    make, input_shape, shape = CASES[name]
    torch.manual_seed(sum(map(ord, name)))
    m = make().eval()
    model = shmrt.load(m, input_shape=input_shape)  # the public entry point, which calls from_torch
    assert model.input_shape() == shape
    xs = [rnd(n, *shape, seed=n) for n in (3, 5)]
    refs = [torch_ref(m, x) for x in xs]
    for s in STRATEGIES:
        cm = rt.compile(model, strategy=s, max_batch=8)
        try:
            for x, ref in zip(xs, refs):
                assert rel_err(cm(x), ref) <= 1e-5, (name, s, x.shape[0])
        finally:
            cm.close()


def test_structure_of_converted_models():
    torch.manual_seed(0)
    layers = from_torch(Nested().eval(), input_shape=(3, 11, 11)).layers
    names = [type(l).__name__ for l in layers]  # the Identity vanishes; pooling and flatten are torch's
    assert names == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "ReLU", "AdaptiveAvgPool2d", "Tanh", "Flatten",
                     "Dropout", "Linear", "ReLU", "Linear"]
    (lstm, fc) = from_torch(LSTMClassifier()).layers
    assert isinstance(lstm, shmrt.LSTM) and not lstm.return_sequences and isinstance(fc, shmrt.Linear)
    (lstm,) = from_torch(LSTM2()).layers
    assert lstm.return_sequences and lstm.num_layers == 2
    assert from_torch(RNNRelu()).layers[0].mode == 1  # relu
    assert from_torch(mlp()).input_shape() == (20,)  # the first Linear fixes it
    assert from_torch(cnn()).input_shape() is None  # compile asks for it


def test_parameters_are_float32_copies():
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(4, 3)).double()
    model = from_torch(m)
    w = model.layers[0].params["weight"]
    assert w.dtype == np.float32 and w.flags.c_contiguous
    np.testing.assert_allclose(w, m[0].weight.detach().numpy(), rtol=1e-6)
    with torch.no_grad():
        m[0].weight.zero_()
    assert np.abs(w).max() > 0  # a copy, not a view of the torch tensor
    lstm = from_torch(LSTMClassifier()).layers[0]
    assert sorted(lstm.params) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]


def test_training_mode_converts_with_eval_semantics():
    """BatchNorm uses running stats and Dropout is the identity whatever
    module.training says; the module's flags are left as they were."""
    torch.manual_seed(2)
    m = Nested()
    randomize_bn(m, seed=3)
    m.train()
    model = from_torch(m, input_shape=(3, 11, 11))
    assert m.training and all(c.training for c in m.modules())
    x = rnd(3, 3, 11, 11, seed=4)
    assert rel_err(forward(model, x), torch_ref(m, x)) <= 1e-5
    m.eval()
    from_torch(m)
    assert not any(c.training for c in m.modules())


def test_untraceable_sequential_falls_back_to_children(monkeypatch):
    def fail(*a, **k):
        raise RuntimeError("no tracing here")
    monkeypatch.setattr(torch.fx, "symbolic_trace", fail)
    torch.manual_seed(3)
    m = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.Linear(8, 2)).eval()
    model = from_torch(m)
    x = rnd(3, 6, seed=5)
    assert rel_err(forward(model, x), torch_ref(m, x)) <= 1e-5
    with pytest.raises(ValueError, match="could not trace Nested"):
        from_torch(Nested())


def test_single_layer_and_input_shape_checked():
    model = from_torch(nn.Linear(3, 2))
    assert len(model) == 1 and model.input_shape() == (3,)
    with pytest.raises(ValueError, match=r"does not accept inputs of shape \(N, 4\)"):
        from_torch(mlp(), input_shape=(4,))


def test_without_torch_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r'pip install "shmrt\[torch\]"'):
        from_torch(object())


# -- refusals -------------------------------------------------------------------------

class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x):
        x = self.fc1(x)
        return x + self.block(x)


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.fc(x)))


class FirstStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)

    def forward(self, x):
        out, _ = self.lstm(x)
        return out[:, 0]


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) * 2


class GapNoFlatten(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(x)


@pytest.mark.parametrize("make, shape", [(Residual, (4,)), (Twice, (4,)), (GapNoFlatten, (3, 5, 5))],
                         ids=["residual", "twice", "gap_no_flatten"])
def test_residual_shared_module_and_unflattened_pool_convert(make, shape):
    """Refused while shmrt imported chains only: a residual add, a module called twice (its weights
    used twice), a pool whose [N, C, 1, 1] is the output."""
    torch.manual_seed(0)
    m = make().eval()
    model = from_torch(m, input_shape=shape)
    x = np.random.default_rng(0).standard_normal((3, *shape)).astype(np.float32)
    with torch.no_grad():
        ref = m.double()(torch.from_numpy(x).double()).numpy()
    with shmrt.Runtime(workers=2) as rt:
        got = rt.compile(model, max_batch=4)(x)
    assert got.shape == ref.shape and rel_err(got, ref) <= 1e-5


@pytest.mark.parametrize("make, match", [
    (lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.ReLU()), r"'0' \(Conv1d\): this module type is not supported; "
                                                           r"supported modules: nn.Linear"),
    (lambda: nn.Sequential(nn.EmbeddingBag(10, 4), nn.Linear(4, 2)), r"'0' \(EmbeddingBag\): this module type is not"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.LSTM(4, 4, batch_first=True, bidirectional=True))),
     r"'1.0' \(LSTM\): bidirectional=True is not supported"),
    (lambda: nn.Sequential(nn.GRU(4, 4)), r"'0' \(GRU\): batch_first=False is not supported"),
    (FirstStep, r"node 'getitem_\d' \(operator.getitem\): \[:, 0\] on the output sequence of recurrent 'lstm'"),
    (Scaled, r"node 'mul' \(operator.mul\): an operand 2 is a constant; shmrt supports Mul of two tensors"),
    (lambda: nn.Sequential(nn.Conv2d(3, 3, 3, padding_mode="reflect")), r"padding_mode='reflect' is not supported"),
    (lambda: nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), r"track_running_stats must be True"),
    (lambda: nn.Sequential(nn.MaxPool2d(2, return_indices=True)), r"'0' \(MaxPool2d\): return_indices=True"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0)), r"'1' \(Softmax\): dim=0 on a 2-D input"),
    (lambda: nn.Sequential(nn.LSTM(4, 4, batch_first=True)), r"the model returns the \(output, h_n\) tuple"),
], ids=["conv1d", "embedding_bag", "bidirectional", "batch_first", "first_step", "mul",
        "reflect", "bn_no_stats", "return_indices", "softmax_dim0", "rnn_tuple_out"])
def test_refusals_name_the_node_and_type(make, match):
    with pytest.raises(ValueError, match=match):
        from_torch(make())


class TutorialLSTM(nn.Module):
    """The recurrent classifier of most tutorials: the initial state built from the batch size."""

    def __init__(self, input_size=6, hidden=8, layers=2, classes=3):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.lstm = nn.LSTM(input_size, hidden, layers, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        h0 = torch.zeros(self.layers, x.size(0), self.hidden, dtype=x.dtype).to(x.device)
        c0 = torch.zeros(self.layers, x.size(0), self.hidden, dtype=x.dtype).to(x.device)
        out, _ = self.lstm(x, (h0, c0))
        return self.fc(out[:, -1, :])


def test_tutorial_lstm_with_zero_initial_state_from_the_batch_size():
    torch.manual_seed(0)
    m = TutorialLSTM().eval()
    model = from_torch(m, input_shape=(5, 6))
    x = np.random.default_rng(1).standard_normal((4, 5, 6)).astype(np.float32)
    with torch.no_grad():
        ref = m.double()(torch.from_numpy(x).double()).numpy()
    with shmrt.Runtime(workers=2) as rt:
        assert rel_err(rt.compile(model, max_batch=4)(x), ref) <= 1e-5
