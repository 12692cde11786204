"""Ages in years: anchors, --ages, videos in years, estimates and relative ages (through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agetool.ages import (AGE_CLASSES, DEFAULT_ANCHORS, check_anchors, parse_ages, target_latents,
                          traversal_latents, transition_alphas, year_weights)
from agetool.errors import UsageError
from tests.helpers import common, cli, genderage_standin

ANCHORS = tuple(DEFAULT_ANCHORS.values())


def tile(folder: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(folder / name))


# ---------------------------------------------------------------- the arithmetic
def test_default_anchors_are_class_midpoints():
    assert list(DEFAULT_ANCHORS) == list(AGE_CLASSES)
    for label, age in DEFAULT_ANCHORS.items():
        lo, hi = map(float, label.split("-"))
        assert age == (lo + hi) / 2


@pytest.mark.parametrize("age, lower, alpha", [
    (0.0, 0, 1.0), (1.0, 0, 1.0), (4.5, 1, 1.0), (20.5, 3, 0.8), (25.75, 3, 0.5), (59.5, 4, 0.0), (90.0, 4, 0.0)])
def test_year_weights(age, lower, alpha):
    k, a = year_weights([age], ANCHORS)
    assert int(k[0]) == lower and float(a[0]) == pytest.approx(alpha, abs=1e-7)


def test_ages_on_traversal_frames_are_those_frames_bit_for_bit():
    w = torch.randn(6, 256, generator=torch.Generator().manual_seed(0))
    frames = traversal_latents(w, transition_alphas(5))
    # frame j of transition i is at anchors[i] + j / 5 * (anchors[i + 1] - anchors[i])
    for i in range(5):
        for j in range(5):
            age = ANCHORS[i] + j / 5 * (ANCHORS[i + 1] - ANCHORS[i])
            got = target_latents(w, parse_ages([age]), ANCHORS)
            assert torch.equal(got[0], frames[i * 5 + j]), (i, j, age)
    assert torch.equal(target_latents(w, parse_ages("50-69"), ANCHORS)[0], w[5])


def test_parse_ages_keeps_entries_as_typed():
    targets = parse_ages(" 5, 20.5,30-39 ,+20")
    assert [t.entry for t in targets] == ["5", "20.5", "30-39", "+20"]
    assert [t.kind for t in targets] == ["years", "years", "class", "relative"]
    assert parse_ages(None) is None and parse_ages("") is None and parse_ages(" , ") is None
    assert [t.entry for t in parse_ages([7, 20.5, "3-6"])] == ["7", "20.5", "3-6"]


@pytest.mark.parametrize("bad", ["-3", "nan", "inf", "abc", "5,,6", "+x", "+-2", "1e400", "200", [True], [None]])
def test_malformed_ages_are_usage_errors(bad):
    with pytest.raises(UsageError) as e:
        parse_ages(bad)
    assert str(e.value).startswith("ages=")


@pytest.mark.parametrize("anchors", [
    {**DEFAULT_ANCHORS, "3-6": 0.5},  # not increasing
    {k: v for k, v in DEFAULT_ANCHORS.items() if k != "7-9"},  # missing
    {**DEFAULT_ANCHORS, "80-89": 85.0},  # unknown
    {**DEFAULT_ANCHORS, "0-2": float("nan")},
    {**DEFAULT_ANCHORS, "0-2": "one"},
])
def test_bad_anchors_are_refused(anchors):
    with pytest.raises(UsageError):
        check_anchors(anchors)


# ---------------------------------------------------------------- through the command line
def test_ages_on_frames_equal_video_frames_and_classes_equal_class_tiles(tmp_path, crop, weights, capsys):
    frames, tiles, classes = tmp_path / "frames", tmp_path / "tiles", tmp_path / "classes"
    code, _, err = cli(["video", crop, "--out", tmp_path / "v.mp4", "--steps", "5", "--frames", frames,
                        "--seed", "3", *common(weights)], capsys)
    assert code == 0, err
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", "--tiles", tiles, "--seed", "3",
                        "--ages", "20.5,30-39,1,4.5,45.5", *common(weights)], capsys)
    assert code == 0, err
    code, _, err = cli(["age", crop, "--out", tmp_path / "c.png", "--tiles", classes, "--seed", "3",
                        *common(weights)], capsys)
    assert code == 0, err
    got = tiles / "crop"
    assert sorted(p.name for p in got.iterdir()) == sorted(
        ["face0_input.png", "face0_20.5.png", "face0_30-39.png", "face0_1.png", "face0_4.5.png", "face0_45.5.png"])
    # 20.5 = 17 + 0.2 x (34.5 - 17): frame 1 of transition 3; 45.5 = 34.5 + 0.44 x 25 is not on a frame
    assert np.array_equal(tile(got, "face0_20.5.png"), tile(frames, "frame_00016.png"))
    assert np.array_equal(tile(got, "face0_1.png"), tile(frames, "frame_00000.png"))
    assert np.array_equal(tile(got, "face0_4.5.png"), tile(frames, "frame_00005.png"))
    assert np.array_equal(tile(got, "face0_30-39.png"), tile(classes / "crop", "face0_30-39.png"))
    assert np.array_equal(tile(got, "face0_30-39.png"), tile(frames, "frame_00020.png"))
    assert not np.array_equal(tile(got, "face0_45.5.png"), tile(frames, "frame_00020.png"))
    assert Image.open(tmp_path / "g.png").size == (6 * 256, 256)


def test_ages_beyond_69_render_the_oldest_class_with_one_warning(tmp_path, crop, weights, capsys):
    tiles = tmp_path / "tiles"
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", "--tiles", tiles, "--ages", "80,95,59.5",
                        *common(weights)], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "80, 95" in warnings[0] and "no older faces" in warnings[0]
    got = tiles / "crop"
    assert np.array_equal(tile(got, "face0_80.png"), tile(got, "face0_59.5.png"))
    assert np.array_equal(tile(got, "face0_95.png"), tile(got, "face0_59.5.png"))


@pytest.mark.parametrize("ages", ["-3", "nan", "abc", "inf", "20,,30", "+20x"])
def test_malformed_ages_exit_2_before_any_work(tmp_path, crop, ages, capsys):
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", "--ages", ages, "--aligned",
                        "--weights", tmp_path / "missing.safetensors"], capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --ages") and "missing.safetensors" not in err
    assert not (tmp_path / "g.png").exists()


def test_age_anchors_file_moves_the_ages(tmp_path, crop, weights, capsys):
    anchors = dict(DEFAULT_ANCHORS, **{"15-19": 20.0})
    path = tmp_path / "anchors.json"
    path.write_text(json.dumps(anchors))
    a, b = tmp_path / "a", tmp_path / "b"
    assert cli(["age", crop, "--tiles", a, "--out", tmp_path / "1.png", "--ages", "20", *common(weights)])[0] == 0
    assert cli(["age", crop, "--tiles", b, "--out", tmp_path / "2.png", "--ages", "20,15-19",
                "--age-anchors", path, *common(weights)])[0] == 0
    # with 15-19 anchored at 20, age 20 is exactly that class's tile
    assert np.array_equal(tile(b / "crop", "face0_20.png"), tile(b / "crop", "face0_15-19.png"))
    assert not np.array_equal(tile(a / "crop", "face0_20.png"), tile(b / "crop", "face0_20.png"))
    path.write_text(json.dumps({"0-2": 1}))
    code, _, err = cli(["age", crop, "--out", tmp_path / "3.png", "--age-anchors", path, *common(weights)], capsys)
    assert code == 2 and "--age-anchors" in err and "missing" in err


def test_video_in_years(tmp_path, crop, weights, capsys):
    from agetool.video import read_video_frames

    out, frames = tmp_path / "years.mp4", tmp_path / "frames"
    code, _, err = cli(["video", crop, "--out", out, "--from", "2", "--to", "65", "--steps", "4", "--frames", frames,
                        "--caption", *common(weights)], capsys)
    assert code == 0, err
    n = round((65 - 2) / (59.5 - 1) * 4 * 5) + 1
    assert read_video_frames(out)[0] == n == len(list(frames.glob("frame_*.png")))
    assert "no older faces" not in err  # 65 is past the last anchor but within the training ages
    code, _, err = cli(["video", crop, "--out", tmp_path / "old.mp4", "--to", "80", "--steps", "2", *common(weights)],
                       capsys)
    assert code == 0 and err.count("no older faces") == 1
    out2 = tmp_path / "secs.mp4"
    code, _, err = cli(["video", crop, "--out", out2, "--to", "30", "--seconds", "1.5", "--fps", "10",
                        *common(weights)], capsys)
    assert code == 0, err
    assert read_video_frames(out2)[0] == 15
    code, _, err = cli(["video", crop, "--out", tmp_path / "bad.mp4", "--from", "-1", *common(weights)], capsys)
    assert code == 2 and "--from" in err


# ---------------------------------------------------------------- estimates
@pytest.fixture(scope="module")
def age_model(tmp_path_factory) -> Path:
    return genderage_standin(tmp_path_factory.mktemp("ga") / "genderage.onnx", age=50.0, male=False)  # 0.5: exact


def test_estimate_command(tmp_path, crop, age_model, capsys):
    code, out, err = cli(["estimate", crop, "--aligned", "--age-model", age_model, "--json", "--offline"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert len(rows) == 1
    assert rows[0]["age"] == 50.0 and rows[0]["gender"] == "female" and rows[0]["box"] is None
    assert rows[0]["gender_probability"] == pytest.approx(np.exp(1) / (1 + np.exp(1)), abs=1e-3)
    code, out, err = cli(["estimate", crop, "--aligned", "--age-model", age_model], capsys)
    assert code == 0 and "~50 years, female (p = 0.73)" in out


def test_estimate_without_a_classifier_is_a_clear_error(tmp_path, crop, capsys):
    code, _, err = cli(["estimate", crop, "--aligned", "--offline"], capsys)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_estimated_age_captions_the_input_and_drives_relative_ages(tmp_path, crop, weights, age_model, capsys):
    from agetool.images import caption

    tiles = tmp_path / "tiles"
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", "--tiles", tiles, "--ages", "+4.5,54.5",
                        "--age-model", age_model, *common(weights)], capsys)
    assert code == 0, err
    assert "crop.png face 0: ~50 years, female" in err
    got = tiles / "crop"
    assert np.array_equal(tile(got, "face0_+4.5.png"), tile(got, "face0_54.5.png"))  # 50 + 4.5
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    aligned = tile(got, "face0_input.png")
    assert np.array_equal(grid[:, :256], caption(aligned, "input, ~50"))
    assert not np.array_equal(grid[:, :256], caption(aligned, "input"))
    # no estimate at hand: a relative age is a clear error, not a guess
    code, _, err = cli(["age", crop, "--out", tmp_path / "h.png", "--ages", "+20", "--offline", *common(weights)],
                       capsys)
    assert code == 1 and "genderage (age and gender classifier, or --age-model FILE; from https://" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "h.png").exists()


def test_one_year_and_one_step_are_singular():
    from agetool.ages import age_caption, years_text
    from agetool.cli.console import count_of

    assert age_caption(1.0) == "1 year" and age_caption(4.5) == "4.5 years" and age_caption(34) == "34 years"
    assert years_text(1.04) == "1 year" and years_text(0.6) == "1 year" and years_text(2) == "2 years"
    assert count_of(1, "step") == "1 step" and count_of(3, "step") == "3 steps"


def test_captions_leave_a_64_px_tile_mostly_visible():
    import numpy as np

    from agetool.images import caption

    tile = np.full((64, 64, 3), 200, np.uint8)
    covered = (caption(tile, "30-39") != tile).any(axis=(1, 2)).sum()  # rows the band darkens
    assert 0 < covered < 64 // 5  # the band was 18 rows, more than a quarter
    big = np.full((256, 256, 3), 200, np.uint8)
    assert (caption(big, "30-39") != big).any(axis=(1, 2)).sum() == 26  # 256 px tiles as before
