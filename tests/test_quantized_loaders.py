"""The peers' quantized models loaded with their own int8 weights and scales: onnxruntime's
quantize_dynamic (MatMulInteger / ConvInteger, DynamicQuantizeLSTM, the fused DynamicQuantizeMatMul of its
optimiser), QDQ models (quantize_static, hand-built DequantizeLinear weights) and torch's
torch.ao.quantization.quantize_dynamic (Linear, LSTM, GRU).

Each model is checked three ways:
1. exact: every quantized layer's ``quant`` holds the file's / module's own int8 values and scales, and
   its ``params`` equal them multiplied in float32 (the IR convention);
2. the peer reproduced: a float64 numpy forward of the loaded layers that rounds the activations as the
   peer does (onnxruntime: uint8, 255 steps per tensor; torch's x86 engine: 127 steps, reduce_range; an
   LSTM's input once for the whole sequence, its h at every step) gives the peer's output to float
   rounding, so the weights and scales shmrt loaded are the ones the peer runs;
3. shmrt's runtime against the peer: shmrt's output equals the exact float64 forward of the loaded layers
   (to float32 rounding), so its difference to the peer is the peer's own activation rounding; asserted
   elementwise against that rounding's effect as 2. measures it (the same forward with and without it),
   and that effect bounded (a few percent).  (A worst-case bound |dy| <= |W| (|dx| + s) propagated through
   three layers came out 10^4 times the observed difference, too loose to test anything.)
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
nn = torch.nn

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import shmrt  # noqa: E402
from models import rnd  # noqa: E402
from quantized_peers import (ORT_STEPS, QDQ_TOL, RECURRENT_FLIPS, TORCH_STEPS, check_int8, check_peer,  # noqa: E402
                             check_quant, emulate, emulate_qdq, export, files, gates, inits, linears, ort_quantize,
                             ort_session, quiet, report, run_rt, torch_mlp, torch_peer, torch_rnn)
from reference import forward, rel_err  # noqa: E402
from shmrt.frontends.onnx_import import UnsupportedONNX, from_onnx, load_onnx_file  # noqa: E402

__all__ = ["files"]  # the fixture, from quantized_peers
pytestmark = [pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")]


# -- onnxruntime's quantize_dynamic ------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["q", "qc", "qu", "fused"])
def test_ort_dynamic_mlp(rt, files, variant):
    """Default (a scale per tensor), per_channel=True, QUInt8 weights (zero points 127 / 128: loaded as their
    exact floats, no int8), and onnxruntime's own fused DynamicQuantizeMatMul."""
    path = files[f"mlp_{variant}"]
    proto = onnx.load(str(path))
    w = inits(proto)
    qnodes = [n for n in proto.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert {n.op_type for n in qnodes} == {"DynamicQuantizeMatMul" if variant == "fused" else "MatMulInteger"}
    model = load_onnx_file(path)
    assert [type(layer).__name__ for layer in model.layers] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    for n, layer in zip(qnodes, linears(model)):
        B = n.input[1]  # [K, N]; its scale and zero point by onnxruntime's names
        q, s, zp = w[B], w[B.replace("_quantized", "_scale")], w[B.replace("_quantized", "_zero_point")]
        if variant == "qu":
            assert q.dtype == np.uint8 and np.all(zp != 0) and not getattr(layer, "quant", None)
            np.testing.assert_array_equal(layer.params["weight"], ((q.astype(np.int32) - zp).astype(np.float32) * s).T)
        else:
            assert q.dtype == np.int8 and not np.any(zp) and s.size == (1 if variant == "q" else layer.out_features)
            check_quant(layer, "weight", q.T, s)
    x = rnd(64, 256, seed=3)
    peer = ort_session(path).run(None, {"x": x})[0]
    theirs = emulate(model, x, ORT_STEPS)
    check_peer(f"onnxruntime quantize_dynamic MLP ({variant}), weights='float32'", run_rt(rt, model, x)[0], peer,
               emulate(model, x, None), theirs)
    if variant != "qu":  # (its uint8 weights with zero points run float32: no int8 layer)
        check_int8(f"onnxruntime quantize_dynamic MLP ({variant})", rt, model, x, peer, theirs)


@pytest.mark.parametrize("variant", ["lstm_q", "lstm_qc", "lstm2_qc"])
def test_ort_dynamic_lstm(rt, files, variant):
    """DynamicQuantizeLSTM (one and two layers, merged into one shmrt.LSTM) and the last step's Linear."""
    path = files[variant]
    proto = onnx.load(str(path))
    w = inits(proto)
    model = load_onnx_file(path)
    lstm, fc = model.layers
    assert isinstance(lstm, shmrt.LSTM) and isinstance(fc, shmrt.Linear) and not lstm.return_sequences
    dq = [n for n in proto.graph.node if n.op_type == "DynamicQuantizeLSTM"]
    assert len(dq) == lstm.num_layers == (2 if variant.startswith("lstm2") else 1)
    for k, n in enumerate(dq):
        for name, qi, si in (("weight_ih", 1, 8), ("weight_hh", 2, 10)):
            q, s = w[n.input[qi]][0].T, w[n.input[si]].reshape(-1)  # [4H, rows], ONNX's gates i, o, f, c
            assert q.dtype == np.int8 and not np.any(w[n.input[si + 1]])
            s = np.broadcast_to(s, (q.shape[0],))
            check_quant(lstm, f"{name}_l{k}", gates(q, "onnx", "torch"), gates(s, "onnx", "torch"))
    (mi,) = [n for n in proto.graph.node if n.op_type == "MatMulInteger"]
    check_quant(fc, "weight", w[mi.input[1]].T, w[mi.input[1].replace("_quantized", "_scale")])
    x = rnd(16, 12, 16, seed=4)
    peer = ort_session(path).run(None, {"x": x})[0]
    theirs = emulate(model, x, ORT_STEPS)
    check_peer(f"onnxruntime quantize_dynamic LSTM ({variant}), weights='float32'", run_rt(rt, model, x)[0], peer,
               emulate(model, x, None), theirs)
    check_int8(f"onnxruntime quantize_dynamic LSTM ({variant})", rt, model, x, peer, theirs, flips=RECURRENT_FLIPS)


def test_ort_dynamic_cnn(rt, files):
    """ConvInteger: the Conv gets the file's dequantized weights (no int8: shmrt's int8 is for Linear and
    recurrent layers), the Linear its int8."""
    torch.manual_seed(2)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    path = ort_quantize(export(cnn, (3, 8, 8), files["dir"] / "cnn.onnx"), files["dir"] / "cnn_q.onnx")
    proto = onnx.load(str(path))
    assert "ConvInteger" in [n.op_type for n in proto.graph.node]
    w = inits(proto)
    model = load_onnx_file(path)
    conv, lin = model.layers[0], model.layers[-1]
    assert isinstance(conv, shmrt.Conv2d) and not getattr(conv, "quant", None)
    np.testing.assert_array_equal(conv.params["weight"],
                                  w["0.weight_quantized"].astype(np.float32) * w["0.weight_scale"])
    check_quant(lin, "weight", w["3.weight_Transposed_quantized"].T, w["3.weight_Transposed_scale"])
    x = rnd(16, 3, 8, 8, seed=5)
    peer = ort_session(path).run(None, {"x": x})[0]
    theirs = emulate(model, x, ORT_STEPS)
    check_peer("onnxruntime quantize_dynamic CNN, weights='float32'", run_rt(rt, model, x)[0], peer,
               emulate(model, x, None), theirs)
    check_int8("onnxruntime quantize_dynamic CNN", rt, model, x, peer, theirs, flips=RECURRENT_FLIPS)


# -- QDQ ------------------------------------------------------------------------------------------

def test_qdq_static_mlp(rt, files):
    """quantize_static in the QDQ format: weights int8 per output row (DequantizeLinear, axis 0) with their
    int8 kept; the activations' QuantizeLinear -> DequantizeLinear pairs read as the identity, so shmrt
    neither rounds to the calibrated grid nor clips to the calibrated range."""
    x = rnd(64, 256, seed=6)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x[i:i + 16]} for i in range(0, len(x), 16)])

        def get_next(self):
            return next(self.batches, None)

    path = files["dir"] / "mlp_qdq.onnx"
    with quiet():
        quantization.quantize_static(str(files["mlp"]), str(path), Reader(), quant_format=quantization.QuantFormat.QDQ,
                                     op_types_to_quantize=["MatMul", "Gemm"], per_channel=True)
    proto = onnx.load(str(path))
    w = inits(proto)
    model = load_onnx_file(path)
    made = {n.output[0]: n for n in proto.graph.node}
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert len(gemms) == len(linears(model)) == 3
    for g, layer in zip(gemms, linears(model)):
        dq = made[g.input[1]]
        assert dq.op_type == "DequantizeLinear" and w[dq.input[0]].dtype == np.int8
        check_quant(layer, "weight", w[dq.input[0]], w[dq.input[1]])
    sess = ort_session(path)
    peer = sess.run(None, {"x": x})[0]  # x is the calibration data: inside the calibrated ranges
    theirs = emulate_qdq(proto, model, x)
    y = run_rt(rt, model, x)[0]
    check_peer("QDQ (quantize_static) MLP, activation pairs as identity, calibrated data, weights='float32'", y, peer,
               forward(model, x), theirs, emulated_tol=QDQ_TOL)
    check_int8("QDQ (quantize_static) MLP, calibrated data", rt, model, x, peer, theirs)
    far = 3 * x  # outside the calibrated ranges: the peer clips, shmrt does not
    peer_far, y_far = sess.run(None, {"x": far})[0], run_rt(rt, model, far)[0]
    assert rel_err(emulate_qdq(proto, model, far), peer_far) <= QDQ_TOL  # the clipping, emulated
    d_far = report("QDQ MLP on 3 x the calibrated range (the peer saturates)", y_far, peer_far)
    assert d_far > 10 * np.abs(y - peer).max()


