"""The peers' own int8 models, as peers of shmrt's compressed weights (issue 18):

- ``onnxruntime int8``: the workload's ONNX graph (peers.py builds it) with every Linear written as
  MatMul + Add -- ONNX Runtime's dynamic quantization has no integer Gemm, a Gemm would stay float --
  passed through ``onnxruntime.quantization.quantize_dynamic`` (weights QInt8, one scale per tensor:
  see ORT_PER_CHANNEL; MatMul and LSTM nodes only, as torch's and shmrt's formats, so convolutions
  stay float32), run at N intra-op threads: MatMulInteger / DynamicQuantizeMatMul and
  DynamicQuantizeLSTM, activations quantized per tensor at run time (uint8);
- ``torch int8``: the float torch peer's module passed through
  ``torch.ao.quantization.quantize_dynamic(module, {nn.Linear, nn.LSTM}, dtype=torch.qint8)``
  (weights per tensor, activations per tensor at run time; x86/fbgemm), at N threads.

Each is built from the same float32 parameters as every other implementation and checked against
the float64 reference with the int8 tolerance (formats.TOL) before it is timed.  A peer that cannot
run here raises Skip, never a fake.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings

import numpy as np

from shmrt.bench.peers import Impl, Skip, _onnx_graph, ort_session, torch_module, torch_threads

# Per output channel (True) or per tensor (False) weight scales in ONNX Runtime's int8 model.  Per tensor
# (quantize_dynamic's default) was not slower: at batch 1, 2 threads, 8 interleaved rounds of 0.4 s each
# (2-core EPYC, onnxruntime 1.32), p50 per tensor / per channel: mlp 2.10 / 2.16 ms, lstm 13.8 / 14.1 ms
# (a 3 % difference, inside the machine's noise); the peer gets the setting at least as fast.
ORT_PER_CHANNEL = False


def gemm_as_matmul(m):
    """The ONNX model m (changed in place and returned) with each Gemm(x, W, b, transB=1) whose W is an
    initializer written as MatMul(x, W^T) + Add(b): the form quantize_dynamic turns into MatMulInteger."""
    from onnx import helper, numpy_helper
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    nodes = []
    for node in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        wt = numpy_helper.from_array(np.ascontiguousarray(w.T if attrs.get("transB", 0) else w), node.input[1] + "_kn")
        g.initializer.append(wt)
        has_bias = len(node.input) > 2 and node.input[2]
        mm_out = node.output[0] + "_mm" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], wt.name], [mm_out]))
        if has_bias:
            nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]]))
    used = {i for n in nodes for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep)
    return m


def ort_int8_model(model, input_shape, per_channel=ORT_PER_CHANNEL):
    """(serialized int8 ONNX model, output name): the float peer's graph, Gemm as MatMul, through
    onnxruntime.quantization.quantize_dynamic (QInt8 weights, MatMul and LSTM nodes)."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise Skip("onnxruntime's quantization tools are not installed (pip install 'shmrt[onnx]')")
    graph, out = _onnx_graph(model, input_shape)
    graph = gemm_as_matmul(graph)
    with tempfile.TemporaryDirectory() as d:
        src, dst = os.path.join(d, "float.onnx"), os.path.join(d, "int8.onnx")
        onnx.save(graph, src)
        # quantize_dynamic logs "consider pre-processing" on the root logger; its pre-processing (ORT's
        # basic optimiser) would fuse MatMul + Add back into a Gemm that stays float: not run, note muted
        muted = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul", "LSTM"], per_channel=per_channel,
                             weight_type=QuantType.QInt8)
        finally:
            logging.disable(muted)
        q = onnx.load(dst)
    if not any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM") for n in q.graph.node):
        raise Skip("onnxruntime's quantize_dynamic left no integer op in this graph (no MatMul or LSTM)")
    return q.SerializeToString(), out


def onnxruntime_int8_peer(model, threads, input_shape):
    try:
        import onnxruntime  # noqa: F401 (ort_session imports it)
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install 'shmrt[onnx]')")
    blob, out = ort_int8_model(model, input_shape)
    sess = ort_session(blob, threads)
    return Impl(lambda x: sess.run([out], {"x": np.ascontiguousarray(x, np.float32)})[0])


def torch_int8_module(model):
    """The float torch peer's module with its nn.Linear and nn.LSTM swapped for torch's dynamically
    quantized int8 modules."""
    net = torch_module(model)  # Skip without torch
    import torch
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao; the call is current
        warnings.simplefilter("ignore")
        q = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    if not any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in q.modules()):
        raise Skip("torch's quantize_dynamic left no int8 module in this network (no nn.Linear or nn.LSTM)")
    return q


def torch_int8_peer(model, threads, input_shape):
    net = torch_int8_module(model)
    import torch

    def run(x):
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return Impl(run, scope=lambda: torch_threads(threads))


# name -> (build(model, threads, input_shape) -> Impl, the weight format it runs)
QUANT_PEERS = {
    "onnxruntime int8": (onnxruntime_int8_peer, "int8"),
    "torch int8": (torch_int8_peer, "int8"),
}
