"""The peers' quantized models for tests/test_quantized_loaders.py: the torch models and their ONNX exports,
onnxruntime's and torch's quantizers run quietly, and the float64 forward that reproduces the peers'
activation rounding from the loaded shmrt layers (see that file's docstring)."""
import contextlib
import io
import logging
import warnings

import numpy as np
import pytest

import shmrt
from reference import forward, rel_err
from shmrt.compile.compress import compressible

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
nn = torch.nn
from onnx import numpy_helper  # noqa: E402

ORT_STEPS = 255  # onnxruntime's DynamicQuantizeLinear: uint8
# torch's x86 / fbgemm engines quantize activations with reduce_range: 7 bits
TORCH_STEPS = 127 if torch.backends.quantized.engine in ("x86", "fbgemm") else 255
GATES = {"onnx": "iofg", "torch": "ifgo"}
QDQ_TOL = 1e-5
RECURRENT_FLIPS = 2  # of 16 samples (check_int8)


# -- the peers' activation rounding, and the forward that reproduces them ---------------------------

def peer_round(x, steps):
    """The peers' dynamic quantization of an activation tensor: min(x, 0)..max(x, 0) in ``steps`` steps,
    zero point and values rounded half to even, in float32 as they compute; returned dequantized."""
    x = np.asarray(x, np.float32)
    lo, hi = min(np.float32(0), x.min()), max(np.float32(0), x.max())
    s = np.float32((hi - lo) / np.float32(steps))
    if s == 0:
        return x.astype(np.float64)
    zp = np.clip(np.rint(-lo / s), 0, steps)
    return ((np.clip(np.rint(x / s) + zp, 0, steps) - zp) * s).astype(np.float64)


def shmrt_round(x):
    """shmrt's int8 activations (weights="int8" or loaded int8): each row (last axis) over max|x| / 127,
    rounded half to even in float32, as tests/qref.py models the kernels; returned dequantized."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.clip(np.rint(x * (np.float32(127.0) / amax)), -127, 127)
    return np.where(amax > 0, q, 0) * (amax / np.float32(127.0)).astype(np.float64)


def _int8_linear(layer, x):
    """A Linear run int8 on its own (q, scale) as tests/qref.py models shmrt's kernels, step by step in
    float32: x quantized per row, exact integer sums, then sum * s_w * s_x + bias."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        xq = np.clip(np.rint((x * (np.float32(127.0) / amax)[:, None]).astype(np.float32)), -127, 127)
    xq = np.where(amax[:, None] > 0, xq, 0).astype(np.int64)
    q, s = layer.quant["weight"]
    q = np.maximum(q, -127)  # as run: a -128 is stored as -127 (kernels/qformat.pack_format)
    y = ((xq @ q.astype(np.int64).T).astype(np.float32) * s[None, :]).astype(np.float32)
    y = (y * (amax / np.float32(127.0))[:, None]).astype(np.float32)
    if "bias" in layer.params:
        y = (y + layer.params["bias"]).astype(np.float32)
    return y.astype(np.float64)


def rounding(steps):
    """None: no rounding; an int: a peer's per-tensor rounding in that many steps; "row": shmrt's."""
    if steps is None:
        return lambda v: np.asarray(v, np.float64)
    return shmrt_round if steps == "row" else (lambda v: peer_round(v, steps))


