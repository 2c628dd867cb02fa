"""Recurrent semantics beyond PyTorch's: GRU with linear_before_reset=0 (ONNX's default), recurrent
state outputs (Y_h, Y_c) as graph outputs, sequence_lens.  Every number is checked against a float64
numpy implementation of ONNX's equations (written here, from the ONNX operator spec, sharing nothing
with shmrt) and against onnxruntime; every strategy (data, model, auto, hybrid, pipeline), on 1 and 2 workers."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import shmrt  # noqa: E402
from models import rnd  # noqa: E402
from reference import rel_err  # noqa: E402
from shmrt.frontends.onnx_import import UnsupportedONNX, from_onnx  # noqa: E402

STRATS = ("data", "model", "auto", "hybrid", "pipeline")
TOL = 1e-4


@pytest.fixture(scope="module", params=[1, 2], ids=["w1", "w2"])
def rt(request):
    with shmrt.Runtime(workers=request.param) as r:
        yield r


def ort_run(proto, x):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def run_all(rt, model, x, strategies=STRATS, max_batch=6):
    outs = []
    for s in strategies:
        cm = rt.compile(model, strategy=s, max_batch=max_batch)
        try:
            outs.append((s, cm(x)))
        finally:
            cm.close()
    return outs


# -- ONNX's equations in float64 (onnx/docs/Operators.md, LSTM / GRU / RNN; gate orders i o f c, z r n) -----

def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def onnx_recurrent(kind, X, W, R, B=None, h0=None, c0=None, lbr=0, seq_lens=None, relu=False):
    """X [T, N, F] (layout 0); W [1, G*H, F], R [1, G*H, H], B [1, 2*G*H]: Y [T, 1, N, H], Y_h, Y_c [1, N, H].
    Steps at or past a sample's sequence length leave its state alone and give zeros in Y."""
    X = X.astype(np.float64)
    T, N, _ = X.shape
    W, R = W[0].astype(np.float64), R[0].astype(np.float64)
    GH = W.shape[0]
    H = R.shape[1]
    Wb, Rb = (np.zeros(GH), np.zeros(GH)) if B is None else (B[0, :GH].astype(np.float64), B[0, GH:].astype(np.float64))
    h = np.zeros((N, H)) if h0 is None else np.broadcast_to(h0.reshape(-1, H)[-N:] if h0.ndim == 3 else h0, (N, H))
    h = np.array(h, np.float64)
    c = np.zeros((N, H)) if c0 is None else np.array(np.broadcast_to(c0.reshape(-1, H)[-N:], (N, H)), np.float64)
    lens = np.full(N, T) if seq_lens is None else np.asarray(seq_lens)
    Y = np.zeros((T, 1, N, H))
    for t in range(T):
        x = X[t]
        if kind == "LSTM":
            g = x @ W.T + Wb + h @ R.T + Rb
            i, o, f, cc = (g[:, k * H:(k + 1) * H] for k in range(4))
            cn = _sig(f) * c + _sig(i) * np.tanh(cc)
            hn = _sig(o) * np.tanh(cn)
        elif kind == "GRU":
            Wz, Wr, Wn = W[:H], W[H:2 * H], W[2 * H:]
            Rz, Rr, Rn = R[:H], R[H:2 * H], R[2 * H:]
            bz, br, bn = Wb[:H], Wb[H:2 * H], Wb[2 * H:]
            rz, rr, rn = Rb[:H], Rb[H:2 * H], Rb[2 * H:]
            z = _sig(x @ Wz.T + h @ Rz.T + bz + rz)
            r = _sig(x @ Wr.T + h @ Rr.T + br + rr)
            if lbr:
                n = np.tanh(x @ Wn.T + bn + r * (h @ Rn.T + rn))
            else:
                n = np.tanh(x @ Wn.T + bn + (r * h) @ Rn.T + rn)
            hn, cn = (1 - z) * n + z * h, c
        else:
            v = x @ W.T + Wb + h @ R.T + Rb
            hn, cn = (np.maximum(v, 0) if relu else np.tanh(v)), c
        live = (t < lens)[:, None]
        h, c = np.where(live, hn, h), np.where(live, cn, c)
        Y[t, 0] = np.where(live, h, 0.0)
    return Y, h[None], c[None]


