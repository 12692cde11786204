"""The test session's peak memory: printed at the end, and a failure when it exceeds the budget.

The budget (6 GB, or ``$AGETOOL_TEST_MEMORY_GB``) keeps the suite runnable on a CI machine. It bounds
the largest process: the pytest process itself, and each subprocess the tests start (``agetool``
commands, training workers). The tests that raised the pytest process's high-water mark are named
with the mark they reached, so a heavy test is found without profiling.

Measured on Linux from ``/proc/self/status`` (``VmHWM``: this process image only), elsewhere from
``getrusage``. The subprocesses' figure is ``getrusage(RUSAGE_CHILDREN)``: an upper bound, because
Linux carries the parent's resident size at the time of the spawn into the child's high-water mark.
The hooks are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

import pytest

GB = 1e9
_raised: list[tuple[float, str]] = []  # (the pytest process's new peak resident bytes, the test that raised it)


def budget() -> float:
    return float(os.environ.get("AGETOOL_TEST_MEMORY_GB", "6")) * GB


def _rusage_peak(who: int) -> float:
    peak = resource.getrusage(who).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _high_water() -> float | None:
    """This process image's peak resident size (Linux), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def own_peak() -> float:
    """Peak resident bytes of the pytest process so far."""
    peak = _high_water()
    return peak if peak is not None else _rusage_peak(resource.RUSAGE_SELF)


def children_peak() -> float:
    """Upper bound of the peak resident bytes of the largest subprocess that has finished."""
    return _rusage_peak(resource.RUSAGE_CHILDREN)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem):
    before = own_peak()
    try:
        return (yield)
    finally:
        after = own_peak()
        if after > before:
            _raised.append((after, item.nodeid))


def summary() -> list[str]:
    own, child = own_peak(), children_peak()
    lines = [f"peak memory: {max(own, child) / GB:.2f} GB (pytest process {own / GB:.2f} GB, "
             f"subprocesses at most {child / GB:.2f} GB); budget {budget() / GB:g} GB"]
    top = sorted(_raised, reverse=True)[:5]
    if top:
        lines.append("peak raised by: " + ", ".join(f"{nodeid} (to {peak / GB:.2f} GB)" for peak, nodeid in top))
    return lines


def over_budget() -> bool:
    return max(own_peak(), children_peak()) > budget()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    for line in summary():
        terminalreporter.write_line(line)
    if over_budget():
        terminalreporter.write_line(f"FAILED: the tests' peak memory exceeds the {budget() / GB:g} GB budget",
                                    red=True, bold=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus):
    if over_budget() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
