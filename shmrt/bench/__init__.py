"""The benchmark, apart from the runtime: ``python -m shmrt.bench`` (main.py),
its report (report.py), the peers it compares with (peers.py), the machine's
ceilings (ceilings.py) and the built-in workloads (workloads.py).  The
runtime never imports this package."""
from shmrt.bench.harness import machine, main, rel_err, run  # noqa: F401
