"""What the command line prints of what a user gave it: terminal control sequences in file names and
settings shown escaped, and reference photos and thresholds checked before any work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.helpers import ROOT, cli, face_like, run_measured


def test_escape_sequences_in_names_and_settings_are_printed_escaped(tmp_path, weights):
    evil = tmp_path / "a\x1b[2J\x1b]0;owned\x07.png"
    Image.fromarray(face_like()).save(evil, format="PNG")
    missing = tmp_path / "gone\x1b[31m.png"
    code, err, _ = run_measured(["age", evil, "--aligned", "--no-mask", "--weights", weights, "--device", "cpu",
                                 "--out", missing.with_name("out\x1b[1m.png")], tmp_path)
    assert code == 0, err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b[2J" in err, err
    assert Path(str(missing.with_name("out\x1b[1m.png"))).is_file()  # the file itself has the name asked for
    code, err, _ = run_measured(["age", missing, "--weights", weights, "--device", "cpu"], tmp_path)
    assert code == 1 and "\x1b" not in err and "gone\\x1b[31m.png" in err, err
    code, err, _ = run_measured(["age", evil, "--aligned", "--weights", weights], tmp_path,
                                env={"AGETOOL_DEVICE": "cu\x1b]0;pwned\x07da"})
    assert code == 2 and "\x1b" not in err and "\x07" not in err and "cu\\x1b]0;pwned\\x07da" in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("threshold", ["-1", "0", "-0.5"])
def test_a_reference_threshold_of_zero_or_less_is_refused(tmp_path, weights, capsys, threshold):
    photo = tmp_path / "me.png"
    Image.fromarray(face_like()).save(photo)
    code, _, err = cli(["age", photo, "--faces", f"ref:{photo}", "--ref-threshold", threshold, "--weights", weights,
                        "--out", tmp_path / "o.png"], capsys)
    assert code == 2 and "--ref-threshold" in err and err.count("\n") == 1, err
    assert not (tmp_path / "o.png").exists()


def test_reference_paths_say_what_is_wrong(tmp_path, weights, capsys):
    photo = tmp_path / "me.png"
    Image.fromarray(face_like()).save(photo)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cases = {"ref:": (2, "no photo after ref:"), f"ref:{tmp_path}": (1, "is a folder"),
             f"ref:{fifo}": (1, "not a regular file"), "ref:/dev/null": (1, "not a regular file"),
             f"ref:{tmp_path / 'nobody.png'}": (1, "no such file")}
    for faces, (want, words) in cases.items():
        code, _, err = cli(["age", photo, "--faces", faces, "--weights", weights, "--out", tmp_path / "o.png"], capsys)
        assert code == want and words in err and err.count("\n") == 1, (faces, err)
        assert "ref:." not in err
    assert not (tmp_path / "o.png").exists()


def test_compare_of_one_file_under_two_spellings_is_that_photo_against_itself(tmp_path, capsys):
    shutil.copy(ROOT / "examples" / "astronaut.png", tmp_path / "astronaut.png")
    os.symlink(tmp_path / "astronaut.png", tmp_path / "link.png")
    for b in (f"{tmp_path}/../{tmp_path.name}/astronaut.png", tmp_path / "link.png"):
        code, out, err = cli(["compare", tmp_path / "astronaut.png", b], capsys)
        assert code == 0, err
        assert "one face, nothing to compare it with" in out and "same person" not in out, out
