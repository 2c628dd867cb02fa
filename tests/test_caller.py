"""The calling thread as a participant, adaptive waits, single-copy input/output, the template restarted.

Runtime() (workers=None) runs one worker process per core but one, and the calling thread computes the last
share; cm(x) moves big inputs and outputs once, each participant its own rows (process_vm_readv/writev).
Everything here runs real processes and real shared memory.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import shmrt
from models import rnd
from reference import forward as reference, rel_err
from shmrt.compile.io import own_rows, solo_rows
from shmrt.exec import calls
from shmrt.parallel import control as C
from shmrt.parallel.sync import IDLE_SPIN_CAP_NS, IdleBudget

LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(shmrt.Runtime.default_workers() < 2, reason="a computing caller needs 2 cores")


def models():
    shmrt.manual_seed(11)
    return {
        "mlp": (shmrt.Sequential([shmrt.Linear(64, 96), shmrt.ReLU(), shmrt.Linear(96, 10), shmrt.Softmax()]), None),
        "topk": (shmrt.Sequential([shmrt.Linear(64, 40), shmrt.TopK(5)]), None),
        "argmax": (shmrt.Sequential([shmrt.Linear(64, 40), shmrt.ArgMax()]), None),
        "lstm": (shmrt.Sequential([shmrt.LSTM(8, 40, return_sequences=False), shmrt.Linear(40, 3)]), (6, 8)),
        "cnn": (shmrt.Sequential([shmrt.Conv2d(3, 8, 3, padding=1), shmrt.ReLU(), shmrt.MaxPool2d(2),
                                  shmrt.Flatten(), shmrt.Linear(8 * 4 * 4, 10)]), (3, 8, 8)),
    }


def check(y, ref, name):
    if isinstance(y, tuple):
        assert np.array_equal(y[1], ref[1]), name
        assert rel_err(y[0], ref[0]) <= 1e-5, name
    elif y.dtype == np.int64:
        assert np.array_equal(y, ref), name
    else:
        assert rel_err(y, ref) <= 1e-5, name


@pytest.fixture(scope="module")
def crt():
    with shmrt.Runtime() as rt:
        yield rt


def test_the_calling_thread_is_the_last_participant(crt):
    assert crt.pool.caller and crt.workers == len(crt.pids()) + 1
    cm = crt.compile(models()["mlp"][0], max_batch=8)
    text = cm.explain()
    assert f"w{crt.workers - 1} the calling thread (pid {os.getpid()}" in text, text
    with shmrt.Runtime(workers=2) as rt2:  # asked for explicitly: that many processes, the caller waits
        assert not rt2.pool.caller and len(rt2.pids()) == rt2.workers == 2
    cm.close()


@pytest.mark.parametrize("name", list(models()))
@pytest.mark.parametrize("strategy", ["data", "model", "hybrid", "pipeline", "auto"])
def test_every_plan_is_right_with_the_caller_computing(crt, name, strategy):
    model, shape = models()[name]
    cm = crt.compile(model, strategy=strategy, max_batch=16, input_shape=shape)
    feat = shape or (64,)
    for n in (1, 2, 7, 16, 37):  # 37: chunked by max_batch
        x = rnd(n, *feat, seed=n)
        check(cm(x), reference(model, x), (name, strategy, n))
        if n <= 16:
            cm.input_buffer(n)[...] = x
            out = cm.run_in_place(n)
            check(tuple(np.array(o) for o in out) if isinstance(out, tuple) else np.array(out),
                  reference(model, x), (name, strategy, n, "in place"))
    cm.close()


def test_a_call_whose_rows_are_all_the_callers_does_not_wake_the_workers(crt):
    model, _ = models()["mlp"]
    cm = crt.compile(model, strategy="data", max_batch=64)
    prog = cm.plan.programs["data"]
    assert own_rows(prog[:, :-2]) is not None and solo_rows(prog) >= 1
    x = rnd(1, 64, seed=5)
    gen = int(C.get_word(crt.pool.ctrl, C.GEN))
    for _ in range(50):
        check(cm(x), reference(model, x), "solo")
    assert int(C.get_word(crt.pool.ctrl, C.GEN)) == gen  # no command was published
    p = cm.profile(x)
    assert p.kernel_us[crt.workers - 1] > 0 and all(k == 0 for k in p.kernel_us[:-1]), p
    x = rnd(64, 64, seed=6)  # every participant has rows: a real command
    check(cm(x), reference(model, x), "pool")
    assert int(C.get_word(crt.pool.ctrl, C.GEN)) > gen
    cm.close()


def test_the_idle_spin_follows_the_gaps_between_calls():
    b = IdleBudget(50_000)
    for _ in range(20):  # calls 100 us apart: spin a little longer than the gap
        b.end()
        t = time.monotonic_ns()
        while time.monotonic_ns() - t < 100_000:
            pass
        got = b.start()
    assert 100_000 < got <= IDLE_SPIN_CAP_NS, got
    for _ in range(20):  # 5 ms apart: past the cap a wake-up is paid either way: the base spin
        b.end()
        time.sleep(0.005)
        got = b.start()
    assert got == 50_000
    assert IdleBudget(50_000, fixed=True).start() == 50_000  # SHMRT_SPIN_US fixes it


def test_the_pool_publishes_the_budget(crt):
    model, _ = models()["mlp"]
    cm = crt.compile(model, strategy="data", max_batch=64)
    x = rnd(64, 64, seed=1)
    for _ in range(30):
        cm(x)
    assert crt.pool.spin_ns <= int(crt.pool.ctrl[C.C_SPIN]) <= IDLE_SPIN_CAP_NS
    cm.close()


# -- single copy ----------------------------------------------------------------------

def big(model_name="mlp"):
    model, shape = models()[model_name]
    shape = shape or (64,)
    n = calls.SINGLE_COPY_MIN_BYTES // (int(np.prod(shape)) * 4) * 3 + 5  # several times the threshold, odd
    return model, rnd(n, *shape, seed=9)


@pytest.mark.skipif(not LINUX, reason="process_vm_readv is Linux's")
@pytest.mark.parametrize("workers", [None, 2])
@pytest.mark.parametrize("name", list(models()))
def test_single_copy_moves_big_inputs_right(name, workers):
    """Each worker moves its own rows, in blocks (data plans) or after/before a barrier (the others);
    the computing caller reads its rows in place, its share balanced by speed over the calls."""
    model, x = big(name)
    with shmrt.Runtime(workers=workers) as rt:
        assert rt.pool.single_copy, rt.pool.copy_note
        for strategy in ("data", "model", "pipeline"):
            cm = rt.compile(model, strategy=strategy, max_batch=1024, input_shape=models()[name][1])
            ref = reference(model, x)
            for _ in range(3):  # chunked: several commands; the caller's share moves between calls
                check(cm(x), ref, (name, strategy))
            xf = np.asfortranarray(x.astype(np.float64))  # cast and made contiguous once, then moved
            check(cm(xf), ref, (name, strategy, "cast"))
            ro = x.copy()
            ro.flags.writeable = False  # read-only: the caller copies its rows too
            check(cm(ro), ref, (name, strategy, "read-only"))
            cm.close()
        assert rt.pool.single_copy
        assert "single copy -- each worker reads its rows of x" in \
            rt.compile(model, input_shape=models()[name][1]).explain()


@pytest.mark.skipif(not LINUX, reason="process_vm_readv is Linux's")
def test_a_refused_single_copy_falls_back_once_with_identical_results(crt):
    """As a refused process_vm_readv would (Yama, seccomp): the workers are pointed at a process that does
    not exist, so the OS refuses every cross-memory copy.  The call must give the same result by the
    arena copy, the pool must stop trying, and explain() must say why."""
    model, x = big("mlp")
    with shmrt.Runtime() as rt:
        cm = rt.compile(model, strategy="model", max_batch=1024)
        good = cm(x)
        assert rt.pool.single_copy
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        rt.pool.xmem_pid = dead.pid  # gone: process_vm_readv answers ESRCH
        again = cm(x)
        assert np.array_equal(again, good)
        assert not rt.pool.single_copy
        text = cm.explain()
        assert "copied through the shared arena by the calling thread (single copy off: process_vm_readv/" \
               "writev refused for" in text and "No such process (errno 3)" in text, text
        assert np.array_equal(cm(x), good)
        p = cm.profile(x[:1024])  # the profile follows the fallback too
        assert p.copy_in_us > 0
        cm.close()


def test_single_copy_can_be_turned_off(tmp_path):
    code = ("import shmrt, numpy as np\n"
            "with shmrt.Runtime() as rt:\n"
            "    cm = rt.compile(shmrt.Sequential([shmrt.Linear(64, 8)]), max_batch=4096)\n"
            "    x = np.ones((4096, 64), np.float32)\n"
            "    assert np.allclose(cm(x), cm(x[:5])[0])\n"
            "    print(cm.explain())\n")
    env = dict(os.environ, SHMRT_SINGLE_COPY="0")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "single copy off: turned off by SHMRT_SINGLE_COPY=0" in r.stdout, r.stdout


# -- the template -------------------------------------------------------------------------

def template_rounds(rounds, mid_call, seed=0):
    """Kill the worker template (SIGKILL, as the OOM killer would) idle or mid-call, rounds times:
    a call in flight returns the right answer or raises WorkerError, and the next call is right."""
    rng = np.random.default_rng(seed)
    shmrt.manual_seed(4)
    model = shmrt.Sequential([shmrt.Linear(256, 1024), shmrt.ReLU(), shmrt.Linear(1024, 256)])
    x = rnd(64, 256, seed=3)
    ref = reference(model, x)
    raised = 0
    with shmrt.Runtime() as rt, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "the template ... was started again"
        cm = rt.compile(model, strategy="model", max_batch=64)
        assert rel_err(cm(x), ref) <= 1e-5
        for r in range(rounds):
            old, workers = rt.template_pid(), rt.pids()
            if mid_call:
                t = threading.Timer(rng.uniform(0, 0.003), os.kill, (old, signal.SIGKILL))
                t.start()
                try:
                    for _ in range(20):
                        assert rel_err(cm(x), ref) <= 1e-5, r
                except shmrt.WorkerError as e:
                    assert "template" in str(e), str(e)
                    raised += 1
                t.join()
            else:
                os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 5  # the pool's watcher has seen the exit (a thread: it may lag)
            while not rt.pool.launcher.gone() and time.monotonic() < deadline:
                time.sleep(0.001)
            assert rel_err(cm(x), ref) <= 1e-5, (r, "after the kill")
            assert rt.template_pid() != old and not set(workers) & set(rt.pids()), r
            for pid in workers:  # the old workers are gone, not left serving
                assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split(")")[-1] \
                    .split()[0] == "Z", pid
        cm.close()
    return raised


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the template exists where fork does")
def test_the_template_killed_idle_is_restarted_20_times():
    template_rounds(20, mid_call=False)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the template exists where fork does")
def test_the_template_killed_mid_call_is_restarted_20_times():
    raised = template_rounds(20, mid_call=True, seed=1)
    print(f"\ntemplate killed mid-call 20 times: {raised} calls raised WorkerError, every next call right")


# -- shared input buffers -------------------------------------------------------------------

def segment_names():
    return set(os.listdir("/dev/shm")) if LINUX else set()


@pytest.mark.skipif(not LINUX, reason="/dev/shm and process_vm_readv are Linux's")
def test_shared_buffers_are_read_where_they_lie(crt):
    shmrt.manual_seed(12)
    model = shmrt.Sequential([shmrt.Linear(64, 32), shmrt.ReLU(), shmrt.Linear(32, 4), shmrt.Sigmoid()])
    n = calls.SINGLE_COPY_MIN_BYTES // (64 * 4) * 2 + 3
    x = rnd(n, 64, seed=13)
    before = segment_names()
    buf = shmrt.empty((n, 64), np.float32)
    assert len(segment_names() - before) == 1  # one segment, in /dev/shm
    buf[...] = x
    assert shmrt.asarray(buf) is buf
    ref = reference(model, x)
    for strategy in ("data", "model"):
        cm = crt.compile(model, strategy=strategy, max_batch=n)
        for _ in range(3):
            check(cm(buf), ref, strategy)
            check(cm(buf[7:]), ref[7:], (strategy, "a view inside the buffer"))
        if strategy == "data":  # every participant reads its rows in the buffer: nobody copies any in
            p = cm.profile(buf)
            assert all(steps[0][0].startswith("input") and steps[0][1] < 5.0 for steps in p.per_worker), p
        cm.close()
    y = shmrt.asarray(x)  # a copy into a new buffer
    assert y is not x and np.array_equal(y, x) and len(segment_names() - before) == 2
    del buf, y
    import gc
    gc.collect()
    assert segment_names() - before == set()  # freed with the arrays


def test_empty_refuses_what_it_cannot_hold():
    with pytest.raises(ValueError, match="non-negative"):
        shmrt.empty((-1, 3))
    with pytest.raises(TypeError, match="numeric dtype"):
        shmrt.empty((2, 3), np.complex64)
    a = shmrt.empty(5, np.int64)
    a[:] = 7
    assert a.shape == (5,) and a.sum() == 35
