"""Every path a command writes is checked against every input before any work: exit 2 naming both
paths, the input untouched, nothing written. Outputs whose exact names are known only during the work
(tiles per face, video frames, aligned crops per face) are checked by their name pattern."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import cli


def _snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its inode and modification time (a replaced file changes both)."""
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def _refused(code: int, err: str, *paths) -> None:
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, err
    for p in paths:
        assert str(p) in err, err


def test_a_tile_never_replaces_the_input_photo(tmp_path, crop, weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t" / "face0_input").mkdir(parents=True)
    photo = Path("t/face0_input/face0_input.png")
    shutil.copy(crop, photo)
    before = _snapshot(tmp_path / "t")
    code, _, err = cli(["age", photo, "--tiles", "t", "--out", "g.png", "--aligned", "--no-mask",
                        "--weights", weights, "--device", "cpu"], capsys)
    _refused(code, err, "--tiles t:", photo)
    assert _snapshot(tmp_path / "t") == before and not Path("g.png").exists()


def test_a_tile_named_by_age_never_replaces_an_input(tmp_path, crop, weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t" / "face1_30").mkdir(parents=True)
    photo = Path("t/face1_30/face1_30.png")
    shutil.copy(crop, photo)
    code, _, err = cli(["age", photo, "--ages", "30", "--tiles", "t", "--out", "g.png", "--aligned", "--no-mask",
                        "--weights", weights, "--device", "cpu"], capsys)
    _refused(code, err, photo)
    # a name no tile of this run takes is fine
    code, _, err = cli(["age", photo, "--ages", "31", "--tiles", "t", "--out", "g.png", "--aligned", "--no-mask",
                        "--weights", weights, "--device", "cpu"], capsys)
    assert code == 0, err


def test_a_frame_never_replaces_the_input_photo(tmp_path, crop, weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("f").mkdir()
    photo = Path("f/frame_00000.png")
    shutil.copy(crop, photo)
    before = _snapshot(tmp_path / "f")
    code, _, err = cli(["video", photo, "--frames", "f", "--out", "v.mp4", "--steps", "1", "--aligned",
                        "--no-mask", "--weights", weights, "--device", "cpu"], capsys)
    _refused(code, err, "--frames f:", photo)
    assert _snapshot(tmp_path / "f") == before and not Path("v.mp4").exists()


def test_align_into_the_input_folder_never_replaces_another_input(tmp_path, crop, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("al").mkdir()
    shutil.copy(crop, "al/a.png")
    shutil.copy(crop, "al/a_face0.png")
    before = _snapshot(tmp_path / "al")
    code, _, err = cli(["align", "al", "--out", "al", "--offline", "--device", "cpu"], capsys)
    _refused(code, err, "--out al:", "al/a_face0.png")
    assert _snapshot(tmp_path / "al") == before


def test_eval_report_never_replaces_a_photo(tmp_path, crop, weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("d").mkdir()
    shutil.copy(crop, "d/report.png")
    before = _snapshot(tmp_path / "d")
    code, _, err = cli(["eval", "d", "--out", "d", "--aligned", "--no-mask", "--weights", weights,
                        "--device", "cpu", "--offline"], capsys)
    _refused(code, err, "--out d:", "d/report.png")
    assert _snapshot(tmp_path / "d") == before


def test_dataset_outputs_never_replace_a_listed_photo(tmp_path, crop, capsys):
    folder = tmp_path / "out" / "males" / "train30-39"
    folder.mkdir(parents=True)
    shutil.copy(crop, tmp_path / "p.png")
    photo = folder / "00002_p.png"  # the crop of line 2 (p.png) is written as 00002_p.png
    shutil.copy(crop, photo)
    listing = tmp_path / "photos.csv"
    with open(listing, "w", newline="") as f:
        csv.writer(f).writerows([["path", "age", "gender"], ["p.png", "35", "male"], [str(photo), "36", "male"]])
    before = _snapshot(tmp_path / "out")
    code, _, err = cli(["dataset", "from-photos", "--csv", listing, "--out", tmp_path / "out", "--device", "cpu",
                        "--offline"], capsys)
    _refused(code, err, photo)
    assert _snapshot(tmp_path / "out") == before


def test_dataset_prepare_never_replaces_an_image(tmp_path):
    from PIL import Image

    from agetool.errors import UsageError
    from agetool.train.prepare import prepare_ffhq_aging

    images = tmp_path / "out" / "males" / "train30-39"  # the images sit where the layout goes
    (images / "parsings").mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(images / "00001.png")
    Image.new("L", (16, 16)).save(images / "parsings" / "00001.png")
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        csv.writer(f).writerows([
            ["image_number", "age_group", "age_group_confidence", "gender", "gender_confidence", "head_pitch",
             "head_roll", "head_yaw", "left_eye_occluded", "right_eye_occluded", "glasses"],
            [1, "30-39", 0.9, "male", 0.9, 0, 0, 0, 0, 0, "None"]])
    before = _snapshot(tmp_path / "out")
    with pytest.raises(UsageError, match="is an input"):
        prepare_ffhq_aging(images, labels, tmp_path / "out")
    assert _snapshot(tmp_path / "out") == before


@pytest.mark.skipif(not hasattr(os, "link"), reason="hard links")
def test_an_output_linked_to_an_input_names_both(tmp_path, crop, weights, capsys):
    link = tmp_path / "grid.png"
    os.link(crop, link)
    code, _, err = cli(["age", crop, "--out", link, "--aligned", "--no-mask", "--weights", weights], capsys)
    _refused(code, err, link, crop)
