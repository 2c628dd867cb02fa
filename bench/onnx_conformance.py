"""ONNX backend node-test conformance of shmrt.frontends.onnx_import.from_onnx.

    python bench/onnx_conformance.py                      # every supported op, strategy "data", 2 workers
    python bench/onnx_conformance.py --ops Relu,Conv      # some ops only
    python bench/onnx_conformance.py --strategies data,model --workers 2 -v
    python bench/onnx_conformance.py --list               # the cases, their inputs and outputs; runs nothing
    python bench/onnx_conformance.py --opset-cap 22       # what-if: lower opsets 23-25 to 22 before import
    python bench/onnx_conformance.py --write-floors       # record today's PASS counts as the per-op floors

The cases are the ONNX backend node tests that ship with the ``onnx``
package (``onnx.backend.test.loader.load_model_tests(kind="node")``; older
onnx releases give folders with model.onnx and test_data_set_*/*.pb, newer
ones the model and data in memory: both are read).  A case is taken when
every node of its graph is one of SUPPORTED_OPS; it is filed under its
first node that is not shape plumbing.  The function-expanded forms of those
cases (test_x_expanded: the op spelt out in primitive ops, mostly
unsupported) are filed under "<op> (expanded)" (--no-expanded skips them).

shmrt compiles a model whose dynamic inputs share a first axis, the batch,
so every graph input but the first becomes an initializer holding the test's
data ("one dynamic input + constant weights") -- except the operands of ops
that join activations (Add, Sub, Mul, Div, Concat: JOIN_OPS), which stay
inputs where they are float tensors of the first input's rank and batch.  A graph with several
outputs (other than TopK's values and indices) is run as it is, and once
more with the graph's outputs cut down to the first one (a case named
``test_x[Y]``; for LSTM/GRU/RNN also to each of Y_h, Y_c).

Each case is imported with ``from_onnx``, compiled on one shared
``shmrt.Runtime`` with ``max_batch`` = the batch and ``input_shape`` = the
first input's shape without the batch axis, run, and compared:

- PASS: every output matches (floats: max |got - expected| <= 1e-5 x
  max |expected|; integer outputs such as ArgMax and TopK indices: exactly).
  An output whose shape differs from ONNX's but keeps the batch axis and the
  element count per sample (shmrt has no Unsqueeze or 4-D outputs, say) is
  compared in row-major order and listed as a note ("reshaped").
- REFUSED: ``from_onnx`` or ``compile`` raised ValueError, TypeError or
  NotImplementedError from shmrt's own code (one raised inside numpy or onnx
  is an internal error leaking out: FAIL) with a message that names
  something of the graph (an op type, node, attribute, input or output name)
  or what was expected (a shape, dtype, axis, opset ...).
- FAIL: a wrong answer, another exception (ONNXImporterBug, a bug in the
  importer, included; or one at call time), a refusal with an unclear
  message, a hang, or a graph that cannot be fed (no input,
  a sequence input) that was imported rather than refused.

Floors: bench/results/onnx-floors.json holds, per op, how many of its cases
must PASS (strategy data, every case as loaded by default: variants and
expanded forms included, opsets as shipped), in each of the two batch modes
(every size fixed as shipped, and the batch axis symbolic).  The table shows
them in a "floor" column when the run is such a run (any batch mode), and an
op that passes fewer cases than its floor is listed.  ``--write-floors`` runs
both batch modes and writes each op's smaller PASS count; it refuses to lower
a floor unless ``--allow-lower`` is given.  Floors go up by a reviewed
change to that file, never by themselves.

The exit status is 1 when any case FAILs or an op falls below its floor (2
when shmrt.frontends.onnx_import is absent).  tests/test_onnx_nodes.py runs the same
cases through ``run_case`` and checks the same floors.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import importlib
import importlib.util
import json
import os
import re
import signal
import sys
import time
import traceback
import warnings

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

SUPPORTED_OPS = ("Gemm", "MatMul", "Add", "Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSwish", "HardSigmoid", "Clip",
                 "Gelu", "Erf",
                 "Softmax", "LogSoftmax", "ArgMax", "TopK", "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "BatchNormalization",
                 "Flatten", "LSTM", "GRU", "RNN", "LayerNormalization", "Reshape", "Squeeze", "Unsqueeze",
                 "Transpose", "Identity", "Constant", "Shape", "Gather", "Concat", "Expand", "Sub", "Mul", "Div", "ReduceMean", "Resize",
                 "Split", "Slice")
PLUMBING = frozenset(("Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Constant", "Shape", "Gather",
                      "Concat", "Expand"))
REFUSAL_TYPES = (ValueError, TypeError, NotImplementedError)
FLOORS_PATH = os.path.join(_ROOT, "bench", "results", "onnx-floors.json")
BATCH_AXES = ("fixed", "symbolic")  # as shipped; the input's batch axis made symbolic (run_case's dynamic_batch)
RTOL = 1e-5
# cases whose stored expected output is itself off by more than RTOL: name -> (tolerance, why); each
# checked by hand against onnxruntime (ONNX's own runner takes every case at rtol 1e-3)
ERRATA = {
    "test_averagepool_2d_ceil_last_window_starts_on_pad": (
        3e-4, "the expected [0.1511, 0.2841, 0.3572] is hand-written to 4 digits: channel 1's mean over the "
              "window (count_include_pad, divisor 9) is 2.5564 / 9 = 0.284044, as onnxruntime gives"),
}
CASE_TIMEOUT_S = 60
# words that make a refusal message specific even when it names nothing of the graph
_CLEAR_WORDS = ("shape", "dtype", "axis", "axes", "batch", "rank", "float32", "layout", "dimension", "output",
                "input", "node", "attribute", "layer", "graph", "opset", "ir_version", "domain", "element type")


@dataclasses.dataclass
class Case:
    name: str            # the ONNX test name; a single-output variant adds [output name]
    op: str              # the op it is filed under
    model: object        # onnx.ModelProto, as shipped (graph inputs not yet frozen)
    data_sets: list      # [(inputs, outputs)], outputs in graph.output order (cut down for a variant)
    outputs: tuple = ()  # for a variant: the graph outputs kept

    def __repr__(self):
        return f"Case({self.name})"


@dataclasses.dataclass
class Result:
    case: str
    op: str
    status: str               # PASS | REFUSED | FAIL
    reason: str = ""          # FAIL: what went wrong; REFUSED: the exception's message
    stage: str = ""           # import | compile | run | compare
    notes: list = dataclasses.field(default_factory=list)
    graph: str = ""           # nodes and attributes (filled for FAIL)

    def report(self) -> str:
        s = f"{self.case} [{self.op}] {self.status}"
        if self.stage:
            s += f" at {self.stage}"
        if self.reason:
            s += ":\n  " + self.reason.replace("\n", "\n  ")
        for n in self.notes:
            s += f"\n  note: {n}"
        if self.graph:
            s += "\n  graph:\n    " + self.graph.replace("\n", "\n    ")
        return s


# -- cases -------------------------------------------------------------------------

def _read_pb(path):
    import onnx
    from onnx import numpy_helper
    t = onnx.TensorProto()
    with open(path, "rb") as f:
        data = f.read()
    try:
        t.ParseFromString(data)
        return numpy_helper.to_array(t)
    except Exception:  # a sequence or optional value: not a tensor shmrt could take
        return None


def _from_folder(case):
    import onnx
    model = onnx.load(os.path.join(case.model_dir, "model.onnx"))
    sets = []
    for d in sorted(glob.glob(os.path.join(case.model_dir, "test_data_set_*"))):
        ins = [_read_pb(p) for p in sorted(glob.glob(os.path.join(d, "input_*.pb")),
                                           key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))]
        outs = [_read_pb(p) for p in sorted(glob.glob(os.path.join(d, "output_*.pb")),
                                            key=lambda p: int(re.findall(r"\d+", os.path.basename(p))[0]))]
        sets.append((ins, outs))
    return model, sets


def primary_op(model) -> str:
    types = [n.op_type for n in model.graph.node]
    for t in types:
        if t not in PLUMBING:
            return t
    return types[0] if types else "-"


def load_cases(ops=None, names=None, variants=True, expanded=True) -> list:
    """The node test cases whose every node is a supported op, filed by op.
    ops: op types to keep (None: all); names: a regex on case names.
    expanded: also the function-expanded forms of those cases
    (test_x_expanded, test_x_expanded_ver18: the op spelt out in primitive ops,
    most of them unsupported), filed as "<op> (expanded)"; each must PASS or be
    refused with a clear error too."""
    import onnx  # noqa: F401
    from onnx.backend.test.loader import load_model_tests
    with warnings.catch_warnings():  # the case generators overflow casts on purpose
        warnings.simplefilter("ignore")
        raw = load_model_tests(kind="node")
    supported = set(SUPPORTED_OPS)
    keep_ops = None if ops is None else {o.strip() for o in ops if o.strip()}
    if keep_ops is not None and keep_ops - supported:
        raise ValueError(f"--ops: not supported ops {sorted(keep_ops - supported)}; choose from {SUPPORTED_OPS}")
    pat = re.compile(names) if names else None
    out, base_op, later = [], {}, []
    for tc in raw:
        if tc.model is not None:
            model, sets = tc.model, [(list(i), list(o)) for i, o in tc.data_sets]
        elif tc.model_dir:
            model, sets = _from_folder(tc)
        else:
            continue
        types = {n.op_type for n in model.graph.node}
        if not types or not types <= supported:
            later.append((tc.name, model, sets))
            continue
        op = base_op[tc.name] = primary_op(model)
        out.extend(_cases(tc.name, op, model, sets, keep_ops, pat, variants))
    if expanded:
        for name, model, sets in later:
            base = re.sub(r"_expanded(_ver\d+)?$", "", name)
            if base != name and base in base_op:
                out.extend(_cases(name, base_op[base], model, sets, keep_ops, pat, variants, " (expanded)"))
    order = {op: i for i, op in enumerate(SUPPORTED_OPS)}
    out.sort(key=lambda c: (c.op.endswith("(expanded)"), order.get(c.op.split(" ")[0], 99), c.name))
    return out


def _cases(name, op, model, sets, keep_ops, pat, variants, suffix=""):
    if keep_ops is not None and op not in keep_ops:
        return []
    outs = [o.name for o in model.graph.output]
    cases = [Case(name, op + suffix, model, sets)]
    if variants and len(outs) > 1 and op != "TopK":
        # the main output alone; for a recurrent node, each of Y, Y_h (, Y_c) alone (the last step is
        # a chain model too); statistics outputs (Mean, InvStdDev, running_*) only with the whole graph
        for k, o in enumerate(outs):
            if k > 0 and op not in ("LSTM", "GRU", "RNN"):
                continue
            cases.append(Case(f"{name}[{o}]", op + suffix, model, [(i, [os_[k]]) for i, os_ in sets], (o,)))
    return [c for c in cases if pat is None or pat.search(c.name)]


JOIN_OPS = ("Add", "Sub", "Mul", "Div", "Concat")  # ops of several activations: their operands stay inputs


def dynamic_inputs(op, inputs):
    """How many leading graph inputs stay dynamic: the first; for the ops that join activations
    (JOIN_OPS) every following float tensor of the same batch size (rank >= 2) too."""
    k = 1
    if op in JOIN_OPS and inputs and isinstance(inputs[0], np.ndarray) and inputs[0].ndim >= 2:
        while k < len(inputs) and isinstance(inputs[k], np.ndarray) and inputs[k].ndim == inputs[0].ndim \
                and inputs[k].shape[0] == inputs[0].shape[0] and inputs[k].dtype.kind == "f":
            k += 1
    return k


def freeze_inputs(model, inputs, outputs=(), opset_cap=None, dynamic_batch=False, keep=1):
    """A copy of ``model`` with every graph input but the first ``keep`` moved into
    graph.initializer (holding the test's data), and, if ``outputs`` is given,
    graph.output cut down to those names.  opset_cap: lower a default-domain
    opset above it to it (a what-if for importers that stop at an older opset;
    the node tests' opset 23-25 bumps of these ops add element types only).
    dynamic_batch: make the first input's first axis symbolic ("N"), as an
    exporter's dynamic batch axis would (the node tests fix every size)."""
    import onnx
    from onnx import numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for vi, arr in zip(list(g.input)[keep:], list(inputs)[keep:]):
        if isinstance(arr, np.generic):  # a 0-d tensor read back as a numpy scalar (Clip's min and max)
            arr = np.asarray(arr)
        if not isinstance(arr, np.ndarray):
            raise _HarnessError(f"graph input {vi.name!r} is a {type(arr).__name__}, not a tensor; "
                                f"it cannot become an initializer")
        g.initializer.append(numpy_helper.from_array(np.asarray(arr), vi.name))
    del g.input[keep:]
    for vi in g.input if dynamic_batch else ():
        dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    if opset_cap is not None:
        for o in m.opset_import:
            if o.domain in ("", "ai.onnx") and o.version > opset_cap:
                o.version = opset_cap
    if outputs:
        keep = [o for o in g.output if o.name in outputs]
        del g.output[:]
        g.output.extend(keep)
    return m


class _HarnessError(Exception):
    """The case cannot be set up as one dynamic input + constants."""


def describe_graph(model) -> str:
    """The graph's inputs, initializers, nodes with attributes, and outputs, one per line."""
    import onnx
    from onnx import helper

    def vi(v):
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type"):
            return f"{v.name}: {v.type.WhichOneof('value')}"
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
        return f"{v.name}: {onnx.TensorProto.DataType.Name(t.elem_type).lower()}{dims}"

    def attr(a):
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        elif isinstance(v, onnx.TensorProto):
            arr = onnx.numpy_helper.to_array(v)
            v = f"tensor{list(arr.shape)}={np.array2string(arr.ravel()[:8], precision=4)}"
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode(errors="replace") for x in v]
        return f"{a.name}={v}"

    g = model.graph
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)
    lines = [f"opset {opsets}",
             "inputs: " + "; ".join(vi(v) for v in g.input)]
    if g.initializer:
        lines.append("initializers: " + "; ".join(
            f"{t.name}: {onnx.TensorProto.DataType.Name(t.data_type).lower()}{list(t.dims)}"
            + (f"={np.array2string(onnx.numpy_helper.to_array(t).ravel()[:6], precision=4)}"
               if int(np.prod(t.dims)) <= 6 else "")
            for t in g.initializer))
    for n in g.node:
        a = ", ".join(attr(x) for x in n.attribute)
        lines.append(f"{n.op_type}{'(' + repr(n.name) + ')' if n.name else ''}"
                     f"[{a}]({', '.join(n.input)}) -> {', '.join(n.output)}")
    lines.append("outputs: " + "; ".join(vi(v) for v in g.output))
    return "\n".join(lines)


