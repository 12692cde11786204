"""Evaluation building blocks: ArcFace input preparation, the measurements, reports, calibration."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from agetool.errors import CheckpointError, InputError
from agetool.eval import calibrate
from agetool.eval.measure import Measurer
from agetool.eval.report import build, face_record, markdown, summarize, write
from agetool.face.gender import GenderClassifier
from agetool.face.identity import (IdentityEmbedder, arcface_template, aligned_five_points, arcface_crop,
                                   five_points, similarity_transform)
from tests.helpers import arcface_standin, genderage_standin, onnx_linear_model

ARCFACE_TEMPLATE = arcface_template()[0]  # the registry entry's five points in a 112 px crop

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {"age": genderage_standin(d / "genderage.onnx", age=30.0),
            "colour": arcface_standin(d / "colour.onnx", constant=False),
            "constant": arcface_standin(d / "constant.onnx", constant=True)}


def test_similarity_transform_is_umeyama():
    skimage_transform = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(0)
    src = ARCFACE_TEMPLATE * 2.3 + rng.normal(0, 3, (5, 2)) + (40, 70)
    expected = skimage_transform.SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expected.estimate(src, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(similarity_transform(src, ARCFACE_TEMPLATE), expected.params[:2], atol=1e-9)
    # an exact similarity is recovered exactly
    angle, scale = 0.3, 1.7
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = ARCFACE_TEMPLATE @ rot.T + (5, -8)
    m = similarity_transform(moved, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(moved @ m[:, :2].T + m[:, 2], ARCFACE_TEMPLATE, atol=1e-9)


def test_five_points_from_68_landmarks():
    lm = np.zeros((68, 2))
    lm[36:42] = (10, 20)
    lm[42:48] = (30, 21)
    lm[36] = (7, 20)  # the eye centre is the mean of its six points
    lm[30], lm[48], lm[54] = (20, 30), (12, 40), (28, 41)
    np.testing.assert_allclose(five_points(lm), [[9.5, 20], [30, 21], [20, 30], [12, 40], [28, 41]])


def test_arcface_crop_puts_the_points_on_the_template():
    image = np.zeros((256, 256, 3), np.uint8)
    points = np.round(ARCFACE_TEMPLATE * 2 + (10, 20))  # a face twice the template's size
    for x, y in points.astype(int):
        image[y - 1:y + 2, x - 1:x + 2] = 255
    crop = arcface_crop(image, points)
    assert crop.shape == (112, 112, 3)
    for x, y in np.round(ARCFACE_TEMPLATE).astype(int):
        assert crop[y - 1:y + 2, x - 1:x + 2].max() > 100, (x, y)
    assert crop[5:25, 5:25].max() == 0


@pytest.mark.parametrize("first,mean,std", [(("ReduceMean_0", "MatMul_1"), 127.5, 127.5), (("Sub_0", "Mul_1"), 0.0, 1.0)])
def test_embedder_normalization_follows_the_graph(tmp_path, first, mean, std):
    w = np.eye(3, 512)
    path = onnx_linear_model(tmp_path / "m.onnx", 112, w, np.zeros(512), first_nodes=first)
    emb = IdentityEmbedder.open("auraface", path)
    assert (emb.mean, emb.std, emb.input_size, emb.batch) == (mean, std, 112, 1)
    colour = np.array([200, 40, 100])
    image = np.empty((256, 256, 3), np.uint8)
    image[...] = colour
    out = emb.embed([image], [aligned_five_points(256)])
    expected = (colour - mean) / std
    np.testing.assert_allclose(out[0, :3], expected / np.linalg.norm(expected), atol=1e-5)
    assert out.shape == (1, 512) and np.linalg.norm(out[0]) == pytest.approx(1.0)


def test_missing_or_broken_model_files_name_the_argument(tmp_path):
    with pytest.raises(InputError, match="identity_model="):
        IdentityEmbedder.open("auraface", tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError, match="age_model="):
        GenderClassifier.open(bad, argument="age_model")


def _uniform(colour) -> np.ndarray:
    image = np.empty((256, 256, 3), np.uint8)
    image[...] = colour
    return image


def test_measure_reads_ages_and_identities(models):
    measurer = Measurer.load(age_model=models["age"], identity_model=models["colour"])
    crop = _uniform((200, 60, 60))
    outputs = [_uniform((200, 60, 60)), _uniform((60, 200, 60)), _uniform((130, 130, 130))]
    m = measurer.measure(crop, outputs)
    assert m.input_age == pytest.approx(30.0, abs=1e-4)
    assert m.ages == pytest.approx([30.0] * 3, abs=1e-4)

    def vec(c):
        v = np.concatenate([(np.array(c) - 127.5) / 127.5, [1.0]])
        return v / np.linalg.norm(v)

    expected = [float(vec((200, 60, 60)) @ vec(c)) for c in ((200, 60, 60), (60, 200, 60), (130, 130, 130))]
    assert m.input_identity == pytest.approx(1.0, abs=1e-6)
    assert m.identities == pytest.approx(expected, abs=1e-5)
    assert m.identities[1] < 0.5 < m.identities[2] < 1.0
    assert measurer.models["age"]["name"] == "local" and measurer.models["age"]["file"] == "genderage.onnx"
    assert len(measurer.models["identity"]["sha256"]) == 64


def test_measure_uses_the_face_landmarks(models):
    """With landmarks the age box and the five points follow the face, not the default crop place."""
    measurer = Measurer.load(age_model=models["age"], identity_model=models["colour"])
    crop = _uniform((0, 0, 0))
    crop[:128, :128] = (250, 10, 10)  # the face sits in the top-left quarter
    lm = np.zeros((68, 2))
    lm[:, 0] = np.linspace(20, 100, 68)
    lm[:, 1] = np.linspace(20, 100, 68)
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = (45, 50), (80, 50), (62, 65), (48, 85), (78, 85)
    red = measurer.measure(crop, [_uniform((250, 10, 10))], landmarks=lm)
    default = measurer.measure(crop, [_uniform((250, 10, 10))])
    assert red.identities[0] == pytest.approx(1.0, abs=1e-4)
    assert default.identities[0] < 0.9


def _records():
    class M:  # FaceMeasures-like
        def __init__(self, ages, ids, input_age=25.0):
            self.input_age, self.input_identity, self.ages, self.identities = input_age, 1.0, ages, ids

    targets = [("0-2", 1.0), ("30-39", 34.5)]
    return [face_record("a.png", 0, "g", "male", targets, M([5.0, 40.0], [0.5, 0.9], 20.0)),
            face_record("b.png", 0, "g", "female", targets, M([1.0, 30.5], [0.7, 0.8], 30.0))]


def test_summary_numbers():
    rows = summarize(_records())
    assert [r["target"] for r in rows] == ["0-2", "30-39"]
    young, old = rows
    assert young == {"generator": "g", "target": "0-2", "target_age": 1.0, "n": 2, "estimated_age_mean": 3.0,
                     "age_error_mean": 2.0, "identity_mean": pytest.approx(0.6), "identity_min": 0.5}
    assert old["estimated_age_mean"] == pytest.approx(35.25) and old["age_error_mean"] == pytest.approx(4.75)
    assert old["identity_mean"] == pytest.approx(0.85) and old["identity_min"] == pytest.approx(0.8)


def test_report_files(tmp_path):
    report = build(_records(), models={"age": {"name": "genderage", "file": "genderage.onnx", "sha256": "ab" * 32}},
                   settings={"seed": 0})
    assert report["inputs"] == {"n": 2, "estimated_age_mean": 25.0, "identity_mean": 1.0, "identity_min": 1.0}
    paths = write(report, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["report.json", "report.md", "report.png"]
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 0-2 | 1.0 | 2 | 3.0 | 2.0 | 0.600 | 0.500 |" in md
    assert "| 30-39 | 34.5 | 2 | 35.2 | 4.8 | 0.850 | 0.800 |" in md or "| 30-39 | 34.5 | 2 | 35.3 | 4.8 |" in md
    assert "| age | genderage | genderage.onnx | abababababababab |" in md
    with Image.open(tmp_path / "out" / "report.png") as im:
        im.verify()
    with Image.open(tmp_path / "out" / "report.png") as im:
        assert im.format == "PNG" and im.size == (1100, 440)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_markdown_escapes_table_cells():
    records = _records()
    records[0]["generator"] = "a|b"
    records[1]["generator"] = "c"
    md = markdown(build(records, models={}, settings={}))
    assert "| a\\|b | 0-2 |" in md


def test_calibration_recovers_known_anchors():
    truth = np.array([2.0, 6.0, 11.0, 20.0, 38.0, 61.0])
    t = np.linspace(0, 5, 26)
    rng = np.random.default_rng(0)
    est = np.concatenate([calibrate.ages_at(t, truth) + rng.normal(0, 0.3, t.size) for _ in range(4)])
    fitted = calibrate.fit_anchors(np.tile(t, 4), est, 6)
    np.testing.assert_allclose(fitted, truth, atol=0.5)


def test_calibration_is_monotone_and_reports_the_gain():
    t = np.linspace(0, 5, 11)
    est = np.array([10, 9, 8, 9, 10, 12, 15, 30, 40, 50, 55], float)  # younger classes look alike
    labels = ["0-2", "3-6", "7-9", "15-19", "30-39", "50-69"]
    defaults = [1.0, 4.5, 8.0, 17.0, 34.5, 59.5]
    cal = calibrate.calibration(t, est, labels, defaults)
    anchors = np.array(list(cal["anchors"].values()))
    assert list(cal["anchors"]) == labels
    assert (np.diff(anchors) >= calibrate.MIN_GAP - 1e-6).all() and anchors[0] >= 0
    assert cal["error_after"] < cal["error_before"]
    assert cal["error_before"] == pytest.approx(np.abs(calibrate.ages_at(t, defaults) - est).mean())
    with pytest.raises(ValueError):
        calibrate.fit_anchors([0.0, 0.5], [1.0, 2.0], 6)  # frames must cover every interval


def test_identity_models_in_the_registry():
    from agetool.weights import registry

    models = registry.load_registry(registry.DEFAULT_REGISTRY)
    aura, w600k = models["auraface"], models["arcface-w600k"]
    assert aura.kind == w600k.kind == "recognition"
    assert aura.license == "Apache-2.0" and not aura.non_commercial
    assert w600k.non_commercial
    assert (aura.sources[0].hub, aura.sources[0].filename, aura.filename) == ("fal/AuraFace-v1", "glintr100.onnx",
                                                                              "glintr100.onnx")
    assert (w600k.sources[0].hub, w600k.sources[0].filename) == ("public-data/insightface",
                                                                 "models/buffalo_l/w600k_r50.onnx")
    from agetool.eval.measure import IDENTITY_MODELS

    assert IDENTITY_MODELS[0] == "auraface" and set(IDENTITY_MODELS) <= set(models)