def runs_int8(layer):
    """Whether weights=None runs this layer in int8 on its own scales (compile/compress.py)."""
    return bool(getattr(layer, "quant", None)) and compressible(layer)


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _recurrent(layer, x, rnd_):
    """An LSTM / GRU layer (PyTorch's gates) in float64, its inputs rounded by rnd_."""
    p = {k: v.astype(np.float64) for k, v in layer.params.items()}
    if rnd_ is shmrt_round:  # run int8 on its own scales: a -128 as -127 (kernels/qformat.pack_format)
        for name, (q, sc) in (getattr(layer, "quant", None) or {}).items():
            p[name] = (np.maximum(q, -127).astype(np.float32) * np.asarray(sc, np.float32)[:, None]).astype(np.float64)
    N, T, _ = x.shape
    H = layer.hidden_size
    for k in range(layer.num_layers):
        xs = rnd_(x)  # the input projection of the whole sequence at once
        h, c, ys = np.zeros((N, H)), np.zeros((N, H)), []
        for t in range(T):
            gi = xs[:, t] @ p[f"weight_ih_l{k}"].T + p[f"bias_ih_l{k}"]
            gh = rnd_(h) @ p[f"weight_hh_l{k}"].T + p[f"bias_hh_l{k}"]
            if isinstance(layer, shmrt.LSTM):
                i, f, g, o = np.split(gi + gh, 4, axis=1)
                c = _sig(f) * c + _sig(i) * np.tanh(g)
                h = _sig(o) * np.tanh(c)
            else:
                (ri, zi, ni), (rh, zh, nh) = np.split(gi, 3, axis=1), np.split(gh, 3, axis=1)
                r, z = _sig(ri + rh), _sig(zi + zh)
                h = (1 - z) * np.tanh(ni + r * nh) + z * h
            ys.append(h)
        x = np.stack(ys, axis=1)
    return x if layer.return_sequences else x[:, -1]


def emulate(model, x, steps, only=None):
    """The loaded model in float64, the inputs of its Linear, Conv2d and recurrent layers rounded as
    ``rounding(steps)`` does (those ``only`` accepts, default all): steps=None is the exact float forward."""
    h = np.asarray(x, np.float64)
    for layer in model.layers:
        rnd_ = rounding(steps if only is None or only(layer) else None)
        if isinstance(layer, (shmrt.LSTM, shmrt.GRU)):
            h = _recurrent(layer, h, rnd_)
        elif steps == "row" and isinstance(layer, shmrt.Linear) and rnd_ is shmrt_round:
            h = _int8_linear(layer, h)
        elif isinstance(layer, (shmrt.Linear, shmrt.Conv2d)):
            h = forward(shmrt.Sequential([layer]), rnd_(h))
        else:
            h = forward(shmrt.Sequential([layer]), h)
    return h


def run_rt(rt, model, x, weights="float32"):
    cm = rt.compile(model, max_batch=len(x), weights=weights)
    try:
        return cm(x), cm.explain()
    finally:
        cm.close()


def report(what, y, peer):
    d = float(np.max(np.abs(y - peer)))
    print(f"{what}: max |shmrt - peer| {d:.3g}, relative {rel_err(y, peer):.3g}")
    return d


def check_peer(what, y, peer, exact, rounded, emulated_tol=1e-5):
    """shmrt's output ``y`` against the peer's: the emulation (``rounded``) reproduces the peer, ``y`` is the
    exact forward, and |y - peer| is within the effect of the peer's rounding, elementwise."""
    assert rel_err(rounded, peer) <= emulated_tol
    assert rel_err(y, exact) <= 1e-5
    report(what, y, peer)
    effect = np.abs(exact - rounded)
    print(f"  the peer's activation rounding alone (emulated): max {effect.max():.3g}, "
          f"relative {rel_err(rounded, exact):.3g}")
    assert rel_err(rounded, exact) <= 0.05
    assert np.all(np.abs(y - peer) <= effect + (2 * emulated_tol + 1e-5) * np.abs(peer).max())


def check_int8(what, rt, model, x, peer, theirs, flips=0):
    """weights=None: the layers loaded quantized run int8 on their own scales (explain() says so), shmrt's
    output is the emulation of that (the file's int8 and scales, shmrt's per-row activation rounding), and it
    differs from the peer by the two roundings' effects at most, elementwise (``theirs``: the peer emulated).

    The emulation follows the kernels' float32 steps for Linear layers (bit for bit on an MLP); a recurrent
    cell it computes in float64, so an h that sits on a boundary of its int8 grid may round one step apart
    in the two: up to ``flips`` samples may then differ by such a step's effect (<= 0.5 % of the output)."""
    y, text = run_rt(rt, model, x, weights=None)
    assert text.count("its own int8 scales (loaded quantized)") == sum(map(runs_int8, model.layers)) > 0
    exact, mine = emulate(model, x, None), emulate(model, x, "row", only=runs_int8)
    per = np.abs(y - mine).reshape(len(y), -1).max(axis=1) / np.abs(mine).max()
    off = int(np.sum(per > 1e-6))
    print(f"  shmrt's int8 run against its emulation: relative {rel_err(y, mine):.3g}; samples one rounding step "
          f"apart: {off} of {len(y)}")
    assert off <= flips and per.max() <= 5e-3
    report(f"{what}, weights=None (int8 on the loaded scales)", y, peer)
    assert rel_err(y, peer) <= 0.05
    assert np.all(np.abs(y - peer) <= np.abs(mine - exact) + np.abs(theirs - exact) + 5e-3 * np.abs(peer).max()
                  * (per > 1e-6)[:, None] + 3e-6 * np.abs(peer).max())