def model_proto(kind, T, F, H, N=None, outputs=("Y",), layout=0, lbr=None, seed=0, bias=True, h0=False,
                c0=False, seq_lens=None, extra_inputs=()):
    """One recurrent node over a graph input x: [T, N, F] (layout 0, N dynamic, read through a Transpose of a
    batch-first [N, T, F] input) or [N, T, F] (layout 1); outputs named as ONNX's (Y, Y_h, Y_c)."""
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]
    inits = {"W": rnd(1, G * H, F, seed=seed + 1) * 0.6, "R": rnd(1, G * H, H, seed=seed + 2) * 0.6}
    if bias:
        inits["B"] = rnd(1, 2 * G * H, seed=seed + 3) * 0.5
    shape_state = [1, 1, H]
    if h0:
        inits["h0"] = rnd(*shape_state, seed=seed + 4) * 0.5
    if c0:
        inits["c0"] = rnd(*shape_state, seed=seed + 5) * 0.5
    if seq_lens is not None:
        inits["sl"] = np.asarray(seq_lens, np.int32)
    ins = ["xt" if layout == 0 else "x", "W", "R", "B" if bias else "", "sl" if seq_lens is not None else "",
           "h0" if h0 else "", "c0" if c0 else ""]
    if kind != "LSTM":
        ins = ins[:6]
    while ins and not ins[-1]:
        ins.pop()
    attrs = {"hidden_size": H, "layout": layout}
    if lbr is not None:
        attrs["linear_before_reset"] = lbr
    names = {"Y": "Y", "Y_h": "Y_h", "Y_c": "Y_c"}
    outs = [names[o] if o in outputs else "" for o in ("Y", "Y_h", "Y_c")[:3 if kind == "LSTM" else 2]]
    while outs and not outs[-1]:
        outs.pop()
    if h0 or c0:  # the state [1, 1, H] expanded to [1, N, H] ([N, 1, H]: layout 1) by the batch size, as exporters do
        inits.update(zero=np.array(0, np.int64), zero1=np.array([0], np.int64), one1=np.array([1], np.int64),
                     hh=np.array([H], np.int64))
        pre = [helper.make_node("Shape", ["x"], ["shp"]), helper.make_node("Gather", ["shp", "zero"], ["n"], axis=0),
               helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
               helper.make_node("Concat", ["one1", "n1", "hh"] if layout == 0 else ["n1", "one1", "hh"], ["sshape"],
                                axis=0)]
        for st in ("h0", "c0"):
            if st in ins:
                pre.append(helper.make_node("Expand", [st, "sshape"], [st + "e"]))
                ins[ins.index(st)] = st + "e"
    else:
        pre = []
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2])] if layout == 0 else []
    nodes = pre + nodes
    if layout == 0 and "Y" in outs:  # Y [T, 1, N, H] read back batch-first: [N, T, 1, H]
        outs[0] = "Yt"
        nodes.append(helper.make_node("Transpose", ["Yt"], ["Y"], perm=[2, 0, 1, 3]))
    for k, st in ((1, "Y_h"), (2, "Y_c")):
        if layout == 0 and st in outs:  # [1, N, H] read back batch-first: [N, 1, H]
            outs[k] = st + "t"
            nodes.append(helper.make_node("Transpose", [st + "t"], [st], perm=[1, 0, 2]))
    nodes.insert(len(pre) + (1 if layout == 0 else 0), helper.make_node(kind, ins, outs, **attrs))
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [N or "N", T, F])
    oshape = {"Y": ["N", T, 1, H],
              "Y_h": ["N", 1, H]}
    oshape["Y_c"] = oshape["Y_h"]
    vals = [helper.make_tensor_value_info(o, TensorProto.FLOAT, oshape[o]) for o in outputs]
    g = helper.make_graph(nodes, "g", [inp], vals, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    return m, inits


def expected(kind, inits, x, lbr=0, seq_lens=None):
    """Y, Y_h, Y_c of ONNX's equations for the batch-first x [N, T, F], layout 0."""
    return onnx_recurrent(kind, x.transpose(1, 0, 2), inits["W"], inits["R"], inits.get("B"), inits.get("h0"),
                          inits.get("c0"), lbr=lbr, seq_lens=seq_lens)


# -- 1. GRU, linear_before_reset=0 ---------------------------------------------------------------------------

@pytest.mark.parametrize("H", [5, 40], ids=["H5", "H40"])  # H=40: several panels, so "model" splits the units
@pytest.mark.parametrize("h0", [False, True], ids=["zero_h0", "h0"])
def test_gru_lbr0_onnx(rt, H, h0):
    T, F = 4, 3
    proto, inits = model_proto("GRU", T, F, H, h0=h0, seed=H)
    x = rnd(5, T, F, seed=7)
    Y, _, _ = expected("GRU", inits, x)
    ref = ort_run(proto, x)[0]  # onnxruntime agrees with the equations above (checked below)
    model = from_onnx(proto)
    assert model.layers[0].linear_before_reset is False
    want = Y[:, 0].transpose(1, 0, 2)  # [N, T, H]
    assert rel_err(ref, want[:, :, None]) <= 1e-5
    assert rel_err(Y, onnx_recurrent("GRU", x.transpose(1, 0, 2), inits["W"], inits["R"], inits["B"],
                                     inits.get("h0"), lbr=1)[0]) > 1e-3  # the two semantics do differ here
    for s, y in run_all(rt, model, x):
        assert rel_err(y, want) <= TOL, s


def test_gru_lbr0_layout1_two_layers_no_bias(rt):
    """Two ONNX GRU nodes (lbr=0, no B, batch-first layout=1) merge into one 2-layer GRU that keeps the flag."""
    T, F, H = 6, 4, 20
    W1, R1 = rnd(1, 3 * H, F, seed=1) * 0.5, rnd(1, 3 * H, H, seed=2) * 0.5
    W2, R2 = rnd(1, 3 * H, H, seed=3) * 0.5, rnd(1, 3 * H, H, seed=4) * 0.5
    nodes = [helper.make_node("GRU", ["x", "W1", "R1"], ["y1"], hidden_size=H, layout=1),
             helper.make_node("Squeeze", ["y1", "ax"], ["s1"]),
             helper.make_node("GRU", ["s1", "W2", "R2"], ["y2"], hidden_size=H, layout=1),
             helper.make_node("Squeeze", ["y2", "ax"], ["y"])]
    inits = {"W1": W1, "R1": R1, "W2": W2, "R2": R2, "ax": np.array([2], np.int64)}
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, F])
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, H])
    g = helper.make_graph(nodes, "g", [inp], [out], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 9
    model = from_onnx(proto)
    assert len(model.layers) == 1 and model.layers[0].num_layers == 2
    assert model.layers[0].linear_before_reset is False
    x = rnd(4, T, F, seed=5)
    Y1, _, _ = onnx_recurrent("GRU", x.transpose(1, 0, 2), W1, R1)
    Y2, _, _ = onnx_recurrent("GRU", Y1[:, 0], W2, R2)
    want = Y2[:, 0].transpose(1, 0, 2)
    for s, y in run_all(rt, model, x):
        assert rel_err(y, want) <= TOL, s


def test_gru_lbr0_ir_save_load_and_reference(rt, tmp_path):
    """The IR flag: shmrt.GRU(linear_before_reset=False) survives save/load; the float64 reference follows it."""
    from shmrt.ir.reference import forward
    T, F, H = 5, 3, 24
    gru = shmrt.GRU(F, H, num_layers=1, linear_before_reset=False, return_sequences=False)
    model = shmrt.Sequential([gru, shmrt.Linear(H, 2)], input_shape=(T, F))
    path = tmp_path / "gru_lbr0.npz"
    model.save(path)
    back = shmrt.load(path)
    assert back.layers[0].linear_before_reset is False and back.layers[0].cell == "gru_lbr0"
    assert "linear_before_reset=False" in repr(back.layers[0])
    p = gru.params
    # PyTorch's gate order r, z, n -> ONNX's z, r, n for the independent equations
    onnx_order = lambda m: np.concatenate([m[H:2 * H], m[:H], m[2 * H:]])  # noqa: E731
    W, R = onnx_order(p["weight_ih_l0"])[None], onnx_order(p["weight_hh_l0"])[None]
    B = np.concatenate([onnx_order(p["bias_ih_l0"]), onnx_order(p["bias_hh_l0"])])[None]
    x = rnd(6, T, F, seed=3)
    _, Yh, _ = onnx_recurrent("GRU", x.transpose(1, 0, 2), W, R, B)
    want = Yh[0] @ model.layers[1].params["weight"].T.astype(np.float64) + model.layers[1].params["bias"]
    assert rel_err(forward(model, x.astype(np.float64)), want) <= 1e-10
    for s, y in run_all(rt, back, x):
        assert rel_err(y, want) <= TOL, s
    with pytest.raises(ValueError, match="linear_before_reset must be True"):
        shmrt.GRU(F, H, linear_before_reset=0)


# -- 2. Y_h (and Y_c) as graph outputs -----------------------------------------------------------------------

def _check_outputs(rt, proto, inits, kind, x, outputs, lbr=0, seq_lens=None, ort_proto=None):
    """ort_proto: the same model in layout 0 (onnxruntime runs no layout=1 recurrent node)."""
    Y, Yh, Yc = expected(kind, inits, x, lbr=lbr, seq_lens=seq_lens)
    want = {"Y": Y[:, 0].transpose(1, 0, 2), "Y_h": Yh[0], "Y_c": Yc[0]}  # shmrt's [N, T, H] and [N, H]
    refs = ort_run(ort_proto or proto, x)
    for name, ref in zip(outputs, refs):  # onnxruntime agrees with the equations
        assert rel_err(ref.reshape(want[name].shape), want[name]) <= 1e-5, name
    model = from_onnx(proto)
    for s, got in run_all(rt, model, x):
        got = got if isinstance(got, tuple) else (got,)
        assert len(got) == len(outputs), s
        for name, g in zip(outputs, got):
            assert rel_err(g, want[name]) <= TOL, (s, name)
    return model


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("outputs", [("Y", "Y_h"), ("Y_h",), ("Y_h", "Y")], ids=["Y+Y_h", "Y_h", "Y_h+Y"])
def test_y_and_y_h_outputs(rt, kind, layout, outputs):
    T, F, H = 5, 3, 20
    proto, inits = model_proto(kind, T, F, H, outputs=outputs, layout=layout, h0=True, seed=3)
    proto0, _ = model_proto(kind, T, F, H, outputs=outputs, layout=0, h0=True, seed=3)
    model = _check_outputs(rt, proto, inits, kind, rnd(4, T, F, seed=11), outputs, ort_proto=proto0)
    if outputs == ("Y_h",):  # alone: the layer itself returns its last step only
        assert model.layers[0].return_sequences is False and len(model.layers) == 1


def test_y_h_read_by_a_layer_while_y_is_an_output(rt):
    """Y_h feeds a Gemm while Y is a graph output too: the sequence stays whole, Y_h is its last step."""
    T, F, H = 4, 3, 8
    proto, inits = model_proto("GRU", T, F, H, outputs=("Y", "Y_h"), layout=0, seed=5)
    g = proto.graph
    Wd = rnd(H, 2, seed=9)
    g.initializer.extend([numpy_helper.from_array(Wd, "Wd"), numpy_helper.from_array(np.array([1], np.int64), "a1")])
    g.node.extend([helper.make_node("Squeeze", ["Y_h", "a1"], ["hs"]), helper.make_node("MatMul", ["hs", "Wd"], ["d"])])
    del g.output[1]
    g.output.extend([helper.make_tensor_value_info("d", TensorProto.FLOAT, ["N", 2])])
    x = rnd(3, T, F, seed=12)
    Y, Yh, _ = expected("GRU", inits, x)
    refs = ort_run(proto, x)
    assert rel_err(refs[1], Yh[0] @ Wd) <= 1e-5
    for s, (y, d) in run_all(rt, from_onnx(proto), x):
        assert rel_err(y, Y[:, 0].transpose(1, 0, 2)) <= TOL, s
        assert rel_err(d, Yh[0] @ Wd) <= TOL, s


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("outputs", [("Y", "Y_h", "Y_c"), ("Y_c",), ("Y_h", "Y_c")], ids=["all", "Y_c", "Y_h+Y_c"])
def test_lstm_y_c(rt, layout, outputs):
    """Y_c, the final cell state: an LSTM (the same weights) whose output is its cell state."""
    T, F, H = 6, 3, 20
    proto, inits = model_proto("LSTM", T, F, H, outputs=outputs, layout=layout, h0=True, c0=True, seed=8)
    proto0, _ = model_proto("LSTM", T, F, H, outputs=outputs, layout=0, h0=True, c0=True, seed=8)
    model = _check_outputs(rt, proto, inits, "LSTM", rnd(5, T, F, seed=13), outputs, ort_proto=proto0)
    cells = [l for l in model.layers if getattr(l, "return_cell_state", False)]
    assert len(cells) == 1 and cells[0].return_sequences is False


def test_lstm_return_cell_state_ir_two_layers(rt, tmp_path):
    """shmrt.LSTM(return_cell_state=True), 2 layers: the last layer's c(T), after save/load, vs torch float64."""
    torch = pytest.importorskip("torch")
    T, F, H = 5, 4, 24
    m = torch.nn.LSTM(F, H, num_layers=2, batch_first=True).double()
    p = {k: v.detach().numpy().astype(np.float32) for k, v in m.named_parameters()}
    lstm = shmrt.LSTM(F, H, num_layers=2, return_sequences=False, return_cell_state=True, **p)
    model = shmrt.Sequential([lstm], input_shape=(T, F))
    model.save(tmp_path / "c.npz")
    back = shmrt.load(tmp_path / "c.npz")
    assert back.layers[0].return_cell_state is True
    x = rnd(6, T, F, seed=2)
    with torch.no_grad():
        m.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in p.items()})
        _, (_, c) = m(torch.from_numpy(x.astype(np.float64)))
    want = c[-1].numpy()
    for s, y in run_all(rt, back, x):
        assert rel_err(y, want) <= TOL, s
    with pytest.raises(ValueError, match="return_sequences=False"):
        shmrt.LSTM(F, H, return_cell_state=True)


