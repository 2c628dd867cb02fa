"""Loader: a live PyTorch ``nn.Module`` -> ``shmrt.Sequential``.

``from_torch(module, input_shape=None)`` reads the module's graph with
``torch.fx.symbolic_trace`` (an ``nn.Sequential`` that does not trace is
walked child by child instead) and maps each step to a shmrt layer, copying
the parameters as float32 numpy arrays under PyTorch's names.  Only chains
convert: every step consumes the previous step's output and nothing else.
Anything else (an unsupported module or function, a branch or residual
add, a module called twice) raises ValueError naming the node or module
path, its type, and what is supported.

Inference semantics, always: the result computes what ``module.eval()``
computes, whatever ``module.training`` says (Dropout is the identity,
BatchNorm uses running_mean / running_var).  The module is traced with its
submodules' training flags set to False and the flags are restored
afterwards; nothing else on the module changes, and nothing is unpickled.

torch is imported lazily: ``import shmrt`` never needs it.
"""
from __future__ import annotations

import operator

import numpy as np

from shmrt.ir import layers as L

SUPPORTED_MODULES = (
    "nn.Linear, nn.Conv2d (padding_mode='zeros'), nn.BatchNorm1d, nn.BatchNorm2d (track_running_stats=True), "
    "nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.Softmax, nn.LogSoftmax, "
    "nn.Dropout, nn.Identity, "
    "nn.Flatten(1, -1), nn.MaxPool2d, nn.AvgPool2d (ceil_mode=False), nn.AdaptiveAvgPool2d(1) followed by a "
    "flatten, nn.LayerNorm (last dim), nn.RNN, nn.LSTM, nn.GRU (batch_first=True, one direction, proj_size=0)")
SUPPORTED_FUNCTIONS = (
    "torch.relu / F.relu / x.relu(), torch.sigmoid / x.sigmoid(), torch.tanh / x.tanh(), F.gelu, F.silu, "
    "F.hardswish, F.leaky_relu, "
    "torch.softmax / F.softmax / x.softmax(dim), F.log_softmax / x.log_softmax(dim) over the last dim, "
    "torch.flatten(x, 1) / x.flatten(1), x.view(x.size(0), -1) / x.reshape(x.shape[0], -1), "
    "x.mean((2, 3)) (global average pooling), F.dropout (eval), x.contiguous(), and after a recurrent "
    "module: out, _ = rnn(x) then out or out[:, -1]; _, h = rnn(x) (LSTM: _, (h, c)) then h[-1]")


def _torch():
    try:
        import torch
        import torch.fx  # noqa: F401
    except ImportError as e:
        raise ImportError('shmrt.from_torch needs PyTorch: pip install "shmrt[torch]"') from e
    return torch


def from_torch(module, input_shape=None) -> L.Sequential:
    """Convert a live ``torch.nn.Module`` (an ``nn.Sequential`` or a module
    whose forward is a chain of supported layers) into a ``shmrt.Sequential``.

    input_shape: the per-sample input shape (batch excluded), e.g.
    ``(3, 32, 32)`` for a CNN or ``(T, F)`` for a recurrent model; it is
    stored on the Sequential (compile then needs none) and the converted
    model is checked against it.  Left out, a model whose first layer fixes
    its input (a Linear) infers it, and other models leave it to compile.
    The result has inference semantics (see the module docstring)."""
    torch = _torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    graph = _graph(torch, module)
    layers = _Converter(torch, module, input_shape).run(graph)
    if not layers:
        raise ValueError(f"from_torch: {type(module).__name__} has no layer to convert (only identities)")
    model = L.Sequential(layers, input_shape=input_shape)
    shape = model.input_shape()
    if shape is not None:
        try:
            model.shapes(shape)
        except ValueError as e:
            raise ValueError(f"from_torch: the converted {type(module).__name__} does not accept inputs of "
                             f"shape (N, {', '.join(map(str, shape))}): {e}") from e
    return model


# -- the graph ---------------------------------------------------------------------