def test_qdq_weights_handbuilt(rt):
    """DequantizeLinear on constant weights only: int8 per output row (Gemm transB=1, axis 0), int8 per tensor
    (MatMul) keep their int8; a scale per input feature (MatMul's axis 0) and uint8 with zero points load as
    their exact floats.  No activation is rounded: shmrt matches onnxruntime to float rounding."""
    rng = np.random.default_rng(7)
    W1, s1 = rng.integers(-127, 128, (32, 24)).astype(np.int8), (rng.uniform(0.5, 2, 32) / 127).astype(np.float32)
    W2, s2 = rng.integers(-127, 128, (32, 16)).astype(np.int8), np.array(0.01, np.float32)
    W3, s3 = rng.integers(-127, 128, (16, 12)).astype(np.int8), (rng.uniform(0.5, 2, 16) / 127).astype(np.float32)
    W4, s4 = rng.integers(0, 256, (12, 8)).astype(np.uint8), (rng.uniform(0.5, 2, 8) / 127).astype(np.float32)
    zp4, b1 = rng.integers(100, 156, 8).astype(np.uint8), rng.standard_normal(32).astype(np.float32)
    DQ = "DequantizeLinear"
    nodes = [helper.make_node(DQ, ["W1q", "s1"], ["W1"], axis=0),
             helper.make_node("Gemm", ["x", "W1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node(DQ, ["W2q", "s2"], ["W2"]), helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
             helper.make_node(DQ, ["W3q", "s3"], ["W3"], axis=0), helper.make_node("MatMul", ["h3", "W3"], ["h4"]),
             helper.make_node(DQ, ["W4q", "s4", "zp4"], ["W4"], axis=1),
             helper.make_node("MatMul", ["h4", "W4"], ["y"])]
    arrays = {"W1q": W1, "s1": s1, "b1": b1, "W2q": W2, "s2": s2, "W3q": W3, "s3": s3, "W4q": W4, "s4": s4, "zp4": zp4}
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 24])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                          [numpy_helper.from_array(v, k) for k, v in arrays.items()])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = from_onnx(proto)
    l1, l2, l3, l4 = linears(model)
    check_quant(l1, "weight", W1, s1)
    check_quant(l2, "weight", W2.T, s2)
    assert not getattr(l3, "quant", None) and not getattr(l4, "quant", None)
    np.testing.assert_array_equal(l3.params["weight"], (W3.astype(np.float32) * s3[:, None]).T)
    np.testing.assert_array_equal(l4.params["weight"], ((W4.astype(np.int32) - zp4).astype(np.float32) * s4).T)
    x = rnd(8, 24, seed=8)
    # the graph as written: onnxruntime's optimiser would run DequantizeLinear -> MatMul as its MatMulNBits,
    # which rounds the activations to 8 bits (0.5 % here)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    peer = sess.run(None, {"x": x})[0]
    y = run_rt(rt, model, x)[0]
    report("hand-built QDQ weights (onnxruntime unoptimised)", y, peer)
    assert rel_err(y, peer) <= 1e-5


