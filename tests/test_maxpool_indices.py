"""ONNX MaxPool's second output, Indices, as a graph output: checked against onnx's reference
evaluator and onnxruntime over pads, strides, dilations, ceil_mode and storage_order, batches of
1 and 3 (the batch row counts in the flat index), 1-2 workers and every strategy; Indices read
by another node is refused, naming the node."""
import numpy as np
import pytest

import shmrt

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper as h  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from shmrt.frontends.onnx_import import UnsupportedONNX  # noqa: E402

C, H, W = 3, 7, 6
GEOMS = [  # kernel, strides, pads [t, l, b, r], dilations, ceil_mode, storage_order
    ((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0, 0),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 0, 1),
    ((3, 2), (2, 1), (2, 0, 1, 1), (1, 1), 1, 0),
    ((2, 3), (1, 2), (1, 2, 0, 1), (2, 1), 1, 1),
    ((5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 0, 1),
    ((2, 2), (3, 3), (0, 0, 0, 0), (2, 2), 1, 0),
]


def model(k, s, pads, d, ceil, order, consumer=False):
    nodes = [h.make_node("MaxPool", ["x"], ["y", "i"], name="pool", kernel_shape=list(k), strides=list(s),
                         pads=list(pads), dilations=list(d), ceil_mode=ceil, storage_order=order)]
    outs = [h.make_tensor_value_info("y", TP.FLOAT, None), h.make_tensor_value_info("i", TP.INT64, None)]
    if consumer:
        nodes.append(h.make_node("Cast", ["i"], ["f"], name="cast_idx", to=TP.FLOAT))
        outs = [h.make_tensor_value_info("f", TP.FLOAT, None)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, ["N", C, H, W])], outs)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 13)])


def references(m, x):
    ry, ri = ReferenceEvaluator(m).run(None, {"x": x})
    oy, oi = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return (ry, ri), (oy, oi)


@pytest.mark.parametrize("geom", GEOMS, ids=[f"g{i}" for i in range(len(GEOMS))])
def test_indices_match_reference_and_onnxruntime(rt, geom):
    m = model(*geom)
    x = np.random.default_rng(1).standard_normal((3, C, H, W)).astype(np.float32)
    (ry, ri), (oy, oi) = references(m, x)
    np.testing.assert_array_equal(ry, oy)
    # onnx 1.23's reference evaluator returns -1 (not an index) for some windows of geometry g5 (5x5,
    # pads 2, storage_order=1), where onnxruntime gives the max's index: compared to onnxruntime there
    sane = ri.min() >= 0
    if sane:
        np.testing.assert_array_equal(ri, oi)  # the two references agree (no ties in random data)
    cm = rt.compile(shmrt.load(m), max_batch=4)
    for n in (1, 3):
        y, i = cm(x[:n])
        assert i.dtype == np.int64 and i.shape == oi[:n].shape
        np.testing.assert_array_equal(y, oy[:n])
        np.testing.assert_array_equal(i, oi[:n])  # the batch row is in the index: row 2 of 3 counts 2*C*H*W
        # the max's value is where the index points (flat in x, row- or column-major per plane)
        xt = x[:n].transpose(0, 1, 3, 2) if geom[5] else x[:n]
        np.testing.assert_array_equal(xt.reshape(-1)[i], y)
    assert i.max() >= 2 * C * H * W


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("strategy", ["data", "model", "hybrid", "pipeline", "auto"])
def test_batch_offset_is_global_across_chunks_and_workers(workers, strategy):
    """A batch of 7 rows over max_batch 2 runs as 4 calls, each split over the workers: every
    row's indices still count its row in the caller's batch."""
    m = model((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, 1)
    x = np.random.default_rng(2).standard_normal((7, C, H, W)).astype(np.float32)
    (ry, ri), _ = references(m, x)
    with shmrt.Runtime(workers=workers) as r:
        cm = r.compile(shmrt.load(m), strategy=strategy, max_batch=2)
        y, i = cm(x)
        np.testing.assert_array_equal(y, ry)
        np.testing.assert_array_equal(i, ri)
        big = np.repeat(x, 40, axis=0)  # over calls.SINGLE_COPY_MIN_BYTES: the workers copy results out
        yb, ib = cm(big)
        (_, rib), _ = references(m, big)
        np.testing.assert_array_equal(ib, rib)


def test_ties_take_the_first_in_scan_order_and_nan_wins(rt):
    m = model((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0)
    x = np.zeros((2, C, H, W), np.float32)  # all ties: the window's top-left, as the reference
    x[1, 0, 0, 1] = np.nan  # NaN propagates into Y (shmrt's MaxPool): its index is the NaN's
    cm = rt.compile(shmrt.load(m), max_batch=2)
    y, i = cm(x)
    (ry, ri), _ = references(m, x[:1])
    np.testing.assert_array_equal(i[:1], ri)
    assert np.isnan(y[1, 0, 0, 0]) and i[1, 0, 0, 0] == C * H * W + 1
    assert i[1, 0, 0, 1] == C * H * W + 2  # the next window: ties, its first element


def test_indices_exact_beyond_float32():
    """Indices past 2**24 (float32's last exact integer) stay exact: int64 all the way."""
    c, hh, ww = 4, 64, 64
    n = 2 ** 24 // (c * hh * ww) + 2
    nodes = [h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, ["N", c, hh, ww])],
                     [h.make_tensor_value_info("y", TP.FLOAT, None), h.make_tensor_value_info("i", TP.INT64, None)])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    x = np.random.default_rng(3).standard_normal((n, c, hh, ww)).astype(np.float32)
    with shmrt.Runtime(workers=2) as r:
        y, i = r.compile(shmrt.load(m), max_batch=64)(x)
    _, oi = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert oi.max() > 2 ** 24
    np.testing.assert_array_equal(i, oi)


def test_indices_feeding_a_node_is_refused():
    with pytest.raises(UnsupportedONNX, match=r"pool.*MaxPool.*Indices output 'i' feeds another node"):
        shmrt.load(model((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), 0, 0, consumer=True))


def test_values_read_further_is_refused():
    nodes = [h.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             h.make_node("Relu", ["y"], ["z"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, ["N", C, H, W])],
                     [h.make_tensor_value_info("z", TP.FLOAT, None), h.make_tensor_value_info("i", TP.INT64, None)])
    with pytest.raises(UnsupportedONNX, match="must be the last layer"):
        shmrt.load(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]))
