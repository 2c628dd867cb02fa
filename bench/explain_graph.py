"""explain() of the bench's graph workload resnet18 (shmrt/bench/graphs.py) at batch 1 and the header at
batch 8: where the barriers stand and the arena's peak, as recorded in
results/2core-xeon-resnet18-explain.txt.

    python bench/explain_graph.py > results/<machine>-resnet18-explain.txt
"""
import datetime
import platform
import subprocess

import shmrt
from shmrt.bench.graphs import resnet18


def main():
    rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# cm.explain(1) of shmrt.bench.graphs.resnet18() compiled with Runtime() ({shmrt.Runtime.default_workers()} "
          f"workers), max_batch=8; commit {rev}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}")
    with shmrt.Runtime() as rt:
        cm = rt.compile(resnet18(), max_batch=8)
        print(cm.explain(1))
        print()
        print(cm.explain(8).split("\n[")[0])


if __name__ == "__main__":
    main()
