"""The Python API: inputs, results, equality with the commands, threads, errors, the README example."""

from __future__ import annotations

import json
import re
import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import agetool
from agetool.errors import CheckpointError, UsageError
from tests.helpers import ROOT, FakeClock, cli, face_like

EXAMPLE = ROOT / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def pipe(weights):
    return agetool.AgingPipeline.from_pretrained(model=weights, device="cpu")


def test_public_names():
    """Every name of ``agetool.__all__`` loads and is what it says; an unknown name is an AttributeError."""
    import inspect

    loaded = {name: getattr(agetool, name) for name in agetool.__all__}
    assert inspect.isclass(loaded["AgingPipeline"]) and callable(loaded["AgingPipeline"].from_pretrained)
    assert inspect.ismodule(loaded["errors"]) and issubclass(loaded["AgetoolError"], Exception)
    assert callable(loaded["evaluate"]) and callable(loaded["parse_ages"]) and len(loaded["AGE_CLASSES"]) == 6
    assert set(agetool.__all__) <= set(dir(agetool))
    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        agetool.Pipeline  # noqa: B018
    assert "Example" in __import__("agetool.pipeline").pipeline.__doc__ and "Args:" in agetool.AgingPipeline.from_pretrained.__doc__


@pytest.mark.parametrize("kind", ["path", "str", "array", "pil", "pil-rgba", "gray"])
def test_every_image_form_gives_the_same_result(pipe, tmp_path, kind):
    img = face_like(seed=2)
    path = tmp_path / "crop.png"
    Image.fromarray(img).save(path)
    given = {"path": path, "str": str(path), "array": img, "pil": Image.fromarray(img),
             "pil-rgba": Image.fromarray(img).convert("RGBA"), "gray": None}[kind]
    if kind == "gray":
        gray = img[..., 0]
        given, img = gray, np.repeat(gray[..., None], 3, axis=2)
    result = pipe(given, aligned=True, mask=False)
    expected = pipe(img, aligned=True, mask=False)
    assert isinstance(result, agetool.AgingResult)
    face = result.faces[0]
    assert face.images.shape == (6, 256, 256, 3) and face.images.dtype == np.uint8
    assert face.labels == list(agetool.AGE_CLASSES) and face.model == pipe.model.name == "tiny.safetensors"
    assert face.box is None and face.landmarks is None and face.pasted is None
    assert np.array_equal(face.aligned, img)
    assert np.array_equal(face.images, expected.faces[0].images)


def test_exif_orientation_is_applied(pipe, tmp_path):
    img = face_like(seed=5)
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(np.rot90(img, 1).copy()).save(path, exif=exif, quality=100)
    result = pipe(path, aligned=True, mask=False)
    assert np.abs(result.faces[0].aligned.astype(int) - img).mean() < 3


@pytest.mark.parametrize("bad, needle", [
    (np.zeros((64, 64, 3), np.float32), "uint8"), (np.zeros((64, 64, 2), np.uint8), "shape"),
    (123, "int"), (np.zeros((4, 4, 3), np.uint8), "too small")])
def test_bad_images_name_the_argument(pipe, bad, needle):
    with pytest.raises(agetool.errors.AgetoolError) as e:
        pipe(bad, aligned=True)
    assert str(e.value).startswith("image") and needle in str(e.value)
    assert "--" not in str(e.value)


@pytest.mark.parametrize("kwargs, needle", [
    ({"noise": -1.0}, "noise=-1.0"), ({"noise": float("nan")}, "noise=nan"), ({"seed": 2**64}, "seed="),
    ({"faces": "some"}, "faces='some'"), ({"ages": "ten"}, "ages='ten'"), ({"paste_back": True}, "paste_back")])
def test_call_errors_name_the_argument(pipe, kwargs, needle):
    with pytest.raises(UsageError) as e:
        pipe(face_like(), aligned=True, **kwargs)
    assert needle in str(e.value) and "--" not in str(e.value)


