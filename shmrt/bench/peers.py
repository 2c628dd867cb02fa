"""Peers for the benchmark: the same workload models in numpy, ONNX Runtime and
PyTorch, built from the same parameters, each at a given thread count.

A peer that is not installed is skipped with a note, never faked.  Each
``build`` returns an ``Impl``: ``run(x) -> numpy output``, ``close()``, and
``scope()``, a context entered around each stretch of calls (numpy's BLAS
thread limit applies only inside it, so peers can be interleaved).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from shmrt.bench.workloads import numpy_forward
from shmrt.frontends.chain import reorder_gates
from shmrt.ir import layers as L


class Skip(Exception):
    """This peer cannot run here (not installed, or no such op); the message says why."""


@dataclass
class Impl:
    run: Callable
    close: Callable = lambda: None
    scope: Callable = contextlib.nullcontext


def numpy_peer(model, threads):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise Skip("threadpoolctl is not installed (pip install threadpoolctl): cannot set numpy's threads")
    return Impl(lambda x: numpy_forward(model, x), scope=lambda: threadpool_limits(threads, user_api="blas"))


# -- ONNX Runtime ------------------------------------------------------------------

def _onnx_graph(model, input_shape):
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        raise Skip("onnx is not installed (pip install 'shmrt[onnx]')")
    nodes, inits, n = [], [], [0]

    def name(prefix):
        n[0] += 1
        return f"{prefix}{n[0]}"

    def const(arr, prefix="c"):
        t = numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name(prefix))
        inits.append(t)
        return t.name

    g = _graph(model)
    names = {g.inputs[0][0]: "x"}
    for node in g.nodes:
        l, ins_ = node.layer, [names[v] for v in node.inputs]
        cur = ins_[0]
        out = names[node.output] = name("t")
        if isinstance(l, L.Linear):
            ins = [cur, const(l.params["weight"])] + ([const(l.params["bias"])] if "bias" in l.params else [])
            nodes.append(helper.make_node("Gemm", ins, [out], transB=1))
        elif isinstance(l, (L.ReLU, L.Sigmoid, L.Tanh)):
            nodes.append(helper.make_node({L.ReLU: "Relu", L.Sigmoid: "Sigmoid", L.Tanh: "Tanh"}[type(l)], [cur], [out]))
        elif isinstance(l, L.ReLU6):
            nodes.append(helper.make_node("Clip", [cur, const(np.float32(0)), const(np.float32(6))], [out]))
        elif isinstance(l, L.Softmax):
            nodes.append(helper.make_node("Softmax", [cur], [out], axis=1))
        elif isinstance(l, L.BatchNorm2d):
            p = l.params
            nodes.append(helper.make_node("BatchNormalization", [cur] + [const(p[k]) for k in (
                "weight", "bias", "running_mean", "running_var")], [out], epsilon=l.eps))
        elif isinstance(l, L._Binary):
            nodes.append(helper.make_node(l.op.title(), ins_, [out]))
        elif isinstance(l, L.Concat):
            nodes.append(helper.make_node("Concat", ins_, [out], axis=l.dim))
        elif isinstance(l, L.AdaptiveAvgPool2d) and l.output_size == (1, 1):
            nodes.append(helper.make_node("GlobalAveragePool", [cur], [out]))
        elif isinstance(l, L.Conv2d):
            ins = [cur, const(l.params["weight"])] + ([const(l.params["bias"])] if "bias" in l.params else [])
            nodes.append(helper.make_node("Conv", ins, [out], kernel_shape=list(l.kernel_size), strides=list(l.stride),
                                          pads=list(l.pads), dilations=list(l.dilation), group=l.groups))
        elif isinstance(l, L.MaxPool2d):
            nodes.append(helper.make_node("MaxPool", [cur], [out], kernel_shape=list(l.kernel_size),
                                          strides=list(l.stride), pads=list(l.pads), dilations=list(l.dilation),
                                          ceil_mode=int(l.ceil_mode)))
        elif isinstance(l, L.Flatten):
            nodes.append(helper.make_node("Flatten", [cur], [out], axis=1))
        elif isinstance(l, L.LSTM) and l.num_layers == 1 and not l.return_sequences:
            H = l.hidden_size

            def iofc(a):  # PyTorch gates i, f, g, o -> ONNX i, o, f, c, with ONNX's leading direction axis
                return reorder_gates(a, "LSTM", src="torch", dst="onnx")[None]

            p = l.params
            b = np.concatenate([iofc(p["bias_ih_l0"])[0], iofc(p["bias_hh_l0"])[0]])[None] if l.bias else None
            xt = name("t")
            nodes.append(helper.make_node("Transpose", [cur], [xt], perm=[1, 0, 2]))  # [N, T, F] -> [T, N, F]
            ins = [xt, const(iofc(p["weight_ih_l0"])), const(iofc(p["weight_hh_l0"]))] + ([const(b)] if b is not None else [])
            hn = name("t")
            nodes.append(helper.make_node("LSTM", ins, ["", hn], hidden_size=H))
            nodes.append(helper.make_node("Squeeze", [hn, const_i64(inits, name, [0])], [out]))
        else:
            raise Skip(f"no ONNX graph for {l!r} in the peer harness")
    cur = names[g.outputs[0]]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])
    y_info = helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", *g.shapes(tuple(input_shape))[g.outputs[0]]])
    graph = helper.make_graph(nodes, "shmrt_peer", [x_info], [y_info], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m, cur


def const_i64(inits, name, values):
    from onnx import numpy_helper
    t = numpy_helper.from_array(np.asarray(values, np.int64), name("i"))
    inits.append(t)
    return t.name


def onnxruntime_peer(model, threads, input_shape):
    try:
        import onnxruntime  # noqa: F401 (ort_session imports it)
    except ImportError:
        raise Skip("onnxruntime is not installed (pip install 'shmrt[onnx]')")
    graph, out = _onnx_graph(model, input_shape)
    sess = ort_session(graph.SerializeToString(), threads)
    return Impl(lambda x: sess.run([out], {"x": np.ascontiguousarray(x, np.float32)})[0])


def ort_session(onnx_bytes, threads):
    """An ONNX Runtime CPU session of a serialized model at ``threads`` intra-op threads (and one
    inter-op thread): every ONNX Runtime peer's settings."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])


