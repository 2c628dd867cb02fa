"""ONNX transformer encoders -> shmrt.Graph: the sequence importer.

A graph whose inputs are token ids / masks ``[N, T]`` (integer or bool), or token features
``[N, T, D]`` with a dynamic T, or that multiplies two activations into a Softmax (attention), is
read here rather than by the chain importer (importer.py).  Its values are of three kinds:

* constants (initializers, Constant nodes, what folds from them);
* *probed* values: what depends only on the sizes N and T or on the values of the ids / mask
  inputs (shape arithmetic, position indices, the attention mask) is computed at three concrete
  probes (N, T) with random 0/1 data in those inputs -- one array per probe, and the set of inputs
  it depends on.  A probed value is then read by what it is: a Reshape's target (regrouping the
  atoms, seq_views.py), positions 0..T-1 (a position table's rows) or a key padding mask (0 at real
  tokens, a large negative value at padding, the same for every head and query: checked against
  the mask input at every probe, which also tells Hugging Face's attention_mask (1: real) from
  PyTorch's key_padding_mask (True: padding));
* activations (seq_views.Act): views of token features, followed through Reshape / Transpose /
  Gather into heads; the ops on them become the token-level op list (seq_fuse.Op) that seq_fuse.py
  turns into transformer layers.

Attention's own products, masks and softmax are read in seq_attention.py, the per-token ops and
views in seq_ops.py.  Anything else on an activation is refused (UnsupportedONNX) naming the node,
its op and what is expected: a causal or constant attention mask, cross-attention, rotary position
embeddings (a Mul by Cos / Sin of the positions), position ids computed from the ids (RoBERTa), a
Linear on token features outside an encoder layer, an activation other than relu / exact gelu in
one.

The inputs' T (the graph's longest sequence) is max_seq_len if given, else the inputs' fixed T, else
the rows of the position embeddings, else 512; a graph whose Reshapes fix the length it was traced at
(the legacy exporter's nn.MultiheadAttention) is read at that length.  Semantics differ from the
ONNX graph only where it leaves values no one should read, as for shmrt's other transformer
frontends: outputs at padding positions are 0, and a pooler's first token is each sequence's first
real token (position 0 when the padding is on the right)."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx import patterns
from shmrt.frontends.onnx.errors import UnsupportedONNX, refusals_only
from shmrt.frontends.onnx.folding import Folding
from shmrt.frontends.onnx.layout import Layout
from shmrt.frontends.onnx.patterns_fn import rewrite_layernorm_function, rewrite_where_less
from shmrt.frontends.onnx.reading import attrs, check_node, tensor_array
from shmrt.frontends.onnx.seq_attention import AttentionOps
from shmrt.frontends.onnx.seq_ops import Baked, ViewOps
from shmrt.frontends.onnx.seq_fuse import Op, build
from shmrt.frontends.onnx.seq_views import FLOATS, INTS, Act, Feat, Probe, Probed, Src, columns, kind_text, token_layout
from shmrt.ir import layers as L

PROBES = ((2, 5), (3, 5), (2, 7))      # (N, T) where the input does not fix them
DEFAULT_T = 512                         # the inputs' T when nothing bounds it (no position table, no max_seq_len)


def is_sequence_graph(graph) -> bool:
    """Whether the sequence importer reads this graph (see the module's docstring)."""
    inits = {t.name for t in graph.initializer}
    for inp in graph.input:
        tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
        if inp.name in inits or tt is None or not tt.HasField("shape"):
            continue
        dims = tt.shape.dim
        if len(dims) == 2 and tt.elem_type in INTS:
            return True
        if len(dims) == 3 and tt.elem_type in FLOATS and not dims[1].HasField("dim_value"):
            return True
    const = set(inits)
    for n in graph.node:  # the values computed from constants only
        if all(x in const for x in n.input if x):
            const.update(o for o in n.output if o)
    return any(n.op_type == "Softmax" for n in graph.node) and any(
        n.op_type == "MatMul" and len(n.input) == 2 and not any(x in const for x in n.input) for n in graph.node)


class SeqImport(Folding, Layout, ViewOps, AttentionOps):
    def __init__(self, onnx, model, opset, max_seq_len=None, baked=None):
        self.onnx, self.model, self.graph, self.opset = onnx, model, model.graph, opset
        if max_seq_len is not None and (isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer))
                                        or max_seq_len < 1):
            raise TypeError(f"max_seq_len must be a positive int (the longest sequence), got {max_seq_len!r}")
        self.max_seq_len, self.baked = max_seq_len, baked
        self.values, self.ops, self.made, self.kept = {}, [], {}, []
        self.tables = []  # the position tables' numbers of rows

    # -- the importer's conventions (Folding's and Layout's too) ------------------------------------
    def where(self, node, idx):
        return f"ONNX node {idx} ({node.name or 'unnamed'}, op {node.op_type})"

    def fail(self, node, idx, msg):
        raise UnsupportedONNX(f"{self.where(node, idx)}: {msg}")

    def attrs(self, node):
        return attrs(self.onnx, node)

    def to_array(self, t, what):
        return tensor_array(self.onnx, t, what)

    def emit(self, kind, ins, where, **p):
        out = f"{kind}~{len(self.ops)}"
        self.ops.append(Op(kind, ins, out, p, where))
        return out

    # -- the walk -----------------------------------------------------------------------------------
    def convert(self):
        """The shmrt.Graph.  A graph that runs at one sequence length only (a Reshape to a constant that
        holds the traced length: torch.onnx.export's legacy exporter does this to nn.MultiheadAttention's
        keys) is read again with T fixed at that length: the inputs' T (and max_seq_len's bound)."""
        try:
            return self.walk()
        except Baked as e:
            if self.baked is not None:
                raise UnsupportedONNX(f"{e.where}: the target shape fixes the sequence length at {e.t}, another "
                                      f"node at {self.baked}") from None
            if self.max_seq_len is not None and self.max_seq_len > e.t:
                raise UnsupportedONNX(f"{e.where}: the target shape is a constant that fixes the sequence length "
                                      f"at {e.t} (the graph runs at that length only; torch.onnx.export's legacy "
                                      f"exporter bakes nn.MultiheadAttention's key length): max_seq_len="
                                      f"{self.max_seq_len} is longer; expected at most {e.t}, or export with "
                                      f"dynamo=True") from None
            return SeqImport(self.onnx, self.model, self.opset, self.max_seq_len, e.t).convert()

    def walk(self):
        g = self.graph
        for t in g.initializer:
            self.values[t.name] = self.to_array(t, f"initializer {t.name!r}")
        inits = {t.name for t in g.initializer}
        self.setup_inputs([i for i in g.input if i.name not in inits])
        nodes = _live(g, list(enumerate(g.node)))
        for rewrite in (patterns.rewrite_silu, patterns.rewrite_gelu, patterns.rewrite_layernorm,
                        patterns.rewrite_softmax, rewrite_layernorm_function, rewrite_where_less):
            with refusals_only(f"ONNX graph: the pattern rewrite {rewrite.__name__}", L):
                nodes = rewrite(self.onnx, g, nodes)
        nodes = _live(g, nodes)
        self.read = {x for _, n in nodes for x in n.input if x} | {o.name for o in g.output}
        for idx, node in nodes:
            with refusals_only(self.where(node, idx), L):
                self.step(idx, node)
        with refusals_only(f"ONNX graph outputs {[o.name for o in g.output]} (building the model)", L):
            return self.finish()

    def setup_inputs(self, inputs):
        if not inputs:
            raise UnsupportedONNX("ONNX graph: no dynamic input (every graph input is an initializer)")
        fixed = {0: set(), 1: set()}
        self.inputs = []  # (name, D): D for token features [N, T, D], None for ids / masks [N, T]
        for inp in inputs:
            tt = inp.type.tensor_type if inp.type.HasField("tensor_type") else None
            if tt is None or not tt.HasField("shape"):
                raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: needs a tensor type with a known shape")
            dims, e = list(tt.shape.dim), tt.elem_type
            if not ((len(dims) == 2 and e in INTS + FLOATS) or (len(dims) == 3 and e in FLOATS)):
                raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: element type {e}, rank {len(dims)}; a "
                                      f"transformer's inputs are token ids or masks [N, T] (integer, bool or float) "
                                      f"or token features [N, T, D] (float)")
            for k in (0, 1):
                if dims[k].HasField("dim_value"):
                    fixed[k].add(int(dims[k].dim_value))
            if len(dims) == 3 and not dims[2].HasField("dim_value"):
                raise UnsupportedONNX(f"ONNX graph input {inp.name!r}: the feature dimension (axis 2) must be static")
            self.inputs.append((inp.name, int(dims[2].dim_value) if len(dims) == 3 else None, e))
        for k, what in ((0, "batch"), (1, "sequence")):
            if len(fixed[k]) > 1:
                raise UnsupportedONNX(f"ONNX graph inputs: {what} axis {k} has different fixed sizes "
                                      f"{sorted(fixed[k])}; expected one size (or a dynamic axis) for every input")
        self.static_t = next(iter(fixed[1]), None) or self.baked
        self.probes = [Probe(next(iter(fixed[0]), n), self.static_t or t) for n, t in PROBES]
        np_types = {1: np.float32, 10: np.float16, 11: np.float64, 16: np.float32, 9: np.bool_}
        for k, (name, D, e) in enumerate(self.inputs):
            if D is not None:
                self.values[name] = Act("tok", Src(name=name, F=D), [("N",), ("T",), (Feat(D, 1),)])
                continue
            vals = []
            for p, probe in enumerate(self.probes):  # 0/1 values, each row holding both
                rng = np.random.default_rng(1000 * p + k)
                x = rng.integers(0, 2, (probe.n, probe.t))
                for row in x:
                    i, j = rng.choice(probe.t, 2, replace=False)
                    row[i], row[j] = 1, 0
                x = x.astype(np_types.get(e, self.onnx.helper.tensor_dtype_to_np_dtype(e)))
                probe.data[name] = x
                vals.append(x)
            self.values[name] = Probed(vals, {name}, name)
        self.inputs = [(n, D) for n, D, _ in self.inputs]

    def step(self, idx, node):
        op = node.op_type
        bad = check_node(self.onnx, node, self.opset)
        if bad:
            self.fail(node, idx, f"{bad} (not a valid {op} node)")
        if node.domain not in ("", "ai.onnx"):
            self.fail(node, idx, f"domain {node.domain!r} is not supported; only the default ONNX domain is")
        for x in node.input:
            if x and x not in self.values:
                self.fail(node, idx, f"input {x!r} is not produced by any earlier node, initializer or graph input "
                                     f"(or by an output shmrt does not compute)")
        ins = [self.values[x] if x else None for x in node.input]
        if op == "Constant":
            return self.set(node, [self.constant(node, idx)])
        if not any(isinstance(v, Act) for v in ins):
            if op == "Gather" and isinstance(ins[0], np.ndarray) and ins[0].dtype.kind == "f" and ins[0].ndim == 2 \
                    and isinstance(ins[1], Probed):
                return self.set(node, [self.lookup(node, idx, ins[0], ins[1], self.attrs(node))])
            if not any(isinstance(v, Probed) for v in ins):
                return self.set(node, self.fold(node, idx, ins))
            return self.set(node, self.probe_fold(node, idx, ins))
        handler = getattr(self, "on_" + op, None)
        if handler is None:
            self.fail(node, idx, f"op {op} on the activations is not supported in a transformer encoder; shmrt reads "
                                 f"embeddings, LayerNorm, projections, attention (scores, scale, padding mask, "
                                 f"Softmax, weighted values), GELU / ReLU feed-forward blocks, residual Adds, the "
                                 f"first token and a Tanh pooler (supported ops on activations: "
                                 f"{', '.join(sorted(n[3:] for n in dir(self) if n.startswith('on_')))})")
        outs = handler(node, idx, ins, self.attrs(node))
        self.set(node, outs if isinstance(outs, list) else [outs])

    def set(self, node, outs):
        for name, v in zip(node.output, outs):
            if name and v is not None:
                self.values[name] = v

    def probe_fold(self, node, idx, ins):
        per = [self.fold(node, idx, [v.vals[p] if isinstance(v, Probed) else v for v in ins])
               for p in range(len(self.probes))]
        pv = [v for v in ins if isinstance(v, Probed)]
        deps = frozenset() if node.op_type in ("Shape", "Size") else frozenset().union(*(v.deps for v in pv))
        src = ins[0].src if node.op_type in ("Cast", "Identity") and isinstance(ins[0], Probed) else None
        ops = frozenset({node.op_type}).union(*(v.ops for v in pv))
        return [Probed([per[p][k] for p in range(len(self.probes))], deps, src, ops) for k in range(len(per[0]))]

    def finish(self):
        outs = []
        for o in self.graph.output:
            v = self.values.get(o.name)
            if v is None:
                raise UnsupportedONNX(f"ONNX graph output {o.name!r} is not produced by any node")
            if not isinstance(v, Act):
                raise UnsupportedONNX(f"ONNX graph output {o.name!r} is {kind_text(v)}: it does not depend on the "
                                      f"token inputs' features")
            t = self.tokens(None, None, v, f"graph output {o.name!r}")
            if t.axes[:-1] not in ((("N",), ("T",)), (("N",),)):
                raise UnsupportedONNX(f"ONNX graph output {o.name!r} has axes {t!r}; expected batch-first token "
                                      f"features [N, T, D] or [N, D] (add a Transpose back to batch-first)")
            outs.append((o.name, t.src.name))
        T = self.seq_len()
        return build(self.ops, self.inputs, outs, T)

    def seq_len(self):
        rows = min(self.tables) if self.tables else None
        T = self.max_seq_len if self.max_seq_len is not None else self.static_t or rows or DEFAULT_T
        if rows is not None and T > rows:
            raise UnsupportedONNX(f"max_seq_len={T}: the model's position embeddings have {rows} rows; expected at "
                                  f"most {rows}")
        return int(T)

    # -- reading values -----------------------------------------------------------------------------
    def per_probe(self, node, idx, v, what):
        """A constant or size-only value as one int array per probe."""
        if isinstance(v, Probed):
            if v.deps:
                self.fail(node, idx, f"{what} depends on the values of input(s) {sorted(v.deps)}; expected shape "
                                     f"arithmetic or a constant")
            return [np.asarray(a).astype(np.int64).reshape(-1) for a in v.vals]
        if not isinstance(v, np.ndarray):
            self.fail(node, idx, f"{what} depends on the activations; expected shape arithmetic or a constant")
        return [v.astype(np.int64).reshape(-1)] * len(self.probes)

    def scalar(self, v):
        """The one number of a constant, or of a size-only probed value equal at every probe; else None."""
        if isinstance(v, Probed) and not v.deps:
            vals = [np.asarray(a) for a in v.vals]
            if all(a.size == 1 for a in vals) and len({float(a.reshape(-1)[0]) for a in vals}) == 1:
                return float(vals[0].reshape(-1)[0])
        if isinstance(v, np.ndarray) and v.size == 1 and v.dtype.kind in "biuf":
            return float(v.reshape(-1)[0])
        return None

    def lookup(self, node, idx, W, ids, a):
        """Gather of a table's rows: an embedding of an ids input, or position embeddings (rows 0..T-1)."""
        if a.get("axis", 0) != 0:
            self.fail(node, idx, f"axis={a.get('axis')}: a table lookup gathers rows (axis 0)")
        D = W.shape[1]
        if ids.src is not None and ids.deps == {ids.src} and all(
                v.shape == (p.n, p.t) for v, p in zip(ids.vals, self.probes)):
            name = self.emit("embed", [ids.src], self.where(node, idx), W=W)
            return Act("tok", Src(name=name, F=D), [("N",), ("T",), (Feat(D, 1),)])
        if not ids.deps and all(np.asarray(v).ndim >= 1 and all(s == 1 for s in np.shape(v)[:-1]) and
                                np.array_equal(np.asarray(v).reshape(-1), np.arange(p.t))
                                for v, p in zip(ids.vals, self.probes)):
            self.tables.append(W.shape[0])
            return Act("pos", W, [()] * (np.ndim(ids.vals[0]) - 1) + [("T",), (Feat(D, 1),)])
        if not ids.deps:  # rows by size-only indices (a buffer of token type ids, say): read where it is added
            return self.probe_fold(node, idx, [W, ids])[0]
        self.fail(node, idx, f"looks up rows of a [{W.shape[0]}, {D}] table by indices computed from the values of "
                             f"input(s) {sorted(ids.deps)} (ops {', '.join(sorted(ids.ops)) or 'none'}); shmrt reads a "
                             f"table lookup as an embedding of a token-id input [N, T] or as position embeddings of "
                             f"positions 0..T-1")

    def tokens(self, node, idx, act, what):
        """act as ordinary token features computed by an op of the list: an Act over a named value."""
        lay = token_layout(act) if isinstance(act, Act) else None
        if lay is None:
            msg = (f"{what} is {kind_text(act)}" if not isinstance(act, Act) or act.kind != "tok" else
                   f"{what} has axes {act!r}")
            msg += "; expected token features: the tokens (N, T) on the leading axes, the features on the last"
            raise UnsupportedONNX(f"{self.where(node, idx)}: {msg}" if node is not None else f"ONNX {msg}")
        head, last = lay
        cols = columns(act, last).reshape(-1)
        src, first = act.src, "T" not in [a for ax in head for a in ax]
        if not src.pending:
            if act.scale != 1.0 or not np.array_equal(cols, np.arange(src.F)):
                msg = (f"{what} reads the features of a computed value reordered, selected or scaled (axes "
                       f"{act!r}); shmrt reorders, selects and scales only the columns of a projection "
                       f"(MatMul by a weight)")
                raise UnsupportedONNX(f"{self.where(node, idx)}: {msg}" if node is not None else f"ONNX {msg}")
            name = src.name
        else:
            key = (id(src), cols.tobytes(), act.scale)
            name = self.made.get(key)
            if name is None:
                W, b = src.W[:, cols], None if src.b is None else src.b[cols]
                if act.scale != 1.0:
                    W, b = W * act.scale, None if b is None else b * act.scale
                name = self.made[key] = self.emit("linear", [src.x], src.where, W=W, b=b)
                self.kept.append(src)  # keeps id(src) from being reused while it is a key
        return Act("tok", Src(name=name, F=len(cols), first=first), head + ((Feat(len(cols), 1),),))

def _live(graph, nodes):
    """Drop nodes whose outputs reach no graph output; keep the order."""
    need = {o.name for o in graph.output}
    keep = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        n = nodes[i][1]
        if any(o and o in need for o in n.output):
            keep[i] = True
            need.update(x for x in n.input if x)
    return [p for p, k in zip(nodes, keep) if k]