# -- the runtime ---------------------------------------------------------------------

def get_importer(module="shmrt.frontends.onnx_import"):
    """shmrt.frontends.onnx_import.from_onnx, or None if the module or the function is not there yet.
    A module that is there but fails to import raises."""
    import shmrt  # noqa: F401
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    mod = importlib.import_module(module)
    return getattr(mod, "from_onnx", None)


class RuntimeHolder:
    """One shared shmrt.Runtime, replaced when a case leaves it broken."""

    def __init__(self, workers=2):
        self.workers = workers
        self._rt = None
        self.restarts = 0

    def get(self):
        import shmrt
        if self._rt is None:
            self._rt = shmrt.Runtime(workers=self.workers)
        return self._rt

    def healthy(self) -> bool:
        if self._rt is None:
            return True
        try:
            with _alarm(10):
                self._rt.roundtrip()
            return True
        except BaseException:
            return False

    def reset(self):
        if self._rt is not None:
            try:
                with _alarm(20):
                    self._rt.close()
            except BaseException:
                pass
            self._rt = None
            self.restarts += 1

    def close(self):
        if self._rt is not None:
            self._rt.close()
            self._rt = None


class CaseTimeout(BaseException):
    pass


class _alarm:
    """Raise CaseTimeout after ``seconds`` (main thread on Unix; a no-op elsewhere)."""

    def __init__(self, seconds):
        self.seconds = int(seconds)
        self.armed = False

    def __enter__(self):
        import threading
        if self.seconds > 0 and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread():
            def on_alarm(signum, frame):
                raise CaseTimeout(f"no answer within {self.seconds} s")
            self.old = signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(self.seconds)
            self.armed = True
        return self

    def __exit__(self, *exc):
        if self.armed:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.old)


