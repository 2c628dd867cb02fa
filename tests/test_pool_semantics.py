"""Pooling semantics beyond the plain floor-mode symmetric pools: ceil_mode, asymmetric and
oversized padding (ONNX's pads, auto_pad SAME_*), the adaptive pools' uneven windows
(AdaptiveAvgPool2d, AdaptiveMaxPool2d) -- through the IR, the torch route and the ONNX route, on
every strategy, against torch float64 and onnxruntime; plus save/load and the refusals."""
import numpy as np
import pytest

import shmrt
from models import STRATEGIES, rnd
from reference import rel_err
from shmrt.ir import reference

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

TOL = 1e-4


def run_all(rt, model, x, strategies=STRATEGIES, max_batch=4):
    outs = []
    for s in strategies:
        with rt.compile(model, strategy=s, max_batch=max_batch) as cm:
            outs.append((s, np.asarray(cm(x))))
    return outs


def check(rt, model, x, want, strategies=STRATEGIES):
    """model's output on every strategy, and the float64 reference forward, against want."""
    want = np.asarray(want, np.float64)
    assert rel_err(reference.forward(model, x), want) <= 1e-12
    for s, y in run_all(rt, model, x, strategies):
        assert rel_err(y, want) <= TOL, s


def t64(x):
    return torch.from_numpy(np.asarray(x, np.float64))


@pytest.fixture(scope="module")
def rt1():
    with shmrt.Runtime(workers=1) as rt:
        yield rt


# -- ceil_mode (IR and torch route) -------------------------------------------------------------------

CEIL = [  # (H, W), kernel, stride, padding, dilation
    ((7, 7), 2, 2, 0, 1), ((7, 9), 3, 2, 1, 1), ((8, 5), 3, 2, 0, 1), ((6, 11), (3, 2), (2, 3), (1, 1), 1),
    ((9, 9), 3, 3, 1, 1), ((10, 7), 2, 3, 1, 1), ((11, 10), 3, 2, 1, (2, 1)),
]


@pytest.mark.parametrize("hw, k, s, p, d", CEIL)
def test_max_pool_ceil_mode(rt, hw, k, s, p, d):
    x = rnd(3, 4, *hw, seed=1)
    x[0, 1, -1, -2:] = np.nan  # NaN propagates through max (where a window covers it)
    model = shmrt.Sequential([shmrt.MaxPool2d(k, s, p, d, ceil_mode=True), shmrt.Flatten()], input_shape=(4, *hw))
    want = F.max_pool2d(t64(x), k, s, p, d, ceil_mode=True).flatten(1).numpy()
    got = reference.forward(model, x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    for strategy, y in run_all(rt, model, x):
        assert np.array_equal(np.isnan(y), np.isnan(want)), strategy
        assert rel_err(np.nan_to_num(y), np.nan_to_num(want)) <= TOL, strategy


@pytest.mark.parametrize("cip", [False, True])
@pytest.mark.parametrize("hw, k, s, p, d", [c for c in CEIL if c[4] == 1])
def test_avg_pool_ceil_mode(rt, hw, k, s, p, d, cip):
    x = rnd(3, 4, *hw, seed=2)
    model = shmrt.Sequential([shmrt.AvgPool2d(k, s, p, ceil_mode=True, count_include_pad=cip)], input_shape=(4, *hw))
    want = F.avg_pool2d(t64(x), k, s, p, ceil_mode=True, count_include_pad=cip).numpy()
    check(rt, model, x, want)


def test_ceil_mode_drops_a_window_that_starts_in_the_right_padding():
    # 5 + 2*1 - 2 = 5 -> ceil(5 / 2) + 1 = 4, but window 3 would start at 6 - 1 = 5 >= 5: PyTorch gives 3
    l = shmrt.MaxPool2d(2, 2, 1, ceil_mode=True)
    assert l.output_shape((1, 5, 5)) == (1, 3, 3) == tuple(F.max_pool2d(torch.zeros(1, 1, 5, 5), 2, 2, 1,
                                                                          ceil_mode=True).shape[1:])


def test_torch_route_ceil_mode_pools_on_one_and_two_workers(rt, rt1):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                      nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False), nn.Conv2d(6, 5, 1),
                      nn.AvgPool2d(3, 2, padding=1, ceil_mode=True), nn.Flatten()).eval()
    x = rnd(3, 3, 14, 13, seed=3)
    model = shmrt.load(m, input_shape=(3, 14, 13))
    with torch.no_grad():
        want = m.double()(t64(x)).numpy()
    check(rt, model, x, want)
    check(rt1, model, x, want, strategies=("data", "model"))


