"""ONNX -> shmrt.Sequential.

``from_onnx(model_proto)`` walks the graph's nodes in topological order.
Every value is either a numpy constant (initializers, Constant nodes and
everything computed only from them: the shape arithmetic that exporters
emit is folded here, at load time) or a *view* of the one dynamic tensor,
the stream.  A view records its ONNX shape (the batch axis carries the
sentinel ``_B`` so that Shape/Gather/Concat/Reshape arithmetic folds) and,
per ONNX axis, which axis of shmrt's batch-first activation it is (or None
for an inserted size-1 axis).  Nodes that compute on the stream append shmrt
layers; nodes that only re-label it (Transpose, Reshape, Squeeze, ...) make
a new view.  Anything that cannot be expressed as a chain of shmrt layers is
refused with a ValueError (UnsupportedONNX) that names the node, its op and
the attribute.  Only deliberate checks refuse: any other exception inside the
importer is re-raised as ONNXImporterBug (a bug in shmrt, not in the model).

``load_onnx_file(path)`` reads a .onnx file and resolves external-data
tensors itself, refusing locations that leave the model's folder.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from shmrt.ir import layers as L
from shmrt.frontends.onnx_patterns import (ONNXImporterBug, UnsupportedONNX, attrs, check_node, raised_on_purpose,  # noqa: F401
                            refusals_only, rewrite_gelu, rewrite_layernorm, rewrite_silu,
                                             tensor_array)

_B = 1_000_003          # the batch-size sentinel in folded shape arithmetic (a prime)
_MIN_OPSET, _MAX_OPSET = 13, 22
_MAX_CONST_BYTES = 1 << 28


def _onnx():
    try:
        import onnx  # noqa: F401
        from onnx import numpy_helper  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('shmrt: reading ONNX models needs the onnx package: pip install "shmrt[onnx]"') from e
    return onnx


# -- loading, external data -------------------------------------------------------------

def load_onnx_file(path) -> L.Sequential:
    """Read an .onnx file (never unpickles anything) and convert it.

    External-data tensors are read from files next to the model: a location
    must be a relative path that stays inside the model's folder."""
    onnx = _onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"ONNX file {path!r} does not exist or is not a file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated files, ...
        raise ValueError(f"ONNX file {path!r} is truncated or not an ONNX model: {type(e).__name__}: {e}") from None
    if not isinstance(model, onnx.ModelProto) or not model.HasField("graph") or not model.opset_import:
        raise ValueError(f"ONNX file {path!r} is truncated or not an ONNX model: no graph or no opset_import")
    return from_onnx(model, base_dir=os.path.dirname(os.path.abspath(path)))


def _tensors(graph):
    """Every TensorProto of a graph that can hold data: initializers (dense and sparse) and every tensor
    attribute of every node (Constant, ConstantOfShape, ...), subgraphs included."""
    out = list(graph.initializer)
    for sp in graph.sparse_initializer:
        out += [sp.values, sp.indices]
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                out.append(a.t)
            out += list(a.tensors)
            if a.HasField("sparse_tensor"):
                out += [a.sparse_tensor.values, a.sparse_tensor.indices]
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _tensors(sub)
    return out


def _resolve_external(model, base_dir):
    onnx = _onnx()
    ext = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not ext:
        return model
    if base_dir is None:
        raise ValueError(f"ONNX model: tensor {ext[0].name!r} keeps its data in an external file; "
                         f"load it with shmrt.frontends.onnx_import.load_onnx_file(path) or pass base_dir=")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # do not modify the caller's proto
    base = os.path.realpath(base_dir)
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"ONNX tensor {t.name!r}: external data location {loc!r}"
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":") \
                or "\x00" in loc:
            raise ValueError(f"{where} must be a relative path inside the model's folder {base_dir!r}")
        full = os.path.realpath(os.path.join(base, loc))
        if os.path.commonpath([base, full]) != base or full == base:
            raise ValueError(f"{where} leaves the model's folder {base_dir!r} (resolves to {full!r}); refused")
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") not in (None, "") else None
        except ValueError:
            raise ValueError(f"{where}: offset/length must be integers, got {info}") from None
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"{where}: negative offset/length {info}")
        if not os.path.isfile(full):
            raise ValueError(f"{where}: data file {full!r} is missing")
        size = os.path.getsize(full)
        if offset > size or (length is not None and offset + length > size):
            raise ValueError(f"{where}: data file {full!r} is truncated ({size} bytes, need offset {offset} "
                             f"+ length {length})")
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(length if length is not None else size - offset)
        if t.data_type != onnx.TensorProto.STRING:
            try:
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            except KeyError:  # a data type onnx does not know: the model's bytes
                raise ValueError(f"{where}: unsupported data type {t.data_type}; expected one of "
                                 f"onnx.TensorProto's data types") from None
            need = int(np.prod(t.dims, dtype=np.int64)) * itemsize
            if len(data) != need:
                raise ValueError(f"{where}: data file {full!r} gives {len(data)} bytes, the tensor "
                                 f"{list(t.dims)} needs {need}")
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = data
    return model


# -- values -----------------------------------------------------------------------------------

class _View:
    """The stream as one ONNX value: its ONNX shape (``_B`` at the batch axis),
    for each ONNX axis the shmrt axis it is (0 = batch) or None (a size-1
    axis of ONNX only), and the IR version it was made at."""

    __slots__ = ("shape", "src", "version", "last_of")

    def __init__(self, shape, src, version, last_of=None):
        self.shape, self.src, self.version, self.last_of = tuple(shape), tuple(src), version, last_of


def _is_uniform(a):
    return a.size > 0 and all(s == 0 or n == 1 for s, n in zip(a.strides, a.shape))


def _fill(a, shape):
    """A read-only, zero-stride array of ``shape`` filled with a's single value."""
    return np.broadcast_to(np.asarray(a[(0,) * a.ndim]), tuple(int(v) for v in shape))


def _compact(a):
    """Shrink zero-stride (broadcast) axes to size 1: same values under broadcasting."""
    if a.ndim == 0 or a.size == 0:
        return a
    return a[tuple(slice(0, 1) if (s == 0 and n > 1) else slice(None) for s, n in zip(a.strides, a.shape))]


_NP_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


