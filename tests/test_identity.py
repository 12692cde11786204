"""Identity with the real bundled dlib models on real photos (see tests/fixtures/PROVENANCE.md):
same person across a mirror image and a rescaled copy, different people apart, faces chosen by a
reference photo in a group photo, `agetool compare`, and the offline identity of `agetool eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("dlib")

from agetool.errors import NoFaceError, NoMatchError, UsageError  # noqa: E402
from agetool.identity import DLIB_THRESHOLD, Embedding, FaceIdentity, FaceReference  # noqa: E402
from tests.helpers import ROOT, arcface_standin, cli  # noqa: E402


def _astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # Eileen Collins, NASA photo, public domain


def _hopper() -> np.ndarray:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # US Navy photo, public domain
    return np.asarray(Image.open(path).convert("RGB"))


def _resized(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    return np.asarray(Image.fromarray(image).resize((round(w * scale), round(h * scale)), Image.LANCZOS))


@pytest.fixture(scope="module")
def dlib_identity() -> FaceIdentity:
    return FaceIdentity.from_pretrained("dlib")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """A group photo (Grace Hopper left, Eileen Collins right, scaled to one height) and reference
    photos of each that are other images than the ones in the group: mirrored and rescaled."""
    d = tmp_path_factory.mktemp("people")
    ast, hop = _astronaut(), _hopper()
    hop_small = _resized(hop, 400 / hop.shape[0])
    ast_small = _resized(ast, 400 / ast.shape[0])
    group = np.zeros((400, hop_small.shape[1] + ast_small.shape[1] + 40, 3), np.uint8)
    group[:, :hop_small.shape[1]] = hop_small
    group[:, hop_small.shape[1] + 40:] = ast_small
    paths = {"group": d / "group.png", "collins": d / "collins_ref.png", "hopper": d / "hopper_ref.jpg"}
    Image.fromarray(group).save(paths["group"])
    Image.fromarray(_resized(ast[:, ::-1], 0.7)).save(paths["collins"])
    Image.fromarray(_resized(hop[:, ::-1], 1.3)).save(paths["hopper"], quality=90)
    return paths


def test_mirror_and_rescaled_copy_are_the_same_person_and_two_people_are_not(dlib_identity):
    ast = _astronaut()
    [face] = dlib_identity.embed(ast)
    assert isinstance(face, Embedding) and face.model == "dlib" and face.metric == "distance"
    assert face.vector.shape == (128,) and face.box[0] < 256 < face.box[2]
    [mirror] = dlib_identity.embed(np.ascontiguousarray(ast[:, ::-1]))
    [smaller] = dlib_identity.embed(_resized(ast, 0.55))
    [hopper] = dlib_identity.embed(_hopper())
    for other in (mirror, smaller):
        d = dlib_identity.similarity(face, other)
        assert 0 < d < DLIB_THRESHOLD and dlib_identity.same_person(face, other)
    apart = dlib_identity.similarity(face, hopper)
    assert apart > DLIB_THRESHOLD and not dlib_identity.same_person(face, hopper)
    assert not dlib_identity.same_person(face, mirror, threshold=0.01)  # the threshold is the one applied
    assert dlib_identity.similarity(hopper, face) == pytest.approx(apart)


def test_group_faces_left_to_right_and_one_given_face(dlib_identity, photos):
    group = np.asarray(Image.open(photos["group"]))
    found = dlib_identity.embed(group)
    assert len(found) == 2 and found[0].box[0] < found[1].box[0]
    [collins] = dlib_identity.embed(photos["collins"])
    assert [dlib_identity.same_person(collins, f) for f in found] == [False, True]
    again = dlib_identity.embed(group, face=found[1].box)  # a given face: the same chip, the same vector
    np.testing.assert_allclose(again.vector, found[1].vector, atol=1e-6)
    with pytest.raises(UsageError, match="face"):
        dlib_identity.embed(group, face=(10, 10, 5, 5))
    info = dlib_identity.info()
    assert info["file"] == "dlib_face_recognition_resnet_model_v1.dat" and len(info["sha256"]) == 64
    assert (info["metric"], info["threshold"]) == ("distance", DLIB_THRESHOLD)


def test_faces_by_reference_in_the_api(dlib_identity, photos):
    from agetool import AgingPipeline

    pipe = AgingPipeline.from_pretrained(landmarks="dlib", device="cpu")
    everyone = dlib_identity.embed(photos["group"])  # Hopper left, Collins right
    hopper_ref = dlib_identity.embed(photos["hopper"])[0]
    cases = [(f"ref:{photos['collins']}", 1), (hopper_ref, 0),
             (FaceReference(np.asarray(Image.open(photos["collins"]))), 1)]
    for faces, expected in cases:
        [crop] = pipe.align(photos["group"], faces=faces)
        kept = dlib_identity.embed(crop.image)[0]  # the aligned crop shows the reference person
        assert dlib_identity.same_person(kept, everyone[expected])
        assert not dlib_identity.same_person(kept, everyone[1 - expected])
    with pytest.raises(NoMatchError, match=r"closest distance 0\.\d+") as e:
        pipe.align(photos["group"], faces=FaceReference(hopper_ref, ref_threshold=0.05))
    assert isinstance(e.value, NoFaceError) and "ref_threshold" in str(e.value)
    with pytest.raises(UsageError, match="faces="):
        pipe.align(photos["group"], faces="everyone")


def test_faces_by_reference_on_the_command_line(tmp_path, photos, capsys):
    out = tmp_path / "crops"
    code, _, err = cli(["align", photos["group"], "--out", out, "--landmarks", "dlib",
                        "--faces", f"ref:{photos['hopper']}"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["group_face0.png"]
    crop = np.asarray(Image.open(out / "group_face0.png"))
    ident = FaceIdentity.from_pretrained("dlib")
    assert ident.same_person(ident.embed(crop)[0], ident.embed(photos["hopper"])[0])
    strict = subprocess.run([sys.executable, "-m", "agetool", "align", photos["group"], "--out", tmp_path / "none",
                             "--landmarks", "dlib", "--faces", f"ref:{photos['hopper']}", "--ref-threshold", "0.05"],
                            capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in strict.stderr.splitlines() if ln.startswith("error:")]
    assert strict.returncode == 1 and len(lines) == 1 and "Traceback" not in strict.stderr
    assert "closest distance" in lines[0] and "--ref-threshold" in lines[0]
    assert not (tmp_path / "none").exists()
    code, _, err = cli(["align", photos["group"], "--out", tmp_path / "x", "--ref-threshold", "0.5"], capsys)
    assert code == 2 and "--faces ref:PHOTO" in err
    code, _, err = cli(["align", photos["group"], "--out", tmp_path / "x", "--faces", f"ref:{tmp_path / 'no.png'}"],
                       capsys)
    assert code == 1 and "no such file" in err


def test_compare_command(photos, capsys):
    code, out, err = cli(["compare", photos["collins"], photos["group"], "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["model"], doc["metric"], doc["threshold"]) == ("dlib", "distance", DLIB_THRESHOLD)
    assert [(p["a_face"], p["b_face"], p["same_person"]) for p in doc["pairs"]] == [(0, 0, False), (0, 1, True)]
    assert doc["pairs"][1]["distance"] < DLIB_THRESHOLD < doc["pairs"][0]["distance"]  # named for what it is
    assert all(p["similarity"] == p["distance"] for p in doc["pairs"]) and "similarity" in doc["deprecated"]
    code, out, _ = cli(["compare", photos["hopper"], photos["group"]], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].endswith("same person") and lines[1].endswith("different people")
    blank = photos["group"].parent / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank)
    code, _, err = cli(["compare", blank, photos["group"]], capsys)
    assert code == 1 and "no face found" in err
    for bad in ("-1", "0", "nan"):  # dlib's is a distance: above 0
        code, _, err = cli(["compare", photos["hopper"], photos["group"], "--threshold", bad], capsys)
        assert code == 2 and "--threshold" in err, (bad, err)
    code, out, _ = cli(["compare", photos["hopper"], photos["group"], "--threshold", "2", "--json"], capsys)
    assert code == 0 and all(p["same_person"] for p in json.loads(out)["pairs"])


def test_arcface_type_model_uses_cosine_on_the_five_points(tmp_path):
    """The ONNX path with a stand-in graph whose embedding is the mean colour of the 112 px crop."""
    pytest.importorskip("onnxruntime")
    ident = FaceIdentity.from_pretrained(arcface_standin(tmp_path / "arc.onnx", constant=False))
    assert (ident.metric, ident.threshold) == ("cosine", 0.28) and ident.name == "arc.onnx"
    red = np.zeros((128, 128, 3), np.uint8)
    red[..., 0] = 250
    five = np.array([[45.0, 50], [80, 50], [62, 65], [48, 85], [78, 85]])
    a = ident.embed(red, face=five)
    b = ident.embed(red[::-1].copy(), face=five)
    assert a.metric == "cosine" and ident.similarity(a, b) == pytest.approx(1.0, abs=1e-6)
    assert ident.same_person(a, b) and not ident.same_person(a, b, threshold=1.5)
    assert ident.check_threshold("threshold", 0.5) == 0.5
    for bad in (-0.5, 0, 1, 1.5):  # a cosine: strictly between 0 and 1
        with pytest.raises(UsageError, match="threshold"):
            ident.check_threshold("threshold", bad)
    with pytest.raises(UsageError, match="dlib"):
        FaceIdentity.from_pretrained("dlib").similarity(a, b)


def _eval_kit(tmp_path: Path) -> dict:
    from tests.helpers import genderage_standin, tiny_generator_file

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_resized(_astronaut(), 0.6)).save(photos / "collins.png")
    return {"photos": photos, "gen": tiny_generator_file(tmp_path / "gen.safetensors"),
            "age": genderage_standin(tmp_path / "genderage.onnx", age=30.0)}


def test_eval_measures_identity_offline_with_dlib(tmp_path, capsys):
    """No network, no ONNX identity model: the identity numbers come from dlib's descriptor."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("matplotlib")
    import hashlib

    from agetool.identity import DLIB_RECOGNITION
    from agetool.face.detect import bundled_dlib_predictor

    kit = _eval_kit(tmp_path)
    sha = hashlib.sha256(bundled_dlib_predictor(DLIB_RECOGNITION).read_bytes()).hexdigest()
    args = ["eval", kit["photos"], "--no-mask", "--landmarks", "dlib", "--device", "cpu", "--weights", kit["gen"],
            "--age-model", kit["age"], "--ages", "5,60", "--offline"]
    for extra, out in (([], tmp_path / "auto"), (["--identity-model", "dlib"], tmp_path / "named")):
        code, _, err = cli([*args, "--out", out, *extra], capsys)
        assert code == 0, err
        if not extra:
            assert "dlib" in err and "auraface" in err  # it says which model it fell back to
        report = json.loads((out / "report.json").read_text())
        ident = report["models"]["identity"]
        assert (ident["name"], ident["file"], ident["sha256"]) == ("dlib", DLIB_RECOGNITION, sha)
        assert (ident["metric"], ident["threshold"]) == ("distance", DLIB_THRESHOLD)
        [face] = report["faces"]
        assert face["input"]["identity"] == pytest.approx(0.0, abs=1e-9)  # the input against itself
        ids = [o["identity"] for o in face["outputs"]]
        assert len(ids) == 2 and all(np.isfinite(ids)) and all(v > 0.05 for v in ids)  # tiny untrained generator
        assert [r["identity_max"] for r in report["summary"]] == pytest.approx(ids)
        md = (out / "report.md").read_text()
        assert "Euclidean distance" in md and sha[:16] in md and "identity max" in md


