"""End to end on a real photo, offline: dlib landmarks -> alignment -> seeded parser -> mask -> generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agetool.ages import AGE_CLASSES
from agetool.errors import NoFaceError
from agetool.face import mask as mask_module
from agetool.pipeline import AgingPipeline
from tests.helpers import cli, tiny_generator_file

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory) -> Path:
    """The full-size generator with the reference's seeded weights (seed 1), as a released-style .pth."""
    from agetool.nn.generator import Generator
    from tests.seeding import seeded_state_dict

    path = tmp_path_factory.mktemp("gen") / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), path)
    return path


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory) -> Path:
    return tiny_generator_file(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


def test_example_photo_is_the_astronaut():
    skimage_data = pytest.importorskip("skimage.data")
    np.testing.assert_array_equal(np.asarray(Image.open(EXAMPLE)), skimage_data.astronaut())


def test_age_on_the_astronaut(tmp_path, capsys, monkeypatch, reference_dir, generator_file, seeded_parser_file):
    masked = []
    real_mask = mask_module.mask_background

    def recording_mask(image, labels):
        out = real_mask(image, labels)
        masked.append((image, labels, out))
        return out

    monkeypatch.setattr(mask_module, "mask_background", recording_mask)
    grid, tiles = tmp_path / "grid.png", tmp_path / "tiles"
    code, _, err = cli(["age", EXAMPLE, "--landmarks", "dlib", "--weights", generator_file, "--parser-weights",
                        seeded_parser_file, "--tiles", tiles, "--out", grid, "--offline", "--device", "cpu"], capsys)
    assert code == 0, err
    assert "landmarks: dlib" in err and "1 face" in err

    # the aligned input tile is the reference crop for these landmarks
    tile = np.asarray(Image.open(tiles / "astronaut" / "face0_input.png"))
    ref = np.asarray(Image.open(reference_dir / "align_case0_out256.png").convert("RGB"))
    assert np.abs(tile.astype(int) - ref).max() <= 2

    # the generator saw the crop with background, hat, jewellery and clothes painted gray
    assert len(masked) == 1
    crop, labels, net_in = masked[0]
    hidden = np.isin(labels, mask_module.masking()[0])
    assert hidden.mean() > 0.02 and (net_in[hidden] == 128).all()
    assert (net_in[~hidden] == crop[~hidden]).all()
    ref_masked = np.asarray(Image.open(reference_dir / "deeplab_pipeline_masked256.png").convert("RGB"))
    assert (net_in == ref_masked).all(axis=2).mean() >= 0.995

    # grid geometry: one row, input + six classes, 256 px tiles
    assert Image.open(grid).size == (7 * 256, 256)
    names = sorted(p.name for p in (tiles / "astronaut").iterdir())
    assert names == sorted(f"face0_{label}.png" for label in ("input", *AGE_CLASSES))
    outputs = [np.asarray(Image.open(tiles / "astronaut" / f"face0_{c}.png")) for c in AGE_CLASSES]
    assert all(o.shape == (256, 256, 3) for o in outputs)
    assert len({o.tobytes() for o in outputs}) == 6  # six different ages


def test_video_paste_back_frames_are_whole_photos(tmp_path, capsys, tiny_generator, seeded_parser_file):
    frames, video = tmp_path / "frames", tmp_path / "aging.mp4"
    code, _, err = cli(["video", EXAMPLE, "--paste-back", "--steps", "1", "--landmarks", "dlib", "--weights",
                        tiny_generator, "--parser-weights", seeded_parser_file, "--frames", frames, "--out", video,
                        "--offline", "--device", "cpu"], capsys)
    assert code == 0, err
    shots = sorted(frames.glob("frame_*.png"))
    assert len(shots) == 6 and video.stat().st_size > 0
    photo = np.asarray(Image.open(EXAMPLE))
    first = np.asarray(Image.open(shots[0]))
    assert first.shape == photo.shape
    changed = np.any(first != photo, axis=2)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 2000
    # only the face changes: the dlib box (175, 76)-(265, 166) widened by the crop margin
    assert xs.min() > 100 and xs.max() < 340 and ys.max() < 260


def test_every_face_gets_a_row(tmp_path, capsys, tiny_generator):
    photo = np.asarray(Image.open(EXAMPLE))
    face = photo[40:330, 110:350]
    small = np.asarray(Image.fromarray(face).resize((168, 203), Image.LANCZOS))
    canvas = np.full((300, 460, 3), 235, np.uint8)
    canvas[5:208, 10:178] = small
    canvas[5:295, 210:450] = face
    two = tmp_path / "two.png"
    Image.fromarray(canvas).save(two)
    grid, tiles = tmp_path / "grid.png", tmp_path / "tiles"
    code, _, err = cli(["age", two, "--landmarks", "dlib", "--weights", tiny_generator, "--no-mask", "--tiles", tiles,
                        "--offline", "--device", "cpu", "--out", grid], capsys)
    assert code == 0, err
    assert Image.open(grid).size == (7 * 256, 2 * 256)
    assert (tiles / "two" / "face1_50-69.png").is_file()
    pipe = AgingPipeline.from_pretrained(landmarks="dlib", offline=True, device="cpu")
    both = pipe.align(canvas)
    assert len(both) == 2  # numbered left to right
    assert both[0].quad[:, 0].mean() < both[1].quad[:, 0].mean()
    largest = pipe.faces(canvas, faces="largest", min_face=10, mask=False)
    assert len(largest) == 1 and largest[0].box[0] > 200
    with pytest.raises(NoFaceError, match="no face at least 400 px"):
        pipe.faces(canvas, min_face=400, mask=False)


def test_no_face_in_a_photo(tmp_path, capsys, tiny_generator):
    wall = tmp_path / "wall.jpg"
    Image.fromarray(np.full((240, 320, 3), 200, np.uint8)).save(wall)
    # --no-mask: no parser needed (offline, a missing parser is named first, before any work)
    code, _, err = cli(["age", wall, "--landmarks", "dlib", "--weights", tiny_generator, "--offline", "--no-mask",
                        "--device", "cpu", "--out", tmp_path / "g.png"], capsys)
    assert code == 1
    assert f"no face found in {wall}" in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()