# -- PyTorch -----------------------------------------------------------------------

def torch_peer(model, threads):
    import torch
    net = torch_module(model)

    def run(x):
        with torch.inference_mode():
            return net(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()

    return Impl(run, scope=lambda: torch_threads(threads))


def torch_module(model):
    """The workload as an eval-mode torch nn.Module on the same float32 parameters (BatchNorm folded into
    its convolution where torch.fx can): the torch peers' network."""
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install torch==2.13.0)")
    nn = torch.nn
    g = _graph(model)
    mods = []
    for l in g.layers:
        p = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in l.params.items()}
        if isinstance(l, L.Linear):
            m = nn.Linear(l.in_features, l.out_features, bias="bias" in p)
        elif isinstance(l, (L.Conv2d, L._Pool2d)) and l.padding is None:
            raise Skip(f"{l!r}: asymmetric padding has no torch module in the peer harness")
        elif isinstance(l, L.Conv2d):
            m = nn.Conv2d(l.in_channels, l.out_channels, l.kernel_size, l.stride, l.padding, l.dilation, l.groups,
                          bias="bias" in p)
        elif isinstance(l, L.LSTM):
            inner = nn.LSTM(l.input_size, l.hidden_size, l.num_layers, bias=l.bias, batch_first=True)
            inner.load_state_dict(p)
            last = not l.return_sequences

            class _Last(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lstm = inner

                def forward(self, x):
                    y = self.lstm(x)[0]
                    return y[:, -1] if last else y

            mods.append(_Last())
            continue
        elif isinstance(l, L.ReLU):
            m = nn.ReLU()
        elif isinstance(l, L.ReLU6):
            m = nn.ReLU6()
        elif isinstance(l, L.BatchNorm2d):
            m = nn.BatchNorm2d(l.features, eps=l.eps)
            p["num_batches_tracked"] = torch.tensor(0)
        elif isinstance(l, L._Binary):
            m = _Binary(getattr(torch, l.op))
        elif isinstance(l, L.Concat):
            m = _Binary(lambda *xs, dim=l.dim: torch.cat(xs, dim))
        elif isinstance(l, L.AdaptiveAvgPool2d):
            m = nn.AdaptiveAvgPool2d(l.output_size)
        elif isinstance(l, L.Sigmoid):
            m = nn.Sigmoid()
        elif isinstance(l, L.Softmax):
            m = nn.Softmax(dim=1)
        elif isinstance(l, L.MaxPool2d):
            m = nn.MaxPool2d(l.kernel_size, l.stride, l.padding, l.dilation, ceil_mode=l.ceil_mode)
        elif isinstance(l, L.Flatten):
            m = nn.Flatten()
        else:
            raise Skip(f"no torch module for {l!r} in the peer harness")
        if p:
            m.load_state_dict(p)
        mods.append(m)
    net = _GraphModule(nn, g, mods).eval()
    try:  # what a user after speed does in eager PyTorch: fold each BatchNorm into its convolution
        with warnings.catch_warnings():  # the module imports torch.jit, deprecated; the pass is not
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse
        net = fuse(net)
    except Exception:  # noqa: BLE001 (an older torch without the pass: the graph as it is)
        pass
    return net


@contextlib.contextmanager
def torch_threads(threads):
    """torch at ``threads`` intra-op threads inside (every torch peer's setting), as before after."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _graph(model):
    return model if isinstance(model, L.Graph) else L.Graph.chain(model)


def _Binary(fn):
    import torch

    class Op(torch.nn.Module):
        def forward(self, *xs):
            return fn(*xs)
    return Op()


def _GraphModule(nn, g, mods):
    """An nn.Module running graph g's nodes with modules mods (one per node), in order."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = nn.ModuleList(mods)

        def forward(self, x):
            vals = {g.inputs[0][0]: x}
            for node, m in zip(g.nodes, self.steps):
                vals[node.output] = m(*(vals[v] for v in node.inputs))
            return vals[g.outputs[0]]
    return Net()


PEERS = {
    "numpy": lambda model, threads, shape: numpy_peer(model, threads),
    "onnxruntime": onnxruntime_peer,
    "torch": lambda model, threads, shape: torch_peer(model, threads),
}
