"""Where the golden reference data is found, and the rule that parity tests never skip silently.

Two places hold reference files, searched in this order for each file:

1. the full set: ``$AGETOOL_REFERENCE``, else ``../shared/reference`` beside the checkout (optional);
2. ``tests/fixtures``: the small subset kept in the repository (listed in its PROVENANCE.md).

A test that asks for a file found in neither place skips with :class:`MissingReference`.

A parity test (one that uses the ``reference_dir`` or ``load_npz`` fixtures) may skip only for that
reason, or by a ``skip``/``skipif`` mark it declares. Any other skip (an ``importorskip``, a
``pytest.skip`` in a fixture) is reported as a failure, and so is a module that uses those fixtures
being skipped at import: a parity test can't stop running unnoticed while its data is present.
The hooks below are imported by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
PARITY_FIXTURES = ("reference_dir", "load_npz")
_USES_PARITY_FIXTURE = re.compile(r"\b(?:%s)\b" % "|".join(PARITY_FIXTURES))


def full_set() -> Path:
    """The folder of the full reference set (it may not exist)."""
    return Path(os.environ.get("AGETOOL_REFERENCE") or ROOT.parent / "shared" / "reference")


def find(name: str) -> Path | None:
    """The path of reference file ``name``: from the full set when it has it, else from the subset."""
    for folder in (full_set(), FIXTURES):
        path = folder / name
        if path.is_file():
            return path
    return None


class MissingReference(pytest.skip.Exception):
    """A reference file is in neither place: the one legitimate reason for a parity test to skip."""

    def __init__(self, name: str) -> None:
        super().__init__(f"reference file {name} not found in {full_set()} or {FIXTURES}")
        self.name = name


def path(name: str) -> Path:
    """The path of reference file ``name``; skips the calling test when it is absent."""
    found = find(name)
    if found is None:
        raise MissingReference(name)
    return found


class ReferenceFiles:
    """The reference data as one folder: ``ref / "name.png"`` is that file's path (see :func:`path`)."""

    def __truediv__(self, name: str) -> Path:
        return path(name)

    def __repr__(self) -> str:
        return f"ReferenceFiles({full_set()}, then {FIXTURES})"


def load_npz(name: str) -> dict[str, np.ndarray]:
    """Every array of a reference ``.npz`` (read afresh: nothing is kept between tests)."""
    with np.load(path(name)) as z:
        return {k: z[k] for k in z.files}


# --- the no-silent-skip rule ---------------------------------------------------------------------


def _declared_skip_reasons(item: pytest.Item) -> set[str]:
    reasons = set()
    for mark in item.iter_markers("skip"):
        reasons.add(mark.kwargs.get("reason", mark.args[0] if mark.args else "unconditional skip"))
    for mark in item.iter_markers("skipif"):
        if "reason" in mark.kwargs:
            reasons.add(mark.kwargs["reason"])
        reasons.update(f"condition: {c}" for c in mark.args if isinstance(c, str))
    return reasons


def forbidden_skip(item: pytest.Item, excinfo: pytest.ExceptionInfo) -> str | None:
    """Why this skip of a parity test is not allowed, or None when it is."""
    if not set(PARITY_FIXTURES) & set(getattr(item, "fixturenames", ())):
        return None
    error = excinfo.value
    if isinstance(error, MissingReference):
        if find(error.name) is None:
            return None
        return f"reference file {error.name} is present at {find(error.name)} but was reported missing"
    reason = str(getattr(error, "msg", error))
    if reason in _declared_skip_reasons(item):
        return None
    return f"parity test skipped although its reference data is present: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.skipped and call.excinfo is not None and not hasattr(report, "wasxfail"):
        why = forbidden_skip(item, call.excinfo)
        if why is not None:
            report.outcome = "failed"
            report.longrepr = why
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    report = yield
    if report.skipped and isinstance(collector, pytest.Module):
        source = Path(collector.path).read_text(encoding="utf-8", errors="replace")
        if _USES_PARITY_FIXTURE.search(source):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = f"module with parity tests skipped at import: {reason}"
    return report