# -- one case ----------------------------------------------------------------------

def _clear_message(msg: str, model) -> bool:
    """Does a refusal message name something of the graph (an op, node, attribute,
    input/output/initializer name) or a shape/dtype/axis?"""
    if len(msg.strip()) < 10:
        return False
    low = msg.lower()
    g = model.graph
    words = set()
    for n in g.node:
        words.add(n.op_type)
        if n.name:
            words.add(n.name)
        words.update(a.name for a in n.attribute)
    words.update(v.name for v in list(g.input) + list(g.output))
    words.update(t.name for t in g.initializer)
    for w in words:
        if not w:
            continue
        if len(w) <= 2:  # short names (x, W, B, k): as whole words only
            if re.search(rf"(?<![A-Za-z0-9_]){re.escape(w)}(?![A-Za-z0-9_])", msg):
                return True
        elif w.lower() in low:
            return True
    return any(w in low for w in _CLEAR_WORDS)


def _sample(a, n=6):
    a = np.asarray(a).ravel()
    return np.array2string(a[:n], precision=6, separator=", ") + (" ..." if a.size > n else "")


def compare(got, expected, names=None, rtol=RTOL):
    """Compare shmrt's outputs with ONNX's: (ok, reason, notes)."""
    got = list(got) if isinstance(got, tuple) else [got]
    notes = []
    if len(got) != len(expected):
        return False, (f"the graph has {len(expected)} outputs {list(names or [])}, shmrt returned {len(got)} "
                       f"(an output silently dropped: refuse the graph, or run it per output)"), notes
    for k, (g, e) in enumerate(zip(got, expected)):
        label = f"output {k}" + (f" {names[k]!r}" if names else "")
        g, e = np.asarray(g), np.asarray(e)
        if g.shape != e.shape:
            if e.ndim >= 1 and g.ndim >= 1 and g.size == e.size and g.shape[0] == e.shape[0]:
                notes.append(f"{label}: shape {g.shape}, ONNX {e.shape}; compared in row-major order (reshaped)")
                g = g.reshape(e.shape)
            else:
                return False, (f"{label}: shape {g.shape}, expected {e.shape} (dtype {g.dtype}, expected {e.dtype})"
                               f"\n  got      {_sample(g)}\n  expected {_sample(e)}"), notes
        if e.dtype.kind in "iub" and g.dtype.kind in "iub":  # indices (ArgMax, TopK): exactly
            if not np.array_equal(g.astype(np.int64), e.astype(np.int64)):
                bad = np.argwhere(g.astype(np.int64) != e.astype(np.int64))
                at = tuple(int(i) for i in bad[0])
                return False, (f"{label}: integer output differs at {len(bad)} of {e.size} places "
                               f"(first at {at}: got {g[at]}, expected {e[at]})"
                               f"\n  got      {_sample(g, 12)}\n  expected {_sample(e, 12)}"), notes
            continue
        if e.dtype.kind not in "iubf" or g.dtype.kind not in "iubf":
            return False, f"{label}: dtype {g.dtype}, expected {e.dtype}", notes
        if e.dtype.kind in "iub" and g.dtype.kind == "f":
            notes.append(f"{label}: float32 values for an ONNX {e.dtype} output")
        gf, ef = g.astype(np.float64), e.astype(np.float64)
        both = f"\n  got      {_sample(gf)}\n  expected {_sample(ef)}"
        fin, nan = np.isfinite(ef), np.isnan(ef)
        if not np.array_equal(np.isnan(gf), nan) or not np.array_equal(gf[~fin & ~nan], ef[~fin & ~nan]):
            return False, f"{label}: NaN/inf values differ" + both, notes
        if not np.all(np.isfinite(gf[fin])):
            return False, f"{label}: non-finite values where ONNX has finite ones" + both, notes
        if fin.any():
            diff = np.where(fin, np.abs(gf - np.where(fin, ef, 0.0)), -1.0)
            err = float(diff.max()) / max(float(np.max(np.abs(ef[fin]))), 1e-6)
            if err > rtol:
                at = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), ef.shape))
                return False, (f"{label}: max |got - expected| / max |expected| = {err:.3g} > {rtol:g} "
                               f"(worst at {at}: got {gf[at]:.7g}, expected {ef[at]:.7g})" + both), notes
    return True, "", notes