def test_from_pretrained_validates(weights, tmp_path):
    with pytest.raises(UsageError, match="model='femal'"):
        agetool.AgingPipeline.from_pretrained(model="femal")
    with pytest.raises(UsageError, match="landmarks='x'"):
        agetool.AgingPipeline.from_pretrained(landmarks="x")
    with pytest.raises(UsageError, match="dtype='float64'"):
        agetool.AgingPipeline.from_pretrained(model=weights, dtype="float64", device="cpu")
    with pytest.raises(CheckpointError, match="model='.*nothing.pth': no such file"):
        agetool.AgingPipeline.from_pretrained(model=tmp_path / "nothing.pth")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="device='cuda'"):
            agetool.AgingPipeline.from_pretrained(device="cuda")


def test_grid_is_what_the_command_writes(pipe, weights, tmp_path, capsys):
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like(seed=7)).save(crop)
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", "--ages", "3,30-39", "--seed", "4", "--aligned",
                        "--no-mask", "--weights", weights, "--device", "cpu"], capsys)
    assert code == 0, err
    result = pipe(crop, ages="3,30-39", seed=4, aligned=True, mask=False)
    assert np.array_equal(np.asarray(result.grid()), np.asarray(Image.open(tmp_path / "g.png")))
    assert result.grid(labels=False).size == (3 * 256, 256)


def test_a_generator_file_is_the_model_and_its_name_says_so(pipe, weights, tmp_path, capsys):
    """model=PATH (str or Path) renders with that file; results, --json and the command's line name the file."""
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like(seed=3)).save(crop)
    by_str = agetool.AgingPipeline.from_pretrained(model=str(weights), device="cpu")
    assert pipe.model == by_str.model == weights and by_str.core.model == "tiny.safetensors"
    got, want = (p(crop, ages=[30], aligned=True, mask=False) for p in (by_str, pipe))
    assert got.faces[0].model == "tiny.safetensors" and got.scores()[0]["model"] == "tiny.safetensors"
    assert np.array_equal(got.faces[0].images, want.faces[0].images)
    code, out, err = cli(["age", crop, "--out", tmp_path / "g.png", "--ages", "30", "--aligned", "--no-mask",
                          "--weights", weights, "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    assert "(1 face, tiny.safetensors)" in err and "custom" not in err
    assert json.loads(out)["model"] == "tiny.safetensors"


def test_weights_argument_is_deprecated_for_model_path(pipe, weights, tmp_path):
    crop = face_like(seed=5)
    with pytest.warns(DeprecationWarning, match="model=PATH") as warned:
        old = agetool.AgingPipeline.from_pretrained(weights=weights, device="cpu")
    assert warned[0].filename == __file__  # the warning points at the caller's line
    assert old.model == pipe.model == weights
    got, want = (p(crop, aligned=True, mask=False) for p in (old, pipe))
    assert got.faces[0].model == "tiny.safetensors" and np.array_equal(got.faces[0].images, want.faces[0].images)
    with pytest.warns(DeprecationWarning), pytest.raises(CheckpointError, match="weights='.*none.pth': no such file"):
        agetool.AgingPipeline.from_pretrained(weights=tmp_path / "none.pth")
    with pytest.warns(DeprecationWarning), pytest.raises(UsageError, match="model or weights, not both"):
        agetool.AgingPipeline.from_pretrained(model=weights, weights=weights)


@pytest.mark.parametrize("model, error, text", [
    ("custom", UsageError, "model='custom': expected auto, male, female or the path of a generator file"),
    (3, UsageError, "model=3: expected auto"),
    ("", UsageError, "model='': expected auto"),
    ("nowhere/gen.safetensors", CheckpointError, "model='nowhere/gen.safetensors': no such file"),
])
def test_a_bad_model_is_a_typed_error_naming_model(model, error, text):
    from agetool.models import Models
    from agetool.pipeline import AgingPipeline

    for make in (lambda: AgingPipeline.from_pretrained(model=model), lambda: AgingPipeline(Models(), model=model)):
        with pytest.raises(error) as caught:
            make()
        assert str(caught.value).startswith(text)


def test_released_weights_api_tiles_equal_command_tiles(reference_dir, tmp_path, capsys):
    """from agetool import AgingPipeline with the released-layout weights gives `agetool age --tiles`."""
    from agetool.nn.generator import Generator
    from tests.seeding import seeded_state_dict

    crop = reference_dir / "align_case0_out256.png"
    released = tmp_path / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), released)
    tiles = tmp_path / "tiles"
    code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--weights", released, "--tiles", tiles,
                        "--out", tmp_path / "g.png", "--device", "cpu"], capsys)
    assert code == 0, err
    from agetool import AgingPipeline

    result = AgingPipeline.from_pretrained(model=released, device="cpu")(crop, aligned=True, mask=False)
    for label, image in zip(result.faces[0].labels, result.faces[0].images):
        assert np.array_equal(image, np.asarray(Image.open(tiles / crop.stem / f"face0_{label}.png"))), label


