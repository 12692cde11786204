"""Dataset preparation: FFHQ-Aging selection rules and layout, photo lists, the dataset commands."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agetool.errors import DatasetError
from agetool.train.prepare import (AGE_GROUPS, LabelRow, age_group, prepare_ffhq_aging, read_labels,
                                   read_photo_csv, selection)

GOOD = LabelRow(image_number=1, age_group="30-39", age_confidence=0.9, gender="male", gender_confidence=0.9,
                head_pitch=5.0, head_roll=1.0, head_yaw=-10.0, left_eye_occluded=10.0, right_eye_occluded=20.0,
                glasses="None")
NONE_FOUND = replace(GOOD, head_pitch=-1, head_roll=-1, head_yaw=-1, left_eye_occluded=-1, right_eye_occluded=-1,
                     glasses="-1")


@pytest.mark.parametrize("change,expected", [
    ({}, None),
    ({"age_confidence": 0.6}, "age_confidence"),
    ({"age_confidence": 0.61}, None),
    ({"gender_confidence": 0.66}, "gender_confidence"),
    ({"head_pitch": -30.0}, "head_pose"),
    ({"head_pitch": 29.9}, None),
    ({"head_yaw": 40.0}, "head_pose"),
    ({"head_roll": 80.0}, None),  # roll is not a criterion
    ({"left_eye_occluded": 89.0, "right_eye_occluded": 49.0}, None),
    ({"left_eye_occluded": 49.0, "right_eye_occluded": 89.0}, None),  # either eye order
    ({"left_eye_occluded": 89.0, "right_eye_occluded": 51.0}, "eyes_occluded"),
    ({"left_eye_occluded": 90.0, "right_eye_occluded": 0.0}, "eyes_occluded"),
    ({"glasses": "Dark"}, "dark_glasses"),
    ({"glasses": "Normal"}, None),
    ({"age_group": "5-9"}, "unknown_age_group"),
    ({"gender": "unknown"}, "unknown_gender"),
])
def test_selection_rules(change, expected):
    assert selection(replace(GOOD, **change)) == expected


def test_no_attributes_found_is_kept_but_confidences_still_apply():
    assert selection(NONE_FOUND) is None
    assert selection(replace(NONE_FOUND, age_confidence=0.5)) == "age_confidence"
    assert selection(replace(NONE_FOUND, head_pitch=-1, glasses="Dark")) == "dark_glasses"


@pytest.mark.parametrize("age,group", [(0, "0-2"), (2.9, "0-2"), (3, "3-6"), (9.5, "7-9"), (12, "10-14"),
                                       (19, "15-19"), (25, "20-29"), (39.99, "30-39"), (45, "40-49"),
                                       (69.9, "50-69"), (70, "70-120"), (101, "70-120")])
def test_age_to_group(age, group):
    assert age_group(age) == group


def test_age_out_of_range():
    for bad in (-1, float("nan"), 200):
        with pytest.raises(ValueError):
            age_group(bad)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


LABEL_HEADER = ["image_number", "age_group", "age_group_confidence", "gender", "gender_confidence", "head_pitch",
                "head_roll", "head_yaw", "left_eye_occluded", "right_eye_occluded", "glasses"]


def _png(path: Path, value: int, size: int = 16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)


@pytest.fixture
def ffhq(tmp_path):
    """A miniature FFHQ-Aging: images in thousands folders, parsings in a separate tree."""
    images, parsings = tmp_path / "ffhq_aging256x256", tmp_path / "parsings"
    rows = [
        [0, "0-2", 0.9, "male", 0.9, 1, 0, 2, 5, 5, "None"],          # kept, train
        [1, "50-69", 0.95, "female", 0.99, 0, 0, 0, 0, 0, "Normal"],  # kept, train
        [2, "30-39", 0.5, "male", 0.9, 1, 0, 2, 5, 5, "None"],        # age confidence
        [3, "3-6", 0.9, "female", 0.9, 45, 0, 2, 5, 5, "None"],       # head pose
        [4, "7-9", 0.9, "female", 0.9, 1, 0, 2, 5, 5, "Dark"],        # dark glasses
        [1500, "15-19", 0.9, "female", 0.9, -1, -1, -1, -1, -1, "-1"],  # no attributes: kept, test
        [1501, "30-39", 0.9, "male", 0.9, 1, 0, 2, 5, 5, "None"],     # image missing
        [1502, "30-39", 0.9, "male", 0.9, 1, 0, 2, 5, 5, "None"],     # parsing missing
    ]
    for r in rows:
        n = r[0]
        sub = f"{n - n % 1000:05d}"
        if n != 1501:
            _png(images / sub / f"{n:05d}.png", 100 + n % 100)
        if n != 1502:
            _png(parsings / sub / f"{n:05d}.png", n % 19)
    labels = _write_csv(tmp_path / "ffhq_aging_labels.csv", LABEL_HEADER, rows)
    return images, parsings, labels


def test_prepare_layout_and_report(ffhq, tmp_path):
    images, parsings, labels = ffhq
    out = tmp_path / "out"
    report = prepare_ffhq_aging(images, labels, out, parsings=parsings, train_split=1000)
    assert report.rows == 8 and report.n_kept == 3 and report.n_dropped == 5
    assert dict(report.kept) == {("males", "train", "0-2"): 1, ("females", "train", "50-69"): 1,
                                 ("females", "test", "15-19"): 1}
    assert dict(report.dropped) == {"age_confidence": 1, "head_pose": 1, "dark_glasses": 1,
                                    "missing_image": 1, "missing_parsing": 1}
    assert (out / "males" / "train0-2" / "00000.png").is_file()
    assert (out / "males" / "train0-2" / "parsings" / "00000.png").read_bytes() == \
        (parsings / "00000" / "00000.png").read_bytes()
    assert (out / "females" / "test15-19" / "parsings" / "01500.png").is_file()
    # training reads the prepared folders, and says why one training class is not enough
    from agetool.train.data import scan

    with pytest.raises(DatasetError, match=r"at least two age classes .*found: 50-69"):
        scan(out / "females")
    # idempotent: a second run keeps the same files
    again = prepare_ffhq_aging(images, labels, out, parsings=parsings, train_split=1000, link=True)
    assert again.kept == report.kept


def test_prepare_parsings_beside_images(tmp_path):
    images = tmp_path / "imgs"
    _png(images / "00000" / "00007.png", 50)
    _png(images / "00000" / "parsings" / "00007.png", 3)
    labels = _write_csv(tmp_path / "l.csv", LABEL_HEADER, [[7, "7-9", 0.9, "male", 0.9, 0, 0, 0, 0, 0, "None"]])
    report = prepare_ffhq_aging(images, labels, tmp_path / "out")
    assert report.n_kept == 1
    assert (tmp_path / "out" / "males" / "train7-9" / "parsings" / "00007.png").is_file()


def test_labels_csv_errors(tmp_path):
    with pytest.raises(DatasetError, match="missing column"):
        read_labels(_write_csv(tmp_path / "a.csv", ["image_number", "age_group"], [[1, "0-2"]]))
    bad = [[1, "0-2", "high", "male", 0.9, 0, 0, 0, 0, 0, "None"]]
    with pytest.raises(DatasetError, match="line 2: age_group_confidence"):
        read_labels(_write_csv(tmp_path / "b.csv", LABEL_HEADER, bad))


def test_photo_csv(tmp_path):
    (tmp_path / "pics").mkdir()
    path = _write_csv(tmp_path / "photos.csv", ["path", "age", "age_group", "gender"], [
        ["pics/a.jpg", "34", "", "F"],
        ["/abs/b.png", "", "50-69", "male"],
        ["c.png", "1.5", "", "Female"],
        ["", "", "", ""],  # blank lines are skipped
    ])
    rows = read_photo_csv(path)
    assert [(r.path, r.group, r.gender, r.line) for r in rows] == [
        (tmp_path / "pics" / "a.jpg", "30-39", "female", 2),
        (Path("/abs/b.png"), "50-69", "male", 3),
        (tmp_path / "c.png", "0-2", "female", 4),
    ]


@pytest.mark.parametrize("header,row,match", [
    (["path", "gender"], ["a.png", "m"], "age or an age_group"),
    (["path", "age", "gender"], ["a.png", "old", "m"], "line 2: age 'old'"),
    (["path", "age_group", "gender"], ["a.png", "12-13", "m"], "line 2: age_group '12-13'"),
    (["path", "age", "gender"], ["a.png", "30", "x"], "line 2: gender 'x'"),
    (["path", "age"], ["a.png", "30"], "missing column"),
])
def test_photo_csv_errors(tmp_path, header, row, match):
    with pytest.raises(DatasetError, match=match):
        read_photo_csv(_write_csv(tmp_path / "p.csv", header, [row]))


def test_dataset_prepare_cli(ffhq, tmp_path, capsys):
    from agetool.cli import run

    images, parsings, labels = ffhq
    out = tmp_path / "cli-out"
    assert run(["dataset", "prepare", "--images", str(images), "--parsings", str(parsings), "--labels", str(labels),
                "--out", str(out), "--train-split", "1000"]) == 0
    err = capsys.readouterr().err
    assert "kept 3 of 8" in err and "dark glasses" in err and "image file not found" in err
    assert run(["dataset", "prepare", "--images", str(tmp_path / "nope"), "--labels", str(labels),
                "--out", str(out)]) == 1


def test_from_photos_aligns_and_parses(tmp_path, monkeypatch, capsys):
    """Real dlib landmarks and alignment on a real face photo; the 100M-parameter parser is replaced by a
    stub that labels a left band as background (its own tests cover it)."""
    pytest.importorskip("dlib")
    from agetool.face import parse as parse_mod
    from agetool.images import read_image, write_image
    from tests import reference

    class StubParser:
        def parse(self, crop):
            labels = np.ones(crop.shape[:2], np.uint8)
            labels[:, :10] = 0
            return labels

    monkeypatch.setattr(parse_mod.FaceParser, "load", classmethod(lambda cls, *a, **k: StubParser()))
    photo = read_image(reference.path("align_case0_input.png"))
    write_image(tmp_path / "astronaut.png", photo)
    write_image(tmp_path / "wall.png", np.full((200, 200, 3), 128, np.uint8))
    listing = _write_csv(tmp_path / "photos.csv", ["path", "age", "gender"],
                         [["astronaut.png", "43", "female"], ["wall.png", "5", "male"], ["gone.png", "5", "male"]])
    from agetool.cli import run

    out = tmp_path / "out"
    assert run(["dataset", "from-photos", "--csv", str(listing), "--out", str(out), "--landmarks", "dlib",
                "--device", "cpu", "--offline"]) == 0
    err = capsys.readouterr().err
    assert "kept 1 of 3" in err and "no face found" in err and "image file not found" in err
    assert "1 photo(s) fall in age groups that training does not use (40-49: 1)" in " ".join(err.split())
    written = out / "females" / "train40-49" / "00002_astronaut.png"
    crop = read_image(written)
    assert crop.shape == (256, 256, 3)
    labels = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(
        out / "females" / "train40-49" / "parsings" / "00002_astronaut.png"))
    assert labels.shape == (256, 256) and set(np.unique(labels)) == {0, 1}
    want = read_image(reference.path("align_case0_out256.png")).astype(int)  # the reference's alignment
    assert np.abs(crop.astype(int) - want).max() <= 3


def test_group_names_match_training_classes():
    from agetool.ages import AGE_CLASSES

    assert set(AGE_CLASSES) <= set(AGE_GROUPS)


def test_dataset_prepare_reports_bad_rows_one_by_one(ffhq, tmp_path, capsys):
    """A non-UTF-8 row, non-finite numbers and an image listed twice with different labels are each
    reported with their line; the good rows are still prepared."""
    from agetool.cli import run

    images, parsings, labels = ffhq
    text = labels.read_bytes()
    extra = (b"7,30-39,0.9,male,0.9,1,0,2,5,5,Caf\xe9\n"           # line 10: not UTF-8
             b"8,30-39,nan,male,0.9,1,0,2,5,5,None\n"              # line 11: not finite
             b"9,30-39,0.9,male,0.9,1,0,inf,5,5,None\n"            # line 12: not finite
             b"0,3-6,0.9,male,0.9,1,0,2,5,5,None\n"                # line 13: contradicts line 2
             b"1,50-69,0.95,female,0.99,0,0,0,0,0,Normal\n")       # line 14: repeats line 3 exactly
    labels.write_bytes(text + extra)
    out = tmp_path / "out"
    assert run(["dataset", "prepare", "--images", str(images), "--parsings", str(parsings), "--labels",
                str(labels), "--out", str(out), "--train-split", "1000"]) == 0
    err = capsys.readouterr().err
    assert "line 10: not UTF-8" in err
    assert "line 11: age_group_confidence = 'nan' is not a finite number" in err
    assert "line 12: head_yaw = 'inf' is not a finite number" in err
    assert "line 2: image 0 is listed with different labels on lines 2, 13" in err
    assert "line 13: image 0" in err
    assert "kept 2 of 12" in err  # image 0 is out, image 1 counted once
    assert not (out / "males" / "train0-2" / "00000.png").exists()
    assert (out / "females" / "train50-69" / "00001.png").is_file()
    assert "internal error" not in err


def test_photo_csv_that_is_not_utf8_names_the_line(tmp_path, capsys):
    from agetool.cli import run

    listing = tmp_path / "photos.csv"
    listing.write_bytes(b"path,age,gender\na.png,30,male\nb\xff.png,40,female\n")
    assert run(["dataset", "from-photos", "--csv", str(listing), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "line 3: not UTF-8 text" in err and "internal error" not in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1