def test_fused_conv_pool_is_not_taken_in_ceil_mode(rt):
    # a 2x2 max pool right after a stride-1 convolution fuses into it, but not in ceil mode (odd sizes)
    shmrt.manual_seed(4)
    model = shmrt.Sequential([shmrt.Conv2d(2, 4, 3), shmrt.ReLU(), shmrt.MaxPool2d(2, ceil_mode=True)],
                             input_shape=(2, 9, 9))
    x = rnd(2, 2, 9, 9, seed=4)
    c = model.layers[0]
    y = F.conv2d(t64(x), t64(c.params["weight"]), t64(c.params["bias"]))
    check(rt, model, x, F.max_pool2d(F.relu(y), 2, ceil_mode=True).numpy())


# -- asymmetric and oversized padding (the IR's pads, ONNX's form) ---------------------------------------

def padded(x, pads, fill):
    t, l, b, r = pads
    return np.pad(x, ((0, 0), (0, 0), (t, b), (l, r)), constant_values=fill)


@pytest.mark.parametrize("pads, k, s, d, ceil", [
    ((0, 0, 1, 1), 2, 2, 1, False), ((1, 0, 0, 2), 3, 1, 1, False), ((2, 1, 0, 1), 3, 2, 1, False),
    ((2, 2, 2, 2), 3, 1, 1, False),  # larger than half the kernel: ONNX allows it
    ((0, 2, 2, 0), (3, 2), (2, 1), (1, 2), False), ((1, 0, 2, 1), 3, 2, 1, True),
])
def test_max_pool_explicit_pads(rt, pads, k, s, d, ceil):
    x = rnd(3, 3, 8, 9, seed=5)
    l = shmrt.MaxPool2d(k, s, dilation=d, ceil_mode=ceil, pads=pads)
    model = shmrt.Sequential([l], input_shape=(3, 8, 9))
    # torch has no asymmetric padding: pad with -inf first (floor mode), then pool unpadded
    if not ceil:
        want = F.max_pool2d(t64(padded(x, pads, -np.inf)), k, s, 0, d).numpy()
    else:  # ceil mode: window by window
        want = brute_pool(x, l, max)
    check(rt, model, x, want)


