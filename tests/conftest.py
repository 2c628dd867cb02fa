import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


import pytest  # noqa: E402

import shmrt  # noqa: E402

# .ci/run installs every test extra, so there a test skipped for a missing module is a broken
# install, not a skip: with SHMRT_REQUIRE_TEST_EXTRAS=1 such a skip fails instead.
REQUIRE_EXTRAS = os.environ.get("SHMRT_REQUIRE_TEST_EXTRAS") == "1"
_MISSING = ("could not import", "No module named", "is not installed")


def _missing_dependency(report):
    if not (REQUIRE_EXTRAS and report.skipped):
        return None
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return reason if any(m in reason for m in _MISSING) else None


def _fail(report, reason):
    report.outcome = "failed"
    report.longrepr = (f"skipped for a missing dependency while SHMRT_REQUIRE_TEST_EXTRAS=1 (every test extra "
                       f"should be installed: pip install '.[test]'): {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    reason = _missing_dependency(report)
    if reason:
        _fail(report, reason)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    reason = _missing_dependency(report)
    if reason:  # a module-level importorskip
        _fail(report, reason)


@pytest.fixture(scope="module")
def rt():
    """One 2-worker runtime per test module (test_zoo.py overrides it with 1..4 workers)."""
    with shmrt.Runtime(workers=2) as rt:
        yield rt
