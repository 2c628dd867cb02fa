"""The benchmark's peers compute the same function as shmrt (or skip cleanly)."""
import numpy as np
import pytest

from reference import forward, rel_err
from shmrt.peers import PEERS, Skip
from shmrt.workloads import WORKLOADS


@pytest.mark.parametrize("workload", ["mlp", "cnn", "lstm", "logreg"])
@pytest.mark.parametrize("peer", list(PEERS))
def test_peer_matches_float64(workload, peer):
    wl = WORKLOADS[workload]()
    x = np.random.default_rng(0).standard_normal((3, *wl.input_shape)).astype(np.float32)
    try:
        impl = PEERS[peer](wl.model, 1, wl.input_shape)
    except Skip as e:
        pytest.skip(str(e))
    try:
        with impl.scope():
            assert rel_err(impl.run(x), forward(wl.model, x)) <= 1e-5
    finally:
        impl.close()


def test_bench_run_with_peers_reports_goals_ceilings_and_breakdown(tmp_path):
    """One quick interleaved run of the harness: every row checked, the
    ceilings measured, each shmrt row profiled, the goals computed, and the
    JSON and the table written (the plot when matplotlib is there)."""
    pytest.importorskip("threadpoolctl")
    from shmrt import bench
    result = bench.run(["cnn"], [1], ["data", "auto"], batches=[1], quick=True, peers=True)
    rows = result["rows"]
    assert all(r["ok"] for r in rows)
    impls = {r["impl"] for r in rows}
    assert {"numpy (1 process)", "numpy (1 thr)", "shmrt"} <= impls
    timed = [r for r in rows if "p50_ms" in r]
    assert timed and all(r["p50_ms"] > 0 and r["p90_ms"] >= r["p50_ms"] for r in timed)
    c = result["ceilings"]["1"]
    assert c["read_gbs"] > 0 and c["copy_gbs"] > 0
    for r in (r for r in rows if r["impl"] == "shmrt"):
        b = r["breakdown"]
        parts = b["copy_us"] + b["kernel_us"] + b["coordination_us"]  # medians of each part: close to the total's
        assert b["kernel_us"] > 0 and abs(parts - b["total_us"]) <= 0.3 * b["total_us"], b
    goals = {(g["workload"], g["batch"], g["label"]) for g in result["goals"]}
    assert ("cnn", 1, "2-core goal") in goals
    if "onnxruntime (1 thr)" in impls:
        assert ("cnn", 1, "16-core goal") in goals  # latency against onnxruntime
    text = bench.table(result)
    assert "ceilings at 1 thread(s)" in text and "goals at 1 worker(s)" in text and "where the time goes" in text