class _Converter:
    def __init__(self, model, base_dir):
        self.onnx = _onnx()
        self.model = _resolve_external(model, base_dir)
        self.graph = self.model.graph
        self.layers = []
        self.version = 0
        self.ir = None        # shmrt per-sample shape of the stream after self.layers
        self.values = {}
        self.lstm_state_unused = {}

    # -- errors --------------------------------------------------------------------------------
    def where(self, node, idx):
        return f"ONNX node {idx} ({node.name or 'unnamed'}, op {node.op_type})"

    def fail(self, node, idx, msg):
        if getattr(self, "static_batch", 0) and ("batch" in msg or "reshape" in msg):
            msg += (f" [note: the graph input has a fixed batch size {self.static_batch}; export it with a dynamic "
                    f"batch axis, e.g. torch.onnx.export(..., dynamic_axes={{'x': {{0: 'N'}}}}) or dynamic_shapes]")
        raise UnsupportedONNX(f"{self.where(node, idx)}: {msg}")

    # -- attributes ----------------------------------------------------------------------------
    def attrs(self, node):
        return attrs(self.onnx, node)

    # -- the walk ------------------------------------------------------------------------------
    def convert(self):
        g = self.graph
        self.check_opsets()
        init_names = {t.name for t in g.initializer}
        for t in g.initializer:
            self.values[t.name] = self.to_array(t, f"initializer {t.name!r}")
        inputs = [i for i in g.input if i.name not in init_names]
        overrides = [i.name for i in g.input if i.name in init_names]
        if overrides:
            raise UnsupportedONNX(f"ONNX graph: initializer(s) {overrides[:5]} are also graph inputs (overridable "
                                  f"initializers); shmrt needs fixed weights: export with keep_initializers_as_inputs=False")
        if len(inputs) != 1:
            raise UnsupportedONNX(f"ONNX graph: shmrt needs exactly one dynamic input, got {len(inputs)}: "
                                  f"{[i.name for i in inputs]}")
        inp = inputs[0]
        self.input_shape = self.input_dims(inp)
        self.ir = self.input_shape
        self.values[inp.name] = _View((_B,) + self.input_shape, range(len(self.input_shape) + 1), 0)
        nodes = self.live(list(enumerate(g.node)))
        for rewrite in (rewrite_silu, rewrite_gelu, rewrite_layernorm):  # a pattern that does not fit returns the nodes as they are
            with self.bugs(f"ONNX graph: the pattern rewrite {rewrite.__name__}"):
                nodes = rewrite(self.onnx, g, nodes)
        nodes = self.live(nodes)
        self.consumed = {o.name for o in g.output} | {x for _, n in nodes for x in n.input if x}
        for idx, node in nodes:
            with self.bugs(self.where(node, idx)):
                self.step(idx, node)
        with self.bugs(f"ONNX graph outputs {[o.name for o in g.output]} (building the model)"):
            return self.finish()

    def bugs(self, where):
        """Refusals pass, and a shmrt layer's own argument checks refuse; anything else is ONNXImporterBug."""
        return refusals_only(where, L)

    def check_opsets(self):
        default = [o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")]
        if not default:
            raise UnsupportedONNX("ONNX model: no default-domain opset in opset_import")
        v = default[0]
        if not _MIN_OPSET <= v <= _MAX_OPSET:
            raise UnsupportedONNX(f"ONNX model: default-domain opset {v} is not supported; shmrt reads opsets "
                                  f"{_MIN_OPSET}-{_MAX_OPSET} (re-export with opset_version={_MIN_OPSET}..{_MAX_OPSET})")
        self.opset = v
        for n in self.graph.node:
            if n.domain not in ("", "ai.onnx"):
                raise UnsupportedONNX(f"ONNX node {n.name or 'unnamed'} (op {n.op_type}): domain {n.domain!r} is "
                                      f"not supported; only the default ONNX domain is")

    def input_dims(self, inp):
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape"):
            raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: needs a tensor type with a known shape")
        if tt.elem_type not in (1, 10, 11, 16):
            raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: element type {tt.elem_type} is not a float type")
        dims = list(tt.shape.dim)
        if len(dims) < 2:
            raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: needs a batch axis and at least one more, got "
                                  f"rank {len(dims)}")
        self.static_batch = int(dims[0].dim_value) if dims[0].HasField("dim_value") else 0
        rest = []
        for k, d in enumerate(dims[1:], 1):
            if not d.HasField("dim_value") or d.dim_value < 1:
                raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: dimension {k} must be static (only the batch "
                                      f"axis 0 may be dynamic), got {d.dim_param or d}")
            rest.append(int(d.dim_value))
        if len(rest) > 3:
            raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: per-sample rank {len(rest)} is not supported "
                                  f"(shmrt takes (F,), (T, F) or (C, H, W))")
        return tuple(rest)

    def to_array(self, t, what):
        return tensor_array(self.onnx, t, what)

    def live(self, nodes):
        """Drop nodes whose outputs reach no graph output; keep the order."""
        need = {o.name for o in self.graph.output}
        keep = [False] * len(nodes)
        for i in range(len(nodes) - 1, -1, -1):
            n = nodes[i][1]
            if any(o and o in need for o in n.output):
                keep[i] = True
                need.update(x for x in n.input if x)
        return [p for p, k in zip(nodes, keep) if k]

    def get(self, node, idx, k):
        if k >= len(node.input) or not node.input[k]:
            return None
        name = node.input[k]
        if name not in self.values:
            self.fail(node, idx, f"input {name!r} is not produced by any earlier node, initializer or graph input "
                                 f"(the graph is not topologically sorted, or uses an unsupported construct)")
        return self.values[name]

    def const(self, node, idx, k, what):
        v = self.get(node, idx, k)
        if isinstance(v, _View):
            self.fail(node, idx, f"{what} (input {k}) must be a constant (an initializer or folded at load time); "
                                 f"it depends on the model input")
        return v

    def stream(self, node, idx, v):
        """Resolve a view for an op that computes on it: it must be the newest stream."""
        if v.last_of is not None:
            if v.version != self.version or v.last_of != len(self.layers) - 1:
                self.fail(node, idx, "the recurrent layer's last hidden state is used after other layers ran "
                                     "(not a chain of layers)")
            self.take_last_step(node, idx)
            v = _View(v.shape, v.src, self.version)
        if v.version != self.version:
            self.fail(node, idx, "its input is an earlier activation, not the output of the layer just before "
                                 "(branches and skip connections are not supported: shmrt runs a chain of layers)")
        return v

    def take_last_step(self, node, idx):
        rec = self.layers[-1]
        if not isinstance(rec, L._Recurrent) or not rec.return_sequences:
            self.fail(node, idx, "taking the last time step needs a recurrent layer right before it")
        rec.return_sequences = False
        self.ir = (rec.hidden_size,)
        self.version += 1

    def emit(self, layer, ir):
        self.layers.append(layer)
        self.ir = tuple(ir)
        self.version += 1

    def full(self):
        return (_B,) + tuple(self.ir)

    def identical(self, v):
        """The view is the shmrt activation's memory in the same order, batch first."""
        order = [s for s, n in zip(v.src, v.shape) if s is not None and n != 1 or s == 0]
        if not order or order[0] != 0 or v.shape[0] != _B:
            return False
        return order == sorted(order) and len(set(order)) == len(order)

    def dense(self, node, idx, v):
        """The view as a [N, F] matrix (inserting shmrt.Flatten if the IR is not rank 1)."""
        v = self.stream(node, idx, v)
        if len(v.shape) != 2 or not self.identical(v):
            self.fail(node, idx, f"needs a [batch, features] input in batch-first order, got ONNX shape "
                                 f"{_fmt(v.shape)} (shmrt layout {_fmt(self.full())})")
        if len(self.ir) != 1:
            self.emit(L.Flatten(), (int(np.prod(self.ir)),))
        v = _View(v.shape, (0, 1), self.version)
        return v

    def image(self, node, idx, v):
        v = self.stream(node, idx, v)
        if len(v.shape) != 4 or v.src != (0, 1, 2, 3) or len(self.ir) != 3:
            self.fail(node, idx, f"needs an [N, C, H, W] input, got ONNX shape {_fmt(v.shape)} "
                                 f"(shmrt layout {_fmt(self.full())}); 1-D/3-D inputs are not supported")
        return v

    # -- one node ----------------------------------------------------------------------------------
    def step(self, idx, node):
        op = node.op_type
        bad = check_node(self.onnx, node, self.opset)
        if bad:
            self.fail(node, idx, f"{bad} (not a valid {op} node)")
        ins = [self.values.get(x) if x else None for x in node.input]
        for k, x in enumerate(node.input):
            if x and x not in self.values:
                self.get(node, idx, k)
        for v in ins:
            if isinstance(v, _Poison):
                raise UnsupportedONNX(v.msg)
        dynamic = [v for v in ins if isinstance(v, _View)]
        if op == "Constant":
            self.set(node, [self.constant(node, idx)])
            return
        if not dynamic:
            self.set(node, self.fold(node, idx, ins))
            return
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            self.fail(node, idx, f"op {op} on the model input is not supported; supported ops: "
                                 f"{', '.join(sorted(n[3:] for n in dir(self) if n.startswith('op_')))}")
        if not isinstance(ins[0], _View) and op not in ("Add", "Sub", "Mul", "Div", "Gemm", "MatMul"):
            at = [k for k, v in enumerate(ins) if isinstance(v, _View)]
            self.fail(node, idx, f"input 0 is a constant and input(s) {at} depend on the model input; expected the "
                                 f"activation as input 0 of {op}")
        outs = handler(node, idx, ins, self.attrs(node))
        self.set(node, outs if isinstance(outs, list) else [outs])

    def set(self, node, outs):
        for name, v in zip(node.output, outs):
            if name:
                self.values[name] = v

    def axis(self, node, idx, ax, r, what="axis"):
        """An axis (attribute or input value) of an input of rank r, as 0..r-1; refused if out of range."""
        if not -r <= int(ax) < r:
            self.fail(node, idx, f"{what} {int(ax)} is out of range for an input of rank {r} (expected {-r}..{r - 1})")
        return int(ax) % r

    def constant(self, node, idx):
        a = self.attrs(node)
        if "value" in a:
            t = next(x.t for x in node.attribute if x.name == "value")
            return self.to_array(t, f"Constant node {idx}")
        for k, conv in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                        ("value_ints", np.int64)):
            if k in a:
                return np.asarray(a[k], dtype=conv)
        self.fail(node, idx, f"attribute {sorted(a)} is not supported (value, value_float(s), value_int(s) are)")

    # -- constant folding -------------------------------------------------------------------------
    def fold(self, node, idx, ins):
        op = node.op_type
        a = self.attrs(node)
        try:
            out = self._fold(node, idx, op, ins, a)
        except (ValueError, IndexError) as e:
            if isinstance(e, UnsupportedONNX):
                raise
            if raised_on_purpose(e, sys.modules[__name__]):  # _reshape_target's or _slices' own check
                self.fail(node, idx, f"cannot fold it at load time: {e}")
            if all(v is None or v.size < _B for v in ins):  # numpy's error: are the graph's constants invalid?
                self.reference(node, idx, op, ins)  # refuses if onnx's reference implementation rejects them too
            raise  # numpy failed where onnx does not: a bug in _fold (bugs() reports it)
        out = out if isinstance(out, list) else [out]
        for o in out:
            if o is not None and not _is_uniform(o) and o.nbytes > _MAX_CONST_BYTES:
                self.fail(node, idx, "a folded constant grows with the batch size (not supported)")
        return out

    def _fold(self, node, idx, op, ins, a):
        x = ins[0] if ins else None
        ints = lambda v: [int(t) for t in np.asarray(v).reshape(-1)]  # noqa: E731
        if op in _BINARY:
            if len(ins) != 2:
                self.fail(node, idx, "needs two inputs")
            p, q = ins
            shape = np.broadcast_shapes(p.shape, q.shape)
            r = _BINARY[op](_compact(p), _compact(q))
            if op == "Div" and p.dtype.kind in "iu" and q.dtype.kind in "iu":
                r = np.trunc(np.asarray(_compact(p), np.float64) / _compact(q)).astype(p.dtype)
            return np.broadcast_to(np.asarray(r, dtype=r.dtype), shape)
        if op in _UNARY:
            return np.broadcast_to(_UNARY[op](_compact(x)), x.shape)
        if op == "Identity":
            return x
        if op == "Shape":
            s = np.array(x.shape, dtype=np.int64)
            return s[a.get("start", 0):a.get("end", None)]
        if op == "Size":
            return np.array(x.size, dtype=np.int64)
        if op == "Cast":
            dt = _NP_DTYPES.get(a["to"])
            if dt is None:
                self.fail(node, idx, f"Cast to type {a['to']} is not supported")
            return np.broadcast_to(_compact(x).astype(dt), x.shape)
        if op == "ConstantOfShape":
            val = a.get("value")
            v = (self.to_array(val, f"ConstantOfShape node {idx}").reshape(-1)[0] if val is not None
                 else np.float32(0))
            return np.broadcast_to(np.asarray(v), tuple(ints(x)))
        if op == "Expand":
            return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(ints(ins[1]))))
        if op == "Reshape":
            shape = _reshape_target(x.shape, ints(ins[1]), a.get("allowzero", 0))
            return _fill(x, shape) if _is_uniform(x) else x.reshape(shape)
        if op == "Flatten":
            ax = a.get("axis", 1)
            ax = ax + x.ndim if ax < 0 else ax
            shape = (int(np.prod(x.shape[:ax])), int(np.prod(x.shape[ax:])))
            return _fill(x, shape) if _is_uniform(x) else x.reshape(shape)
        if op == "Transpose":
            return np.transpose(x, a.get("perm"))
        if op == "Unsqueeze":
            axes = ints(ins[1])
            r = x.ndim + len(axes)
            return np.expand_dims(x, tuple(sorted(ax % r for ax in axes)))
        if op == "Squeeze":
            if len(ins) > 1 and ins[1] is not None:
                return np.squeeze(x, tuple(self.axis(node, idx, ax, x.ndim, "axes value") for ax in ints(ins[1])))
            return np.squeeze(x)
        if op == "Gather":
            ax = self.axis(node, idx, a.get("axis", 0), x.ndim)
            ind = np.asarray(ins[1]).astype(np.int64)
            ind = np.where(ind < 0, ind + x.shape[ax], ind)
            if ind.ndim == 0:
                return x[(slice(None),) * ax + (int(ind),)]
            if _is_uniform(x):
                return _fill(x, x.shape[:ax] + ind.shape + x.shape[ax + 1:])
            return np.take(x, ind, axis=ax)
        if op == "Slice":
            sl = _slices(x.shape, ins)
            return x[sl]
        if op == "Concat":
            parts = [p for p in ins if p is not None]
            if len({p.ndim for p in parts}) != 1:
                self.fail(node, idx, f"inputs of ranks {[p.ndim for p in parts]}: Concat needs inputs of one rank")
            ax = self.axis(node, idx, a["axis"], parts[0].ndim)
            if all(_is_uniform(p) or p.size == 0 for p in parts):
                vals = {p[(0,) * p.ndim].item() for p in parts if p.size}
                if len(vals) == 1:
                    shape = list(parts[0].shape)
                    shape[ax] = sum(p.shape[ax] for p in parts)
                    dt = np.result_type(*parts)
                    return np.broadcast_to(np.asarray(vals.pop(), dtype=dt), shape)
            if any(p.size >= _B for p in parts):
                self.fail(node, idx, "a folded constant grows with the batch size (not supported)")
            return np.concatenate(parts, axis=ax)
        if op == "Range":
            return np.arange(ins[0].item(), ins[1].item(), ins[2].item()).astype(ins[0].dtype)
        if op == "Where":
            c, p, q = ins
            shape = np.broadcast_shapes(c.shape, p.shape, q.shape)
            return np.broadcast_to(np.where(_compact(c), _compact(p), _compact(q)), shape)
        if op in ("ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin") and (len(ins) < 2 or ins[1] is None) \
                and "axes" not in a:
            f = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}[op]
            r = f(x)
            return np.asarray(r).reshape((1,) * x.ndim) if a.get("keepdims", 1) else np.asarray(r)
        if op == "Dropout":
            return [x, np.ones(x.shape, dtype=bool)]
        # anything else: the ONNX reference implementation, on small constants only
        if any(v is not None and v.size >= _B for v in ins):
            self.fail(node, idx, "a folded constant grows with the batch size (not supported)")
        return self.reference(node, idx, op, ins)

    def reference(self, node, idx, op, ins):
        """The node run by onnx's reference implementation on its constant inputs."""
        from onnx.reference import ReferenceEvaluator
        helper = self.onnx.helper
        names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
        n2 = helper.make_node(op, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
        n2.attribute.extend(node.attribute)
        feeds = {nm: v for nm, v in zip(names, ins) if nm}
        g = helper.make_graph([n2], "fold", [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(
            v.dtype), v.shape) for nm, v in feeds.items()],
            [helper.make_tensor_value_info(f"o{k}", 0, None) for k in range(len(node.output))])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        try:  # onnx's reference implementation, on the graph's constants: it raises what it raises
            res = ReferenceEvaluator(m).run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as e:
            self.fail(node, idx, f"op {op} on constants could not be folded ({type(e).__name__}: {e})")
        return [np.asarray(r) for r in res]

    # -- ops on the stream ----------------------------------------------------------------------
    def op_Identity(self, node, idx, ins, a):
        return ins[0]

    def op_Dropout(self, node, idx, ins, a):
        if len(ins) > 2 and ins[2] is not None:
            tm = self.const(node, idx, 2, "training_mode")
            if np.any(tm):
                self.fail(node, idx, "training_mode=True is not supported (inference only)")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, idx, "the mask output is not supported")
        return ins[0]

    def op_Cast(self, node, idx, ins, a):
        if a.get("to") not in (1, 11):
            self.fail(node, idx, f"Cast of the activation to type {a.get('to')} is not supported "
                                 f"(float32/float64 only: shmrt computes in float32)")
        return ins[0]

    def op_Shape(self, node, idx, ins, a):
        s = np.array(ins[0].shape, dtype=np.int64)
        return s[a.get("start", 0):a.get("end", None)]

    def op_Size(self, node, idx, ins, a):
        self.fail(node, idx, "Size of the input depends on the batch size (not supported)")

    def op_Transpose(self, node, idx, ins, a):
        v = ins[0]
        perm = a.get("perm", list(range(len(v.shape)))[::-1])
        if sorted(perm) != list(range(len(v.shape))):
            self.fail(node, idx, f"attribute perm={perm} is not a permutation of {len(v.shape)} axes")
        return _View([v.shape[p] for p in perm], [v.src[p] for p in perm], v.version, v.last_of)

    def op_Squeeze(self, node, idx, ins, a):
        v = ins[0]
        r = len(v.shape)
        if len(ins) > 1 and ins[1] is not None:
            axes = {self.axis(node, idx, t, r, "axes value")
                    for t in np.asarray(self.const(node, idx, 1, "axes")).reshape(-1)}
        else:
            axes = {k for k, n in enumerate(v.shape) if n == 1}
        if any(v.shape[k] != 1 for k in axes):
            self.fail(node, idx, f"squeezes an axis that is not of size 1 (shape {_fmt(v.shape)}, axes {sorted(axes)})")
        keep = [k for k in range(r) if k not in axes]
        return _View([v.shape[k] for k in keep], [v.src[k] for k in keep], v.version, v.last_of)

    def op_Unsqueeze(self, node, idx, ins, a):
        v = ins[0]
        axes = [int(t) for t in np.asarray(self.const(node, idx, 1, "axes")).reshape(-1)]
        r = len(v.shape) + len(axes)
        axes = sorted(t % r for t in axes)
        shape, src = list(v.shape), list(v.src)
        for t in axes:
            shape.insert(t, 1)
            src.insert(t, None)
        return _View(shape, src, v.version, v.last_of)

    def op_Reshape(self, node, idx, ins, a):
        v = ins[0]
        target = [int(t) for t in np.asarray(self.const(node, idx, 1, "shape")).reshape(-1)]
        sb = getattr(self, "static_batch", 0)
        if sb and target and target[0] == sb and v.shape[0] == _B:  # exported with a fixed batch size
            target[0] = _B
        try:
            shape = _reshape_target(v.shape, target, a.get("allowzero", 0))
        except ValueError as e:
            self.fail(node, idx, f"shape {target} does not fit input {_fmt(v.shape)}: {e} (a reshape that fixes "
                                 f"the batch size is not supported)")
        return self.relabel(node, idx, v, shape)

    def op_Flatten(self, node, idx, ins, a):
        v = ins[0]
        ax = a.get("axis", 1)
        ax = ax + len(v.shape) if ax < 0 else ax
        shape = (int(np.prod(v.shape[:ax])), int(np.prod(v.shape[ax:])))
        return self.relabel(node, idx, v, shape)

    def relabel(self, node, idx, v, shape):
        """A reshape of the stream: pure squeeze/unsqueeze keeps the axis map; else it must keep memory order."""
        shape = tuple(shape)
        if sum(1 for n in shape if n % _B == 0 and n) != 1 or _B not in shape:
            self.fail(node, idx, f"reshape to {_fmt(shape)} merges or drops the batch axis (only reshapes that keep "
                                 f"the batch axis are supported)")
        old = [(n, s) for n, s in zip(v.shape, v.src) if n != 1]
        new = [n for n in shape if n != 1]
        if [n for n, _ in old] == new:
            it = iter(s for _, s in old)
            return _View(shape, [next(it) if n != 1 else None for n in shape], v.version, v.last_of)
        v = self.stream(node, idx, v)
        if not self.identical(v) or shape[0] != _B:
            self.fail(node, idx, f"reshape of ONNX shape {_fmt(v.shape)} to {_fmt(shape)} changes the memory order "
                                 f"of the batch-first activation (shmrt layout {_fmt(self.full())})")
        full = self.full()
        # the new shape's non-unit dims must re-use shmrt's axes, or be the flattening [N, F]
        if [n for n in full if n != 1] == new:
            it = iter(k for k, n in enumerate(full) if n != 1)
            return _View(shape, [next(it) if n != 1 else None for n in shape], v.version)
        if len(new) == 2:
            self.emit(L.Flatten(), (int(np.prod(self.ir)),))
            return _View(shape, [0 if n == _B else (1 if n != 1 else None) for n in shape], self.version)
        self.fail(node, idx, f"reshape to {_fmt(shape)} needs a shmrt layout other than {_fmt(full)}; only "
                             f"flattening to [N, F] and adding/removing size-1 axes are supported")

    def op_Gather(self, node, idx, ins, a):
        v = ins[0]
        if isinstance(ins[1], _View):
            self.fail(node, idx, "indices that depend on the model input are not supported")
        ax = self.axis(node, idx, a.get("axis", 0), len(v.shape))
        ind = np.asarray(ins[1]).astype(np.int64)
        n = v.shape[ax]
        if np.any((ind < -n) | (ind >= n)):
            self.fail(node, idx, f"index {ind.tolist()} is out of range for axis {ax} of size {n}")
        ind = np.where(ind < 0, ind + n, ind)
        return self.index(node, idx, v, ax, ind.reshape(-1), ind.ndim == 0)

    def op_Slice(self, node, idx, ins, a):
        v = ins[0]
        for k in range(1, len(ins)):
            if isinstance(ins[k], _View):
                self.fail(node, idx, "starts/ends/axes/steps that depend on the model input are not supported")
        try:
            sl = _slices(v.shape, ins)
        except ValueError as e:  # _slices' own check
            self.fail(node, idx, str(e))
        out = v
        for ax, s in enumerate(sl):
            r = np.arange(v.shape[ax])[s] if v.shape[ax] != _B else None
            if r is None:
                if s != slice(None) and range(_B)[s] != range(_B):
                    self.fail(node, idx, "slicing the batch axis is not supported")
                continue
            if r.size == v.shape[ax] and np.all(r == np.arange(v.shape[ax])):
                continue
            out = self.index(node, idx, out, ax, r, False)
        return out

    def index(self, node, idx, v, ax, ind, drop):
        """Select positions ``ind`` of axis ``ax``; ``drop`` removes the axis (scalar Gather)."""
        s = v.src[ax]
        if s == 0:
            self.fail(node, idx, "indexing the batch axis is not supported")
        shape, src = list(v.shape), list(v.src)
        if s is None:  # a size-1 ONNX-only axis: index 0
            if drop:
                del shape[ax], src[ax]
            return _View(shape, src, v.version, v.last_of)
        v = self.stream(node, idx, v)
        rec = self.layers[-1] if self.layers else None
        if isinstance(rec, L._Recurrent) and rec.return_sequences and len(self.ir) == 2 and s == 1:
            if ind.size != 1 or int(ind[0]) != self.ir[0] - 1:
                self.fail(node, idx, f"selects time steps {ind.tolist()} of {self.ir[0]}; only the last step "
                                     f"(out[:, -1]) is supported")
            self.take_last_step(node, idx)
            newsrc = [None if k == ax else (t if t in (None, 0) else t - 1 if t > 1 else t) for k, t in
                      enumerate(src)]
            shape[ax] = 1
            if drop:
                del shape[ax], newsrc[ax]
            return _View(shape, newsrc, self.version)
        if len(self.ir) == 1 and s == 1 and self.identical(v):
            self.emit(L.Select([int(t) for t in ind]), (int(ind.size),))
            shape[ax] = int(ind.size)
            if drop:
                if ind.size != 1:
                    self.fail(node, idx, "internal: scalar gather of several indices")
                del shape[ax], src[ax]
                # a scalar Gather on the features leaves [N]; shmrt keeps [N, 1]
                return _View(shape, src, self.version)
            return _View(shape, src, self.version)
        self.fail(node, idx, f"indexing axis {ax} of ONNX shape {_fmt(v.shape)} is not supported (shmrt layout "
                             f"{_fmt(self.full())}); supported: the last step of a recurrent output, or features of "
                             f"a [N, F] activation")

    # elementwise activations
    def _act(self, node, idx, ins, layer):
        v = self.stream(node, idx, ins[0])
        self.emit(layer, self.ir)
        return _View(v.shape, v.src, self.version)

    def op_Relu(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.ReLU())

    def op_Sigmoid(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.Sigmoid())

    def op_Tanh(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.Tanh())

    def op_SiLU(self, node, idx, ins, a):  # rewrite_silu's node for Sigmoid(x) * x
        return self._act(node, idx, ins, L.SiLU())

    def op_HardSwish(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.Hardswish())

    def op_LeakyRelu(self, node, idx, ins, a):
        return self._act(node, idx, ins, L.LeakyReLU(negative_slope=float(a.get("alpha", 0.01))))

    def op_Gelu(self, node, idx, ins, a):
        appr = a.get("approximate", "none")
        if appr not in ("none", "tanh"):
            self.fail(node, idx, f"attribute approximate={appr!r} is not supported ('none' or 'tanh')")
        return self._act(node, idx, ins, L.GELU(approximate=appr))

    def _rowwise(self, node, idx, ins, a, layer_cls, default_axis=-1):
        ax = a.get("axis", default_axis)
        r = len(ins[0].shape)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis ({r - 1} or -1)")
        v = self.dense(node, idx, ins[0])
        self.emit(layer_cls(), self.ir)
        return _View(v.shape, v.src, self.version)

    def op_Softmax(self, node, idx, ins, a):
        return self._rowwise(node, idx, ins, a, L.Softmax)

    def op_LogSoftmax(self, node, idx, ins, a):
        return self._rowwise(node, idx, ins, a, L.LogSoftmax)

    def op_ArgMax(self, node, idx, ins, a):
        if a.get("select_last_index", 0) != 0:
            self.fail(node, idx, "attribute select_last_index=1 is not supported (shmrt returns the first maximum)")
        ax = a.get("axis", 0)
        r = len(ins[0].shape)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis ({r - 1} or -1)")
        self.dense(node, idx, ins[0])
        self.emit(L.ArgMax(), ())
        if a.get("keepdims", 1):
            return _View((_B, 1), (0, None), self.version)
        return _View((_B,), (0,), self.version)

    def op_TopK(self, node, idx, ins, a):
        k = self.const(node, idx, 1, "K").reshape(-1)
        if k.size != 1:
            self.fail(node, idx, f"K must hold one value, got {k.tolist()}")
        r = len(ins[0].shape)
        ax = a.get("axis", -1)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis")
        if a.get("largest", 1) != 1:
            self.fail(node, idx, "attribute largest=0 is not supported (shmrt TopK takes the largest)")
        if a.get("sorted", 1) != 1:
            self.fail(node, idx, "attribute sorted=0 is not supported (shmrt TopK sorts descending)")
        self.dense(node, idx, ins[0])
        self.emit(L.TopK(int(k[0])), (int(k[0]),))
        vv = _View((_B, int(k[0])), (0, 1), self.version)
        vi = _View((_B, int(k[0])), (0, 1), self.version)
        self.topk_outputs = (node.output[0], node.output[1] if len(node.output) > 1 else "")
        return [vv, vi]

    def op_LayerNormalization(self, node, idx, ins, a):
        ax = a.get("axis", -1)
        r = len(ins[0].shape)
        if ax % r != r - 1:
            self.fail(node, idx, f"attribute axis={ax} is not supported: only the last axis (-1)")
        if any(o and o in self.consumed for o in node.output[1:]):
            self.fail(node, idx, "the Mean/InvStdDev outputs are not supported (only Y may be used)")
        v = self.dense(node, idx, ins[0])
        F = self.ir[0]
        w = self.vec(node, idx, 1, F, "Scale")
        b = self.vec(node, idx, 2, F, "B") if len(ins) > 2 and ins[2] is not None else None
        self.emit(L.LayerNorm(F, eps=a.get("epsilon", 1e-5), weight=w, bias=b), self.ir)
        return _View(v.shape, v.src, self.version)

    def vec(self, node, idx, k, n, what):
        c = np.asarray(self.const(node, idx, k, what), dtype=np.float64)
        if c.size == 1:
            return np.full(n, c.reshape(-1)[0])
        c = np.squeeze(c)
        if c.shape != (n,):
            self.fail(node, idx, f"{what} must hold {n} values (one per feature), got shape {np.shape(c)}")
        return c

    # dense layers
    def op_Gemm(self, node, idx, ins, a):
        if not isinstance(ins[0], _View) or isinstance(ins[1], _View):
            self.fail(node, idx, "only A = the activation and B = a constant weight are supported")
        if a.get("transA", 0) != 0:
            self.fail(node, idx, "attribute transA=1 is not supported (transA=0 only)")
        W = np.asarray(self.const(node, idx, 1, "B"), dtype=np.float64)
        if W.ndim != 2:
            self.fail(node, idx, f"weight B must be 2-D, got shape {W.shape}")
        W = W if a.get("transB", 0) else W.T
        W = W * a.get("alpha", 1.0)
        self.dense(node, idx, ins[0])
        out, fin = W.shape
        if self.ir != (fin,):
            self.fail(node, idx, f"weight expects {fin} input features, the activation has {self.ir}")
        bias = None
        if len(ins) > 2 and ins[2] is not None:
            C = np.asarray(self.const(node, idx, 2, "C"), dtype=np.float64)
            try:
                bias = np.broadcast_to(C, (1, out)).reshape(out) * a.get("beta", 1.0)
            except ValueError:
                self.fail(node, idx, f"bias C of shape {C.shape} is not one value per output feature ({out})")
        self.emit(L.Linear(fin, out, weight=W, bias=bias if bias is not None else False), (out,))
        return _View((_B, out), (0, 1), self.version)

    def op_MatMul(self, node, idx, ins, a):
        if not isinstance(ins[0], _View) or isinstance(ins[1], _View):
            self.fail(node, idx, "only the activation @ a constant weight is supported")
        W = np.asarray(self.const(node, idx, 1, "B"), dtype=np.float64)
        if W.ndim != 2:
            self.fail(node, idx, f"weight must be 2-D, got shape {W.shape}")
        self.dense(node, idx, ins[0])
        fin, out = W.shape
        if self.ir != (fin,):
            self.fail(node, idx, f"weight expects {fin} input features, the activation has {self.ir}")
        self.emit(L.Linear(fin, out, weight=W.T, bias=False), (out,))
        return _View((_B, out), (0, 1), self.version)

    def _affine(self, node, idx, ins, op):
        vk = 0 if isinstance(ins[0], _View) else 1
        if isinstance(ins[1 - vk], _View):
            self.fail(node, idx, "both inputs depend on the model input (residual/branching graphs are not supported)")
        v = self.stream(node, idx, ins[vk])
        c = np.asarray(ins[1 - vk], dtype=np.float64)
        if op == "Div" and vk == 1:
            self.fail(node, idx, "constant / activation is not supported")
        r = len(v.shape)
        if c.ndim > r:
            self.fail(node, idx, f"constant of shape {c.shape} broadcasts beyond the activation {_fmt(v.shape)}")
        cc = _compact(c).reshape((1,) * (r - c.ndim) + _compact(c).shape)
        # which ONNX axis carries the per-feature (per-channel) values?
        if not self.identical(v):
            self.fail(node, idx, f"elementwise {op} with a constant needs a batch-first activation, got ONNX shape "
                                 f"{_fmt(v.shape)}")
        feat_ax = [k for k, s in enumerate(v.src) if s == 1]
        varying = [k for k in range(r) if cc.shape[k] != 1]
        if any(k not in feat_ax for k in varying) or len(self.ir) not in (1, 3):
            self.fail(node, idx, f"{op} with a constant of shape {c.shape} on ONNX shape {_fmt(v.shape)}: only a "
                                 f"scalar or one value per feature ([N, F]) / per channel ([N, C, H, W]) is supported")
        n = self.ir[0]
        vec = cc.reshape(-1) if varying else np.full(n, cc.reshape(-1)[0])
        if vec.shape != (n,):
            self.fail(node, idx, f"constant of shape {c.shape} does not match {n} features/channels")
        if op in ("Add", "Sub"):
            scale, shift = np.ones(n), (vec if op == "Add" else -vec)
            if op == "Sub" and vk == 1:
                scale, shift = -np.ones(n), vec
            last = self.layers[-1] if self.layers else None
            if isinstance(last, (L.Linear, L.Conv2d)) and np.all(scale == 1):
                b = last.params.get("bias")
                last.params["bias"] = ((b.astype(np.float64) if b is not None else 0) + shift).astype(np.float32)
                self.version += 1
                return _View(v.shape, v.src, self.version)
        else:
            scale, shift = (vec if op == "Mul" else 1.0 / vec), np.zeros(n)
        cls = L.BatchNorm1d if len(self.ir) == 1 else L.BatchNorm2d
        self.emit(cls(n, eps=0.0, weight=scale, bias=shift), self.ir)
        return _View(v.shape, v.src, self.version)

    def op_Add(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Add")

    def op_Sub(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Sub")

    def op_Mul(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Mul")

    def op_Div(self, node, idx, ins, a):
        return self._affine(node, idx, ins, "Div")

    def op_BatchNormalization(self, node, idx, ins, a):
        if a.get("training_mode", 0):
            self.fail(node, idx, "attribute training_mode=1 is not supported (inference only)")
        if any(o for o in node.output[1:]):
            self.fail(node, idx, "the running mean/var outputs are not supported (inference only)")
        v = self.stream(node, idx, ins[0])
        if not self.identical(v) or len(self.ir) not in (1, 3) or len(v.shape) not in (2, 4):
            self.fail(node, idx, f"needs [N, C] or [N, C, H, W], got ONNX shape {_fmt(v.shape)}")
        n = self.ir[0]
        p = [self.vec(node, idx, k, n, w) for k, w in ((1, "scale"), (2, "B"), (3, "input_mean"), (4, "input_var"))]
        cls = L.BatchNorm1d if len(self.ir) == 1 else L.BatchNorm2d
        self.emit(cls(n, eps=a.get("epsilon", 1e-5), weight=p[0], bias=p[1], running_mean=p[2], running_var=p[3]),
                  self.ir)
        return _View(v.shape, v.src, self.version)

    # convolution and pooling
    def _pads(self, node, idx, a, k, s, d, hw):
        if not len(k) == len(s) == len(d) == 2 or min(*k, *s, *d) < 1:
            self.fail(node, idx, f"kernel {list(k)}, strides {list(s)}, dilations {list(d)}: expected two ints >= 1 "
                                 f"each (2-D)")
        auto = a.get("auto_pad", "NOTSET")
        if auto == "VALID":
            return (0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = []
            for i in range(2):
                out = -(-hw[i] // s[i])
                tot = max((out - 1) * s[i] + d[i] * (k[i] - 1) + 1 - hw[i], 0)
                if tot % 2:
                    self.fail(node, idx, f"attribute auto_pad={auto} needs asymmetric padding here (total {tot} on "
                                         f"axis {i}); only symmetric padding is supported")
                pads.append(tot // 2)
            return tuple(pads)
        if auto != "NOTSET":
            self.fail(node, idx, f"attribute auto_pad={auto!r} is not supported")
        p = a.get("pads", [0, 0, 0, 0])
        if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
            self.fail(node, idx, f"attribute pads={p} is asymmetric; only symmetric padding "
                                 f"[top, left, top, left] is supported")
        return (p[0], p[1])

    def op_Conv(self, node, idx, ins, a):
        self.image(node, idx, ins[0])
        W = np.asarray(self.const(node, idx, 1, "W"), dtype=np.float32)
        if W.ndim != 4:
            self.fail(node, idx, f"only 2-D convolution is supported (W of rank 4), got W of shape {W.shape}")
        O, Cg, kh, kw = W.shape
        if a.get("kernel_shape", [kh, kw]) != [kh, kw]:
            self.fail(node, idx, f"attribute kernel_shape={a['kernel_shape']} does not match W {W.shape}")
        g = a.get("group", 1)
        s = tuple(a.get("strides", [1, 1]))
        dl = tuple(a.get("dilations", [1, 1]))
        pads = self._pads(node, idx, a, (kh, kw), s, dl, self.ir[1:])
        C = self.ir[0]
        if Cg * g != C:
            self.fail(node, idx, f"W {W.shape} with group={g} does not match {C} input channels")
        bias = self.const(node, idx, 2, "B") if len(ins) > 2 and ins[2] is not None else False
        layer = L.Conv2d(C, O, (kh, kw), stride=s, padding=pads, dilation=dl, groups=g, bias=bias, weight=W)
        ir = layer.output_shape(self.ir)  # the layer's own checks refuse (see bugs())
        self.emit(layer, ir)
        return _View((_B,) + ir, (0, 1, 2, 3), self.version)

    def _pool(self, node, idx, ins, a, is_max):
        self.image(node, idx, ins[0])
        if any(o for o in node.output[1:]):
            self.fail(node, idx, "the Indices output is not supported")
        if a.get("ceil_mode", 0):
            self.fail(node, idx, "attribute ceil_mode=1 is not supported (ceil_mode=0 only)")
        if a.get("storage_order", 0):
            self.fail(node, idx, "attribute storage_order=1 is not supported")
        k = tuple(a["kernel_shape"])
        if len(k) != 2:
            self.fail(node, idx, f"only 2-D pooling is supported, got kernel_shape={list(k)}")
        s = tuple(a.get("strides", [1, 1]))
        dl = tuple(a.get("dilations", [1, 1]))
        if not is_max and dl != (1, 1):
            self.fail(node, idx, f"attribute dilations={list(dl)} is not supported for AveragePool")
        pads = self._pads(node, idx, a, k, s, dl, self.ir[1:])
        if is_max:
            layer = L.MaxPool2d(k, stride=s, padding=pads, dilation=dl)
        else:
            layer = L.AvgPool2d(k, stride=s, padding=pads, count_include_pad=bool(a.get("count_include_pad", 0)))
        ir = layer.output_shape(self.ir)  # the layer's own checks refuse (see bugs())
        self.emit(layer, ir)
        return _View((_B,) + ir, (0, 1, 2, 3), self.version)

    def op_MaxPool(self, node, idx, ins, a):
        return self._pool(node, idx, ins, a, True)

    def op_AveragePool(self, node, idx, ins, a):
        return self._pool(node, idx, ins, a, False)

    def op_GlobalAveragePool(self, node, idx, ins, a):
        self.image(node, idx, ins[0])
        C = self.ir[0]
        self.emit(L.GlobalAvgPool(), (C,))
        return _View((_B, C, 1, 1), (0, 1, None, None), self.version)

    # recurrent layers
    def op_LSTM(self, node, idx, ins, a):
        return self._recurrent(node, idx, ins, a, "LSTM", 4, [0, 2, 3, 1])

    def op_GRU(self, node, idx, ins, a):
        if a.get("linear_before_reset", 0) != 1:
            self.fail(node, idx, f"attribute linear_before_reset={a.get('linear_before_reset', 0)} is not supported: "
                                 f"shmrt's GRU has PyTorch's semantics (linear_before_reset=1)")
        return self._recurrent(node, idx, ins, a, "GRU", 3, [1, 0, 2])

    def op_RNN(self, node, idx, ins, a):
        return self._recurrent(node, idx, ins, a, "RNN", 1, [0])

    def _recurrent(self, node, idx, ins, a, kind, G, order):
        defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]
        acts = a.get("activations", defaults)
        nonlin = "tanh"
        if kind == "RNN" and acts in (["Relu"], ["Tanh"]):
            nonlin = acts[0].lower()
        elif [x.lower() for x in acts] != [x.lower() for x in defaults]:
            self.fail(node, idx, f"attribute activations={acts} is not supported (only {defaults}"
                                 f"{' or [Relu]' if kind == 'RNN' else ''})")
        for bad in ("activation_alpha", "activation_beta", "clip"):
            if bad in a:
                self.fail(node, idx, f"attribute {bad} is not supported")
        if a.get("direction", "forward") != "forward":
            self.fail(node, idx, f"attribute direction={a['direction']!r} is not supported (forward only)")
        if a.get("input_forget", 0):
            self.fail(node, idx, "attribute input_forget=1 is not supported")
        layout = a.get("layout", 0)
        if layout not in (0, 1):
            self.fail(node, idx, f"attribute layout={layout} is not supported")
        if len(ins) > 4 and ins[4] is not None:
            self.fail(node, idx, "input sequence_lens is not supported (every sequence runs all time steps)")
        if kind == "LSTM" and len(ins) > 7 and ins[7] is not None:
            self.fail(node, idx, "input P (peepholes) is not supported")
        v = self.stream(node, idx, ins[0])
        want = (1, 0, 2) if layout == 0 else (0, 1, 2)
        if len(v.shape) != 3 or v.src != want or len(self.ir) != 2:
            self.fail(node, idx, f"input X of ONNX shape {_fmt(v.shape)} is not the batch-first sequence "
                                 f"{'transposed to [T, N, F]' if layout == 0 else '[N, T, F]'} (shmrt layout "
                                 f"{_fmt(self.full())})")
        T, F = self.ir
        H = a.get("hidden_size")
        W = np.asarray(self.const(node, idx, 1, "W"), dtype=np.float32)
        R = np.asarray(self.const(node, idx, 2, "R"), dtype=np.float32)
        if H is None:
            H = R.shape[-1]
        if W.shape != (1, G * H, F) or R.shape != (1, G * H, H):
            self.fail(node, idx, f"W {W.shape} / R {R.shape} do not match hidden_size={H}, {F} input features, "
                                 f"one direction")

        def reorder(m):
            return np.concatenate([m[j * H:(j + 1) * H] for j in order], axis=0)

        p = {"weight_ih_l0": reorder(W[0]), "weight_hh_l0": reorder(R[0])}
        bias = len(ins) > 3 and ins[3] is not None
        if bias:
            Bv = np.asarray(self.const(node, idx, 3, "B"), dtype=np.float32)
            if Bv.shape != (1, 2 * G * H):
                self.fail(node, idx, f"B {Bv.shape} does not match hidden_size={H}")
            p["bias_ih_l0"] = reorder(Bv[0, :G * H])
            p["bias_hh_l0"] = reorder(Bv[0, G * H:])
        kw = {}
        for k, name in ((5, "h0"), (6, "c0")):
            if k < len(ins) and ins[k] is not None and (kind == "LSTM" or k == 5):
                st = self.state(node, idx, k, H, layout, name)
                if st is not None:
                    kw[name] = st
        cls = {"LSTM": L.LSTM, "GRU": L.GRU, "RNN": L.RNN}[kind]
        if kind == "RNN":
            kw["nonlinearity"] = nonlin
        layer = cls(F, H, num_layers=1, bias=bias, return_sequences=True, **kw, **p)
        self.emit(layer, (T, H))
        me = len(self.layers) - 1
        if layout == 0:
            Y = _View((T, 1, _B, H), (1, None, 0, 2), self.version)
            Yh = _View((1, _B, H), (None, 0, 1), self.version, last_of=me)
        else:
            Y = _View((_B, T, 1, H), (0, 1, None, 2), self.version)
            Yh = _View((_B, 1, H), (0, None, 1), self.version, last_of=me)
        outs = [Y, Yh]
        if kind == "LSTM":
            outs.append(_Poison(f"{self.where(node, idx)}: output Y_c (the last cell state) is not supported"))
        return outs

    def state(self, node, idx, k, H, layout, name):
        s = np.asarray(self.const(node, idx, k, name))
        bax, dax = (1, 0) if layout == 0 else (0, 1)
        c = _compact(s)
        if s.ndim == 3 and c.shape[bax] > 1 and np.all(c == c.take([0], axis=bax)):
            c = c.take([0], axis=bax)  # a fixed-batch export: the same state for every sequence
        if s.ndim != 3 or s.shape[dax] != 1 or s.shape[2] != H or c.shape[bax] != 1:
            self.fail(node, idx, f"initial state {name} of shape {s.shape} is not supported: it must be the same for "
                                 f"every sequence (one direction, broadcast from one [{H}] vector)")
        vec = c.reshape(-1)
        vec = np.broadcast_to(vec, (H,)) if vec.size == 1 else vec
        if not np.any(vec):
            return None
        return np.asarray(vec, np.float32).reshape(1, H)

    # -- the end -------------------------------------------------------------------------------
    def finish(self):
        outs = [o.name for o in self.graph.output]
        vals = [self.values.get(n) for n in outs]
        for n, v in zip(outs, vals):
            if v is None:
                raise UnsupportedONNX(f"ONNX graph output {n!r} is not produced by any node")
            if isinstance(v, _Poison):
                raise UnsupportedONNX(v.msg)
            if not isinstance(v, _View):
                raise UnsupportedONNX(f"ONNX graph output {n!r} is a constant (does not depend on the input)")
        topk = getattr(self, "topk_outputs", None)
        if topk is not None and isinstance(self.layers[-1], L.TopK) and tuple(outs) != topk:
            raise UnsupportedONNX(f"ONNX graph outputs {outs}: a final TopK must output both its values and indices, "
                                  f"in that order ({list(topk)}): shmrt's TopK returns (values, indices)")
        if len(outs) == 2 and topk is not None and tuple(outs) == topk:
            pass
        elif len(outs) != 1:
            raise UnsupportedONNX(f"ONNX graph: shmrt models have one output (or TopK's values and indices), got "
                                  f"{len(outs)}: {outs}")
        for n, v in zip(outs, vals):
            if v.last_of is not None:
                if v.version != self.version or v.last_of != len(self.layers) - 1:
                    raise UnsupportedONNX(f"ONNX graph output {n!r}: not the output of the last layer")
                self.take_last_step(self.graph.node[0], 0)
                v = _View(v.shape, v.src, self.version)
            if v.version != self.version:
                raise UnsupportedONNX(f"ONNX graph output {n!r} is not the output of the last layer (branches are "
                                      f"not supported)")
            if not self.identical(v):
                raise UnsupportedONNX(f"ONNX graph output {n!r} of shape {_fmt(v.shape)} is not in batch-first "
                                      f"order (shmrt layout {_fmt(self.full())}); add a Transpose back to batch-first")
        if not self.layers:
            raise UnsupportedONNX("ONNX graph: computes nothing (no layer)")
        layers = _merge_recurrent(self.layers)
        return L.Sequential(layers, input_shape=self.input_shape)


class _Poison:
    def __init__(self, msg):
        self.msg = msg


def _merge_recurrent(layers):
    """Consecutive single-layer recurrent layers of one kind and width -> one multi-layer layer."""
    out = []
    for l in layers:
        prev = out[-1] if out else None
        if (isinstance(l, L._Recurrent) and type(prev) is type(l) and prev.return_sequences
                and prev.hidden_size == l.hidden_size and prev.bias == l.bias and prev.mode == l.mode
                and l.num_layers == 1):
            k = prev.num_layers
            p = dict(prev.params)
            for n, arr in l.params.items():
                if n.endswith("_l0"):
                    p[n[:-1] + str(k)] = arr
            kw = {}
            for st in ("h0", "c0"):
                if st in prev.params or st in l.params:
                    a = p.pop(st, None)
                    a = a if a is not None else np.zeros((k, prev.hidden_size), np.float32)
                    b = l.params.get(st, np.zeros((1, l.hidden_size), np.float32))
                    kw[st] = np.concatenate([a, b], axis=0)
                else:
                    p.pop(st, None)
            extra = {"nonlinearity": "relu" if l.mode == 1 else "tanh"} if isinstance(l, L.RNN) else {}
            merged = type(l)(prev.input_size, prev.hidden_size, num_layers=k + 1, bias=prev.bias,
                             return_sequences=l.return_sequences, **extra, **kw, **p)
            out[-1] = merged
        else:
            out.append(l)
    return out


def _fmt(shape):
    """A folded shape for a message: the batch sentinel (and its multiples) shown as N."""
    def one(n):
        return "N" if n == _B else f"{n // _B}*N" if n and n % _B == 0 else str(n)
    return "[" + ", ".join(one(n) for n in shape) + "]"


def _reshape_target(in_shape, target, allowzero):
    shape = list(target)
    for i, t in enumerate(shape):
        if t == 0 and not allowzero:
            if i >= len(in_shape):
                raise ValueError(f"0 at axis {i} has no input axis to copy")
            shape[i] = in_shape[i]
    total = int(np.prod(in_shape, dtype=object))
    if shape.count(-1) > 1:
        raise ValueError("more than one -1")
    if -1 in shape:
        rest = int(np.prod([t for t in shape if t != -1], dtype=object))
        if rest == 0 or total % rest:
            raise ValueError("the -1 axis cannot be inferred")
        shape[shape.index(-1)] = total // rest
    if int(np.prod(shape, dtype=object)) != total:
        raise ValueError(f"{shape} has a different number of elements")
    return tuple(int(t) for t in shape)


def _slices(shape, ins):
    r = len(shape)
    starts = [int(t) for t in np.asarray(ins[1]).reshape(-1)]
    ends = [int(t) for t in np.asarray(ins[2]).reshape(-1)]
    axes = [int(t) for t in np.asarray(ins[3]).reshape(-1)] if len(ins) > 3 and ins[3] is not None \
        else list(range(len(starts)))
    steps = [int(t) for t in np.asarray(ins[4]).reshape(-1)] if len(ins) > 4 and ins[4] is not None \
        else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or any(not -r <= t < r for t in axes) \
            or len({t % r for t in axes}) != len(axes):
        raise ValueError(f"starts {starts}, ends {ends}, axes {axes}, steps {steps} do not fit an input of rank {r} "
                         f"(expected one value each per distinct axis in {-r}..{r - 1})")
    axes = [t % r for t in axes]
    sl = [slice(None)] * r
    big = 2 ** 62
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ValueError("a Slice step of 0")
        e = None if (st > 0 and e >= big) or (st < 0 and e <= -big) else e
        sl[ax] = slice(s, e, st)
    return tuple(sl)


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Equal": np.equal,
           "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
           "Max": np.maximum, "Min": np.minimum, "Pow": np.power, "And": np.logical_and, "Or": np.logical_or,
           "Mod": np.fmod}
_UNARY = {"Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Floor": np.floor, "Ceil": np.ceil,
          "Not": np.logical_not, "Reciprocal": np.reciprocal, "Exp": np.exp, "Log": np.log, "Relu":
          lambda v: np.maximum(v, 0), "Sigmoid": lambda v: 1 / (1 + np.exp(-v)), "Tanh": np.tanh,
          "Sign": np.sign, "Erf": np.vectorize(math.erf, otypes=[np.float64])}


def from_onnx(model, base_dir=None) -> L.Sequential:
    """Convert an ``onnx.ModelProto`` into a ``shmrt.Sequential``.

    base_dir: the folder that external-data locations are relative to (set
    by ``load_onnx_file``); tensors with external data need it."""
    onnx = _onnx()
    if isinstance(model, (bytes, bytearray)):
        try:
            model = onnx.load_from_string(bytes(model))
        except Exception as e:
            raise ValueError(f"not an ONNX model: {type(e).__name__}: {e}") from None
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"from_onnx expects an onnx.ModelProto, got {type(model).__name__}")
    return _Converter(model, base_dir).convert()
