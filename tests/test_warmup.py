"""The parallel cold-cache compile (shmrt/exec/warmup.py): its two groups name real functions."""
from shmrt.exec import executor  # noqa: F401  (defines every dispatcher)
from shmrt.exec.warmup import _CHILD_OWNS, _dispatchers


def test_child_group_names_existing_dispatchers():
    found = _dispatchers()
    missing = [name for name in _CHILD_OWNS if name not in found]
    assert not missing, f"warmup._CHILD_OWNS names no dispatcher: {missing}; there are {sorted(found)}"