def check_quant(layer, name, q, scale):
    """``layer.quant[name]`` is (q, scale) exactly and the parameter is their float32 product."""
    lq, ls = layer.quant[name]
    assert lq.dtype == np.int8 and ls.dtype == np.float32
    np.testing.assert_array_equal(lq, q)
    np.testing.assert_array_equal(ls, np.broadcast_to(np.asarray(scale, np.float32).reshape(-1), (q.shape[0],)))
    np.testing.assert_array_equal(layer.params[name], q.astype(np.float32) * ls[:, None])


def gates(m, src, dst):
    """Gate blocks of m (axis 0) from src's order to dst's, written here apart from the importer's."""
    H = m.shape[0] // 4
    return np.concatenate([m[GATES[src].index(g) * H:(GATES[src].index(g) + 1) * H] for g in GATES[dst]])


# -- the models ----------------------------------------------------------------------------------

class LastStep(nn.Module):
    def __init__(self, cls=nn.LSTM, layers=1):
        super().__init__()
        self.rnn = cls(16, 64, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.fc(y[:, -1])


def torch_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).eval()


def torch_rnn(cls=nn.LSTM, layers=1):
    torch.manual_seed(1)
    return LastStep(cls, layers).eval()


@contextlib.contextmanager
def quiet():
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic's advice to pre-process
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger().setLevel(level)


def export(m, shape, path):
    with quiet():
        torch.onnx.export(m, (torch.zeros(2, *shape),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "N"}}, opset_version=17)
    return path


def ort_quantize(src, dst, **kw):
    with quiet():
        quantization.quantize_dynamic(str(src), str(dst), **kw)
    return dst


def ort_session(path, optimized=None):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # its recurrent ops round the activations per chunk of the batch per thread
    if optimized is not None:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("quantized")
    out = {"mlp": export(torch_mlp(), (256,), d / "mlp.onnx"), "lstm": export(torch_rnn(), (12, 16), d / "lstm.onnx"),
           "lstm2": export(torch_rnn(layers=2), (12, 16), d / "lstm2.onnx")}
    for name in ("mlp", "lstm", "lstm2"):
        out[name + "_q"] = ort_quantize(out[name], d / f"{name}_q.onnx")
        out[name + "_qc"] = ort_quantize(out[name], d / f"{name}_qc.onnx", per_channel=True)
    out["mlp_qu"] = ort_quantize(out["mlp"], d / "mlp_qu.onnx", weight_type=quantization.QuantType.QUInt8)
    ort_session(out["mlp_qc"], optimized=d / "mlp_fused.onnx")  # onnxruntime's DynamicQuantizeMatMul
    out["mlp_fused"] = d / "mlp_fused.onnx"
    out["dir"] = d
    return out


def inits(proto):
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def linears(model):
    return [layer for layer in model.layers if isinstance(layer, shmrt.Linear)]


def emulate_qdq(proto, model, x):
    """A QDQ chain of Gemm / Relu in float64 with the file's static rounding: every QuantizeLinear of an
    activation rounds to its int8 grid, clipped to [-128, 127] (the calibrated range), the Gemms are the
    loaded Linears."""
    w, h, k = inits(proto), np.asarray(x, np.float64), 0
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in w:
            s, z = float(w[n.input[1]]), int(w[n.input[2]])
            assert w[n.input[2]].dtype == np.int8
            h = (np.clip(np.rint(h / s) + z, -128, 127) - z) * s
        elif n.op_type == "Gemm":
            layer = linears(model)[k]
            h = h @ layer.params["weight"].astype(np.float64).T + layer.params["bias"]
            k += 1
        elif n.op_type == "Relu":
            h = np.maximum(h, 0)
    return h




def torch_peer(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()
