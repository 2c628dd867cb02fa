"""ONNX -> shmrt.Sequential: the walk.

``from_onnx(model_proto)`` walks the graph's nodes in topological order.
Every value is either a numpy constant (initializers, Constant nodes and
everything computed only from them: the shape arithmetic that exporters
emit is folded at load time, folding.py) or a *view* of the one dynamic
tensor, the stream (layout.py).  Nodes that compute on the stream append
shmrt layers to the importer's ``Chain``; nodes that only re-label it
(Transpose, Reshape, Squeeze, ...) make a new view; the op handlers are
grouped by kind in handlers_*.py.  Anything that cannot be expressed as a
chain of shmrt layers is refused with a ValueError (UnsupportedONNX) that
names the node, its op and the attribute.  Only deliberate checks refuse:
any other exception inside the importer is re-raised as ONNXImporterBug (a
bug in shmrt, not in the model), see errors.py.

``load_onnx_file(path)`` reads a .onnx file and resolves external-data
tensors itself, refusing locations that leave the model's folder
(external.py).
"""
from __future__ import annotations

import collections
import os

from shmrt.frontends.chain import Chain
from shmrt.frontends.onnx import patterns
from shmrt.frontends.onnx.patterns_fn import rewrite_layernorm_function, rewrite_where_less
from shmrt.frontends.onnx.quant_patterns import rewrite_dynamic_quant
from shmrt.frontends.onnx.errors import UnsupportedONNX, refusals_only
from shmrt.frontends.onnx.external import resolve_external
from shmrt.frontends.onnx.folding import Folding
from shmrt.frontends.onnx.handlers_convtranspose import ConvTransposeOps
from shmrt.frontends.onnx.handlers_dense import DenseOps
from shmrt.frontends.onnx.handlers_elementwise import ElementwiseOps
from shmrt.frontends.onnx.handlers_graph import GraphOps
from shmrt.frontends.onnx.handlers_quant import CONTRIB_OPS, QuantOps
from shmrt.frontends.onnx.handlers_recurrent import RecurrentOps
from shmrt.frontends.onnx.handlers_rowwise import RowwiseOps
from shmrt.frontends.onnx.handlers_shape import ShapeOps
from shmrt.frontends.onnx.layout import B, Layout, Poison, View, fmt
from shmrt.frontends.onnx.seq_import import SeqImport, is_sequence_graph
from shmrt.frontends.onnx.reading import MAX_OPSET, MIN_OPSET, attrs, check_node, onnx_module, tensor_array
from shmrt.ir import layers as L


def from_onnx(model, base_dir=None, max_seq_len=None) -> L.Sequential:
    """Convert an ``onnx.ModelProto`` into a ``shmrt.Sequential`` (a ``shmrt.Graph`` for a model with
    branches, and for a transformer encoder: seq_import.py).

    base_dir: the folder that external-data locations are relative to (set
    by ``load_onnx_file``); tensors with external data need it.  max_seq_len: a transformer's
    longest sequence, the T of its inputs (default: a fixed T of the inputs, else the rows of its
    position embeddings, else 512)."""
    onnx = onnx_module()
    if isinstance(model, (bytes, bytearray)):
        try:
            model = onnx.load_from_string(bytes(model))
        except Exception as e:
            raise ValueError(f"not an ONNX model: {type(e).__name__}: {e}") from None
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"from_onnx expects an onnx.ModelProto, got {type(model).__name__}")
    return _Converter(model, base_dir, max_seq_len).convert()


def load_onnx_file(path, max_seq_len=None) -> L.Sequential:
    """Read an .onnx file (never unpickles anything) and convert it.

    External-data tensors are read from files next to the model: a location
    must be a relative path that stays inside the model's folder."""
    onnx = onnx_module()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"ONNX file {path!r} does not exist or is not a file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf DecodeError, truncated files, ...
        raise ValueError(f"ONNX file {path!r} is truncated or not an ONNX model: {type(e).__name__}: {e}") from None
    if not isinstance(model, onnx.ModelProto) or not model.HasField("graph") or not model.opset_import:
        raise ValueError(f"ONNX file {path!r} is truncated or not an ONNX model: no graph or no opset_import")
    return from_onnx(model, base_dir=os.path.dirname(os.path.abspath(path)), max_seq_len=max_seq_len)


