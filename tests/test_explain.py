"""Saying what happened: explain() names layers as they were written and shows
each worker's CPUs; a command a worker cannot run raises; a failed pin warns.

Real processes and real shared memory, no mocks.  The pin scenario runs in a
child interpreter (test_lifecycle's fixture), since SHMRT_CPUS is read when
shmrt is imported.
"""
from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest

import shmrt
from shmrt.parallel import control as C
from shmrt.compile.plan import build
from shmrt.parallel.pool import CommandError, WorkerError, compact_cpus
from reference import forward, rel_err
from test_lifecycle import child  # noqa: F401 -- the child-interpreter fixture

LINUX = sys.platform.startswith("linux")


def readme_model():
    shmrt.manual_seed(0)
    return shmrt.Sequential([shmrt.Linear(784, 256), shmrt.ReLU(), shmrt.Linear(256, 10), shmrt.Softmax()])


def cpu_set(text):
    """ "0-3,8" -> {0, 1, 2, 3, 8}."""
    out = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def workers_line(text):
    lines = [line for line in text.splitlines() if line.startswith("workers: ")]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture(scope="module")
def readme(rt):
    cm = rt.compile(readme_model(), strategy="auto", max_batch=256)
    yield cm
    cm.close()


def test_readme_model_is_named_as_written(readme):
    for batch in (1, 256):
        text = readme.explain(batch)
        assert "Linear(784, 256" in text and "+ ReLU" in text, text
        assert not re.search(r"activation \d", text), text
    for name, rows in readme.plan.explain_rows.items():
        assert rows[0]["layer"] == "Linear(784, 256, bias=True) + ReLU", name
        assert rows[0]["short"] == "Linear + ReLU" and rows[-1]["short"] == "Softmax", name


def test_fused_and_folded_layers_are_named_as_written():
    """A fused activation keeps its arguments; a folded BatchNorm says so; a layer
    that stands alone is its own repr (planner only: no processes needed)."""
    shmrt.manual_seed(1)
    gelu = shmrt.Sequential([shmrt.Linear(8, 16), shmrt.GELU(approximate="tanh"), shmrt.LayerNorm(16),
                             shmrt.GELU(approximate="tanh"), shmrt.Linear(16, 4)])
    rows = build(gelu, 2, "data", 4).explain_rows["data"]
    assert [r["layer"] for r in rows] == ["Linear(8, 16, bias=True) + GELU(approximate='tanh')",
                                          "LayerNorm(16, eps=1e-05)", "GELU(approximate='tanh')",
                                          "Linear(16, 4, bias=True)"], rows
    assert [r["short"] for r in rows] == ["Linear + GELU", "LayerNorm", "GELU", "Linear"]
    cnn = shmrt.Sequential([shmrt.Conv2d(2, 4, 3, padding=1), shmrt.BatchNorm2d(4), shmrt.ReLU(),
                            shmrt.GlobalAvgPool(), shmrt.Flatten(), shmrt.Linear(4, 3), shmrt.BatchNorm1d(3)])
    rows = build(cnn, 2, "model", 4, (2, 6, 6)).explain_rows["model"]
    assert rows[0]["layer"].startswith("Conv2d(2, 4, kernel_size=(3, 3)")
    assert rows[0]["layer"].endswith(") + BatchNorm2d(4) folded + ReLU"), rows[0]["layer"]
    assert rows[0]["short"] == "Conv2d + BatchNorm2d + ReLU" and rows[0]["layers"] == [0, 1, 2]
    assert rows[-1]["layer"] == "Linear(4, 3, bias=True) + BatchNorm1d(3) folded"
    assert not any("activation" in r["layer"] for r in rows)


def test_compact_cpus():
    assert compact_cpus({8, 0, 1, 2, 3}) == "0-3,8"
    assert compact_cpus([5]) == "5" and compact_cpus([0, 2, 3]) == "0,2-3"


