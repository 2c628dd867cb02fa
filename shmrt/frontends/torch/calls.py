"""The torch functions and Tensor methods shmrt imports (activations, softmax, flatten and
reshape that keep the batch axis, global average pooling by mean, and indexing a recurrent
module's outputs), bound by argument name like PyTorch binds them."""
from __future__ import annotations

import operator

from shmrt.ir import layers as L


class Calls:
    """call_function and call_method nodes."""

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
        elif t is getattr and node.args[1:2] in (("device",), ("dtype",)):
            self.kind[node] = "meta"  # x.device, x.dtype: arguments of .to() on a zero initial state
        elif t is operator.getitem:
            self.getitem(node)
        elif t in _BINARY or t in self.fn_binary:
            cls = _BINARY.get(t) or self.fn_binary[t]
            names = ("input", "other", "alpha") if cls is L.Add and t not in _BINARY else ("input", "other")
            a = self.bind(node, names, {"alpha": 1})
            if a.get("alpha", 1) != 1:
                raise self.fail(node, f"alpha={a['alpha']!r} is not supported; only 1")
            self.binary(node, cls, a["input"], a["other"])
        elif t in self.fn_cat:
            a = self.bind(node, ("tensors", "dim"), {"dim": 0})
            self.cat(node, a["tensors"], a["dim"])
        elif t in self.fn_zeros:
            self.zeros(node)
        elif t is self.F.interpolate:
            a = self.bind(node, ("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                                 "antialias"), {"size": None, "scale_factor": None, "mode": "nearest",
                                                "align_corners": None, "recompute_scale_factor": None,
                                                "antialias": False})
            if a["antialias"]:
                raise self.fail(node, "antialias=True is not supported")
            sf = a["scale_factor"]
            if a["recompute_scale_factor"] and sf is not None and any(
                    float(v) != int(v) for v in (sf if isinstance(sf, (tuple, list)) else (sf,))):
                raise self.fail(node, "recompute_scale_factor=True with a non-integer scale_factor is not supported; "
                                      "expected size=, or recompute_scale_factor left out")
            self.take(node, a["input"])
            self.emit(node, self.upsample(node, a["size"], a["scale_factor"], a["mode"], a["align_corners"]), rank=4)
        elif t is self.F.adaptive_avg_pool2d:
            a = self.bind(node, ("input", "output_size"))
            self.take(node, a["input"])
            self.emit(node, self.make(node, L.AdaptiveAvgPool2d, a["output_size"]), rank=4)
        elif t is self.F.adaptive_max_pool2d:
            a = self.bind(node, ("input", "output_size", "return_indices"), {"return_indices": False})
            if a["return_indices"]:
                raise self.fail(node, "return_indices=True is not supported")
            self.take(node, a["input"])
            self.emit(node, self.make(node, L.AdaptiveMaxPool2d, a["output_size"]), rank=4)
        elif t in self.fn_act:  # F.<fn>(input, <the layer's config keys>..., inplace)
            cls = self.fn_act[t]
            defaults = cls().config()
            a = self.bind(node, ("input", *defaults, "inplace"), {**defaults, "inplace": False})
            self.take(node, a["input"])
            self.emit(node, self.make(node, cls, **{k: a[k] for k in defaults}))
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
        elif t in self.fn_rearrange:
            self.rearrange(node, self.fn_rearrange[t], node.args, node.kwargs)
        elif t is self.F.dropout:
            a = self.bind(node, ("input", "p", "training", "inplace"), {"p": 0.5, "training": True})
            if a["training"] is not False:
                raise self.fail(node, "F.dropout is supported only with training=False (or training=self.training, "
                                      "which is False while from_torch traces)")
            self.take(node, a["input"])
            self.emit(node, None)
        elif not self.sequence_call(node):
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
        elif t in _METHODS:
            a = self.bind(node, ("self", "other"), method=True)
            self.binary(node, _METHODS[t], a["self"], a["other"])
        elif t in ("to", "cuda", "cpu", "float", "type_as", "detach") and self.kind.get(node.args[0]) == "zeros":
            self.kind[node] = "zeros"  # a zero initial state moved or cast: still zeros
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
        elif t in _REARRANGE:
            self.rearrange(node, t, node.args, node.kwargs)
        elif t == "contiguous":
            self.bind(node, ("self", "memory_format"), method=True)
            self.take(node, node.args[0])
            self.emit(node, None)
        elif not self.sequence_call(node):
            raise self.unsupported(node)

    def rearrange(self, node, what, args, kwargs):
        """permute, transpose, narrow (a layer each) and split, chunk (pieces, taken by indexing)."""
        names = {"permute": ("input", "dims"), "transpose": ("input", "dim0", "dim1"),
                 "narrow": ("input", "dim", "start", "length"), "split": ("input", "split_size_or_sections", "dim"),
                 "chunk": ("input", "chunks", "dim")}[what]
        if what == "permute" and len(args) > 2:  # x.permute(0, 2, 1)
            args = (args[0], tuple(args[1:]))
        a = dict(zip(names, args))
        for k, v in kwargs.items():
            a["split_size_or_sections" if k == "split_size" else k] = v
        if "dim" not in a and what in ("split", "chunk"):
            a["dim"] = 0
        missing = [k for k in names if k not in a]
        if missing or set(a) - set(names):
            raise self.fail(node, f"expected arguments {names}, got {list(a)}")
        self.take(node, a["input"])
        if what == "permute":
            self.emit(node, self.make(node, L.Permute, *a["dims"]))
        elif what == "transpose":
            self.emit(node, self.make(node, L.Transpose, a["dim0"], a["dim1"]))
        elif what == "narrow":
            self.emit(node, self.make(node, L.Slice, a["dim"], a["start"], a["start"] + a["length"]))
        else:
            self.make(node, L.Slice, a["dim"])  # checks the dim
            s = a["split_size_or_sections"] if what == "split" else None
            if what == "chunk" and (isinstance(a["chunks"], bool) or not isinstance(a["chunks"], int) or a["chunks"] < 1):
                raise self.fail(node, f"chunks must be a positive int, got {a['chunks']!r}")
            if what == "split" and not isinstance(s, int) and not (
                    isinstance(s, (list, tuple)) and all(isinstance(v, int) and v >= 0 for v in s)):
                raise self.fail(node, f"split_size_or_sections must be an int or a list of ints, got {s!r}")
            self.kind[node] = ("pieces", dict(src=a["input"], dim=a["dim"], split=s, chunks=a.get("chunks")))

    def piece(self, node, spec, i):
        """Piece i of a split or chunk: a Slice of the tensor it was taken from."""
        if isinstance(i, bool) or not isinstance(i, int):
            raise self.fail(node, f"pieces of split/chunk are taken by an int index, got {i!r}")
        s, dim = spec["split"], spec["dim"]
        if spec["chunks"] is not None:
            if not 0 <= i < spec["chunks"]:
                raise self.fail(node, f"piece {i} of chunk({spec['chunks']}): expected 0..{spec['chunks'] - 1}")
            layer = self.make(node, L.Slice, dim, chunk=(i, spec["chunks"]))
        elif isinstance(s, int):
            layer = self.make(node, L.Slice, dim, i * s, (i + 1) * s)
        else:
            if not 0 <= i < len(s):
                raise self.fail(node, f"piece {i} of split({list(s)}): expected 0..{len(s) - 1}")
            layer = self.make(node, L.Slice, dim, sum(s[:i]), sum(s[:i + 1]))
        self.take(node, spec["src"])
        self.emit(node, layer)

    def index(self, node, x, idx):
        """x[:, a:b, ::s, ...]: a Slice per dim that is cut (the batch, dim 0, is not)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if Ellipsis in idx:
            rank = self.rank_of.get(x)
            if rank is None or idx.count(Ellipsis) > 1:
                raise self.fail(node, "x[..., a:b] needs the tensor's rank (give input_shape) and one Ellipsis")
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (rank - len(idx) + 1) + idx[k + 1:]
        full = slice(None)
        if not idx or idx[0] != full or any(not isinstance(i, slice) or any(
                v is not None and (isinstance(v, bool) or not isinstance(v, int)) for v in (i.start, i.stop, i.step))
                for i in idx):
            raise self.fail(node, f"indexing x[{_fmt_index(idx)}] is not supported; supported: slices with int "
                                  f"bounds after a full batch slice, x[:, a:b, ::s]")
        self.take(node, x)
        cuts = [(d, i) for d, i in enumerate(idx) if i != full and d > 0]
        src = self.val[x]
        for k, (d, i) in enumerate(cuts):  # one Slice per dim cut, the last one named after the node
            name = node.name if k == len(cuts) - 1 else f"{node.name}.dim{d}"
            self.chain.emit(self.make(node, L.Slice, d, i.start or 0, i.stop, i.step or 1), inputs=[src], output=name)
            src = name
        self.val[node] = src

    def binary(self, node, cls, x, y):
        """x <op> y of two tensors of one rank (broadcast per sample: the batch axis is never broadcast)."""
        for v in (x, y):
            if not hasattr(v, "op"):
                raise self.fail(node, f"an operand {v!r} is a constant; shmrt supports {cls.__name__} of two "
                                      f"tensors computed from the input (a residual, a gate)")
        rx, ry = self.rank_of.get(x), self.rank_of.get(y)
        if rx is not None and ry is not None and rx != ry:
            raise self.fail(node, f"operands of ranks {rx} and {ry}: shmrt broadcasts operands of one rank "
                                  f"(batch included), e.g. [N, C, H, W] and [N, C, 1, 1]")
        self.take(node, x, y)
        self.emit(node, cls())

    def cat(self, node, tensors, dim):
        if not isinstance(tensors, (list, tuple)) or not tensors:
            raise self.fail(node, f"expected a list of tensors, got {tensors!r}")
        if dim == 0:
            raise self.fail(node, "concatenation along dim 0 (the batch) is not supported; expected dim >= 1")
        if len(tensors) == 1:
            self.take(node, tensors[0])
            self.emit(node, None)
            return
        self.take(node, *tensors)
        self.emit(node, self.make(node, L.Concat, dim))

    def zeros(self, node):
        """torch.zeros(num_layers, x.size(0), hidden): a recurrent module's zero initial state."""
        dims = node.args[0] if len(node.args) == 1 and isinstance(node.args[0], (tuple, list)) else node.args
        if any(hasattr(d, "op") and self.kind.get(d) not in ("batch", "size") for d in dims) or any(
                k not in ("device", "dtype", "requires_grad", "layout") for k in node.kwargs):
            raise self.fail(node, "torch.zeros is supported only as a recurrent module's initial state, "
                                  "torch.zeros(num_layers, x.size(0), hidden_size)")
        self.kind[node] = "zeros"

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
        """x.mean((2, 3)) of [N, C, H, W]: global average pooling; x.mean(dim, keepdim) over other
        trailing dims: shmrt.Mean."""
        dim = a["dim"]
        dims = tuple(dim) if isinstance(dim, (tuple, list)) else (dim,)
        r = self.chain.rank
        if a["dtype"] is None and not a["keepdim"] and sorted(dims) in ([2, 3], [-2, -1]) and r in (4, None):
            self.emit(node, L.GlobalAvgPool(), rank=2)
            return
        if a["dtype"] is not None or dim is None or r is None \
                or sorted(d % r for d in dims if isinstance(d, int)) != list(range(r - len(dims), r)) \
                or any(d % r == 0 for d in dims):
            raise self.fail(node, f"mean(dim={dim!r}, keepdim={a['keepdim']!r}, dtype={a['dtype']!r}) is not "
                                  f"supported; expected trailing dims after the batch (of rank {r}), no dtype")
        self.emit(node, self.make(node, L.Mean, tuple(d % r - r for d in dims), keepdim=bool(a["keepdim"])),
                  rank=r if a["keepdim"] else r - len(dims))

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
        if k == "x":
            self.index(node, x, idx)
            return
        if isinstance(k, tuple) and k[0] == "pieces":
            self.piece(node, k[1], idx)
            return
        if isinstance(k, tuple) and k[0] == "attn":
            self.attention_item(node, k[1], idx)
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


_REARRANGE = ("permute", "transpose", "narrow", "split", "chunk")
_BINARY = {operator.add: L.Add, operator.iadd: L.Add, operator.sub: L.Sub, operator.isub: L.Sub,
           operator.mul: L.Mul, operator.imul: L.Mul, operator.truediv: L.Div, operator.itruediv: L.Div}
_METHODS = {"add": L.Add, "add_": L.Add, "__add__": L.Add, "__iadd__": L.Add, "__radd__": L.Add, "sub": L.Sub,
            "sub_": L.Sub, "mul": L.Mul, "mul_": L.Mul, "__mul__": L.Mul, "__rmul__": L.Mul, "div": L.Div,
            "div_": L.Div, "__truediv__": L.Div}


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
