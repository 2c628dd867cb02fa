"""The sync primitives with real processes, real shared memory, real atomics."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from shmrt.parallel import control as C
from shmrt.parallel.store import Segment
from shmrt.parallel.sync import ABORTED, LINE, TIMEOUT, barrier, bump, wait_change

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = textwrap.dedent("""
    import sys, numpy as np
    from shmrt.parallel.store import Segment
    from shmrt.parallel.sync import barrier, fetch_add, load_acquire, LINE
    from numba import njit
    name, nbytes, me, parties, rounds = sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:6])
    seg = Segment(name, nbytes, create=False)
    w = seg.array(np.int32, nbytes // 4)

    @njit
    def work(w, me, parties, rounds):
        # slot per process on its own line; after every barrier, every slot
        # must show the same round: nobody ran ahead, nobody was left behind
        bad = 0
        for r in range(rounds):
            w[(8 + me) * LINE] = r + 1
            if barrier(w, LINE, parties, 0, 20000, 1000000, 0) != 0:
                return -1
            for p in range(parties):
                if w[(8 + p) * LINE] != r + 1:
                    bad += 1
            fetch_add(w, 6 * LINE, 1)
            if barrier(w, LINE, parties, 0, 20000, 1000000, 0) != 0:
                return -1
        return bad

    print(work(w, me, parties, rounds))
""")


@pytest.mark.parametrize("parties", [2, 3, 5])
def test_barrier_across_processes(tmp_path, parties):
    """More processes than cores included: waits must block, not livelock."""
    rounds = 300
    seg = Segment.create(64 * (8 + parties) * 4)
    try:
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        env = dict(os.environ, PYTHONPATH=ROOT)
        procs = [subprocess.Popen([sys.executable, str(script), seg.name, str(seg.nbytes), str(i), str(parties),
                                   str(rounds)], stdout=subprocess.PIPE, text=True, env=env)
                 for i in range(parties)]
        outs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert outs == ["0"] * parties
        words = seg.array(np.int32)
        assert words[6 * LINE] == rounds * parties  # every atomic increment counted
        del words
    finally:
        seg.close()


def test_wait_change_times_out_and_aborts():
    w = np.zeros(16 * LINE, np.int32)
    assert wait_change(w, 0, 0, LINE, 2 * LINE, 1000, 1_000_000, 0) == TIMEOUT
    w[0] = 5
    assert wait_change(w, 0, 0, LINE, 2 * LINE, 1000, 1_000_000, 0) == 5
    w[2 * LINE] = 1
    assert wait_change(w, 0, 5, LINE, 2 * LINE, 1000, 1_000_000, 0) == ABORTED
    assert bump(w, 0, LINE) == 6


def test_aborted_barrier_returns():
    w = np.zeros(16 * LINE, np.int32)
    w[C.ABORT] = 1
    assert barrier(w, C.BARRIER, 2, C.ABORT, 1000, 1_000_000, 0) == ABORTED


def test_segment_mode_and_name():
    seg = Segment.create(4096)
    try:
        assert seg.name.startswith(f"shmrt_{os.getpid()}_")
        if os.path.isdir("/dev/shm"):
            assert oct(os.stat(f"/dev/shm/{seg.name}").st_mode & 0o777) == "0o600"
    finally:
        seg.close()
    assert not os.path.exists(f"/dev/shm/{seg.name}")
