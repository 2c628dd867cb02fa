"""``python -m shmrt.bench`` as a user runs it: a separate interpreter, its whole output read.

A shared-memory runtime that leaves the resource tracker complaining at
exit ("There appear to be N leaked shared_memory objects") looks like a
leak to every user, so any such line -- or any warning at all -- fails.
"""
import os
import subprocess
import sys


def test_quick_bench_runs_clean():
    env = dict(os.environ, PYTHONWARNINGS="default")  # show every warning a user could see
    r = subprocess.run([sys.executable, "-m", "shmrt.bench", "--quick"], capture_output=True, text=True,
                       timeout=600, env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    bad = [l for l in out.splitlines() if "resource_tracker" in l or "Warning" in l or "leaked" in l
           or "Traceback" in l]
    assert not bad, "\n".join(bad)
    assert "A/A control" in r.stdout and "where the time goes" in r.stdout, r.stdout[-2000:]
    assert "[  1/" in r.stderr  # progress, one line per step when stderr is not a terminal