def brute_pool(x, l, kind, cip=False):
    """Window by window in float64: the taps inside the image (max or mean), or the sum over the
    taps inside the padded image [-top, H + bottom) when cip."""
    (kh, kw), (sh, sw), (dh, dw), (t, left, b, r) = l.kernel_size, l.stride, l.dilation, l.pads
    N, C, H, W = x.shape
    _, OH, OW = l.output_shape(x.shape[1:])
    out = np.empty((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            rows = [oh * sh - t + i * dh for i in range(kh)]
            cols = [ow * sw - left + j * dw for j in range(kw)]
            ri, ci = [v for v in rows if 0 <= v < H], [v for v in cols if 0 <= v < W]
            win = x[:, :, ri][:, :, :, ci].astype(np.float64)
            if kind is max:
                out[:, :, oh, ow] = win.max(axis=(2, 3))
            else:
                n = (sum(-t <= v < H + b for v in rows) * sum(-left <= v < W + r for v in cols) if cip
                     else len(ri) * len(ci))
                out[:, :, oh, ow] = win.sum(axis=(2, 3)) / n
    return out


@pytest.mark.parametrize("cip", [False, True])
@pytest.mark.parametrize("pads, k, s", [((0, 0, 1, 1), 2, 2), ((1, 0, 0, 2), 3, 1), ((2, 1, 0, 1), 3, 2),
                                        ((2, 2, 2, 2), 3, 2)])
def test_avg_pool_explicit_pads_floor_mode(rt, pads, k, s, cip):
    x = rnd(3, 3, 8, 9, seed=6)
    model = shmrt.Sequential([shmrt.AvgPool2d(k, s, count_include_pad=cip, pads=pads)], input_shape=(3, 8, 9))
    xp = t64(padded(x, pads, 0.0))
    sums = F.avg_pool2d(xp, k, s, divisor_override=1)
    if cip:
        want = sums / (np.prod(k) if isinstance(k, tuple) else k * k)
    else:
        ones = t64(padded(np.ones((1, 1, 8, 9)), pads, 0.0))
        want = sums / F.avg_pool2d(ones, k, s, divisor_override=1)
    check(rt, model, x, want.numpy())


@pytest.mark.parametrize("pads", [(0, 1, 2, 0), (2, 0, 1, 3), (4, 4, 4, 4)])
def test_conv_explicit_pads(rt, pads):
    shmrt.manual_seed(7)
    # 8 output channels: split by channel under "model"; 1: by output rows (spatial)
    for k, s, d, g, co in (((3, 3), 1, 1, 1, 8), ((3, 2), (2, 1), (1, 2), 1, 8), ((3, 3), 2, 1, 4, 8),
                           ((2, 3), 1, 1, 1, 1), ((3, 3), (2, 1), 1, 1, 1)):
        conv = shmrt.Conv2d(4, co, k, stride=s, dilation=d, groups=g, pads=pads)
        model = shmrt.Sequential([conv, shmrt.ReLU()], input_shape=(4, 9, 8))
        x = rnd(3, 4, 9, 8, seed=8)
        want = F.relu(F.conv2d(t64(padded(x, pads, 0.0)), t64(conv.params["weight"]), t64(conv.params["bias"]),
                               s, 0, d, g))
        check(rt, model, x, want.numpy())


def test_pytorch_padding_rule_still_holds_for_padding():
    with pytest.raises(ValueError, match="at most half the kernel"):
        shmrt.MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match="padding or pads, not both"):
        shmrt.AvgPool2d(3, padding=1, pads=(1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"pads must be 4 ints >= 0"):
        shmrt.Conv2d(1, 1, 3, pads=(1, 1, 1))


def test_a_window_wholly_in_the_padding_is_refused():
    with pytest.raises(ValueError, match="lies wholly in the padding"):
        shmrt.MaxPool2d(2, 1, pads=(3, 0, 0, 0)).output_shape((1, 4, 4))
    with pytest.raises(ValueError, match="lies wholly in the padding"):
        shmrt.AvgPool2d(2, 1, pads=(0, 0, 0, 3), count_include_pad=False).output_shape((1, 4, 4))
    # counting the padding, such a window is a well-defined 0
    assert shmrt.AvgPool2d(2, 1, pads=(0, 0, 0, 3)).output_shape((1, 4, 4)) == (1, 3, 6)


def test_save_load_round_trips_the_new_forms(tmp_path):
    shmrt.manual_seed(9)
    model = shmrt.Sequential([
        shmrt.Conv2d(2, 3, 3, pads=(0, 1, 2, 1)), shmrt.MaxPool2d(3, 2, 1, ceil_mode=True),
        shmrt.AvgPool2d(3, 1, count_include_pad=False, pads=(0, 2, 1, 0)), shmrt.AvgPool2d(3, 2, ceil_mode=True),
        shmrt.AdaptiveMaxPool2d((3, 2)), shmrt.AdaptiveAvgPool2d((2, 1))], input_shape=(2, 13, 12))
    model.save(tmp_path / "m.shmrt")
    back = shmrt.load(tmp_path / "m.shmrt")
    for a, b in zip(model.layers, back.layers):
        assert repr(a) == repr(b) and getattr(a, "pads", None) == getattr(b, "pads", None)
        assert getattr(a, "ceil_mode", None) == getattr(b, "ceil_mode", None)
    x = rnd(2, 2, 13, 12, seed=10)
    assert np.array_equal(reference.forward(model, x), reference.forward(back, x))


# -- adaptive pools with uneven windows -------------------------------------------------------------

@pytest.mark.parametrize("hw, out", [((7, 7), (3, 5)), ((10, 10), (3, 5)), ((5, 9), (4, 2)), ((6, 4), (6, 3))])
def test_adaptive_pools_uneven_windows(rt, hw, out):
    x = rnd(3, 4, *hw, seed=11)
    for cls, fn in ((shmrt.AdaptiveAvgPool2d, F.adaptive_avg_pool2d), (shmrt.AdaptiveMaxPool2d, F.adaptive_max_pool2d)):
        model = shmrt.Sequential([cls(out), shmrt.Flatten()], input_shape=(4, *hw))
        check(rt, model, x, fn(t64(x), out).flatten(1).numpy())


def test_torch_route_adaptive_pools(rt, rt1):
    torch.manual_seed(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.avg = nn.AdaptiveAvgPool2d((3, 5))
            self.max = nn.AdaptiveMaxPool2d((3, 5))

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return torch.cat([self.avg(h), self.max(h), F.adaptive_max_pool2d(h, (3, 5))], 1).flatten(1)

    m = Net().eval()
    for hw in ((7, 7), (10, 10)):
        x = rnd(3, 3, *hw, seed=12)
        model = shmrt.load(m, input_shape=(3, *hw))
        with torch.no_grad():
            want = m.double()(t64(x)).numpy()
        m.float()
        check(rt, model, x, want)
        check(rt1, model, x, want, strategies=("data",))


def test_adaptive_max_pool_even_windows_and_one_by_one(rt):
    x = rnd(2, 3, 8, 6, seed=13)
    for out in ((4, 3), (1, 1)):
        model = shmrt.Sequential([shmrt.AdaptiveMaxPool2d(out)], input_shape=(3, 8, 6))
        check(rt, model, x, F.adaptive_max_pool2d(t64(x), out).numpy(), strategies=("data", "model"))


def test_adaptive_max_pool_return_indices_is_refused():
    with pytest.raises(ValueError, match="return_indices"):
        shmrt.AdaptiveMaxPool2d(3, return_indices=True)
    with pytest.raises(ValueError, match="return_indices"):
        shmrt.load(nn.Sequential(nn.AdaptiveMaxPool2d(3, return_indices=True)), input_shape=(1, 7, 7))


# -- the ONNX route (against onnxruntime) ---------------------------------------------------------------

def onnx_model(nodes, in_shape, inits=(), opset=19):
    from onnx import TensorProto, helper, numpy_helper
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *in_shape])
    out = helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "g", [inp], [out], [numpy_helper.from_array(np.asarray(v), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def check_onnx(rt, proto, x, strategies=STRATEGIES):
    ort = pytest.importorskip("onnxruntime")
    from shmrt.frontends.onnx_import import from_onnx
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    model = from_onnx(proto)
    for s, y in run_all(rt, model, x, strategies):
        assert rel_err(y.reshape(want.shape), want) <= TOL, s
    return model


POOL_ATTRS = [  # ONNX attributes of one pool node over a 9 x 8 input
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[1, 2], pads=[2, 1, 0, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 2, 2, 2]),  # larger than half the kernel
    dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[4, 4], strides=[1, 1], auto_pad="SAME_LOWER"),
]


@pytest.mark.parametrize("attrs", POOL_ATTRS)
def test_onnx_max_pool(rt, attrs):
    from onnx import helper
    proto = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], **attrs)], [3, 9, 8])
    check_onnx(rt, proto, rnd(3, 3, 9, 8, seed=20))