def _graph(torch, module):
    """The module's fx graph: traced with every training flag off, restored after."""
    nn = torch.nn
    if _module_kind(nn, module) is not None:  # a single supported layer: trace would open it up
        return _chain_graph(torch, [("", module)])
    flags = [(m, m.training) for m in module.modules()]
    try:
        for m, _ in flags:  # the flags only: a module's own train() may do more
            m.training = False
        try:
            return torch.fx.symbolic_trace(module).graph
        except Exception as e:
            if type(module) is nn.Sequential:
                return _chain_graph(torch, list(_sequential_children(nn, module, "")))
            raise ValueError(
                f"from_torch: torch.fx could not trace {type(module).__name__} ({type(e).__name__}: {e}); "
                f"shmrt imports an nn.Sequential or a module whose forward is a plain chain of layers") from e
    finally:
        for m, flag in flags:
            m.training = flag


def _sequential_children(nn, seq, prefix):
    for name, child in seq.named_children():
        path = f"{prefix}{name}"
        if type(child) is nn.Sequential:
            yield from _sequential_children(nn, child, path + ".")
        else:
            yield path, child


def _chain_graph(torch, items):
    """An fx graph calling the (path, module) items one after the other."""
    g = torch.fx.Graph()
    x = g.placeholder("x")
    for path, _ in items:
        x = g.call_module(path, (x,))
    g.output(x)
    return g


def _module_kind(nn, m):
    """The supported torch class ``m`` is (or subclasses without a forward of its own), or None."""
    table = _module_table(nn)
    for base in type(m).__mro__:
        if base in table:
            return base if type(m).forward is base.forward else None
    return None


def _module_table(nn):
    return {nn.Linear: "linear", nn.Conv2d: "conv2d", nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn",
            nn.ReLU: "act", nn.Sigmoid: "act", nn.Tanh: "act", nn.GELU: "act", nn.SiLU: "act", nn.Hardswish: "act",
            nn.LeakyReLU: "act", nn.Softmax: "softmax",
            nn.LogSoftmax: "softmax", nn.Dropout: "dropout", nn.Identity: "identity", nn.Flatten: "flatten",
            nn.MaxPool2d: "pool", nn.AvgPool2d: "pool", nn.AdaptiveAvgPool2d: "adaptive", nn.LayerNorm: "layernorm",
            nn.RNN: "rnn", nn.LSTM: "rnn", nn.GRU: "rnn"}


def _fn_name(fn):
    mod = getattr(fn, "__module__", None) or ""
    mod = {"_operator": "operator", "torch._C._VariableFunctions": "torch", "torch._C": "torch",
           "torch._tensor": "torch.Tensor"}.get(mod, mod)
    name = getattr(fn, "__name__", repr(fn))
    return f"{mod}.{name}" if mod else name


