"""Loader: a live PyTorch ``nn.Module`` -> ``shmrt.Sequential`` or ``shmrt.Graph``.

``from_torch(module, input_shape=None)`` reads the module's graph with
``torch.fx.symbolic_trace`` (an ``nn.Sequential`` that does not trace is
walked child by child instead) and maps each step to a shmrt layer, copying
the parameters as float32 numpy arrays under PyTorch's names.  A forward
whose steps form a chain gives a Sequential; residual adds, branches joined
by torch.cat, gates (x * sigmoid(...)), a module called twice give a Graph.
Anything else (an unsupported module or function, a constant operand)
raises ValueError naming the node or module path, its type, and what is
supported.

Inference semantics, always: the result computes what ``module.eval()``
computes, whatever ``module.training`` says (Dropout is the identity,
BatchNorm uses running_mean / running_var).  The module is traced with its
submodules' training flags set to False and the flags are restored
afterwards; nothing else on the module changes, and nothing is unpickled.

torch is imported lazily: ``import shmrt`` never needs it.
"""
from __future__ import annotations

import numpy as np

from shmrt.frontends.chain import Chain
from shmrt.frontends.torch.calls import Calls
from shmrt.frontends.torch.graph import SUPPORTED_FUNCTIONS, SUPPORTED_MODULES, fn_name, is_inplace, module_graph, \
    torch_module
from shmrt.frontends.torch.hf import from_hf, is_hf
from shmrt.frontends.torch.modules import Modules
from shmrt.frontends.torch.quantized import QuantizedModules
from shmrt.frontends.torch.transformer import Sequences
from shmrt.ir import layers as L


def from_torch(module, input_shape=None, max_seq_len=None):
    """Convert a live ``torch.nn.Module`` (an ``nn.Sequential`` or a module
    whose forward applies supported layers and functions) into a
    ``shmrt.Sequential`` (a chain) or a ``shmrt.Graph``.

    input_shape: the per-sample input shape (batch excluded), e.g.
    ``(3, 32, 32)`` for a CNN or ``(T, F)`` for a recurrent model; it is
    stored on the Sequential (compile then needs none) and the converted
    model is checked against it.  Left out, a model whose first layer fixes
    its input (a Linear) infers it, and other models leave it to compile.
    The result has inference semantics (see the module docstring).

    A Hugging Face transformers model is read from its config and weights
    instead of traced (hf.py); max_seq_len: the length T of its text inputs
    (default config.max_position_embeddings)."""
    torch = torch_module()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    if is_hf(module):
        if input_shape is not None:
            raise TypeError(f"from_torch: a transformers {type(module).__name__} takes no input_shape: its inputs' "
                            f"shapes come from its config (text models: max_seq_len=)")
        return from_hf(module, max_seq_len)
    if max_seq_len is not None:
        raise TypeError("from_torch: max_seq_len is the sequence length of a Hugging Face model's inputs; a torch "
                        "module's sequences take their length from the inputs (rt.compile(..., max_seq_len=))")
    graph = module_graph(torch, module)
    conv = _Converter(torch, module, input_shape)
    chain = conv.run(graph)
    if not chain.layers:
        raise ValueError(f"from_torch: {type(module).__name__} has no layer to convert (only identities)")
    model = chain.model([(conv.val[n], tuple(input_shape) if input_shape is not None and i == 0 else None)
                         for i, n in enumerate(conv.inputs)], [conv.val[o] for o in conv.outputs],
                        names=conv.out_names)
    shape = model.input_shape()
    if shape is not None:
        try:
            model.shapes(shape)
        except ValueError as e:
            raise ValueError(f"from_torch: the converted {type(module).__name__} does not accept inputs of "
                             f"shape (N, {', '.join(map(str, shape))}): {e}") from e
    return model


