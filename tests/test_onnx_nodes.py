"""ONNX backend node tests through shmrt.frontends.onnx_import.from_onnx: every case PASSes or is REFUSED
with a clear error; a wrong answer, a crash, an importer bug or an unclear refusal fails.  And no
op may pass fewer cases than its floor in bench/results/onnx-floors.json (test_floors), in either
batch mode: a handler that starts refusing what it used to run fails here too.

The cases, the harness, the comparison and the floors live in bench/onnx_conformance.py (one copy);
``python bench/onnx_conformance.py`` prints the same cases as a per-op table with the floors.
"""
import importlib.util
import os
import sys

import pytest

pytest.importorskip("onnx")

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bench", "onnx_conformance.py")
_spec = importlib.util.spec_from_file_location("onnx_conformance", _PATH)
conformance = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("onnx_conformance", conformance)  # dataclasses look their module up there
_spec.loader.exec_module(conformance)

CASES = conformance.load_cases()


RESULTS = {}  # (batch_axis, case name) -> Result of test_node, for test_floors


@pytest.fixture(scope="module")
def from_onnx():
    fn = conformance.get_importer()  # a module that is there but does not import raises here
    assert fn is not None, "shmrt.frontends.onnx_import.from_onnx is missing: the ONNX importer must be there"
    return fn


@pytest.fixture(scope="module")
def runtime():
    holder = conformance.RuntimeHolder(workers=2)
    holder.get()
    yield holder
    holder.close()


def test_cases_found():
    """The suite ships the cases this test is about (a renamed loader would silently test nothing)."""
    ops = {c.op for c in CASES}
    assert {"Gemm", "Conv", "LSTM", "Softmax", "TopK", "MaxPool"} <= ops, sorted(ops)
    assert len(CASES) > 150


def _faulty_importer(model):
    """Stands in for from_onnx to check that the harness tells the outcomes apart."""
    import numpy as np

    import shmrt
    op = model.graph.node[0].op_type
    if op == "Relu":
        return shmrt.Sequential([shmrt.ReLU()])
    if op == "Sigmoid":
        return shmrt.Sequential([shmrt.Tanh()])  # a wrong answer
    if op == "Gemm":
        np.broadcast_to(np.zeros(12), (4,))  # numpy's ValueError leaking out
    if op == "Softmax":
        raise ValueError("bad")  # a refusal that says nothing
    if op == "Constant":
        return shmrt.Sequential([shmrt.ReLU()])  # accepts a graph it cannot be fed
    raise ValueError(f"op {op} is not supported")


@pytest.mark.parametrize("name, status, stage", [
    ("test_relu", "PASS", ""), ("test_sigmoid", "FAIL", "compare[data]"),
    ("test_gemm_default_no_bias", "FAIL", "import"), ("test_softmax_example", "FAIL", "import"),
    ("test_constant", "FAIL", "import"), ("test_tanh", "REFUSED", "import")])
def test_harness_tells_outcomes_apart(runtime, name, status, stage):
    case = next(c for c in CASES if c.name == name)
    r = conformance.run_case(case, runtime, _faulty_importer)
    assert (r.status, r.stage) == (status, stage), r.report()


def _run(case, batch_axis, from_onnx, runtime):
    return conformance.run_case(case, runtime, from_onnx, strategies=("data",),
                                dynamic_batch=batch_axis == "symbolic")


@pytest.mark.parametrize("batch_axis", conformance.BATCH_AXES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_node(case, batch_axis, from_onnx, runtime):
    """As shipped (every size fixed), and with the input's batch axis made symbolic as exporters do."""
    r = RESULTS[batch_axis, case.name] = _run(case, batch_axis, from_onnx, runtime)
    assert r.status in ("PASS", "REFUSED"), r.report()


def test_floors(from_onnx, runtime):
    """Per op, at least its floor of cases PASS, with the batch axis fixed and with it symbolic (each
    counted on its own); every op of the floors has cases and every op of the cases has a floor.
    Reuses test_node's results (it runs first); a case test_node did not run (-k, a subset) runs here."""
    floors = conformance.load_floors()
    problems = []
    for axis in conformance.BATCH_AXES:
        results = [RESULTS.get((axis, c.name)) or _run(c, axis, from_onnx, runtime) for c in CASES]
        problems += [p for p in conformance.floor_problems(results, floors, axis) if p not in problems]
    assert not problems, (f"{len(problems)} floor problem(s) with {conformance.FLOORS_PATH} (a fallen op passes "
                          f"fewer cases than it used to){conformance.floors_note()}:\n  " + "\n  ".join(problems))
