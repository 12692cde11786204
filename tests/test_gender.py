"""Automatic male / female choice: input preparation and output reading, checked with a tiny ONNX model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agetool.errors import ModelChoiceError
from agetool.face.detect import DetectedFace
from agetool.face.gender import GenderClassifier, face_box, input_normalization
from agetool.loading import Loading
from agetool.pipeline import AgingPipeline
from agetool.results import Face
from tests.helpers import cli

onnx = pytest.importorskip("onnx")


def tiny_model(path: Path, first_nodes: tuple[str, str] = ("ReduceMean_0", "MatMul_1")) -> Path:
    """[1, 3, 96, 96] -> [1, 3]: (mean red, mean green, 0.3) of the normalized input."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], np.float32), "w")
    b = numpy_helper.from_array(np.array([0, 0, 0.3], np.float32), "b")
    nodes = [
        helper.make_node("ReduceMean", ["data"], ["pooled"], axes=[2, 3], keepdims=0, name=first_nodes[0]),
        helper.make_node("MatMul", ["pooled", "w"], ["mm"], name=first_nodes[1]),
        helper.make_node("Add", ["mm", "b"], ["fc1"], name="Add_2"),
    ]
    graph = helper.make_graph(nodes, "genderage-test",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 96, 96])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> GenderClassifier:
    return GenderClassifier.load(tiny_model(tmp_path_factory.mktemp("onnx") / "genderage.onnx"))


@pytest.fixture(scope="module")
def landmarks(reference_dir) -> np.ndarray:
    return np.asarray(json.loads((reference_dir / "align_case0_landmarks.json").read_text())["landmarks"], np.float32)


def test_normalization_follows_the_graph(tmp_path):
    assert input_normalization(tiny_model(tmp_path / "a.onnx")) == (127.5, 128.0)
    assert input_normalization(tiny_model(tmp_path / "b.onnx", ("Sub_0", "Mul_1"))) == (0.0, 1.0)


def test_input_is_rgb_and_normalized(classifier):
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[...] = (255, 0, 128)
    blob = classifier.prepare(photo, (100, 100, 180, 160))
    assert blob.shape == (1, 3, 96, 96) and blob.dtype == np.float32
    np.testing.assert_allclose(blob[0, :, 48, 48], [(255 - 127.5) / 128, -127.5 / 128, 0.5 / 128], atol=1e-6)


def test_crop_is_one_and_a_half_boxes_around_the_centre(classifier):
    photo = np.zeros((300, 400, 3), np.uint8)
    box = (100, 100, 180, 160)  # 80 x 60: the crop is 120 px wide, centred on (140, 130)
    photo[128:133, 138:143] = 255  # the centre
    photo[128:133, 168:173] = 255  # 30 px right of it
    photo[40:70, :] = 255  # outside the crop (above 130 - 60 = 70)
    blob = classifier.prepare(photo, box)[0, 0]
    row = blob[48]
    bright = np.nonzero(row > 0)[0]
    assert {47, 48}.issubset(set(bright)) and {71, 72}.issubset(set(bright))  # 48 + 30 * 96 / 120 = 72
    assert (blob[:2] < 0).all()


def _two_tone(shape, box, inside, outside, grow: float = 1.2) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * grow / 2
    img = np.empty(shape, np.uint8)
    img[...] = outside
    img[int(cy - half):int(cy + half), int(cx - half):int(cx + half)] = inside
    return img


@pytest.mark.parametrize("inside,expected", [((0, 255, 0), "male"), ((255, 0, 0), "female")])
def test_predict_reads_the_gender_scores(classifier, landmarks, inside, expected):
    outside = (255, 0, 0) if expected == "male" else (0, 255, 0)
    photo = _two_tone((512, 512, 3), face_box(landmarks), inside, outside)
    face = Face(0, np.zeros((256, 256, 3), np.uint8), np.zeros((256, 256, 3), np.uint8),
                    detection=DetectedFace(1.0, (0, 0, 1, 1), landmarks))
    gender, p = classifier.predict(photo, face)
    assert gender == expected
    logits = classifier.scores(classifier.prepare(photo, face_box(landmarks)))[:2]
    assert p == pytest.approx(np.exp(logits).max() / np.exp(logits).sum())
    assert 0.5 < p < 1


def test_predict_on_an_aligned_crop(classifier):
    crop = _two_tone((256, 256, 3), (0.235 * 256, 0.22 * 256, 0.77 * 256, 0.91 * 256), (0, 255, 0), (255, 0, 0))
    face = Face(0, crop, crop)
    assert classifier.predict(crop, face)[0] == "male"


def test_pipeline_reports_the_choice(classifier, landmarks):
    messages: list[str] = []
    pipeline = AgingPipeline.from_pretrained(device="cpu", report=messages.append)
    image = _two_tone((512, 512, 3), face_box(landmarks), (255, 0, 0), (0, 255, 0))
    face = Face(0, image[:256, :256], image[:256, :256], detection=DetectedFace(1.0, (0, 0, 1, 1), landmarks))
    pipeline.models._loaded["classifier"] = classifier
    est = pipeline.core.estimate(image, face, "auto")  # the render core estimates and chooses
    assert est.gender == "female" and 0.5 < est.gender_probability <= 1 and est.age >= 0
    assert pipeline.core.decide("me.jpg face 0", est) == "female"
    assert messages and messages[-1].startswith("me.jpg face 0: ~") and "female model" in messages[-1]


def test_offline_without_the_classifier_asks_for_model(tmp_path, capsys):
    with pytest.raises(ModelChoiceError) as e:
        GenderClassifier.load(loading=Loading(offline=True))
    assert "model='male'" in str(e.value)
    crop = tmp_path / "crop.png"
    Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(crop)
    code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--offline", "--out", tmp_path / "g.png",
                        "--device", "cpu"], capsys)
    assert code == 1
    # every file the run needs, in one line, each with the option that takes a file instead
    assert "genderage (age and gender classifier, or --age-model FILE; from https://" in err and "Traceback" not in err
    assert "lats-male (generator, or --weights FILE; from https://" in err and "lats-female" in err
    assert len(err.strip().splitlines()) == 1


def test_unreadable_model_is_a_model_choice_error(tmp_path):
    bad = tmp_path / "genderage.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelChoiceError):
        GenderClassifier.load(bad)