def test_clip_ages_only_the_reference_person(tmp_path, photos, weights):
    """A still clip of the group: with the reference, one tracked face per frame, on the reference's side."""
    import subprocess

    import imageio_ffmpeg

    from agetool import AgingPipeline

    group = Image.open(photos["group"])
    still = tmp_path / "group_small.png"
    group.resize((group.width * 3 // 4 // 2 * 2, 300), Image.LANCZOS).save(still)
    clip = tmp_path / "group.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-loop", "1", "-framerate", "10",
                    "-i", str(still), "-frames:v", "3", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv444p",
                    str(clip)], check=True)
    pipe = AgingPipeline.from_pretrained(model=weights, landmarks="dlib", device="cpu")
    source = np.asarray(Image.open(still).convert("RGB")).astype(np.int16)
    half = source.shape[1] // 2
    for who, side in (("hopper", 0), ("collins", 1)):
        frames = list(pipe.clip_frames(clip, ages=[60], faces=FaceReference(photos[who]), mask=False))
        assert len(frames) == 3 and [f.faces for f in frames] == [1, 1, 1]
        changed = np.abs(frames[-1].image.astype(np.int16) - source).sum(axis=2) > 40
        left, right = changed[:, :half].sum(), changed[:, half:].sum()
        assert (left, right)[side] > 20 * max(1, (left, right)[1 - side])  # only that person's face was aged
    assert [f.faces for f in pipe.clip_frames(clip, ages=[60], mask=False)] == [2, 2, 2]


def test_compare_offline_names_its_own_option_for_a_file(tmp_path):
    """compare's --model takes a file as well: offline without the file, that is the option named."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    photo = ROOT / "examples" / "astronaut.png"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "agetool", "compare", photo, photo, "--model", "auraface", "--offline"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "pass it as --model FILE" in done.stderr and "--identity-model" not in done.stderr
