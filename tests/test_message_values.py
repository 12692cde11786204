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
