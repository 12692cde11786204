"""The test session's peak memory: printed at the end, and a failure when it exceeds the budget.

The budget (6 GB, or ``$AGETOOL_TEST_MEMORY_GB``) keeps the suite runnable on a CI machine. The peak
is the high-water resident set size of the pytest process plus that of its largest finished
subprocess (an upper bound of what ran at once). The tests that raised the high-water mark most are
named, so a heavy test is found without profiling. The hooks are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import resource
import sys

import pytest

GB = 1e9
_raised: list[tuple[float, str]] = []  # (bytes the test added to the pytest process's peak, test id)


def budget() -> float:
    return float(os.environ.get("AGETOOL_TEST_MEMORY_GB", "6")) * GB


def peak_bytes(who: int) -> float:
    """High-water RSS of this process (RUSAGE_SELF) or of its largest finished child (RUSAGE_CHILDREN)."""
    peak = resource.getrusage(who).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def peaks() -> tuple[float, float]:
    return peak_bytes(resource.RUSAGE_SELF), peak_bytes(resource.RUSAGE_CHILDREN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    before = peak_bytes(resource.RUSAGE_SELF)
    try:
        return (yield)
    finally:
        added = peak_bytes(resource.RUSAGE_SELF) - before
        if added > 0:
            _raised.append((added, item.nodeid))


def summary() -> list[str]:
    own, child = peaks()
    lines = [f"peak memory: {(own + child) / GB:.2f} GB = {own / GB:.2f} GB (pytest process) + "
             f"{child / GB:.2f} GB (largest subprocess); budget {budget() / GB:g} GB"]
    top = [(added, nodeid) for added, nodeid in sorted(_raised, reverse=True)[:5] if added >= 0.05 * GB]
    if top:
        lines.append("raised most by: " + ", ".join(f"{nodeid} (+{added / GB:.2f} GB)" for added, nodeid in top))
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for line in summary():
        terminalreporter.write_line(line)
    if sum(peaks()) > budget():
        terminalreporter.write_line(f"FAILED: the tests' peak memory exceeds the {budget() / GB:g} GB budget",
                                    red=True, bold=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus):
    if sum(peaks()) > budget() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