def _is_inplace(node, root):
    """A node whose effect is a mutation: never dropped as dead code."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        return node.kwargs.get("inplace") is True or getattr(node.target, "__name__", "").endswith("_")
    if node.op == "call_module":
        try:
            return getattr(root.get_submodule(node.target), "inplace", False) is True
        except AttributeError:
            return False
    return False


class _Converter:
    def __init__(self, torch, root, input_shape):
        self.torch, self.nn, self.root = torch, torch.nn, root
        F = torch.nn.functional
        self.F = F
        self.rank = len(input_shape) + 1 if isinstance(input_shape, (tuple, list)) else None
        self.layers = []
        self.kind = {}  # node -> "x" (a tensor of the chain), ("rnn"/"rnn_out"/"rnn_hc"/"rnn_h", spec),
        #                  "batch" (the batch size), "size" (another size), "attr"
        self.cur = None  # the node whose value the chain carries
        self.gap = None  # the AdaptiveAvgPool2d node waiting for its flatten
        self.called = {}  # module path -> node
        fn = lambda *names: {f for f in (getattr(torch, n, None) for n in names) if f is not None} | {  # noqa: E731
            f for f in (getattr(F, n, None) for n in names) if f is not None}
        self.fn_act = {}
        for names, cls in ((("relu",), L.ReLU), (("sigmoid",), L.Sigmoid), (("tanh",), L.Tanh), (("silu",), L.SiLU),
                           (("hardswish",), L.Hardswish)):
            for f in fn(*names):
                self.fn_act[f] = cls
        self.fn_softmax = {f: L.Softmax for f in fn("softmax")} | {f: L.LogSoftmax for f in fn("log_softmax")}
        self.fn_flatten = {torch.flatten}
        self.fn_reshape = {torch.reshape}
        self.fn_mean = {torch.mean}
        self.fn_squeeze = {torch.squeeze}

    # -- messages -------------------------------------------------------------

    def where(self, node):
        if node.op == "call_module":
            m = self.root.get_submodule(node.target)
            return f"'{node.target or '(the module itself)'}' ({type(m).__name__})"
        if node.op == "call_function":
            return f"node '{node.name}' ({_fn_name(node.target)})"
        if node.op == "call_method":
            return f"node '{node.name}' (Tensor.{node.target})"
        if node.op == "get_attr":
            return f"node '{node.name}' (attribute self.{node.target})"
        return f"node '{node.name}' ({node.op})"

    def fail(self, node, what):
        return ValueError(f"from_torch: {self.where(node)}: {what}")

    def unsupported(self, node):
        if node.op == "call_module":
            return self.fail(node, f"this module type is not supported; supported modules: {SUPPORTED_MODULES}")
        return self.fail(node, f"this operation is not supported (shmrt imports a chain of layers); supported "
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
            if n.op == "output" or _is_inplace(n, self.root) or any(u in live for u in n.users):
                live.add(n)
        self.live = live
        for n in nodes:
            if n not in live:
                continue
            getattr(self, "on_" + n.op)(n)
        return self.layers

    def on_placeholder(self, node):
        if self.cur is not None:
            raise self.fail(node, "forward uses a second input; shmrt models take one input tensor")
        self.kind[node], self.cur = "x", node

    def on_get_attr(self, node):
        self.kind[node] = "attr"

    def on_output(self, node):
        out = node.args[0]
        if out is not self.cur:
            raise self.fail(node, f"the model returns {out!r}, not the output of its last step; shmrt models "
                                  f"return one tensor from a chain of layers")
        k = self.kind[out]
        if isinstance(k, tuple) and k[0] == "rnn_out":
            self.resolve(k[1], True)
        elif k != "x":
            raise self.fail(out, "the model returns " + self.rnn_hint(k)[len("this is "):])
        if self.gap is not None:
            raise self.gap_error(self.gap)

    _RNN_USES = ("supported: out, _ = rnn(x) then out or out[:, -1] (or out[:, -1, :]); _, h = rnn(x) "
                 "(LSTM: _, (h, c)) then h[-1] (or h.squeeze(0) for one layer)")

    def rnn_value(self, k):
        what = {"rnn": "the (output, h_n) tuple", "rnn_hc": "the (h_n, c_n) tuple", "rnn_h": "h_n [num_layers, N, H]",
                "rnn_out": "the output sequence"}
        return f"{what[k[0]]} of recurrent '{k[1]['path']}'"

    def rnn_hint(self, k):
        if not isinstance(k, tuple):
            return "expected a tensor of the chain"
        return f"this is {self.rnn_value(k)}; {self._RNN_USES}"

    def gap_error(self, node):
        return self.fail(node, "gives [N, C, 1, 1] while shmrt's GlobalAvgPool gives [N, C]: follow it "
                               "with a flatten (nn.Flatten(), torch.flatten(x, 1) or x.view(x.size(0), -1))")

    def check_single_use(self, x):
        users = [u for u in x.users if u in self.live and not self.is_aux(u)]
        if len(users) > 1:
            names = ", ".join(self.where(u) for u in users)
            raise ValueError(f"from_torch: the output of {self.where(x)} is used by {len(users)} steps ({names}): "
                             f"branches and residual connections are not supported; shmrt imports a chain of "
                             f"layers (supported modules: {SUPPORTED_MODULES})")

    def is_aux(self, node):
        """A size query: x.size(...), x.shape (with getattr)."""
        return ((node.op == "call_method" and node.target in ("size", "dim")) or
                (node.op == "call_function" and node.target is getattr and node.args[1:2] == ("shape",)))

    def take(self, node, x, raw=False):
        """``node`` consumes the chain's current value ``x``."""
        if not hasattr(x, "op"):
            raise self.fail(node, f"expected a tensor input, got {x!r}")
        if x is not self.cur:
            if self.kind.get(x) == "attr":
                raise self.fail(node, f"uses {self.where(x)}, a tensor of the module rather than the output of the "
                                      f"previous step; shmrt imports a chain of layers")
            raise self.fail(node, f"its input {self.where(x)} is not the output of the previous step "
                                  f"({self.where(self.cur)}): branches and residual connections are not supported")
        self.check_single_use(x)
        k = self.kind[x]
        if not raw:
            if isinstance(k, tuple) and k[0] == "rnn_out":
                self.resolve(k[1], True)
            elif k != "x":
                raise self.fail(node, self.rnn_hint(k))
        self.cur = node
        self.kind[node] = "x"

    def emit(self, node, layer, rank="same", flatten=False):
        if self.gap is not None:  # [N, C, 1, 1] in torch, [N, C] in shmrt: only a flatten may reshape it
            if flatten:
                self.gap, self.rank = None, 2
                return
            if layer is not None and not isinstance(layer, (L._Elementwise, L.Dropout)):
                raise self.gap_error(self.gap)
        if layer is not None:
            self.layers.append(layer)
        if rank != "same":
            self.rank = rank

    def resolve(self, spec, return_sequences):
        if spec["layer"] is None:
            spec["layer"] = self.make(spec["node"], spec["cls"], return_sequences=return_sequences, **spec["kw"])
            self.layers[spec["index"]] = spec["layer"]
            self.rank = 3 if return_sequences else 2

    # -- modules ---------------------------------------------------------------

    def on_call_module(self, node):
        m = self.root.get_submodule(node.target)
        kind = _module_kind(self.nn, m)
        if kind is None:
            raise self.unsupported(node)
        if node.target in self.called:
            raise self.fail(node, f"is called more than once (by '{self.called[node.target].name}' and "
                                  f"'{node.name}'); shmrt imports each module once, in a chain")
        self.called[node.target] = node
        if len(node.args) != 1 or node.kwargs:
            extra = "an initial state" if _module_table(self.nn)[kind] == "rnn" else "extra arguments"
            raise self.fail(node, f"is called with {extra}; shmrt supports module(x) with one input tensor")
        getattr(self, "mod_" + _module_table(self.nn)[kind])(node, m, kind)

    def mod_linear(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, self.make(node, L.Linear, m.in_features, m.out_features,
                                  bias=False if m.bias is None else self.param(node, m.bias, "bias"),
                                  weight=self.param(node, m.weight, "weight")), rank=2)

    def mod_conv2d(self, node, m, kind):
        self.take(node, node.args[0])
        if m.padding_mode != "zeros":
            raise self.fail(node, f"padding_mode={m.padding_mode!r} is not supported; only 'zeros'")
        self.emit(node, self.make(node, L.Conv2d, m.in_channels, m.out_channels, tuple(m.kernel_size),
                                  stride=tuple(m.stride),
                                  padding=m.padding if isinstance(m.padding, str) else tuple(m.padding),
                                  dilation=tuple(m.dilation), groups=m.groups,
                                  bias=False if m.bias is None else self.param(node, m.bias, "bias"),
                                  weight=self.param(node, m.weight, "weight")), rank=4)

    def mod_bn(self, node, m, kind):
        self.take(node, node.args[0])
        if not m.track_running_stats or m.running_mean is None or m.running_var is None:
            raise self.fail(node, "track_running_stats must be True (inference uses running_mean and running_var)")
        cls = L.BatchNorm2d if kind is self.nn.BatchNorm2d else L.BatchNorm1d
        p = {k: self.param(node, getattr(m, k), k) for k in ("weight", "bias", "running_mean", "running_var")}
        self.emit(node, self.make(node, cls, m.num_features, eps=m.eps, **p),
                  rank=4 if cls is L.BatchNorm2d else 2)

    def mod_act(self, node, m, kind):
        self.take(node, node.args[0])
        nn = self.nn
        if kind is nn.GELU:
            layer = self.make(node, L.GELU, approximate=m.approximate)
        elif kind is nn.LeakyReLU:
            layer = self.make(node, L.LeakyReLU, negative_slope=m.negative_slope)
        else:
            layer = {nn.ReLU: L.ReLU, nn.Sigmoid: L.Sigmoid, nn.Tanh: L.Tanh, nn.SiLU: L.SiLU,
                     nn.Hardswish: L.Hardswish}[kind]()
        self.emit(node, layer)

    def mod_softmax(self, node, m, kind):
        self.take(node, node.args[0])
        cls = L.Softmax if kind is self.nn.Softmax else L.LogSoftmax
        self.emit(node, self.softmax(node, cls, m.dim))

    def softmax(self, node, cls, dim):
        last = dim == -1 or (self.rank is not None and isinstance(dim, int) and dim in (self.rank - 1, -1))
        if dim is None and self.rank == 2:
            last = True  # PyTorch's implicit dim for 2-D inputs is 1
        if not last:
            rank = "an input of unknown rank (pass input_shape)" if self.rank is None else f"a {self.rank}-D input"
            raise self.fail(node, f"dim={dim!r} on {rank}: only the last (feature) dim is supported")
        return cls(dim=-1)

    def mod_dropout(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, L.Dropout(float(m.p)))

    def mod_identity(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, None)

    def mod_flatten(self, node, m, kind):
        self.take(node, node.args[0])
        self.flatten(node, m.start_dim, m.end_dim)

    def flatten(self, node, start, end):
        if start != 1 or end != -1:
            raise self.fail(node, f"flatten over dims ({start}, {end}) is not supported; only start_dim=1, "
                                  f"end_dim=-1 (keep the batch axis)")
        self.emit(node, L.Flatten(), rank=2, flatten=True)

    def mod_pool(self, node, m, kind):
        self.take(node, node.args[0])
        if m.ceil_mode:
            raise self.fail(node, "ceil_mode=True is not supported")
        if kind is self.nn.MaxPool2d:
            if m.return_indices:
                raise self.fail(node, "return_indices=True is not supported")
            layer = self.make(node, L.MaxPool2d, m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation)
        else:
            if m.divisor_override is not None:
                raise self.fail(node, f"divisor_override={m.divisor_override!r} is not supported; only None")
            layer = self.make(node, L.AvgPool2d, m.kernel_size, stride=m.stride, padding=m.padding,
                              count_include_pad=m.count_include_pad)
        self.emit(node, layer, rank=4)

    def mod_adaptive(self, node, m, kind):
        self.take(node, node.args[0])
        size = m.output_size
        if not all(s == 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
            raise self.fail(node, f"output_size={size!r} is not supported; only 1 (global average pooling)")
        self.emit(node, L.GlobalAvgPool(), rank=4)
        self.gap = node

    def mod_layernorm(self, node, m, kind):
        self.take(node, node.args[0])
        if len(m.normalized_shape) != 1:
            raise self.fail(node, f"normalized_shape={tuple(m.normalized_shape)} is not supported; only the last dim")
        self.emit(node, self.make(node, L.LayerNorm, m.normalized_shape[0], eps=m.eps,
                                  elementwise_affine=m.elementwise_affine,
                                  weight=self.param(node, m.weight, "weight"),
                                  bias=self.param(node, m.bias, "bias")))

    def mod_rnn(self, node, m, kind):
        self.take(node, node.args[0])
        if self.gap is not None:
            raise self.gap_error(self.gap)
        nn = self.nn
        if not m.batch_first:
            raise self.fail(node, "batch_first=False is not supported; shmrt's layout is batch-first "
                                  "[N, T, F]: build it with batch_first=True")
        if m.bidirectional:
            raise self.fail(node, "bidirectional=True is not supported; only one direction")
        if getattr(m, "proj_size", 0):
            raise self.fail(node, f"proj_size={m.proj_size} is not supported; only 0")
        kw = dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers, bias=bool(m.bias))
        if kind is nn.RNN:
            kw["nonlinearity"] = m.nonlinearity
        names = [f"{w}_{g}_l{k}" for k in range(m.num_layers) for w in ("weight", "bias") for g in ("ih", "hh")
                 if w == "weight" or m.bias]
        for name in names:
            kw[name] = self.param(node, getattr(m, name), name)
        cls = {nn.RNN: L.RNN, nn.LSTM: L.LSTM, nn.GRU: L.GRU}[kind]
        spec = {"path": node.target, "node": node, "cls": cls, "kw": kw, "layer": None,
                "index": len(self.layers), "layers": m.num_layers, "lstm": kind is nn.LSTM}
        self.layers.append(None)  # placed when return_sequences is known
        self.kind[node] = ("rnn", spec)

    # -- functions and methods -------------------------------------------------------

    def bind(self, node, names, defaults=None, method=False):
        """node's arguments by name: names[0] is the input tensor."""
        vals = dict(defaults or {})
        if len(node.args) > len(names):
            raise self.fail(node, f"unexpected arguments {node.args[len(names):]!r}")
        vals.update(zip(names, node.args))
        for k, v in node.kwargs.items():
            if k not in names or (method and k == names[0]):
                raise self.fail(node, f"unexpected argument {k}={v!r}")
            vals[k] = v
        return vals

    def on_call_function(self, node):
        t = node.target
        if t is getattr and node.args[1:2] == ("shape",):
            self.kind[node] = "shape"
        elif t is operator.getitem:
            self.getitem(node)
        elif t in self.fn_act:
            a = self.bind(node, ("input", "inplace"), {"inplace": False})
            self.take(node, a["input"])
            self.emit(node, self.fn_act[t]())
        elif t is self.F.leaky_relu:
            a = self.bind(node, ("input", "negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False})
            self.take(node, a["input"])
            self.emit(node, self.make(node, L.LeakyReLU, negative_slope=a["negative_slope"]))
        elif t is self.F.gelu:
            a = self.bind(node, ("input", "approximate"), {"approximate": "none"})
            self.take(node, a["input"])
            self.emit(node, self.make(node, L.GELU, approximate=a["approximate"]))
        elif t in self.fn_softmax:
            names = ("input", "dim", "_stacklevel", "dtype") if t in (self.F.softmax, self.F.log_softmax) else (
                "input", "dim", "dtype")
            a = self.bind(node, names, {"dim": None, "dtype": None})
            self.softmax_call(node, self.fn_softmax[t], a)
        elif t in self.fn_flatten:
            a = self.bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
            self.take(node, a["input"])
            self.flatten(node, a["start_dim"], a["end_dim"])
        elif t in self.fn_reshape:
            a = self.bind(node, ("input", "shape"))
            self.take(node, a["input"])
            self.reshape(node, a["shape"])
        elif t in self.fn_mean:
            a = self.bind(node, ("input", "dim", "keepdim", "dtype"), {"keepdim": False, "dtype": None})
            self.take(node, a["input"])
            self.mean(node, a)
        elif t in self.fn_squeeze:
            a = self.bind(node, ("input", "dim"), {"dim": None})
            self.squeeze(node, a)
        elif t is self.F.dropout:
            a = self.bind(node, ("input", "p", "training", "inplace"), {"p": 0.5, "training": True})
            if a["training"] is not False:
                raise self.fail(node, "F.dropout is supported only with training=False (or training=self.training, "
                                      "which is False while from_torch traces)")
            self.take(node, a["input"])
            self.emit(node, None)
        else:
            raise self.unsupported(node)

    def on_call_method(self, node):
        t = node.target
        if t == "size":
            a = self.bind(node, ("self", "dim"), {"dim": None}, method=True)
            self.kind[node] = "batch" if a["dim"] == 0 else ("shape" if a["dim"] is None else "size")
            return
        acts = {"relu": L.ReLU, "sigmoid": L.Sigmoid, "tanh": L.Tanh, "relu_": L.ReLU, "sigmoid_": L.Sigmoid,
                "tanh_": L.Tanh}
        if t in acts:
            self.bind(node, ("self",), method=True)
            self.take(node, node.args[0])
            self.emit(node, acts[t]())
        elif t in ("softmax", "log_softmax"):
            a = self.bind(node, ("self", "dim", "dtype"), {"dim": None, "dtype": None}, method=True)
            a["input"] = a["self"]
            self.softmax_call(node, L.Softmax if t == "softmax" else L.LogSoftmax, a)
        elif t == "flatten":
            a = self.bind(node, ("self", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}, method=True)
            self.take(node, node.args[0])
            self.flatten(node, a["start_dim"], a["end_dim"])
        elif t in ("view", "reshape"):
            if node.kwargs or len(node.args) < 2:
                raise self.fail(node, f"unexpected arguments {node.args[1:]!r} {node.kwargs!r}")
            self.take(node, node.args[0])
            shape = node.args[1] if len(node.args) == 2 else node.args[1:]
            self.reshape(node, shape)
        elif t == "mean":
            a = self.bind(node, ("self", "dim", "keepdim", "dtype"), {"dim": None, "keepdim": False, "dtype": None},
                          method=True)
            self.take(node, node.args[0])
            self.mean(node, a)
        elif t == "squeeze":
            a = self.bind(node, ("self", "dim"), {"dim": None}, method=True)
            a["input"] = a["self"]
            self.squeeze(node, a)
        elif t == "contiguous":
            self.bind(node, ("self", "memory_format"), method=True)
            self.take(node, node.args[0])
            self.emit(node, None)
        else:
            raise self.unsupported(node)

    def softmax_call(self, node, cls, a):
        if a.get("dtype") is not None:
            raise self.fail(node, f"dtype={a['dtype']!r} is not supported; float32 is the compute type")
        self.take(node, a["input"])
        self.emit(node, self.softmax(node, cls, a["dim"]))

    def reshape(self, node, shape):
        ok = (isinstance(shape, (tuple, list)) and len(shape) == 2 and shape[1] == -1
              and hasattr(shape[0], "op") and self.kind.get(shape[0]) == "batch")
        if not ok:
            raise self.fail(node, f"reshape to {shape!r} is not supported; only a flatten that keeps the batch "
                                  f"axis: x.view(x.size(0), -1) or x.reshape(x.shape[0], -1)")
        self.emit(node, L.Flatten(), rank=2, flatten=True)

    def mean(self, node, a):
        dim = a["dim"]
        dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        if a["dtype"] is not None or a["keepdim"] or sorted(dims) not in ([2, 3], [-2, -1]) or self.rank not in (
                4, None):
            raise self.fail(node, f"mean(dim={dim!r}, keepdim={a['keepdim']!r}) is not supported; only "
                                  f"x.mean((2, 3)) over the spatial dims of [N, C, H, W] (global average pooling)")
        self.emit(node, L.GlobalAvgPool(), rank=2)

    def squeeze(self, node, a):
        x = a["input"]
        k = self.kind.get(x) if hasattr(x, "op") else None
        if isinstance(k, tuple) and k[0] == "rnn_h" and a["dim"] == 0 and k[1]["layers"] == 1:
            self.take(node, x, raw=True)
            self.resolve(k[1], False)
            return
        raise self.fail(node, "squeeze is supported only as h_n.squeeze(0) on the state of a one-layer "
                              "recurrent module")

    def getitem(self, node):
        x, idx = node.args
        k = self.kind.get(x)
        if k in ("shape",):
            self.kind[node] = "batch" if idx == 0 else "size"
            return
        if not isinstance(k, tuple):
            raise self.fail(node, f"indexing x[{_fmt_index(idx)}] is not supported here; indexing is supported "
                                  f"only on a recurrent module's outputs: {self._RNN_USES}")
        what, spec = k
        self.take(node, x, raw=True)
        if what == "rnn" and idx in (0, 1):
            self.kind[node] = ("rnn_out", spec) if idx == 0 else (("rnn_hc" if spec["lstm"] else "rnn_h"), spec)
        elif what == "rnn_hc" and idx == 0:
            self.kind[node] = ("rnn_h", spec)
        elif what == "rnn_h" and isinstance(idx, int) and idx in (-1, spec["layers"] - 1):
            self.resolve(spec, False)
        elif what == "rnn_out" and _is_last_step(idx):
            self.resolve(spec, False)
        else:
            raise self.fail(node, f"[{_fmt_index(idx)}] on {self.rnn_value(k)} is not supported; {self._RNN_USES}")


def _is_last_step(idx):
    full = slice(None, None, None)
    return isinstance(idx, tuple) and len(idx) in (2, 3) and idx[0] == full and idx[1] == -1 and (
        len(idx) == 2 or idx[2] == full)


def _fmt_index(idx):
    def one(i):
        if isinstance(i, slice):
            ends = ("" if v is None else getattr(v, "name", v) for v in (i.start, i.stop))
            return ":".join(map(str, ends))
        return getattr(i, "name", repr(i))
    return ", ".join(map(one, idx)) if isinstance(idx, tuple) else one(idx)