# -- 3. sequence_lens ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_sequence_lens_all_full(rt, kind):
    """A constant sequence_lens whose entries all equal T changes nothing: accepted."""
    T, F, H = 4, 3, 8
    proto, inits = model_proto(kind, T, F, H, outputs=("Y", "Y_h"), seq_lens=[T] * 5, seed=4)
    _check_outputs(rt, proto, inits, kind, rnd(5, T, F, seed=14), ("Y", "Y_h"), seq_lens=[T] * 5)


def test_sequence_lens_per_sample_refused():
    T, F, H = 4, 3, 8
    proto, _ = model_proto("LSTM", T, F, H, seq_lens=[4, 2, 3], seed=4)
    with pytest.raises(UnsupportedONNX, match=r"sequence_lens \[4, 2, 3\].*all equal the sequence length T=4"):
        from_onnx(proto)


def test_lstm_y_c_of_a_second_node_merges(rt):
    """LSTM -> LSTM (layout 1), only the second's Y_c out: one 2-layer LSTM(return_cell_state=True)."""
    T, F, H = 5, 3, 12
    W1, R1, B1 = rnd(1, 4 * H, F, seed=1) * 0.5, rnd(1, 4 * H, H, seed=2) * 0.5, rnd(1, 8 * H, seed=3) * 0.5
    W2, R2, B2 = rnd(1, 4 * H, H, seed=4) * 0.5, rnd(1, 4 * H, H, seed=5) * 0.5, rnd(1, 8 * H, seed=7) * 0.5
    nodes = [helper.make_node("LSTM", ["x", "W1", "R1", "B1"], ["y1"], hidden_size=H, layout=1),
             helper.make_node("Squeeze", ["y1", "ax"], ["s1"]),
             helper.make_node("LSTM", ["s1", "W2", "R2", "B2"], ["", "", "Y_c"], hidden_size=H, layout=1)]
    inits = {"W1": W1, "R1": R1, "B1": B1, "W2": W2, "R2": R2, "B2": B2, "ax": np.array([2], np.int64)}
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, F])
    out = helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, ["N", 1, H])
    g = helper.make_graph(nodes, "g", [inp], [out], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", 20)])
    proto.ir_version = 9
    model = from_onnx(proto)
    assert len(model.layers) == 1 and model.layers[0].num_layers == 2 and model.layers[0].return_cell_state
    x = rnd(4, T, F, seed=6)
    Y1, _, _ = onnx_recurrent("LSTM", x.transpose(1, 0, 2), W1, R1, B1)
    _, _, Yc = onnx_recurrent("LSTM", Y1[:, 0], W2, R2, B2)
    for s, y in run_all(rt, model, x):
        assert rel_err(y.reshape(4, H), Yc[0]) <= TOL, s
