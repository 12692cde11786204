"""Usage errors are fast and short: checked before torch loads, one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT

#: what each run prints after the command: whether torch was imported, and the exit code
PROBE = ("import sys; from agetool.cli import run; code = run(sys.argv[1:]); "
         "print('torch' in sys.modules, code, file=sys.__stdout__)")


def _run(args: list[str], tmp_path) -> tuple[float, subprocess.CompletedProcess]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    return time.perf_counter() - start, done


@pytest.mark.parametrize("args, expected", [
    (["age", "me.jpg", "--ages", "ten"], "--ages ten: not an age"),
    (["age", "me.jpg", "--dtype", "float8"], "--dtype float8: expected"),
    (["age", "me.jpg", "--device", "tpu"], "--device tpu: expected"),
    (["age", "me.jpg", "--max-pixels", "0"], "--max-pixels 0: must be >= 64"),
    (["video", "me.jpg", "--steps", "0"], "--steps 0"),
    (["age", "me.jpg", "--upscale", "3"], "--upscale 3"),
])
def test_usage_errors_come_before_torch(args, expected, tmp_path):
    (tmp_path / "me.jpg").write_bytes(b"not read: the usage error comes first")
    elapsed, done = _run(args, tmp_path)
    assert done.stdout.split() == ["False", "2"], (done.stdout, done.stderr)  # torch never loaded; exit 2
    assert done.stderr.count("\n") == 1 and expected in done.stderr and "Traceback" not in done.stderr
    # under 2 s quiet; generous on a loaded machine: 2 s plus three times the bare start-up measured now
    assert elapsed < 2.0 + 3 * _baseline(tmp_path), elapsed


_BASE: list[float] = []


def _baseline(tmp_path) -> float:
    """The interpreter's start-up with the command line imported, on this machine now."""
    if not _BASE:
        elapsed, _ = _run(["--version"], tmp_path)
        _BASE.append(elapsed)
    return _BASE[0]


@pytest.mark.parametrize("command, missing", [("age", "INPUTS"), ("video", "INPUT"), ("estimate", "INPUTS"),
                                              ("weights import", "FILE")])
def test_a_command_with_nothing_says_what_is_missing(command, missing, tmp_path):
    _, done = _run(command.split(), tmp_path)
    assert done.stdout.split() == ["False", "2"]
    assert done.stderr == f"error: agetool {command}: missing {missing}; see agetool {command} --help\n"


def test_agetool_alone_still_lists_the_commands(tmp_path):
    _, done = _run([], tmp_path)
    shown = done.stdout + done.stderr
    assert "Usage: agetool" in shown and "estimate" in shown and done.stdout.split()[-2:] == ["False", "2"]