def test_onnx_max_pool_dilated_ceil(rt):
    from onnx import helper
    proto = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2],
                                         dilations=[2, 2], pads=[1, 0, 2, 1], ceil_mode=1)], [3, 9, 8])
    check_onnx(rt, proto, rnd(3, 3, 9, 8, seed=21))


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("attrs", POOL_ATTRS)
def test_onnx_average_pool(rt, attrs, cip):
    from onnx import helper
    proto = onnx_model([helper.make_node("AveragePool", ["x"], ["y"], count_include_pad=cip, **attrs)], [3, 9, 8])
    check_onnx(rt, proto, rnd(3, 3, 9, 8, seed=22))


def test_onnx_route_on_one_worker(rt1):
    from onnx import helper
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 2, 0]),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 0, 1],
                              ceil_mode=1),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_LOWER")]
    proto = onnx_model(nodes, [3, 11, 10], [("w", rnd(5, 3, 3, 3, seed=28))])
    check_onnx(rt1, proto, rnd(3, 3, 11, 10, seed=29), strategies=("data", "model"))


@pytest.mark.parametrize("attrs", [
    dict(pads=[0, 1, 2, 0]), dict(pads=[3, 0, 1, 4], strides=[2, 1]), dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER"), dict(pads=[1, 2, 0, 1], dilations=[1, 2]), dict(auto_pad="SAME_UPPER", group=2),
])
def test_onnx_conv_asymmetric_padding(rt, attrs):
    from onnx import helper
    g = attrs.get("group", 1)
    inits = [("w", rnd(6, 4 // g, 2, 3, seed=23)), ("b", rnd(6, seed=24))]
    proto = onnx_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)], [4, 9, 8], inits)
    check_onnx(rt, proto, rnd(3, 4, 9, 8, seed=25))


