"""Per-sample sequence lengths (ONNX's sequence_lens, PyTorch's pack_padded_sequence): past its length
a sample's output sequence is 0 and its state stays (Y_h, Y_c: the state after its last step).
ONNX models with sequence_lens as a graph input, against onnxruntime (onnx's reference evaluator
ignores sequence_lens in onnx 1.23: not usable here); a shmrt.Graph calling the layer with
(x, lengths), against the float64 numpy reference; every strategy, 1-2 workers; bad lengths
refused naming the sample and value; constant per-sample lengths refused naming what to do."""
import numpy as np
import pytest

import shmrt
from shmrt.ir import layers as L
from shmrt.ir.reference import forward

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

from shmrt.frontends.onnx_import import UnsupportedONNX  # noqa: E402

T, F, H = 5, 3, 4
STRATEGIES = ["data", "model", "hybrid", "pipeline", "auto"]
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def onnx_model(kind, outputs=("y", "yh", "yc"), lens="input", bias=True, lbr=0):
    rng = np.random.default_rng(len(kind) + len(outputs))
    G = GATES[kind]
    inits = [nh.from_array((0.5 * rng.standard_normal((1, G * H, F))).astype(np.float32), "W"),
             nh.from_array((0.5 * rng.standard_normal((1, G * H, H))).astype(np.float32), "R")]
    if bias:
        inits.append(nh.from_array((0.2 * rng.standard_normal((1, 2 * G * H))).astype(np.float32), "B"))
    ins = [h.make_tensor_value_info("x", TP.FLOAT, ["N", T, F])]
    if lens == "input":
        ins.append(h.make_tensor_value_info("sl", TP.INT32, ["N"]))
    else:
        inits.append(nh.from_array(np.asarray(lens, np.int32), "sl"))
    outs = list(outputs) if kind == "LSTM" else [o for o in outputs if o != "yc"]
    names = [o if o in outs else "" for o in ("y", "yh", "yc")][:3 if kind == "LSTM" else 2]
    attrs = {"linear_before_reset": lbr} if kind == "GRU" else {}
    # time-first inside (onnxruntime has no layout=1), batch-first outside, as PyTorch's exporter writes it
    nodes = [h.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             h.make_node(kind, ["xt", "W", "R", "B" if bias else "", "sl"], [n and n + "t" for n in names], name="rec",
                         hidden_size=H, **attrs)]
    nodes += [h.make_node("Transpose", [o + "t"], [o], perm=[2, 0, 1, 3] if o == "y" else [1, 0, 2]) for o in outs]
    g = h.make_graph(nodes, "g", ins, [h.make_tensor_value_info(o, TP.FLOAT, None) for o in outs], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 14)])


def run_ort(m, x, sl):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x, "sl": np.asarray(sl, np.int32)})


def as_onnx(kind, got, outputs):
    """shmrt's results in the model's output shapes: Y [N, T, 1, H], Y_h / Y_c [N, 1, H]."""
    got = list(got) if isinstance(got, tuple) else [got]
    out = []
    for name, v in zip([o for o in outputs if kind == "LSTM" or o != "yc"], got):
        out.append(v.reshape(-1, T, 1, H) if name == "y" else v.reshape(-1, 1, H))
    return out


@pytest.mark.parametrize("kind,lbr", [("LSTM", 0), ("GRU", 0), ("GRU", 1), ("RNN", 0)])
@pytest.mark.parametrize("outputs", [("y", "yh", "yc"), ("y",), ("yh",), ("yh", "yc")],
                         ids=["all", "Y", "Y_h", "Y_h+Y_c"])
