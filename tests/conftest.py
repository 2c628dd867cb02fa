import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402

import shmrt  # noqa: E402


@pytest.fixture(scope="module")
def rt():
    """One 2-worker runtime per test module (test_zoo.py overrides it with 1..4 workers)."""
    with shmrt.Runtime(workers=2) as rt:
        yield rt