# -- torch's quantize_dynamic ------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
def test_torch_dynamic_mlp(rt, per_channel):
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    spec = {nn.Linear: per_channel_dynamic_qconfig} if per_channel else {nn.Linear}
    qm = quantize_dynamic(torch_mlp(), spec, dtype=torch.qint8)
    model = shmrt.load(qm)
    mods = [m for m in qm.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(mods) == len(linears(model)) == 3
    for mod, layer in zip(mods, linears(model)):
        w = mod.weight()
        if per_channel:
            assert w.qscheme() == torch.per_channel_affine and w.q_per_channel_axis() == 0
            scale = w.q_per_channel_scales().numpy()
        else:
            assert w.qscheme() == torch.per_tensor_affine and w.q_zero_point() == 0
            scale = w.q_scale()
        check_quant(layer, "weight", w.int_repr().numpy(), scale)
    x = rnd(64, 256, seed=9)
    peer, theirs = torch_peer(qm, x), emulate(model, x, TORCH_STEPS)
    check_peer(f"torch quantize_dynamic MLP ({'per channel' if per_channel else 'per tensor'}), weights='float32'",
               run_rt(rt, model, x)[0], peer, emulate(model, x, None), theirs)
    check_int8(f"torch quantize_dynamic MLP ({'per channel' if per_channel else 'per tensor'})", rt, model, x, peer,
               theirs)


@pytest.mark.parametrize("cls, layers", [(nn.LSTM, 1), (nn.LSTM, 2), (nn.GRU, 1)], ids=["lstm", "lstm2", "gru"])
def test_torch_dynamic_rnn(rt, cls, layers):
    from torch.ao.quantization import quantize_dynamic
    qm = quantize_dynamic(torch_rnn(cls, layers), {nn.Linear, cls}, dtype=torch.qint8)
    model = shmrt.load(qm, input_shape=(12, 16))
    rnn, fc = model.layers
    assert type(rnn).__name__ == cls.__name__ and rnn.num_layers == layers and not rnn.return_sequences
    weights = qm.rnn.get_weight()
    assert sorted(weights) == sorted(rnn.quant)
    for name, w in weights.items():
        check_quant(rnn, name, w.int_repr().numpy(), w.q_scale())
    check_quant(fc, "weight", qm.fc.weight().int_repr().numpy(), qm.fc.weight().q_scale())
    x = rnd(16, 12, 16, seed=10)
    peer, theirs = torch_peer(qm, x), emulate(model, x, TORCH_STEPS)
    check_peer(f"torch quantize_dynamic {cls.__name__} ({layers} layer(s)), weights='float32'", run_rt(rt, model, x)[0],
               peer, emulate(model, x, None), theirs)
    check_int8(f"torch quantize_dynamic {cls.__name__} ({layers} layer(s))", rt, model, x, peer, theirs,
               flips=RECURRENT_FLIPS)


def test_torch_float16_and_affine_weights_load_as_floats():
    """dtype=torch.float16 and a qint8 weight with a non-zero zero point: their exact float32 values, no int8."""
    from torch.ao.quantization import MinMaxObserver, QConfig, default_dynamic_qconfig, quantize_dynamic
    q16 = quantize_dynamic(torch_rnn(), {nn.Linear, nn.LSTM}, dtype=torch.float16)
    model = shmrt.load(q16)
    assert not any(getattr(layer, "quant", None) for layer in model.layers)
    x = rnd(4, 12, 16, seed=11)
    assert rel_err(forward(model, x), torch_peer(q16, x)) <= 1e-5
    affine = QConfig(activation=default_dynamic_qconfig.activation,
                     weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_affine))
    qa = quantize_dynamic(torch_mlp(), {nn.Linear: affine}, dtype=torch.qint8)
    model = shmrt.load(qa)
    mods = [m for m in qa.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert any(m.weight().q_zero_point() != 0 for m in mods)
    for mod, layer in zip(mods, linears(model)):
        w = mod.weight()
        want = (w.int_repr().numpy().astype(np.int32) - w.q_zero_point()).astype(np.float32) * np.float32(w.q_scale())
        np.testing.assert_array_equal(layer.params["weight"], want)
        assert bool(getattr(layer, "quant", None)) == (w.q_zero_point() == 0)


# -- refusals -------------------------------------------------------------------------------------

def test_refusals(files):
    x = rnd(16, 256, seed=12)

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": x}])

        def get_next(self):
            return next(self.batches, None)

    qop = files["dir"] / "mlp_qop.onnx"  # the QOperator format: QGemm (com.microsoft)
    with quiet():
        quantization.quantize_static(str(files["mlp"]), str(qop), Reader(),
                                     quant_format=quantization.QuantFormat.QOperator, op_types_to_quantize=["Gemm"])
    with pytest.raises(UnsupportedONNX, match="QGemm.*QOperator"):
        load_onnx_file(qop)
    Wq = numpy_helper.from_array(np.ones((4, 3), np.int8), "Wq")
    s = numpy_helper.from_array(np.array(0.5, np.float32), "s")
    xin = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    yout = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])]

    def model(nodes, arrays):
        g = helper.make_graph(nodes, "g", xin, yout, arrays)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    # DynamicQuantizeLinear whose product is scaled by a constant, not by x_scale * W_scale
    dyn = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
           helper.make_node("MatMulInteger", ["xq", "Wq", "xz"], ["p"]),
           helper.make_node("Cast", ["p"], ["pf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["pf", "s"], ["y"])]
    with pytest.raises(UnsupportedONNX, match="op DynamicQuantizeLinear.*MatMulInteger.*Mul by Mul"):
        from_onnx(model(dyn, [Wq, s]))
    # the QOperator format in the default domain: QLinearMatMul
    z8 = numpy_helper.from_array(np.array(0, np.int8), "z8")
    qlin = [helper.make_node("QuantizeLinear", ["x", "s", "z8"], ["xq"]),
            helper.make_node("QLinearMatMul", ["xq", "s", "z8", "Wq", "s", "z8", "s", "z8"], ["yq"]),
            helper.make_node("DequantizeLinear", ["yq", "s", "z8"], ["y"])]
    with pytest.raises(UnsupportedONNX, match="op QuantizeLinear.*feeds QLinearMatMul.*QOperator"):
        from_onnx(model(qlin, [Wq, s, z8]))
    # torch: a statically quantized Linear is not a dynamic one
    static = nn.Sequential(torch.ao.nn.quantized.Linear(4, 3))
    with pytest.raises(ValueError, match="'0' \\(Linear\\): this module type is not supported"):
        shmrt.load(static)
