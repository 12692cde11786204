"""Values in messages read as typed: paths as their text (never PosixPath('x')), long values cut with
an ellipsis, each flag spelled as on the command line."""

from __future__ import annotations

from pathlib import Path

from agetool.cli.console import message
from agetool.errors import SHOWN_CHARS, UsageError, arg


def test_paths_read_as_their_text():
    e = UsageError(f"{arg('photos', [Path('empty'), Path('b c')])}: no images found")
    assert str(e) == "photos=['empty', 'b c']: no images found"
    assert message(e) == "--photos empty b c: no images found"
    one = UsageError(f"{arg('out', Path('x'))}: bad")
    assert str(one) == "out='x': bad" and message(one) == "--out x: bad"


def test_long_values_are_cut_with_an_ellipsis():
    e = UsageError(f"{arg('ages', '9' * 10_000)}: over 150 years")
    shown = message(e)
    assert shown.startswith("--ages 999") and "...: over 150 years" in shown
    assert len(shown) < SHOWN_CHARS + 40


def test_reference_marks_inside_a_value_cannot_break_the_message():
    value = "a\x1fb\x1ec"
    e = UsageError(f"{arg('ages', value)}: bad")
    assert message(e) == "--ages a?b?c: bad"


def test_flags_spelled_as_typed():
    for name, flag in (("from_age", "--from 1e+309"), ("to_age", "--to 1e+309"), ("frames_dir", "--frames f"),
                       ("batch", "--batch-size f")):
        value = "1e+309" if "age" in name else "f"
        assert message(UsageError(f"{arg(name, value)}: bad")) == f"{flag}: bad"


def test_the_command_line_shows_values_as_typed(tmp_path, crop, weights, capsys):
    from tests.helpers import cli, common

    out = tmp_path / "v.mp4"
    for args, shown in ((["--noise", "1e309"], "--noise 1e309: must be a finite number"),
                        (["--noise=-1e999"], "--noise -1e999: must be a finite number"),
                        (["--fps", "1e-5"], "--fps 1e-5: must be between"),
                        (["--from", "1e309"], "--from 1e309: must be a finite number"),
                        (["--to", "-0.5e3"], "--to -0.5e3: must be between 0 and 150")):
        code, _, err = cli(["video", crop, "--out", out, *args, *common(weights)], capsys)
        assert code == 2 and err.count("\n") == 1 and shown in err, err
    assert not out.exists()


def test_an_empty_folder_reads_as_its_name(tmp_path, capsys, monkeypatch):
    from tests.helpers import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    code, _, err = cli(["eval", "empty", "--out", "report", "--offline"], capsys)
    assert code != 0 and "PosixPath" not in err and "empty" in err, err