def test_encode_once_render_any_age(pipe):
    img = face_like(seed=8)
    enc = pipe.encode(img, aligned=True, mask=False)
    assert isinstance(enc, agetool.EncodedPhoto) and len(enc.faces) == 1
    six = pipe.render(enc.faces[0])
    one = pipe.render(enc.faces[0], ages=["30-39"])
    assert six.shape == (6, 256, 256, 3) and np.array_equal(one[0], six[4])
    assert np.array_equal(six, pipe(img, aligned=True, mask=False).faces[0].images)
    assert not np.array_equal(pipe.render(enc.faces[0], ages=[40], seed=1), pipe.render(enc.faces[0], ages=[40]))


def test_frames_are_lazy_and_follow_the_traversal(pipe):
    img = face_like(seed=9)
    frames = pipe.frames(img, steps=4, aligned=True, mask=False)
    assert iter(frames) is frames  # a generator: nothing decoded until asked
    first = next(frames)
    rest = list(frames)
    assert first.shape == (256, 256, 3) and len(rest) == 5 * 4
    classes = pipe(img, aligned=True, mask=False).faces[0].images
    assert np.array_equal(first, classes[0]) and np.array_equal(rest[-1], classes[5])
    assert np.array_equal(rest[7], classes[2])  # frame 8 = class 2 anchor


def test_video_writes_an_mp4(pipe, tmp_path):
    from agetool.video import read_video_frames

    out = pipe.video(face_like(), tmp_path / "v.mp4", fps=10, steps=2, aligned=True, mask=False,
                     frames_dir=tmp_path / "frames")
    assert out == tmp_path / "v.mp4" and read_video_frames(out) == (11, (256, 256))
    assert len(list((tmp_path / "frames").glob("frame_*.png"))) == 11
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_threads_take_turns_and_agree(pipe):
    images = [face_like(seed=s) for s in range(4)]
    expected = [pipe(img, aligned=True, mask=False, seed=s).faces[0].images for s, img in enumerate(images)]
    got: dict[int, np.ndarray] = {}

    def work(s: int) -> None:
        got[s] = pipe(images[s], aligned=True, mask=False, seed=s).faces[0].images

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(np.array_equal(got[s], expected[s]) for s in range(4))


