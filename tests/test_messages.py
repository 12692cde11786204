"""What the command line prints: user text never read as markup, one line per error, one error
style with exit 2 for usage errors, help pages, and captions without missing glyphs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from tests.helpers import common, cli, face_like

#: paths whose text looks like rich markup ("missing[/b].png" is the file "b].png" in a folder "missing[")
MARKUP_NAMES = ["missing[/b]", "b[", "[bold]x[/]", "a[/]b", "[link=x]y", "[/"]


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ---------------------------------------------------------------- markup
@pytest.mark.parametrize("name", MARKUP_NAMES)
def test_missing_file_with_markup_in_its_name(tmp_path, capsys, name):
    path = tmp_path / f"{name}.png"
    code, _, err = cli(["age", path, "--out", tmp_path / "g.png", "--aligned"], capsys)
    assert code == 1
    assert _error_lines(err) == [f"error: {path}: no such file (check the path)"]


def test_folder_run_with_markup_in_names_keeps_going(tmp_path, weights, capsys):
    src = tmp_path / "b["
    src.mkdir()
    good = ["b].png", "c[bold].png", "z.png"]
    for i, name in enumerate(good):
        Image.fromarray(face_like(seed=i)).save(src / name)
    (src / "m].png").write_text("not an image")  # its path holds "[/m]"
    out = tmp_path / "out[" / "i]"
    code, _, err = cli(["age", src, "--out", out, *common(weights)], capsys)
    assert code == 1
    assert f"error: {src / 'm].png'}: " in err
    assert "done: 3 written, 1 failed, 0 skipped" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(n).stem + "_ages.png" for n in good)
    assert "Traceback" not in err and "internal error" not in err


def test_progress_descriptions_are_not_markup(tmp_path, weights, capsys, monkeypatch):
    """On a terminal the progress bar shows the file name; a name with markup must not break it."""
    from agetool.cli import console

    screen = io.StringIO()
    monkeypatch.setattr(console, "err", Console(file=screen, force_terminal=True, width=120, markup=False))
    src = tmp_path / "x[bold]y[/].png"
    src.parent.mkdir()
    Image.fromarray(face_like()).save(src)
    code, _, _ = cli(["age", src, "--out", tmp_path / "g.png", *common(weights)], capsys)
    assert code == 0, screen.getvalue()
    assert (tmp_path / "g.png").is_file()
    assert "].png" in screen.getvalue() and "x[bold]y[" in screen.getvalue()


def test_tables_and_messages_print_brackets_literally():
    from agetool.cli import console

    screen = io.StringIO()
    console.err, saved = Console(file=screen, width=200, markup=False), console.err
    try:
        console.error("can't read /tmp/[red]x[/] (no [/b] such file)")
        console.warn("license [non-commercial]")
    finally:
        console.err = saved
    assert screen.getvalue().splitlines() == ["error: can't read /tmp/[red]x[/] (no [/b] such file)",
                                              "warning: license [non-commercial]"]
    # the table agetool prints (``agetool weights list``), with markup in a name and a license
    from types import SimpleNamespace

    from agetool.cli.weights import print_models

    art = SimpleNamespace(name="gen[bold]x[/]", kind="generator", license="CC BY-NC-SA 4.0 [/b]", non_commercial=True,
                          size=1024, bundled=None)
    status = SimpleNamespace(artifact=art, record={}, path=None, bundled=None, partial=0)
    screen = io.StringIO()
    console.out, saved = Console(file=screen, width=200, markup=True), console.out  # cells are never markup
    try:
        print_models([status])
    finally:
        console.out = saved
    assert "gen[bold]x[/]" in screen.getvalue() and "CC BY-NC-SA 4.0 [/b] [non-commercial]" in screen.getvalue()


def test_info_with_markup_in_the_cache_path(tmp_path, capsys, monkeypatch):
    cache = tmp_path / "c[/b]" / "cache"
    monkeypatch.setenv("AGETOOL_CACHE", str(cache))
    code, out, err = cli(["info"], capsys)
    assert code == 0, err
    assert f"cache: {cache}" in out


# ---------------------------------------------------------------- one line
def test_error_with_a_line_break_in_a_file_name_is_one_line(tmp_path, capsys):
    path = tmp_path / "two\nlines.png"
    code, _, err = cli(["age", path, "--aligned"], capsys)
    assert code == 1
    assert len(_error_lines(err)) == 1 and err.startswith("error: ")


# ---------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, needle", [
    (["video", "x.png", "--fps", "0"], "--fps"),
    (["video", "x.png", "--crf", "99"], "--crf"),
    (["age", "x.png", "--nosuch"], "--nosuch"),
    (["age", "--out", "g.png"], "INPUTS"),
    (["age", "x.png", "--seed", "abc"], "--seed"),
    (["nosuch"], "nosuch"),
    (["weights", "path", "nosuch"], "nosuch"),
    (["weights", "import", "nofile.pth", "--as", "lats-male"], "nofile.pth"),
])
def test_usage_errors_are_one_error_line_with_exit_2(tmp_path, capsys, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(args, capsys)
    assert code == 2, err
    lines = _error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert "Usage:" not in err + out and "╭" not in err + out


def test_a_folder_where_one_photo_is_expected_is_a_usage_error(tmp_path, weights, capsys):
    (tmp_path / "photos").mkdir()
    code, _, err = cli(["video", tmp_path / "photos", "--out", tmp_path / "v.mp4", *common(weights)], capsys)
    assert code == 2
    assert _error_lines(err) == [f"error: {tmp_path / 'photos'}: is a folder; one photo is expected here"]


# ---------------------------------------------------------------- help pages
def _all_commands():
    from agetool.cli import command
    from agetool.cli.helptext import walk

    return [(" ".join(path), cmd) for path, cmd in walk(command())]


@pytest.mark.parametrize("name", [name for name, _ in _all_commands()])
def test_help_pages_have_no_type_hints(capsys, name):
    code, out, err = cli([*name.split(), "--help"], capsys)
    assert code == 0, err
    assert not re.search(r"<(bool|str|int|float|path|file|dir|list\[\w+\]|Path)>", out), out
    assert not re.search(r"\{[a-z_]+\}", out), out


@pytest.mark.parametrize("name", [name for name, _ in _all_commands()])
def test_help_pages_have_examples(capsys, name):
    code, out, err = cli([*name.split(), "--help"], capsys)
    assert code == 0, err
    assert "Example" in out, f"`agetool {name} --help` has no example"


# ---------------------------------------------------------------- captions
def test_every_caption_character_has_a_glyph():
    from agetool.ages import AGE_CLASSES, DEFAULT_ANCHORS, age_caption, traversal_ages
    from agetool.images import _font, caption_text, has_glyph

    labels = {*AGE_CLASSES, "input", "input, ~34", "+20 (~54)", "30-39 \u2192 50-69",
              *(age_caption(a) for a in traversal_ages(3, tuple(DEFAULT_ANCHORS.values())))}
    assert any(not label.isascii() for label in labels)  # an arrow
    for size in (10, 18, 36):
        font = _font(size)
        for label in labels:
            drawn = caption_text(label, font)
            assert all(has_glyph(font, ch) for ch in drawn), (label, drawn)
    font = _font(18)
    assert caption_text("\u2192", font) == ("\u2192" if has_glyph(font, "\u2192") else "->")


def test_caption_draws_the_arrow_as_ascii():
    from agetool.images import caption

    tile = face_like()
    with_arrow = caption(tile, "30-39 \u2192 50-69")
    assert np.array_equal(with_arrow, caption(tile, "30-39 -> 50-69"))
    assert not np.array_equal(with_arrow, caption(tile, "30-39 ? 50-69"))


def test_caption_text_replaces_what_the_font_lacks():
    from PIL import ImageFont

    from agetool.images import _font, caption_text, has_glyph

    assert caption_text("5\u20139 \u2265 2 \u2212 1", ImageFont.load_default(10)) == "5-9 >= 2 - 1"
    font = _font(20)
    assert caption_text("Zo\u00eb", font) == ("Zo\u00eb" if has_glyph(font, "\u00eb") else "Zoe")
    assert caption_text("snow \u2603", font) == ("snow \u2603" if has_glyph(font, "\u2603") else "snow ?")
    # a font without them (PIL's bitmap font) takes each way out
    basic = ImageFont.load_default(10)
    assert [has_glyph(basic, c) for c in "\u00eb\u2603"] == [False, False]
    assert caption_text("Zo\u00eb snow \u2603", basic) == "Zoe snow ?"


# ---------------------------------------------------------------- aligned inputs of another size
@pytest.mark.parametrize("shape, needle", [((200, 300), "not square"), ((512, 512), "resizing it to 256x256")])
def test_aligned_input_of_another_size_is_said_to_be_resized(tmp_path, weights, capsys, shape, needle):
    src = tmp_path / "me.png"
    Image.fromarray(np.asarray(Image.fromarray(face_like(512)).resize(shape[::-1]))).save(src)
    code, _, err = cli(["age", src, "--out", tmp_path / "g.png", *common(weights)], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "me.png" in warnings[0] and needle in warnings[0]
    square = tmp_path / "ok.png"
    Image.fromarray(face_like()).save(square)
    code, _, err = cli(["age", square, "--out", tmp_path / "g2.png", *common(weights)], capsys)
    assert code == 0 and "warning" not in err


@pytest.mark.parametrize("name, python, plain, flag", [
    ("noise", "-1.0", "-1.0", "--noise -1.0"), ("mask", "False", "False", "--no-mask"), ("mask", None, None, "--mask"),
    ("flip", "False", "False", "--no-flip"), ("paste_back", "True", "True", "--paste-back"),
    ("age_model", None, None, "--age-model")])
def test_library_arguments_read_as_flags(name, python, plain, flag):
    from agetool.cli.console import flag_style

    assert flag_style(name, python, plain) == flag
