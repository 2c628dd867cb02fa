"""``python -m shmrt.worker``: the worker processes' entry point.  The
processes keep this name on their command line (what ``ps`` shows, and what
monitoring and the lifecycle tests look for); the code is
shmrt/parallel/worker.py."""
import sys

from shmrt.parallel.worker import entry

if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