def test_paste_back_on_a_photo(seeded_parser_file, weights):
    pipe = agetool.AgingPipeline.from_pretrained(model=weights, parser_weights=seeded_parser_file,
                                                 landmarks="dlib", device="cpu", offline=True)
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    result = pipe(EXAMPLE, ages=[5, 60], paste_back=True, mask=False)
    face = result.faces[0]
    assert face.box is not None and face.landmarks.shape == (68, 2) and face.crop_landmarks.shape == (68, 2)
    assert len(result.pasted) == 2 and result.pasted[0].shape == photo.shape
    assert len(face.pasted) == 2 and np.array_equal(face.pasted[1], result.pasted[1])  # one face: the same photo
    changed = np.abs(result.pasted[0].astype(int) - photo).sum(axis=2) > 0
    x0, y0, x1, y1 = face.box
    assert changed.any() and not changed[:, : int(x0) // 2].any()  # far from the face nothing moves
    assert result.grid().size[1] <= 512


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_example_runs_as_written(tmp_path, monkeypatch, seeded_parser_file):
    """The README's example, with seeded weights imported into a fresh cache as the registry's models."""
    from agetool import weights as registry
    from agetool.nn.generator import Generator
    from tests.seeding import seeded_state_dict
    from agetool.video import read_video_frames

    text = registry.registry_path().read_text()
    start = text.index("[models.deeplab-parser]")
    end = text.index("\n[", start + 1)
    table = re.sub(r"\n(size|md5|sha256) = [^\n]*", "", text[start:end])  # trusted on first use
    (tmp_path / "registry.toml").write_text(text[:start] + table + text[end:])
    monkeypatch.setenv("AGETOOL_REGISTRY", str(tmp_path / "registry.toml"))
    monkeypatch.setenv("AGETOOL_CACHE", str(tmp_path / "cache"))
    generator = tmp_path / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), generator)
    registry.import_file(generator, "lats-female")
    registry.import_file(seeded_parser_file, "deeplab-parser")

    work = tmp_path / "work"
    (work / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE, work / "examples" / "astronaut.png")
    monkeypatch.chdir(work)
    exec(compile(_readme_example(), "README.md", "exec"), {})
    assert Image.open(work / "astronaut_grid.png").size == (4 * 256, 256)
    assert read_video_frames(work / "astronaut.mp4") == (26, (256, 256))


def test_each_stage_is_timed_once():
    """A model loading inside another stage (the parser on first use inside "parse") is not counted twice."""
    from agetool.models import Timer

    clock = FakeClock()
    timer = Timer(clock=clock)
    with timer("parse"):
        clock.sleep(0.02)
        with timer("load parser"):
            clock.sleep(0.1)
        clock.sleep(0.05)
        timer.add("landmarks", 0.05)  # timed elsewhere (another thread's clock), counted here
        clock.sleep(0.01)
    assert timer.seconds["load parser"] == pytest.approx(0.1)
    assert timer.seconds["parse"] == pytest.approx(0.03)  # the nested 0.15 s are not in it
    assert timer.seconds["landmarks"] == pytest.approx(0.05)
    assert sum(timer.seconds.values()) == pytest.approx(0.18)  # the 0.18 s that passed, each counted once


def test_profile_table_counts_the_parser_load_apart(tmp_path, seeded_parser_file, weights, capsys):
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like()).save(crop)
    code, _, err = cli(["age", crop, "--aligned", "--weights", weights, "--parser-weights", seeded_parser_file,
                        "--device", "cpu", "--out", tmp_path / "g.png", "--profile"], capsys)
    assert code == 0, err
    rows = {k: (float(v), int(share)) for k, v, share in
            re.findall(r"^\s*([a-z ()]+?)\s+\S\s+(\d+\.\d+)\s+\S\s+(\d+)%\s*$", err, flags=re.M)}
    loads = {k.replace(" (background)", "") for k in rows}
    assert {"load parser", "parse", "load generator", "encode", "decode", "total"} <= loads
    mine = {k: v for k, v in rows.items() if k != "total" and not k.endswith("(background)")}
    assert abs(sum(v for v, _ in mine.values()) - rows["total"][0]) < 0.01  # the caller's stages, each once
    assert rows["total"][1] == 100 and abs(sum(s for _, s in mine.values()) - 100) <= len(mine)  # shares, rounded
