"""The benchmark's transformer encoder workloads (shmrt/bench/encoders.py) at a tiny size: shmrt's
graph, the torch module and its ONNX export compute the same function from the same weights (full
and padded batches, the pooler and the masked mean), and one quick run of the workload's runner
gives checked rows, the all-128 variant and its note.  Numbers only: nothing here judges a time."""
import numpy as np
import pytest

from shmrt.bench import encoders as E
from shmrt.ir import reference

torch = pytest.importorskip("torch")

TINY = E.Bert(layers=1, hidden=32, heads=4, ff=64, vocab=50, seq=16, seed=5)
pytestmark = [pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
              pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")]


@pytest.fixture(scope="module")
def weights():
    return E.weights(TINY)


@pytest.mark.parametrize("pooling, lengths", [("first", ()), ("first", (16, 9, 4)), ("mean", (16, 9, 4)),
                                              ("mean", ())])
def test_shmrt_and_peers_agree(rt, weights, pooling, lengths):
    g = E.graph(TINY, weights, pooling)
    x = E.inputs(TINY, 3, lengths)
    ref = reference.forward(g, x)  # float64
    with rt.compile(g, max_batch=4, max_seq_len=TINY.seq) as cm:
        mine = cm(x)
        assert sorted(mine) == sorted(E.outputs(pooling))
        impls = {"shmrt": lambda x: mine, "torch": E.torch_peer(TINY, weights, pooling, 1).run,
                 "numpy": E.numpy_peer(g, 1).run}
        try:
            impls["onnxruntime"] = E.onnxruntime_peer(TINY, weights, pooling, 1).run
        except E.Skip as e:
            print(f"onnxruntime: {e}")
        outs = {k: f(x) for k, f in impls.items()}
    for k, y in outs.items():
        err = E.error(y, ref, x["attention_mask"])
        print(f"{pooling} {lengths}: {k} vs float64 {err:.1e}")
        assert err <= E.TOL, k
    theirs = {k: v.astype(np.float64) for k, v in outs["torch"].items()}
    assert E.error(outs["shmrt"], theirs, x["attention_mask"]) <= E.TOL  # shmrt against the torch peer itself
    if lengths and pooling == "first":  # padding positions are 0 in shmrt's output, as in torch's nested tensors
        pad = x["attention_mask"] == 0
        assert np.all(outs["shmrt"]["last_hidden_state"][pad] == 0)


def test_inputs_mask_the_padding():
    x = E.inputs(TINY, 3, (16, 9, 4))
    assert x["attention_mask"].sum(1).tolist() == [16, 9, 4]
    keep = x["attention_mask"] == 1
    assert np.all(x["input_ids"][~keep] == 0) and np.all(x["input_ids"][keep] > 0)
    full = E.inputs(TINY, 3)
    assert np.array_equal(full["input_ids"][keep], x["input_ids"][keep]) and full["attention_mask"].all()


def test_the_runner_checks_every_row_and_times_the_all_128_variant():
    """The sentences workload's runner at the tiny size, quick: every implementation checked and
    timed, shmrt's all-128 row apart from the peer comparison, and the note of its ratio."""
    from shmrt.bench import harness, report
    wl = E._sentences()
    wl.config, wl.lengths = TINY, (16, 3, 9, 12)
    wl.max_batch = 4
    r = wl.runner(wl, [1], ["auto"], [4], "quick", True, harness.Progress(2), __import__("random").Random(0))
    rows = r["rows"]
    assert all(row["ok"] for row in rows), rows
    got = {(row["impl"], row["strategy"]) for row in rows if "p50_ms" in row}
    assert {("shmrt", "auto"), ("shmrt", "auto A/A"), ("shmrt", "auto all-128"), ("torch (1 thr)", "-")} <= got
    report.versus_best_peer(rows)
    assert all("vs_best_peer" not in row for row in rows if row.get("variant"))
    assert any("vs_best_peer" in row for row in rows if row["strategy"] == "auto")
    (note,) = r["notes"].values()
    assert "mixed lengths (40 real tokens of 64" in note and "target <= 0.6" in note


def test_encoders_are_in_the_full_run_only():
    from shmrt.bench import harness
    assert {"bert-mini", "bert-base", "sentences"} <= set(harness.WORKLOADS)
    assert set(E.ENCODERS) <= set(harness.FULL_ONLY)
    for name in E.ENCODERS:
        wl = harness.WORKLOADS[name]()
        assert wl.runner is E.run and wl.weights is None  # cheap to name: the weights are built when it runs