def run_case(case: Case, holder: RuntimeHolder, from_onnx, strategies=("data",), timeout=CASE_TIMEOUT_S,
             opset_cap=None, dynamic_batch=False) -> Result:
    """Import, compile, run and compare one case; PASS, REFUSED or FAIL (never raises)."""
    res = Result(case.name, case.op, "PASS")
    if opset_cap is not None:
        v = max((o.version for o in case.model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if v > opset_cap:
            res.notes.append(f"opset {v} lowered to {opset_cap} (--opset-cap)")
    graph_desc = None
    try:
        with _alarm(timeout):
            for di, (inputs, outputs) in enumerate(case.data_sets):
                tag = f"data set {di}: " if len(case.data_sets) > 1 else ""
                keep = dynamic_inputs(case.op, inputs)
                try:
                    model = freeze_inputs(case.model, inputs, case.outputs, opset_cap, dynamic_batch, keep)
                except _HarnessError as e:
                    return dataclasses.replace(res, status="FAIL", stage="setup", reason=str(e))
                graph_desc = describe_graph(model)
                out_names = [o.name for o in model.graph.output]
                # -- import
                try:
                    smodel = from_onnx(model)
                except REFUSAL_TYPES as e:
                    return _refusal(res, "import", e, model, graph_desc)
                x = inputs[0] if inputs else None
                if not isinstance(x, np.ndarray):
                    what = "no graph input" if not inputs else \
                        f"a {type(x).__name__ if x is not None else 'non-tensor'} (sequence/optional) input"
                    return dataclasses.replace(
                        res, status="FAIL", stage="import", graph=graph_desc,
                        reason=f"from_onnx accepted a graph with {what}; shmrt cannot feed it, so from_onnx "
                               f"should raise ValueError (got {smodel!r:.200})")
                batch = int(x.shape[0]) if x.ndim else 0
                xs = list(inputs[:keep])
                in_shape = tuple(int(d) for d in x.shape[1:])
                if keep > 1:
                    in_shape = [tuple(int(d) for d in v.shape[1:]) for v in xs]
                # -- compile and run, per strategy
                refused = []
                for s in strategies:
                    rt = holder.get()
                    try:
                        cm = rt.compile(smodel, strategy=s, max_batch=max(batch, 1), input_shape=in_shape)
                    except REFUSAL_TYPES as e:
                        r = _refusal(res, f"compile[{s}]", e, model, graph_desc)
                        if r.status == "FAIL":
                            return r
                        refused.append(r)
                        continue
                    try:
                        try:
                            got = cm(*xs)
                        except Exception as e:
                            return dataclasses.replace(
                                res, status="FAIL", stage=f"run[{s}]", graph=graph_desc,
                                reason=f"{tag}{type(e).__name__} at call time: {e}\n  input {x.dtype}{list(x.shape)}, "
                                       f"compiled with input_shape={in_shape}, max_batch={max(batch, 1)}; "
                                       f"model: {smodel!r}")
                        erratum = ERRATA.get(case.name.split("[")[0])
                        ok, why, notes = compare(got, outputs, out_names, erratum[0] if erratum else RTOL)
                        if erratum and f"erratum: {erratum[1]}" not in res.notes:
                            res.notes.append(f"erratum: {erratum[1]}")
                        for n in notes:
                            if n not in res.notes:
                                res.notes.append(n)
                        if not ok:
                            return dataclasses.replace(res, status="FAIL", stage=f"compare[{s}]", graph=graph_desc,
                                                       reason=f"{tag}{why}\n  shmrt model: "
                                                              + repr(smodel).replace("\n", " "))
                    finally:
                        cm.close()
                if refused and len(refused) == len(strategies):
                    return refused[0]
                for r in refused:
                    res.notes.append(f"refused by {r.stage}, passed the others: {r.reason}")
    except CaseTimeout as e:
        holder.reset()
        return dataclasses.replace(res, status="FAIL", stage="timeout", reason=str(e), graph=graph_desc or "")
    except BaseException as e:  # a crash, a WorkerError, anything but a clean refusal
        if isinstance(e, KeyboardInterrupt):
            raise
        tb = traceback.format_exception(type(e), e, e.__traceback__)
        if not holder.healthy():
            holder.reset()
        return dataclasses.replace(res, status="FAIL", stage="exception", graph=graph_desc or "",
                                   reason=f"{type(e).__name__}: {e}\n" + "".join(tb[-3:]).rstrip())
    return res


def _own_code(path) -> bool:
    """Is ``path`` shmrt's own code (the shmrt/kernels packages imported, or this checkout
    outside any virtual environment in it), not numpy's, onnx's or the standard library's?"""
    for name in ("shmrt", "kernels"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None) and \
                path.startswith(os.path.dirname(os.path.abspath(mod.__file__)) + os.sep):
            return True
    return path.startswith(_ROOT + os.sep) and not any(
        f"{os.sep}{d}{os.sep}" in path for d in ("site-packages", "dist-packages", "lib"))


def _raised_in(e) -> str:
    """The file of the innermost frame that raised ``e``."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename) if tb is not None else ""


def _refusal(res, stage, e, model, graph_desc):
    """REFUSED if shmrt itself raised with a clear message; FAIL if the message is unclear
    or the error leaked out of numpy/onnx (an importer bug, not a refusal)."""
    msg = f"{type(e).__name__}: {e}"
    where = _raised_in(e)
    if where and not _own_code(where):
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__)[-4:]).rstrip()
        return dataclasses.replace(res, status="FAIL", stage=stage, graph=graph_desc,
                                   reason=f"{msg}\n  raised inside {where}, not by shmrt: an internal error leaked "
                                          f"out instead of a refusal naming the node/op/attribute\n{tb}")
    if _clear_message(str(e), model):
        return dataclasses.replace(res, status="REFUSED", stage=stage, reason=msg)
    return dataclasses.replace(res, status="FAIL", stage=stage, graph=graph_desc,
                               reason=f"refused with an unclear message (it names no op, node, attribute, input "
                                      f"or output of the graph, nor a shape, dtype or axis): {msg}")


# -- floors ------------------------------------------------------------------------

def pass_counts(results) -> dict:
    """op -> how many of its cases PASS (every op of ``results``, in their order)."""
    counts = {}
    for r in results:
        counts[r.op] = counts.get(r.op, 0) + (r.status == "PASS")
    return counts


def load_floors(path=FLOORS_PATH) -> dict:
    """op -> the number of its cases that must PASS (see the module's docstring)."""
    with open(path) as f:
        data = json.load(f)
    floors = data.get("floors") if isinstance(data, dict) else None
    if not isinstance(floors, dict) or not all(isinstance(v, int) and v >= 0 for v in floors.values()):
        raise ValueError(f"{path}: expected {{\"floors\": {{op: int >= 0, ...}}, ...}}, got {str(data)[:200]}")
    return floors


def floors_note(path=FLOORS_PATH) -> str:
    """'' if the floors were recorded with the onnx installed now, else a note saying with which."""
    with open(path) as f:
        rec = json.load(f).get("recorded_with", "")
    now = f"onnx {_onnx_version()}"
    return "" if rec.split(",")[0] == now else f" [note: the floors were recorded with {rec!r}; this is {now}]"


def floor_problems(results, floors, mode="", path=FLOORS_PATH) -> list:
    """What breaks the floors: an op that passes fewer cases than its floor (by how much, and its
    failing cases), an op of the floors with no case, an op of the cases with no floor."""
    counts, out = pass_counts(results), []
    tag = f" ({mode} batch axis)" if mode else ""
    for op, floor in floors.items():
        if op not in counts:
            out.append(f"{op}: has a floor of {floor} in {path} but no case is filed under it (a renamed op, or "
                       f"cases lost by the loader?)")
        elif counts[op] < floor:
            bad = {st: [r.case for r in results if r.op == op and r.status == st] for st in ("FAIL", "REFUSED")}
            out.append(f"{op}{tag}: {counts[op]} of {counts[op] + len(bad['FAIL']) + len(bad['REFUSED'])} cases PASS, "
                       f"floor {floor}: fell by {floor - counts[op]}; "
                       + "; ".join(f"{st} ({len(names)}): {', '.join(names)}" for st, names in bad.items() if names))
    for op in counts:
        if op not in floors:
            out.append(f"{op}: {counts[op]} cases PASS but it has no floor in {path}; add one "
                       f"(python bench/onnx_conformance.py --write-floors, then review the diff)")
    return out


def write_floors(results_by_mode, path=FLOORS_PATH, allow_lower=False) -> list:
    """Write each op's smallest PASS count over the batch modes as its floor.  Returns the ops whose
    floor would go down (and writes nothing) unless ``allow_lower``."""
    counts = {}
    for results in results_by_mode.values():
        for op, n in pass_counts(results).items():
            counts[op] = min(counts.get(op, n), n)
    old = load_floors(path) if os.path.exists(path) else {}
    lower = [f"{op}: {old[op]} -> {counts.get(op, 'no cases')}" for op in old
             if old[op] > counts.get(op, -1)]
    if lower and not allow_lower:
        return lower
    data = {"about": "Per-op floors of bench/onnx_conformance.py: how many ONNX backend node-test cases of each op "
                     "must PASS (strategy data, default case set), in each batch mode (fixed, symbolic). "
                     "tests/test_onnx_nodes.py fails if an op passes fewer. Written by --write-floors; raise "
                     "floors only by a reviewed change of this file.",
            "recorded_with": _versions(), "floors": counts}
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return []


def _versions() -> str:
    parts = [f"onnx {_onnx_version()}"]
    for name in ("onnxruntime", "numpy"):
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except ImportError:
            parts.append(f"{name} absent")
    return ", ".join(parts)


def header(argv) -> str:
    """# the command line (commit, date, versions, machine): the first line of a results file."""
    from shmrt.bench.harness import machine  # the same record the benchmark writes
    m = machine()
    return (f"# python bench/onnx_conformance.py {' '.join(argv)}".rstrip() + f"   (commit {m['commit']}, "
            f"{m['date']}, {_versions()}, Python {m['versions']['python']}, {m['cores_logical']} CPUs: {m['cpu']})")


# -- the script --------------------------------------------------------------------

def table(results, floors=None) -> str:
    """The per-op table; with ``floors``, a floor column and a "<" mark where an op passes fewer."""
    ops = []
    for r in results:
        if r.op not in ops:
            ops.append(r.op)
    rows = [("op", "cases", "passed", "reshaped", "refused", "failed") + (("floor",) if floors is not None else ())]
    tot = [0, 0, 0, 0, 0, 0]
    for op in ops:
        rs = [r for r in results if r.op == op]
        c = [len(rs), sum(r.status == "PASS" for r in rs),
             sum(r.status == "PASS" and any("reshaped" in n for n in r.notes) for r in rs),
             sum(r.status == "REFUSED" for r in rs), sum(r.status == "FAIL" for r in rs)]
        f = []
        if floors is not None:
            fl = floors.get(op)
            f = ["-" if fl is None else f"{fl}{' <' if c[1] < fl else ''}"]
            c.append(fl or 0)
        tot = [a + b for a, b in zip(tot, c)]
        rows.append((op, *map(str, c[:5]), *f))
    rows.append(("total", *map(str, tot[:5 if floors is None else 6])))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w[i]) if i == 0 else v.rjust(w[i]) for i, v in enumerate(r)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(-1, "-" * len(lines[0]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", default=None, help="comma-separated op types (default: every supported op)")
    ap.add_argument("-k", "--cases", default=None, help="regex on case names")
    ap.add_argument("--strategies", default="data", help="comma-separated compile strategies (default: data)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=CASE_TIMEOUT_S, help="seconds per case")
    ap.add_argument("--no-variants", action="store_true", help="skip the single-output variants of multi-output cases")
    ap.add_argument("--no-expanded", action="store_true", help="skip the function-expanded forms (test_x_expanded)")
    ap.add_argument("--list", action="store_true", help="list the cases and their inputs/outputs; run nothing")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case's result as it runs")
    ap.add_argument("--graphs", action="store_true", help="print the graph of refused cases too")
    ap.add_argument("--dynamic-batch", action="store_true",
                    help="make the first input's batch axis symbolic (N) before import, as exporters do")
    ap.add_argument("--opset-cap", type=int, default=None,
                    help="what-if: lower each case's default-domain opset to at most this (e.g. 22) before import")
    ap.add_argument("--write-floors", action="store_true",
                    help=f"run both batch modes and write each op's PASS count as its floor to {FLOORS_PATH}")
    ap.add_argument("--allow-lower", action="store_true", help="let --write-floors lower a floor")
    a = ap.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    strategies = tuple(s.strip() for s in a.strategies.split(",") if s.strip())
    # the floors are about the default case set and strategy, as shipped (either batch mode)
    floor_run = (a.ops is None and a.cases is None and not a.no_variants and not a.no_expanded
                 and a.opset_cap is None and strategies == ("data",))
    if a.write_floors and not floor_run:
        ap.error("--write-floors needs the default cases and strategy: no --ops, -k, --no-variants, "
                 "--no-expanded, --opset-cap or --strategies")

    cases = load_cases(a.ops.split(",") if a.ops else None, a.cases, variants=not a.no_variants,
                       expanded=not a.no_expanded)
    if a.list:
        for c in cases:
            ins, outs = c.data_sets[0]
            d = lambda v: f"{v.dtype}{list(v.shape)}" if isinstance(v, np.ndarray) else type(v).__name__  # noqa: E731
            print(f"{c.op:20s} {c.name:70s} {[n.op_type for n in c.model.graph.node]} "
                  f"in {[d(v) for v in ins]} out {[d(v) for v in outs]}")
        print(f"{len(cases)} cases")
        return 0
    from_onnx = get_importer()
    if from_onnx is None:
        print("shmrt.frontends.onnx_import.from_onnx does not exist yet; nothing to check", file=sys.stderr)
        return 2
    holder = RuntimeHolder(a.workers)
    t0 = time.monotonic()
    modes = BATCH_AXES if a.write_floors else ("symbolic" if a.dynamic_batch else "fixed",)
    by_mode = {}
    try:
        holder.get()
        t_rt = time.monotonic() - t0
        for mode in modes:
            results = by_mode[mode] = []
            for c in cases:
                r = run_case(c, holder, from_onnx, strategies, a.timeout, a.opset_cap, mode == "symbolic")
                results.append(r)
                if a.verbose:
                    print(r.report() if r.status == "FAIL" else f"{r.case} [{r.op}] {r.status}"
                          + (f" at {r.stage}: {r.reason}" if r.status == "REFUSED" else "")
                          + "".join(f"\n  note: {n}" for n in r.notes), flush=True)
    finally:
        holder.close()
    wall = time.monotonic() - t0
    print(header(argv))
    lower = write_floors(by_mode, allow_lower=a.allow_lower) if a.write_floors else []
    floors = load_floors() if floor_run and os.path.exists(FLOORS_PATH) else None
    below = []
    for mode, results in by_mode.items():
        below += floor_problems(results, floors, mode) if floors is not None else []
    below = list(dict.fromkeys(below))
    results = by_mode[modes[-1]]
    cap = (f", opsets capped at {a.opset_cap}" if a.opset_cap is not None else "") + \
        (", symbolic batch axis" if modes == ("symbolic",) else "" if len(modes) == 1 else
         f", batch axis {' and '.join(modes)} (the tables below)")
    print(f"\nONNX {_onnx_version()} backend node tests, {len(cases)} cases{cap}, strategies {','.join(strategies)}, "
          f"{a.workers} workers; {wall:.1f} s (runtime start {t_rt:.1f} s, {holder.restarts} restarts)\n")
    for mode in modes[:-1]:  # --write-floors: the fixed run's table, then the symbolic one's with the details
        print(f"fixed batch axis:\n{table(by_mode[mode], floors)}\n\nsymbolic batch axis:")
    print(table(results, floors))
    if floors is None:
        print(f"\n(floors not checked: {'no ' + FLOORS_PATH if floor_run else 'not the default cases and strategy'})")
    elif below:
        print(f"\nBELOW THE FLOORS of {os.path.relpath(FLOORS_PATH)} ({len(below)}){floors_note()}:\n  "
              + "\n  ".join(below))
    else:
        print(f"\nevery op at or above its floor ({os.path.relpath(FLOORS_PATH)})")
    refused = [r for r in results if r.status == "REFUSED"]
    if refused:
        print(f"\nREFUSED ({len(refused)}):")
        for r in refused:
            print(f"  {r.case} [{r.op}] at {r.stage}: {r.reason}"[:400])
            if a.graphs:
                print("    " + describe_graph(freeze_inputs(_case(cases, r.case).model,
                                                           _case(cases, r.case).data_sets[0][0],
                                                           _case(cases, r.case).outputs)).replace("\n", "\n    "))
    noted = [r for r in results if r.status == "PASS" and any("reshaped" in n or "float32 values" in n
                                                              or "refused by" in n for n in r.notes)]
    if noted:
        print(f"\nPASS with notes ({len(noted)}):")
        for r in noted:
            print(f"  {r.case}: " + "; ".join(r.notes))
    failed = [r for r in results if r.status == "FAIL"]
    if failed:
        print(f"\nFAIL ({len(failed)}):")
        for r in failed:
            print("\n" + r.report())
    print(f"\n{sum(r.status == 'PASS' for r in results)} passed, {len(refused)} refused, {len(failed)} failed"
          + (f", {len(below)} below the floors" if below else ""))
    if lower:
        print(f"\n--write-floors: NOT written: it would lower the floors of {'; '.join(lower)} "
              f"(fix the importer, or pass --allow-lower after review)")
    elif a.write_floors:
        print(f"\nfloors written to {os.path.relpath(FLOORS_PATH)} (per op, the smaller PASS count of the "
              f"{' and '.join(BATCH_AXES)} batch axis); review the diff before committing it")
    return 1 if lower or below or any(r.status == "FAIL" for rs in by_mode.values() for r in rs) else 0


def _case(cases, name):
    return next(c for c in cases if c.name == name)


def _onnx_version():
    import onnx
    return onnx.__version__


if __name__ == "__main__":
    sys.exit(main())