class _Converter(QuantOps, Folding, Layout, ShapeOps, ElementwiseOps, GraphOps, RowwiseOps, DenseOps, RecurrentOps,
                 ConvTransposeOps):
    """One conversion: the graph's values, the chain of layers, and the walk over the nodes.  An op
    ``X`` on the stream is handled by the method ``op_X`` (found by name, from the handler mixins)."""

    def __init__(self, model, base_dir, max_seq_len=None):
        self.onnx = onnx_module()
        self.max_seq_len = max_seq_len
        self.model = resolve_external(model, base_dir)
        self.graph = self.model.graph
        self.chain = Chain(error=UnsupportedONNX)  # the layers and the activation; shaped by convert()
        self.values = {}      # ONNX value name -> numpy constant, View of the stream, or Poison
        self.static_batch = 0   # the graph input's fixed batch size, 0 if dynamic (set by input_dims)
        self.topk_outputs = None  # (values, indices) output names of a TopK node, or of a MaxPool with Indices
        self.seq_used = set()     # recurrent layers (by index) whose sequence Y is read (set by _recurrent)
        self.last_states = {}     # chain version of a Y_h view -> that of its last step (set by last_state)

    @property
    def ir(self):
        """shmrt's per-sample shape of the stream after the layers so far."""
        return self.chain.shape

    def where(self, node, idx):
        return f"ONNX node {idx} ({node.name or 'unnamed'}, op {node.op_type})"

    def fail(self, node, idx, msg):
        if self.static_batch and ("batch" in msg or "reshape" in msg):
            msg += (f" [note: the graph input has a fixed batch size {self.static_batch}; export it with a dynamic "
                    f"batch axis, e.g. torch.onnx.export(..., dynamic_axes={{'x': {{0: 'N'}}}}) or dynamic_shapes]")
        raise self.chain.refusal(self.where(node, idx), msg)

    def attrs(self, node):
        return attrs(self.onnx, node)

    def convert(self):
        g = self.graph
        self.check_opsets()
        if is_sequence_graph(g):  # token ids / masks, a dynamic sequence axis, or attention: a transformer
            return SeqImport(self.onnx, self.model, self.opset, self.max_seq_len).convert()
        if self.max_seq_len is not None:
            raise TypeError("from_onnx: max_seq_len applies to transformer encoders (inputs [N, T]: token ids, "
                            "masks, or features with a dynamic T); this model is not one")
        init_names = {t.name for t in g.initializer}
        for t in g.initializer:
            self.values[t.name] = self.to_array(t, f"initializer {t.name!r}")
        # an initializer also listed as a graph input (every IR < 4 model, keep_initializers_as_inputs=True) is a
        # default a caller could override; shmrt's weights are fixed, so it is read as the constant it holds
        inputs = [i for i in g.input if i.name not in init_names]
        if not inputs:
            raise UnsupportedONNX("ONNX graph: no dynamic input (every graph input is an initializer)")
        self.inputs = []  # (value name, per-sample shape) of each graph input
        self.lens_inputs = {}  # chain version -> name of an int [batch] graph input: sequence_lens, (1,) in shmrt
        made = {o: n for n in g.node for o in n.output}
        lens_names = set()
        for n in g.node:  # a recurrent node's sequence_lens, through Casts back to where it comes from
            v = n.input[4] if n.op_type in ("LSTM", "GRU", "RNN") and len(n.input) > 4 else ""
            while v in made and made[v].op_type == "Cast":
                v = made[v].input[0]
            lens_names.add(v)
        for k, inp in enumerate(inputs):
            if k > 0 and self.lens_dims(inp) and inp.name not in lens_names:
                raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: an int [batch] input is supported only as "
                                      f"an LSTM/GRU/RNN node's sequence_lens, read directly or through Casts; "
                                      f"expected a float input or such lengths")
            if k > 0 and inp.name in lens_names and self.lens_dims(inp):
                shape = (1,)
                self.inputs.append((inp.name, shape))
                version = self.chain.add_input(inp.name, shape)
                self.lens_inputs[version] = inp.name
                self.values[inp.name] = View((B,), (0,), version)
                continue
            shape = self.input_dims(inp)
            if k == 0:
                self.input_shape = shape
                self.chain = Chain(error=UnsupportedONNX, shape=shape)
                self.chain.current = inp.name
                self.chain.states[0] = (inp.name, shape, len(shape) + 1)
                version = 0
            else:
                version = self.chain.add_input(inp.name, shape)
            self.inputs.append((inp.name, shape))
            self.values[inp.name] = View((B,) + shape, range(len(shape) + 1), version)
        nodes = self.live(list(enumerate(g.node)))
        # a pattern that does not fit returns the nodes as they are
        for rewrite in (rewrite_dynamic_quant, patterns.rewrite_silu, patterns.rewrite_gelu, patterns.rewrite_layernorm,
                        patterns.rewrite_softmax, rewrite_layernorm_function, rewrite_where_less):
            with self.bugs(f"ONNX graph: the pattern rewrite {rewrite.__name__}"):
                nodes = rewrite(self.onnx, g, nodes)
        nodes = self.live(nodes)
        self.walk_nodes = nodes  # (index, node) of the walk, after the rewrites
        self.consumed = {o.name for o in g.output} | {x for _, n in nodes for x in n.input if x}
        self.graph_outputs = {o.name for o in g.output}
        self.node_inputs = {x for _, n in nodes for x in n.input if x}
        self.uses = collections.Counter([o.name for o in g.output] + [x for _, n in nodes for x in n.input if x])
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
        if not MIN_OPSET <= v <= MAX_OPSET:
            raise UnsupportedONNX(f"ONNX model: default-domain opset {v} is not supported; shmrt reads opsets "
                                  f"{MIN_OPSET}-{MAX_OPSET} (re-export with opset_version={MIN_OPSET}..{MAX_OPSET})")
        self.opset = v
        for n in self.graph.node:
            if n.domain == "com.microsoft" and n.op_type in CONTRIB_OPS:
                continue  # onnxruntime's quantized ops (handlers_quant.py)
            if n.domain not in ("", "ai.onnx"):
                hint = (" (a quantized op of the QOperator format: re-quantize with quant_format=QuantFormat.QDQ or "
                        "use quantize_dynamic)" if n.op_type.startswith("Q") else "")
                raise UnsupportedONNX(f"ONNX node {n.name or 'unnamed'} (op {n.op_type}): domain {n.domain!r} is "
                                      f"not supported{hint}; only the default ONNX domain is, and com.microsoft's "
                                      f"{', '.join(sorted(CONTRIB_OPS))}")

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

    def lens_dims(self, inp):
        """Whether a graph input is an int32/int64 [batch] tensor: a recurrent node's sequence_lens (one
        value per sample, (1,) in shmrt; any other use of it is refused where it is read)."""
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        return (tt is not None and tt.elem_type in (6, 7) and tt.HasField("shape") and len(tt.shape.dim) == 1)

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
            if isinstance(v, Poison):
                raise UnsupportedONNX(v.msg)
        dynamic = [v for v in ins if isinstance(v, View)]
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
        if not isinstance(ins[0], View) and op not in ("Add", "Sub", "Mul", "Div", "Gemm", "MatMul", "Concat", "Max",
                                                        "Min", "CastLike"):
            at = [k for k, v in enumerate(ins) if isinstance(v, View)]
            self.fail(node, idx, f"input 0 is a constant and input(s) {at} depend on the model input; expected the "
                                 f"activation as input 0 of {op}")
        self.chain.switch(dynamic[0].version)  # the activation this node reads (an earlier one on a branch)
        outs = handler(node, idx, ins, self.attrs(node))
        self.set(node, outs if isinstance(outs, list) else [outs])

    def set(self, node, outs):
        for name, v in zip(node.output, outs):
            if name:
                self.values[name] = v

    def finish(self):
        outs = [o.name for o in self.graph.output]
        vals = [self.values.get(n) for n in outs]
        for n, v in zip(outs, vals):
            if v is None:
                raise UnsupportedONNX(f"ONNX graph output {n!r} is not produced by any node")
            if isinstance(v, Poison):
                raise UnsupportedONNX(v.msg)
            if not isinstance(v, View):
                raise UnsupportedONNX(f"ONNX graph output {n!r} is a constant (does not depend on the input)")
        topk = self.topk_outputs
        last = self.chain.layers[-1] if self.chain.layers else None
        if topk is not None and not L.returns_indices(last):
            raise UnsupportedONNX(f"ONNX graph outputs {outs}: the node whose indices ({topk[1]!r}) are an "
                                  f"output must be the last layer, its values ({topk[0]!r}) read by no other node; "
                                  f"expected its values and indices as the graph's only outputs")
        if topk is not None and tuple(outs) != topk:
            raise UnsupportedONNX(f"ONNX graph outputs {outs}: a final {type(last).__name__} must output both its "
                                  f"values and indices, in that order ({list(topk)}): shmrt returns "
                                  f"(values, indices)")
        names = []
        for n, v in zip(outs, vals):
            self.chain.switch(v.version)
            if v.last_of is not None:
                v = self.last_state(v)
                self.chain.switch(v.version)
            v = self.ordered(self.graph.node[-1], len(self.graph.node) - 1, v)
            if not self.identical(v):
                raise UnsupportedONNX(f"ONNX graph output {n!r} of shape {fmt(v.shape)} is not in batch-first "
                                      f"order (shmrt layout {fmt(self.full())}); add a Transpose back to batch-first")
            names.append(self.chain.current)
        if not self.chain.layers:  # only re-labels its input (Identity, Unsqueeze, ...): a copy of it
            if len(names) != 1:
                raise UnsupportedONNX(f"ONNX graph outputs {outs}: the graph computes nothing (no layer) and has "
                                      f"{len(names)} outputs; expected one")
            self.chain.emit(L.Dropout(), self.ir)
            names = [self.chain.current]
        if topk is not None and tuple(outs) == topk:  # TopK's (values, indices): one output of shmrt's
            names = names[:1]
        elif len(set(names)) != len(names):
            raise UnsupportedONNX(f"ONNX graph outputs {outs}: two outputs are one activation")
        return self.chain.model(self.inputs, names, merge_recurrent=True)