@pytest.mark.skipif(not LINUX, reason="sched_getaffinity is Linux's")
def test_explain_shows_each_workers_cpus(rt, readme):
    line = workers_line(readme.explain(32))
    found = re.findall(r"w(\d+) pid (\d+) cpus \{([0-9,-]+)\}", line)
    assert [int(w) for w, _, _ in found] == list(range(rt.workers)), line
    assert [int(p) for _, p, _ in found] == rt.pids(), line
    for _, pid, cpus in found:
        assert cpu_set(cpus) == os.sched_getaffinity(int(pid)), line
    with shmrt.Runtime(workers=0) as rt0:
        assert workers_line(rt0.compile(readme_model(), max_batch=4).explain()) == \
            "workers: in process (workers=0)"


def test_run_for_an_unknown_model_raises_and_the_next_call_works(rt, readme):
    """A RUN for a model id the workers were never sent: every worker reports it in
    its line of the control block, the call raises (not WorkerError: no worker
    died), and the flags are cleared, so the runtime carries on."""
    pids = rt.pids()
    for _ in range(2):  # the second time: the flags were cleared after the first
        with pytest.raises(CommandError, match=r"workers 0, 1 have no program for model 9999: their model lists are "
                                               r"out of date.*expected a RUN only for a model compiled on this") as e:
            rt.pool.command(C.OP_RUN, model=9999, n=1, prog=0)
        assert not isinstance(e.value, WorkerError) and isinstance(e.value, RuntimeError)
        assert f"this runtime's models are {sorted(rt.pool.models)}" in str(e.value)
    rt.roundtrip()
    x = np.random.default_rng(3).standard_normal((37, 784)).astype(np.float32)
    assert rel_err(readme(x), forward(readme_model(), x)) <= 1e-5  # the same seeded weights
    assert rt.pids() == pids  # nobody died or was restarted


PIN_FAILS = """
import json, warnings
with warnings.catch_warnings(record=True) as got:
    warnings.simplefilter("always")
    rt = shmrt.Runtime(workers=2)
    model = small_mlp()
    cm = rt.compile(model, strategy="data", max_batch=8)
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    err = [rel_err(cm(x), reference(model, x))]
    old = rt.pids()[0]
    os.kill(old, signal.SIGKILL)  # its replacement is asked to pin to the same impossible CPU
    deadline = time.monotonic() + 30
    while rt.pool.procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    err.append(rel_err(cm(x), reference(model, x)))
    text = cm.explain()
    restarted = rt.pids()[0] != old
    rt.close()
pins = [str(w.message) for w in got if issubclass(w.category, RuntimeWarning) and "could not pin" in str(w.message)]
print(json.dumps({"pins": pins, "err": err, "explain": text, "restarted": restarted}))
"""


@pytest.mark.skipif(not LINUX, reason="needs sched_setaffinity")
def test_failed_pin_warns_once(child, monkeypatch):
    """Workers told (SHMRT_CPUS) to pin to CPUs that do not exist: sched_setaffinity
    fails with EINVAL in each worker, and again in a restarted one; the parent
    gives one RuntimeWarning for the Pool, naming the workers and the reason."""
    assert os.cpu_count() < 4094
    monkeypatch.setenv("SHMRT_CPUS", "4095,4094")
    c = child(PIN_FAILS)
    assert c.wait() == 0, c.describe()
    out = json.loads(c.stdout.strip().splitlines()[-1])
    assert out["restarted"] and max(out["err"]) <= 1e-5, out
    assert len(out["pins"]) == 1, out["pins"]
    msg = out["pins"][0]
    for part in ("worker 0 (pid", "to CPU 4095: Invalid argument (errno 22)", "worker 1 (pid",
                 "to CPU 4094: Invalid argument", "Expected CPUs this process may use", "SHMRT_PIN=0"):
        assert part in msg, msg
    line = workers_line(out["explain"])
    assert "w0 pid" in line and "(pinning to CPU 4095 failed: Invalid argument)" in line, line


@pytest.mark.skipif(not LINUX, reason="the child-interpreter fixture is Linux's")
def test_bad_cpu_list_says_what_was_expected(child, monkeypatch):
    monkeypatch.setenv("SHMRT_CPUS", "0-x")
    c = child("print('imported')\n")
    assert c.wait() != 0
    assert "SHMRT_CPUS must list CPU numbers and ranges, such as 0-3,8; got '0-x'" in c.stderr, c.describe()