def test_onnx_graph_input_lengths_match_onnxruntime(rt, kind, lbr, outputs):
    if kind != "LSTM" and outputs == ("yh", "yc"):
        pytest.skip("Y_c is LSTM's")
    m = onnx_model(kind, outputs, lbr=lbr)
    x = np.random.default_rng(7).standard_normal((4, T, F)).astype(np.float32)
    cm = rt.compile(shmrt.load(m), max_batch=4)
    for sl in ([5, 1, 3, 2], [2], [5]):
        n = len(sl)
        want = run_ort(m, x[:n], sl)
        got = as_onnx(kind, cm(x[:n], np.asarray(sl, np.int32)), outputs)
        assert len(got) == len(want)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)
        if "y" in outputs and min(sl) < T:  # the padding is exactly 0
            k = int(np.argmin(sl))
            assert not got[0][k, sl[k]:].any()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_and_chunking(workers, strategy):
    m = onnx_model("LSTM")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, T, F)).astype(np.float32)
    sl = np.array([5, 1, 3, 2, 4, 5, 1], np.int32)
    want = run_ort(m, x, sl)
    with shmrt.Runtime(workers=workers) as r:
        cm = r.compile(shmrt.load(m), strategy=strategy, max_batch=3)  # 7 rows: three calls
        for g, w in zip(as_onnx("LSTM", cm(x, sl), ("y", "yh", "yc")), want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("cls", [L.LSTM, L.GRU, L.RNN])
def test_graph_api_against_numpy_reference(rt, cls):
    x_in, l_in = shmrt.Input((T, F), name="x"), shmrt.Input((1,), name="lengths")
    seq, last = cls(F, H, num_layers=2), cls(F, H, return_sequences=False)
    g = shmrt.Graph([x_in, l_in], [seq(x_in, l_in), last(x_in, l_in)])
    x = np.random.default_rng(5).standard_normal((4, T, F)).astype(np.float32)
    lens = np.array([[3], [5], [1], [4]])
    ys, yl = rt.compile(g, max_batch=4)(x, lens)
    rs, rl = forward(g, [x, lens])
    np.testing.assert_allclose(ys, rs, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(yl, rl, rtol=1e-4, atol=2e-5)
    assert not ys[2, 1:].any() and ys[2, 0].any()
    # the reference's own check: the last state is the sequence at step L - 1 of a run without lengths
    full = forward(shmrt.Graph([x_in], cls(F, H, return_sequences=True, **last.params)(x_in)), x)
    np.testing.assert_allclose(rl, full[np.arange(4), lens[:, 0] - 1], rtol=1e-9)


@pytest.mark.parametrize("bad", [0, T + 1, -1, 2.5])
def test_bad_lengths_refused_naming_sample_and_value(rt, bad):
    cm = rt.compile(shmrt.load(onnx_model("GRU", ("y",))), max_batch=4)
    x = np.zeros((3, T, F), np.float32)
    with pytest.raises(ValueError, match=rf"sample 1 has length {bad}.*expected an integer 1\.\.{T}"):
        cm(x, np.array([2, bad, 3], np.float64 if bad == 2.5 else np.int32))


def test_constant_per_sample_lengths_refused():
    with pytest.raises(UnsupportedONNX, match=r"rec.*sequence_lens \[3, 5\].*expected a graph input"):
        shmrt.load(onnx_model("LSTM", lens=[3, 5]))


def test_constant_full_lengths_accepted(rt):
    m = onnx_model("RNN", ("y",), lens=[T, T])
    x = np.random.default_rng(1).standard_normal((2, T, F)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})
    np.testing.assert_allclose(as_onnx("RNN", rt.compile(shmrt.load(m), max_batch=2)(x), ("y",))[0], want[0],
                               rtol=1e-4, atol=2e-5)


def test_torch_pack_padded_sequence_export(rt, tmp_path):
    """torch.onnx.export (dynamo=False) of pack_padded_sequence(enforce_sorted=True) -> LSTM ->
    pad_packed_sequence: lengths a graph input (Cast twice), loaded and compared with torch.
    enforce_sorted=False is refused: the export sorts the batch by length (TopK, then Gather over the
    batch axis), a data-dependent reordering of rows shmrt does not run; the lengths reach the LSTM
    through that TopK, so the refusal names the lengths input."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class M(torch.nn.Module):
        def __init__(self, sort):
            super().__init__()
            self.rnn, self.sort = torch.nn.LSTM(F, H, batch_first=True), sort

        def forward(self, x, lengths):
            p = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=self.sort)
            y, (hn, _) = self.rnn(p)
            return pad_packed_sequence(y, batch_first=True, total_length=T)[0], hn[0]

    torch.manual_seed(0)
    x, lens = torch.randn(4, T, F), torch.tensor([5, 3, 2, 1])
    for sort in (True, False):
        m, path = M(sort).eval(), str(tmp_path / f"m{sort}.onnx")
        torch.onnx.export(m, (x, lens), path, dynamo=False, input_names=["x", "lengths"], output_names=["y", "h"],
                          dynamic_axes={"x": {0: "N"}, "lengths": {0: "N"}}, opset_version=14)
        if not sort:
            with pytest.raises(UnsupportedONNX, match="'lengths'.*only as an LSTM/GRU/RNN node's sequence_lens"):
                shmrt.load(path)
            continue
        with torch.no_grad():
            want = m(x, lens)
        got = rt.compile(shmrt.load(path), max_batch=4)(x.numpy(), lens.numpy())
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=2e-5)
        assert not got[0][3, 1:].any()