def test_onnx_refusals_that_stay():
    from onnx import TensorProto, helper
    from shmrt.frontends.onnx_import import UnsupportedONNX, from_onnx
    proto = onnx_model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])], [1, 4, 4])
    proto.graph.output.append(helper.make_tensor_value_info("i", TensorProto.INT64, None))
    assert from_onnx(proto).layers[0].indices == "row"  # Indices a graph output: (Y, Indices), see test_maxpool_indices
    del proto.graph.output[1]  # Indices named but used by nobody: the values alone are imported
    assert isinstance(from_onnx(proto).layers[0], shmrt.MaxPool2d)
    proto = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], auto_pad="SAME_UPPER",
                                         ceil_mode=1)], [1, 4, 4])
    with pytest.raises(UnsupportedONNX, match="ceil_mode=1"):
        from_onnx(proto)
    proto = onnx_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], pads=[3, 0, 0, 0])], [1, 4, 4])
    with pytest.raises(UnsupportedONNX, match="wholly in the padding"):
        from_onnx(proto)


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize("attrs", [dict(kernel_shape=[2, 2], dilations=[2, 2]),
                                   dict(kernel_shape=[3, 2], strides=[2, 1], dilations=[2, 3], pads=[1, 1, 2, 0]),
                                   dict(kernel_shape=[2, 3], strides=[2, 2], dilations=[3, 2], pads=[1, 1, 1, 1],
                                        ceil_mode=1)])
def test_onnx_average_pool_dilations(rt, attrs, cip):
    from onnx import helper
    proto = onnx_model([helper.make_node("AveragePool", ["x"], ["y"], count_include_pad=cip, **attrs)], [3, 9, 8])
    model = check_onnx(rt, proto, rnd(3, 3, 9, 8, seed=26))
    x = rnd(2, 3, 9, 8, seed=27)
    (l,) = model.layers
    assert rel_err(reference.forward(model, x), brute_pool(x, l, "mean", bool(cip))) <= 1e-12


def test_pool_constructors_keep_pytorchs_positional_order():
    m = shmrt.MaxPool2d(3, 2, 1, 2, False, True)  # kernel, stride, padding, dilation, return_indices, ceil_mode
    assert (m.dilation, m.ceil_mode) == ((2, 2), True)
    a = shmrt.AvgPool2d(3, 2, 1, True, False)  # kernel, stride, padding, ceil_mode, count_include_pad
    assert (a.ceil_mode, a.count_include_pad) == (True, False)
    with pytest.raises(ValueError, match="divisor_override=2 is not supported"):
        shmrt.AvgPool2d(3, 2, 1, True, False, 2)
    with pytest.raises(ValueError, match="return_indices=True is not supported"):
        shmrt.MaxPool2d(2, return_indices=True)
