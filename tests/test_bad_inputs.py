"""Awkward files through `agetool age` and `agetool video`: exit 0 with a correct output, or exit 1
with a specific one-line message; never a traceback, never a partial output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from agetool.errors import InputError
from agetool.images import read_image
from tests import corpus
from tests.helpers import cli, tiny_generator_file


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_generator_file(tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, {c.name: c for c in corpus.build(folder)}


CASE_NAMES = corpus.case_names()


def _no_partials(folder):
    return [p for p in folder.rglob("*") if ".part" in p.name]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_age_on_corpus(tmp_path, cases, weights, capsys, name):
    folder, table = cases
    case = table[name]
    out = tmp_path / "out" / "grid.png"
    code, _, err = cli(["age", folder / name, "--out", out, "--aligned", "--no-mask", "--weights", weights], capsys)
    assert code == case.exit_code, err
    assert "Traceback" not in err
    if code == 0:
        assert Image.open(out).size == (7 * 256, 256)
    else:
        assert case.message in err
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert not _no_partials(tmp_path)


@pytest.mark.parametrize("name", ["empty.jpg", "bomb.png", "cmyk.jpg", "animated.gif"])
def test_video_on_corpus(tmp_path, cases, weights, capsys, name):
    from agetool.video import read_video_frames

    folder, table = cases
    case = table[name]
    out = tmp_path / "v.mp4"
    code, _, err = cli(["video", folder / name, "--out", out, "--steps", "1", "--aligned", "--no-mask",
                        "--weights", weights], capsys)
    assert code == case.exit_code, err
    assert "Traceback" not in err
    if code == 0:
        assert read_video_frames(out)[0] == 6
    else:
        assert case.message in err and not out.exists()
    assert not _no_partials(tmp_path)


def test_conversions_to_rgb(cases):
    folder, _ = cases
    gray16 = read_image(folder / "gray16.png")
    gray = read_image(folder / "gray.png")
    assert gray16.dtype == np.uint8 and gray16.shape == (256, 256, 3)
    np.testing.assert_array_equal(gray16, gray)  # 16-bit scaled to 8 bits, same picture
    assert (gray[..., 0] == gray[..., 1]).all()
    rgba = read_image(folder / "rgba.png")
    assert (rgba[:, :100] == 255).all(), "transparent pixels become white"
    assert read_image(folder / "cmyk.jpg").shape == (256, 256, 3)
    assert read_image(folder / "animated.gif").shape == (256, 256, 3)


def test_exif_orientation_is_applied(cases):
    folder, _ = cases
    upright = np.asarray(Image.open(folder / "exif6.jpg").convert("RGB"))  # stored pixels, 256 x 200
    assert upright.shape[:2] == (256, 200)
    six, eight = read_image(folder / "exif6.jpg"), read_image(folder / "exif8.jpg")
    assert six.shape[:2] == (200, 256) and eight.shape[:2] == (200, 256)
    # orientation 6: rotate 90 degrees clockwise to display; 8: counter-clockwise
    assert np.abs(six.astype(int) - np.rot90(upright, -1)).mean() < 3
    assert np.abs(eight.astype(int) - np.rot90(upright, 1)).mean() < 3


def test_max_pixels_option(tmp_path, cases, weights, capsys):
    folder, _ = cases
    code, _, err = cli(["age", folder / "gray.png", "--out", tmp_path / "g.png", "--aligned", "--no-mask",
                        "--weights", weights, "--max-pixels", "1000"], capsys)
    assert code == 1 and "over the limit of 1,000" in err and "--max-pixels" in err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=2048),
                      st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
                      st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff\xe0" + b),
                      st.binary(max_size=512).map(lambda b: b"GIF89a" + b)))
def test_fuzz_decoding_gives_an_image_or_a_clear_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "x.img"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except InputError as e:
        assert str(e).startswith(str(path))
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def test_corpus_through_the_command_line_with_full_size_weights(tmp_path, released_generator_file):
    """The whole corpus as one folder run of the real command, in its own process, with a full-size
    generator file in the released layout (loading while the first files fail): every bad file one error line naming it, every good
    one a grid, the summary, exit 1, no traceback, no abort, no partial file."""
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    folder = tmp_path / "corpus"
    table = {c.name: c for c in corpus.build(folder)}
    out = tmp_path / "grids"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "agetool", "age", str(folder), "--out", f"{out}/", "--ages", "30",
                           "--aligned", "--no-mask", "--weights", str(released_generator_file), "--offline",
                           "--device", "cpu"],
                          env=env, capture_output=True, text=True, timeout=600)
    bad = [c for c in table.values() if c.exit_code]
    good = [c for c in table.values() if not c.exit_code]
    assert done.returncode == 1, done.stderr[-2000:]
    for text in ("Traceback", "terminate called", "Aborted", "core dumped"):
        assert text not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), done.stderr
    for case in bad:
        assert any(case.name in line and case.message in line for line in errors), (case, errors)
    assert f"done: {len(good)} written, {len(bad)} failed" in done.stderr
    for case in good:
        assert Image.open(out / f"{Path(case.name).stem}_ages.png").size == (2 * 256, 256)
    assert not _no_partials(tmp_path)
