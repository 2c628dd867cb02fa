"""The benchmark's peers compute the same function as shmrt (or skip cleanly)."""
import numpy as np
import pytest

from reference import forward, rel_err
from shmrt.bench.peers import PEERS, Skip
from shmrt.bench.workloads import WORKLOADS


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
    ceilings measured, an A/A control timed, each shmrt row profiled in the
    tier it was timed in, the goals judged on auto, and the table and the
    machine record (commit, date, versions) written."""
    from shmrt.bench import harness as bench
    result = bench.run(["cnn", "logreg"], [1], ["data", "auto"], batches=[1], quick=True, peers=True, seed=3)
    rows = result["rows"]
    assert all(r["ok"] for r in rows)
    impls = {r["impl"] for r in rows}
    assert {"numpy (1 thr)", "shmrt"} <= impls
    assert {r["strategy"] for r in rows if r["impl"] == "shmrt"} == {"data", "auto", "auto A/A"}
    timed = [r for r in rows if "p50_ms" in r]
    assert timed and all(0 < r["p10_ms"] <= r["p50_ms"] <= r["p90_ms"] for r in timed)
    assert all(r["ci_lo_ms"] <= r["p50_ms"] <= r["ci_hi_ms"] for r in timed)
    c = result["ceilings"]["1"]
    assert c["read_gbs"] > 0 and c["copy_gbs"] > 0 and c["sgemm_gflops"] > 0
    for r in (r for r in rows if r["impl"] == "shmrt" and not r["strategy"].endswith("A/A")):
        b = r["breakdown"]
        assert b["tier"] == ("in place" if r["workload"] == "logreg" else "cm(x)"), b
        parts = b["copy_us"] + b["kernel_us"] + b["coordination_us"] + b["python_us"] + b["unaccounted_us"]
        assert b["kernel_us"] > 0 and abs(parts - b["total_us"]) <= 0.3 * b["total_us"], b  # medians of parts
        assert r["plan"] in ("data", "model", "hybrid", "pipeline"), r
    m = result["machine"]
    assert m["commit"] and m["date"] and m["versions"]["numpy"] and m["cpu"]
    goals = {(g["workload"], g["batch"]) for g in result["goals"]}
    assert ("logreg", 1_000_000) in goals
    text = bench.table(result)
    for part in ("ceilings at 1 thread(s)", "A/A control", "goals (issue 14's targets)", "where the time goes",
                 f"at commit {m['commit']}"):
        assert part in text, part
