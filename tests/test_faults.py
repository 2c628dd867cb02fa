"""Faults, many times over: workers killed at random points, workers raising, parents killed by signals.

Each scenario runs a bounded number of rounds by default (so the suite stays
fast on 2 loaded cores), and its full count in a test marked slow:
``python -m pytest -m slow tests/test_faults.py -s`` prints the figures.
"""
from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time

import numpy as np
import pytest

import shmrt
from models import rnd  # noqa: E402
import test_lifecycle as lc  # its helpers: Child, shm_segments, assert_nothing_left (module import: not re-collected)
from test_lifecycle import child  # noqa: F401 -- the same child-interpreter fixture
from reference import forward as reference, rel_err

pytestmark = lc.pytestmark
DETECT_S = 1.0  # the spec: an affected call raises within 1 s of the kill


def cases():
    """Models whose calls spend their time in different places: long kernels between few barriers
    (mlp, model split), a barrier every time step (lstm, hidden split), stage queues (pipeline)."""
    shmrt.manual_seed(3)
    mlp = shmrt.Sequential([shmrt.Linear(512, 2048), shmrt.ReLU(), shmrt.Linear(2048, 2048), shmrt.ReLU(),
                            shmrt.Linear(2048, 64)])
    lstm = shmrt.Sequential([shmrt.LSTM(16, 256, return_sequences=False), shmrt.Linear(256, 4)])
    deep = shmrt.Sequential([l for _ in range(8) for l in (shmrt.Linear(256, 256), shmrt.ReLU())])
    return [("mlp/model", mlp, "model", rnd(64, 512, seed=1), None),
            ("mlp/data", mlp, "data", rnd(64, 512, seed=1), None),
            ("lstm/model", lstm, "model", rnd(8, 40, 16, seed=2), (40, 16)),
            ("deep/pipeline", deep, "pipeline", rnd(256, 256, seed=3), None)]


@pytest.fixture
def hang_guard():
    faulthandler.dump_traceback_later(300, exit=True)  # a hung call kills the run with every stack printed
    yield
    faulthandler.cancel_dump_traceback_later()


# -- a worker raises ------------------------------------------------------------

@pytest.mark.parametrize("kind, exc, text", [(1, ZeroDivisionError, "float division by zero"),
                                             (2, ValueError, "a kernel refused its input")])
@pytest.mark.parametrize("strategy", ["model", "data", "pipeline"])
def test_a_worker_error_surfaces_its_type_and_message(hang_guard, kind, exc, text, strategy):
    shmrt.manual_seed(1)
    model = shmrt.Sequential([shmrt.Linear(32, 64), shmrt.ReLU(), shmrt.Linear(64, 64), shmrt.ReLU(),
                              shmrt.Linear(64, 5)])
    x = rnd(16, 32)
    ref = reference(model, x)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, strategy=strategy, max_batch=16) as cm:
        assert rel_err(cm(x), ref) <= 1e-5
        old = rt.pids()
        rt._inject_fault(1, kind)
        with pytest.raises(exc, match=f"worker 1 \\(pid {old[1]}\\) raised {exc.__name__}: injected fault: "
                                      f"{text}") as info:
            cm(x)
        assert isinstance(info.value, shmrt.WorkerError)
        for _ in range(3):
            assert rel_err(cm(x), ref) <= 1e-5
        assert rt.pids()[0] == old[0] and rt.pids()[1] != old[1]


def test_a_worker_killed_while_idle_is_replaced_before_the_next_call(hang_guard):
    shmrt.manual_seed(2)
    model = shmrt.Sequential([shmrt.Linear(16, 32), shmrt.ReLU(), shmrt.Linear(32, 3)])
    x = rnd(4, 16)
    ref = reference(model, x)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, strategy="model", max_batch=4) as cm:
        for round_ in range(3):
            old = rt.pids()
            seen = rt.pool.launcher.deaths
            os.kill(old[round_ % 2], signal.SIGKILL)
            assert lc.wait_until(lambda: rt.pool.launcher.deaths != seen, 5.0), "the death was not reported"
            assert rel_err(cm(x), ref) <= 1e-5  # no WorkerError: the pool healed first
            assert rt.pids()[round_ % 2] != old[round_ % 2]


