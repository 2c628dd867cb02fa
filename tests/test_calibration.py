"""The cost model's rates are measured on the runtime's own workers with shmrt's own kernels, say so in
explain(), and are cached per machine, worker count, shmrt version and code (never reused after a change)."""
import numpy as np

import shmrt
from shmrt.compile import cost, tune
from models import small_mlp


def test_rates_measured_on_the_workers_and_explained(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    r = cost.calibrate(rt)
    assert r.source.startswith("measured on this machine on 2 workers, 20") and "cached" not in r.source
    assert r.gflops > 1 and r.read_gbs > 0.5 and r.cache_gbs > 0.5 and r.barrier_us >= 1.0 and r.dispatch_us > 0
    again = cost.calibrate(rt)
    assert again.source.endswith("(cached)") and again.gflops == r.gflops
    with rt.compile(small_mlp(), strategy="auto", max_batch=16) as cm:
        line = cm.explain(16).split("\n")[1]
        assert line.startswith("cost model (rates measured on this machine on 2 workers, "), line


def test_cache_keyed_on_version_and_code(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    key = cost.code_key()
    assert key.startswith(f"shmrt {shmrt.__version__} code ") and len(key.split()[-1]) == 16
    cost.calibrate(rt)
    monkeypatch.setattr(cost, "code_key", lambda: "shmrt 9.9.9 code 0123456789abcdef")  # an upgrade
    fresh = cost.calibrate(rt)
    assert "cached" not in fresh.source  # measured again, not the old code's timings
    with rt.compile(small_mlp(), strategy="auto", max_batch=4) as cm:
        k1 = tune._key(cm, small_mlp())
        monkeypatch.setattr(tune, "code_key", lambda: "shmrt 9.9.9 code fedcba9876543210")
        assert tune._key(cm, small_mlp()) != k1


def test_defaults_say_why(tmp_path):
    with shmrt.Runtime(workers=0) as rt0:
        assert rt0.rates().source.startswith("defaults (not measured: workers=0")
    assert cost.Rates().source.startswith("defaults (not measured")
    assert np.isfinite(cost.Rates().gflops)
