"""Reading a live torch module as a torch.fx graph, and the tables of what shmrt imports.

torch is imported lazily: ``import shmrt`` never needs it."""
from __future__ import annotations

from shmrt.frontends.torch.quantized import QUANTIZED_MODULES, quantized_table
from shmrt.frontends.torch.transformer import SEQUENCE_FUNCTIONS, SEQUENCE_MODULES, bare_graph
from shmrt.ir import layers as L

# the activations: nn.<class name> and F.<fn or act> for every class of L.ACTIVATIONS
_ACT_MODULES = ", ".join(f"nn.{c.__name__}" for c in L.ACTIVATIONS)
_ACT_FUNCTIONS = ", ".join(f"F.{c.fn or c.act}" for c in L.ACTIVATIONS
                           if (c.fn or c.act) not in ("relu", "sigmoid", "tanh"))
SUPPORTED_MODULES = (
    "nn.Linear, nn.Conv2d, nn.ConvTranspose2d (padding_mode='zeros'), nn.BatchNorm1d, nn.BatchNorm2d (track_running_stats=True), "
    f"{_ACT_MODULES}, nn.Softmax, nn.LogSoftmax, nn.Dropout, nn.Identity, "
    "nn.Flatten(1, -1), nn.MaxPool2d, nn.AvgPool2d (divisor_override=None), nn.AdaptiveAvgPool2d, "
    "nn.AdaptiveMaxPool2d (return_indices=False), "
    "nn.Upsample (nearest, bilinear; integer scale_factor or size), nn.LayerNorm (trailing dims), nn.RNN, nn.LSTM, nn.GRU (batch_first=True, one direction, proj_size=0; an initial "
    "state of zeros), " + SEQUENCE_MODULES + ", " + QUANTIZED_MODULES)
SUPPORTED_FUNCTIONS = (
    f"torch.relu / F.relu / x.relu(), torch.sigmoid / x.sigmoid(), torch.tanh / x.tanh(), {_ACT_FUNCTIONS}, "
    "torch.softmax / F.softmax / x.softmax(dim), F.log_softmax / x.log_softmax(dim) over the last dim, "
    "torch.flatten(x, 1) / x.flatten(1), x.view(x.size(0), -1) / x.reshape(x.shape[0], -1), "
    "x.mean((2, 3)) (global average pooling), F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.interpolate, F.dropout (eval), "
    "x.contiguous(), x.permute / torch.permute, x.transpose / torch.transpose, x.narrow / torch.narrow, "
    "x.split / torch.split and x.chunk / torch.chunk (pieces taken by index), x[:, a:b, ::s] (int slices), "
    "x + y / x - y / x * y / x / y of two tensors (torch.add, x.add, +=, ...), torch.cat([...], dim >= 1), "
    "torch.zeros(num_layers, x.size(0), hidden) as a recurrent initial state, and after a recurrent "
    "module: out, _ = rnn(x) then out or out[:, -1]; _, h = rnn(x) (LSTM: _, (h, c)) then h[-1]; " + SEQUENCE_FUNCTIONS)


def torch_module():
    try:
        import torch
        import torch.fx  # noqa: F401
    except ImportError as e:
        raise ImportError('shmrt.from_torch needs PyTorch: pip install "shmrt[torch]"') from e
    return torch


def module_graph(torch, module):
    """The module's fx graph: traced with every training flag off, restored after."""
    nn = torch.nn
    kind = module_kind(nn, module)
    if kind is not None:  # a single supported layer: trace would open it up
        return bare_graph(torch, module_table(nn)[kind]) or _chain_graph(torch, [("", module)])
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


def module_kind(nn, m):
    """The supported torch class ``m`` is (or subclasses without a forward of its own), or None."""
    table = module_table(nn)
    for base in type(m).__mro__:
        if base in table:
            return base if type(m).forward is base.forward else None
    return None


def module_table(nn):
    return {getattr(nn, c.__name__): "act" for c in L.ACTIVATIONS} | {
            nn.Linear: "linear", nn.Conv2d: "conv2d", nn.BatchNorm1d: "bn", nn.BatchNorm2d: "bn", nn.Softmax: "softmax",
            nn.LogSoftmax: "softmax", nn.Dropout: "dropout", nn.Identity: "identity", nn.Flatten: "flatten",
            nn.MaxPool2d: "pool", nn.AvgPool2d: "pool", nn.AdaptiveAvgPool2d: "adaptive",
            nn.AdaptiveMaxPool2d: "adaptive", nn.LayerNorm: "layernorm",
            nn.RNN: "rnn", nn.LSTM: "rnn", nn.GRU: "rnn", nn.Upsample: "upsample", nn.ConvTranspose2d: "convtranspose",
            nn.Embedding: "embedding", nn.MultiheadAttention: "mha", nn.TransformerEncoderLayer: "encoder_layer",
            nn.TransformerEncoder: "encoder"} | quantized_table()


def fn_name(fn):
    mod = getattr(fn, "__module__", None) or ""
    mod = {"_operator": "operator", "torch._C._VariableFunctions": "torch", "torch._C": "torch",
           "torch._tensor": "torch.Tensor"}.get(mod, mod)
    name = getattr(fn, "__name__", repr(fn))
    return f"{mod}.{name}" if mod else name


def is_inplace(node, root):
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