def test_two_failing_workers_are_both_named(hang_guard):
    shmrt.manual_seed(1)
    model = shmrt.Sequential([shmrt.Linear(8, 16), shmrt.ReLU(), shmrt.Linear(16, 4)])
    x = rnd(4, 8)
    with shmrt.Runtime(workers=2) as rt, rt.compile(model, strategy="model", max_batch=4) as cm:
        rt._inject_fault(0, 1)
        rt._inject_fault(1, 2)
        with pytest.raises(shmrt.WorkerError) as info:
            cm(x)
        text = str(info.value)
        assert "ZeroDivisionError: injected fault" in text and "ValueError: injected fault" in text, text
        assert rel_err(cm(x), reference(model, x)) <= 1e-5


@pytest.mark.parametrize("message", ["é" * 2000, '"\\' * 3000, "a" * 100_000, ""])
def test_an_error_report_is_one_short_line(message):
    """A worker's report must fit one pipe write with its newline, whatever JSON makes of the message:
    a cut line would swallow the template's next "dead" line, and the call would wait for ever."""
    import json

    from shmrt.parallel.worker import _report
    r, w = os.pipe()
    _report(w, "3", ValueError(message))
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and len(data) <= 4000, len(data)
    kind, wid, pid, record = data.decode().split(maxsplit=3)
    module, name, text = json.loads(record)
    assert (kind, wid, module, name) == ("error", "3", "builtins", "ValueError")
    assert message.startswith(text.removesuffix("...")[:50])


# -- workers killed at random points -----------------------------------------------

def kill_rounds(n, seed=0, workers=2):
    """n rounds: pick a model and a worker, SIGKILL it after a random delay (before, during or after a
    call, so at a kernel, at a barrier, at a stage queue or idle), and keep calling.  Every call either
    returns the right answer or raises WorkerError within DETECT_S of the kill; the first call after a
    failed one is right again.  Returns (rounds whose kill failed a call, rounds healed unseen, worst
    detection delay in s)."""
    rng = np.random.default_rng(seed)
    failed = healed = 0
    worst = 0.0
    with shmrt.Runtime(workers=workers) as rt:  # None: the calling thread computes too
        built = []
        for name, model, strategy, x, shape in cases():
            cm = rt.compile(model, strategy=strategy, max_batch=x.shape[0], input_shape=shape)
            ref = reference(model, x)
            t = time.monotonic()
            assert rel_err(cm(x), ref) <= 1e-5, name
            built.append((name, cm, x, ref, time.monotonic() - t))
        for r in range(n):
            name, cm, x, ref, call_s = built[rng.integers(len(built))]
            wid = int(rng.integers(len(rt.pids())))
            pid = rt.pids()[wid]
            killed = {}

            def kill():
                killed["t"] = time.monotonic()
                os.kill(pid, signal.SIGKILL)

            gap = call_s if r % 3 == 2 else 0.0  # every third round leaves the pool idle between calls
            timer = threading.Timer(rng.uniform(0, 2.0 * call_s), kill)
            timer.start()
            raised = False
            try:
                while True:
                    started_after = "t" in killed
                    try:
                        y = cm(x)
                    except shmrt.WorkerError as e:
                        t_err = time.monotonic()
                        assert "t" in killed, f"round {r} ({name}): WorkerError before the kill: {e}"
                        assert f"pid {pid}" in str(e) and "restarted" in str(e), str(e)
                        worst = max(worst, t_err - killed["t"])
                        assert t_err - killed["t"] <= DETECT_S, (r, name, t_err - killed["t"])
                        raised = True
                        break
                    assert rel_err(y, ref) <= 1e-5, (r, name)
                    if started_after:
                        break
                    time.sleep(gap)
            finally:
                timer.cancel()
                timer.join()
            failed += raised
            healed += not raised
            assert rel_err(cm(x), ref) <= 1e-5, (r, name, "after the kill")
            assert pid not in rt.pids()
        for _, cm, *_ in built:
            cm.close()
    return failed, healed, worst


