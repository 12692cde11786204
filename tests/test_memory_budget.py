"""The session's peak memory is printed, and exceeding the budget fails the run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["pytester"]

CONFTEST = "from tests.memory import pytest_runtest_protocol, pytest_sessionfinish, pytest_terminal_summary\n"
TESTS = """
import numpy as np

def test_holds_memory():
    block = np.ones(100_000_000, np.uint8)  # 100 MB touched
    assert block.sum() == 100_000_000
"""


def test_peak_memory_is_printed_and_within_budget(pytester, monkeypatch):
    monkeypatch.setenv("AGETOOL_TEST_MEMORY_GB", "1000")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.re_match_lines([r"peak memory: \d+\.\d\d GB \(pytest process \d+\.\d\d GB, "
                                  r"subprocesses at most \d+\.\d\d GB\); budget 1000 GB",
                                  r"peak raised by: test_inner.py::test_holds_memory \(to \d+\.\d\d GB\)"])
    peak = re.search(r"test_holds_memory \(to (\d+\.\d\d) GB\)", result.stdout.str()).group(1)
    assert float(peak) >= 0.1  # the 100 MB the test held, on top of the interpreter
    assert result.ret == pytest.ExitCode.OK


def test_exceeding_the_budget_fails_the_run(pytester, monkeypatch):
    monkeypatch.setenv("AGETOOL_TEST_MEMORY_GB", "0.02")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*the tests' peak memory exceeds the 0.02 GB budget*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
