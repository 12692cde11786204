"""The reference data kept in the repository, where tests find it, and the no-silent-skip rule."""

from __future__ import annotations

import hashlib
import re

import pytest

from tests import reference

pytest_plugins = ["pytester"]

ROW = re.compile(r"^\| `([^`]+)` \| .+ \| `([0-9a-f]{64})` \|$", re.M)


def _listed() -> dict[str, str]:
    return dict(ROW.findall((reference.FIXTURES / "PROVENANCE.md").read_text()))


def test_provenance_lists_every_fixture_with_its_sha256():
    listed = _listed()
    present = {p.name for p in reference.FIXTURES.iterdir() if p.name != "PROVENANCE.md"}
    assert set(listed) == present
    for name, sha in listed.items():
        assert hashlib.sha256((reference.FIXTURES / name).read_bytes()).hexdigest() == sha, name


def test_fixtures_are_copies_of_the_full_set():
    full = reference.full_set()
    if not full.is_dir():
        pytest.skip(f"the full reference set is not at {full}")
    for name in _listed():
        original = full / ("README.md" if name == "REFERENCE_README.md" else name)
        assert original.read_bytes() == (reference.FIXTURES / name).read_bytes(), name


def test_lookup_prefers_the_full_set_and_falls_back_to_the_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("AGETOOL_REFERENCE", str(tmp_path))
    (tmp_path / "gen_case1_noisycond_64.npz").write_bytes(b"full set")
    assert reference.find("gen_case1_noisycond_64.npz") == tmp_path / "gen_case1_noisycond_64.npz"
    assert reference.find("gen_case2_batch_nondeploy_64.npz") == reference.FIXTURES / "gen_case2_batch_nondeploy_64.npz"
    assert reference.find("gen_case3_deploy_256.npz") is None
    with pytest.raises(reference.MissingReference, match="gen_case3_deploy_256.npz"):
        reference.ReferenceFiles() / "gen_case3_deploy_256.npz"
    monkeypatch.setenv("AGETOOL_REFERENCE", str(tmp_path / "nowhere"))
    assert reference.load_npz("gen_case2_batch_nondeploy_64.npz")["x"].shape == (4, 3, 64, 64)


INNER_CONFTEST = """
import pytest
from tests import reference
from tests.reference import pytest_make_collect_report, pytest_runtest_makereport

@pytest.fixture
def reference_dir():
    return reference.ReferenceFiles()

@pytest.fixture
def needs_a_missing_module():
    pytest.importorskip("no_such_module_anywhere")
"""

INNER_TESTS = """
import pytest

def test_present(reference_dir):
    assert (reference_dir / "present.txt").read_text() == "data"

def test_absent(reference_dir):
    reference_dir / "absent.txt"

def test_skips_for_another_reason(reference_dir):
    reference_dir / "present.txt"
    pytest.skip("some tool is missing")

def test_fixture_importorskip(reference_dir, needs_a_missing_module):
    pass

@pytest.mark.skipif(True, reason="this CPU lacks a feature")
def test_declared_skip(reference_dir):
    pass

def test_not_a_parity_test():
    pytest.skip("unrelated to reference data")
"""


def test_parity_tests_may_skip_only_for_missing_data(pytester, monkeypatch):
    data = pytester.mkdir("data")
    (data / "present.txt").write_text("data")
    monkeypatch.setenv("AGETOOL_REFERENCE", str(data))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_inprocess("-rsf", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=3, failed=1, errors=1)  # the fixture's skip fails at setup
    result.stdout.fnmatch_lines(["*ERROR at setup of test_fixture_importorskip*",
                                 "parity test skipped although its reference data is present: could not import "
                                 "'no_such_module_anywhere'*"])
    result.stdout.fnmatch_lines(["*_ test_skips_for_another_reason _*",
                                 "parity test skipped although its reference data is present: some tool is missing"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_parity_module_skipped_at_import_fails(pytester, monkeypatch):
    monkeypatch.setenv("AGETOOL_REFERENCE", str(pytester.path))
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_parity="""
        import pytest
        pytest.importorskip("no_such_module_anywhere")

        def test_uses(reference_dir):
            pass
    """, test_other="""
        import pytest
        pytest.importorskip("no_such_module_anywhere")
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1, skipped=1)
    result.stdout.fnmatch_lines(["*module with parity tests skipped at import*no_such_module_anywhere*"])
    assert result.ret != pytest.ExitCode.OK