def test_workers_killed_at_random_points(hang_guard):
    n = 12
    failed, healed, worst = kill_rounds(n)
    print(f"\nworker kills: {n} rounds, {failed} failed a call (worst {worst * 1e3:.0f} ms after the kill), "
          f"{healed} healed before the next call")
    assert failed + healed == n and failed >= 1


def test_workers_killed_at_random_points_with_the_caller_computing(hang_guard):
    """The same with Runtime(): the calling thread is a participant, so a kill can leave it waiting at a
    barrier for the dead worker -- the pool's death watch must get it out within DETECT_S."""
    n = 12
    failed, healed, worst = kill_rounds(n, seed=2, workers=None)
    print(f"\nworker kills, caller computing: {n} rounds, {failed} failed a call (worst {worst * 1e3:.0f} ms "
          f"after the kill), {healed} healed before the next call")
    assert failed + healed == n and failed >= 1


@pytest.mark.slow
def test_workers_killed_at_random_points_100(hang_guard):
    failed, healed, worst = kill_rounds(100, seed=1)
    print(f"\nworker kills: 100 rounds, {failed} failed a call (worst {worst * 1e3:.0f} ms after the kill), "
          f"{healed} healed before the next call")


# -- the parent killed by a signal ---------------------------------------------------

# Compiles, says ready, then loops on calls (or sleeps, argv[1] == "idle") until a signal ends it.
PARENT = """
idle = sys.argv[1] == "idle"
shmrt.manual_seed(0)
model = shmrt.Sequential([shmrt.Linear(256, 1024), shmrt.ReLU(), shmrt.Linear(1024, 256), shmrt.Softmax()])
rt = shmrt.Runtime(workers=None if sys.argv[3] == "caller" else 2)
cm = rt.compile(model, strategy=sys.argv[2], max_batch=128)
x = np.random.default_rng(0).standard_normal((128, 256)).astype(np.float32)
print("err", rel_err(cm(x), reference(model, x)))
print("pids", *rt.pids(), rt.pool.launcher.proc.pid)
print("self", os.getpid())
print("ready", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    if idle:
        time.sleep(0.01)
    else:
        cm(x)
"""


def parent_rounds(child, n, seed=0, caller=False):
    """n children, each killed by SIGKILL, SIGTERM or SIGINT at a random time while idle or mid-call;
    within 5 s no worker (nor the template) and no segment of the child may remain.  Returns the
    slowest clean-up in s."""
    rng = np.random.default_rng(seed)
    sigs = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT]
    worst = 0.0
    for r in range(n):
        sig = sigs[r % 3]
        mode = ["busy", "idle"][int(rng.integers(2))]
        c = child(PARENT, mode, ["model", "data", "pipeline"][int(rng.integers(3))], "caller" if caller else "procs")
        c.wait_for_line("ready")
        pids, creator = c.pids(), int(c.field("self")[0])
        assert float(c.field("err")[0]) <= 1e-5
        assert len(lc.shm_segments(creator)) >= 3
        time.sleep(rng.uniform(0, 0.2))
        t = time.monotonic()
        os.kill(creator, sig)
        c.proc.wait(lc.CHILD_TIMEOUT_S)
        lc.assert_nothing_left(pids, creator)
        worst = max(worst, time.monotonic() - t)
    return worst


def test_parent_killed_by_signals(child, hang_guard):
    n = 6
    worst = parent_rounds(child, n)
    print(f"\nparent faults: {n} rounds (SIGKILL, SIGTERM, SIGINT; idle and mid-call): nothing left "
          f"after at most {worst:.2f} s")


def test_parent_killed_by_signals_with_the_caller_computing(child, hang_guard):
    n = 6
    worst = parent_rounds(child, n, seed=2, caller=True)
    print(f"\nparent faults, caller computing: {n} rounds: nothing left after at most {worst:.2f} s")


@pytest.mark.slow
def test_parent_killed_by_signals_50(child, hang_guard):
    worst = parent_rounds(child, 50, seed=1)
    print(f"\nparent faults: 50 rounds: nothing left after at most {worst:.2f} s")