class _Converter(Modules, QuantizedModules, Calls, Sequences):
    """One conversion: the fx graph walked node by node into the chain of layers."""

    def __init__(self, torch, root, input_shape):
        self.torch, self.nn, self.root = torch, torch.nn, root
        F = torch.nn.functional
        self.F = F
        # the layers and the activation's rank (batch included; None until an input_shape or a layer fixes it)
        self.chain = Chain(error=ValueError, prefix="from_torch: ",
                           rank=len(input_shape) + 1 if isinstance(input_shape, (tuple, list)) else None)
        self.kind = {}  # node -> "x" (a tensor), ("rnn"/"rnn_out"/"rnn_hc"/"rnn_h", spec),
        #                  "batch" (the batch size), "size" (another size), "attr", "zeros" (a zero state)
        self.cur = None  # the node of the latest step
        self.val = {}  # node -> the graph value its tensor is (a name)
        self.rank_of = {}  # node -> its tensor's rank, batch included (None: unknown)
        self.srcs = []  # the nodes the step being converted reads
        self.inputs = []  # the placeholders, in order
        fn = lambda *names: {f for f in (getattr(torch, n, None) for n in names) if f is not None} | {  # noqa: E731
            f for f in (getattr(F, n, None) for n in names) if f is not None}
        self.fn_act = {f: cls for cls in L.ACTIVATIONS for f in fn(cls.fn or cls.act)}  # F.relu6, torch.tanh, ...
        self.fn_softmax = {f: L.Softmax for f in fn("softmax")} | {f: L.LogSoftmax for f in fn("log_softmax")}
        self.fn_flatten = {torch.flatten}
        self.fn_reshape = {torch.reshape}
        self.fn_mean = {torch.mean}
        self.fn_squeeze = {torch.squeeze}
        self.fn_zeros = {torch.zeros}
        self.fn_cat = {f for f in (getattr(torch, "cat", None), getattr(torch, "concat", None)) if f is not None}
        self.fn_rearrange = {f: name for name in ("permute", "transpose", "narrow", "split", "chunk")
                             for f in [getattr(torch, name, None)] if f is not None}
        self.fn_binary = {f: cls for name, cls in (("add", L.Add), ("sub", L.Sub), ("mul", L.Mul), ("div", L.Div))
                          for f in [getattr(torch, name, None)] if f is not None}

    # -- messages -------------------------------------------------------------

    def where(self, node):
        if node.op == "call_module":
            m = self.root.get_submodule(node.target)
            return f"'{node.target or '(the module itself)'}' ({type(m).__name__})"
        if node.op == "call_function":
            return f"node '{node.name}' ({fn_name(node.target)})"
        if node.op == "call_method":
            return f"node '{node.name}' (Tensor.{node.target})"
        if node.op == "get_attr":
            return f"node '{node.name}' (attribute self.{node.target})"
        return f"node '{node.name}' ({node.op})"

    def fail(self, node, what):
        return self.chain.refusal(self.where(node), what)

    def unsupported(self, node):
        if node.op == "call_module":
            return self.fail(node, f"this module type is not supported; supported modules: {SUPPORTED_MODULES}")
        return self.fail(node, f"this operation is not supported; supported "
                               f"modules: {SUPPORTED_MODULES}; supported functions: {SUPPORTED_FUNCTIONS}")

    def make(self, node, cls, *args, **kw):
        try:
            return cls(*args, **kw)
        except (ValueError, TypeError) as e:
            raise self.fail(node, str(e)) from e

    def param(self, node, t, name):
        if t is None:
            return None
        t = t.detach()
        if t.is_meta:
            raise self.fail(node, f"{name} has no data (a meta tensor); materialise the module first")
        if not t.is_floating_point():
            raise self.fail(node, f"{name} must be a real floating-point tensor, got {t.dtype}")
        return np.array(t.to(device="cpu", dtype=self.torch.float32).contiguous().numpy(), dtype=np.float32,
                        copy=True)

    # -- the walk -------------------------------------------------------------

    def run(self, graph):
        nodes = list(graph.nodes)
        live = set()
        for n in reversed(nodes):
            if n.op == "output" or is_inplace(n, self.root) or any(u in live for u in n.users):
                live.add(n)
        self.live = live
        for n in nodes:
            if n not in live:
                continue
            getattr(self, "on_" + n.op)(n)
        return self.chain

    def on_placeholder(self, node):
        self.kind[node], self.cur = "x", node
        self.val[node], self.rank_of[node] = node.name, self.chain.rank
        self.inputs.append(node)

    def on_get_attr(self, node):
        self.kind[node] = "attr"

    def on_output(self, node):
        out = node.args[0]
        self.named = isinstance(out, dict)
        outs = list(out.values()) if self.named else list(out) if isinstance(out, (tuple, list)) else [out]
        self.out_names = list(out) if self.named else None
        for o in outs:
            if not hasattr(o, "op"):
                raise self.fail(node, f"the model returns {o!r}; expected tensors")
            k = self.kind[o]
            if isinstance(k, tuple) and k[0] == "rnn_out":
                self.resolve(k[1], True)
            elif k != "x":
                raise self.fail(o, "the model returns " + self.rnn_hint(k)[len("this is "):])
        self.outputs = outs

    _RNN_USES = ("supported: out, _ = rnn(x) then out or out[:, -1] (or out[:, -1, :]); _, h = rnn(x) "
                 "(LSTM: _, (h, c)) then h[-1] (or h.squeeze(0) for one layer)")

    def rnn_value(self, k):
        what = {"rnn": "the (output, h_n) tuple", "rnn_hc": "the (h_n, c_n) tuple", "rnn_h": "h_n [num_layers, N, H]",
                "rnn_out": "the output sequence"}
        return f"{what[k[0]]} of recurrent '{k[1]['path']}'"

    def rnn_hint(self, k):
        if not isinstance(k, tuple):
            return "expected a tensor of the chain"
        if k[0] == "attn":
            return (f"this is the (output, weights) tuple of MultiheadAttention '{k[1]['path']}'; expected "
                    f"out, _ = attn(x, x, x) or attn(x, x, x)[0]")
        return f"this is {self.rnn_value(k)}; {self._RNN_USES}"

    def is_aux(self, node):
        """A size query: x.size(...), x.shape (with getattr)."""
        return ((node.op == "call_method" and node.target in ("size", "dim")) or
                (node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",)))

    def take(self, node, *xs, raw=False):
        """``node`` reads the tensors ``xs`` (the outputs of earlier steps)."""
        for x in xs:
            if not hasattr(x, "op"):
                raise self.fail(node, f"expected a tensor input, got {x!r}")
            if self.kind.get(x) == "attr":
                raise self.fail(node, f"uses {self.where(x)}, a tensor of the module rather than the output of a "
                                      f"step; shmrt imports layers applied to the model's inputs")
            k = self.kind[x]
            if not raw:
                if isinstance(k, tuple) and k[0] == "rnn_out":
                    self.resolve(k[1], True)
                elif k != "x":
                    raise self.fail(node, self.rnn_hint(k))
        self.srcs = list(xs)
        self.chain.rank = self.rank_of.get(xs[0])
        self.cur = node
        self.kind[node] = "x"
        self.val[node], self.rank_of[node] = self.val.get(xs[0]), self.chain.rank

    def emit(self, node, layer, rank="same", flatten=False):
        """The step ``node`` is ``layer`` applied to what it took (None: the identity)."""
        if layer is not None:
            self.chain.emit(layer, rank=None if rank == "same" else rank,
                            inputs=[self.val[x] for x in self.srcs], output=node.name)
            self.val[node] = node.name
        self.rank_of[node] = self.chain.rank

    def resolve(self, spec, return_sequences):
        """A recurrent module's output is used: the whole sequence (the layer as emitted), or its last
        step (the layer then returns [N, H])."""
        if not return_sequences and not self.chain.take_last_step():
            raise self.fail(spec["node"], "its last step is taken after other layers ran (not a chain of layers)")
