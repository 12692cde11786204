"""``agetool serve``: the named endpoints through gradio_client, limits, errors, a clean stop."""

from __future__ import annotations

import importlib.util
import io
import signal

import numpy as np
import pytest
from PIL import Image

from agetool.ages import AGE_CLASSES
from tests.helpers import cli, face_like
from tests.serving import EXAMPLE, start_server

pytest.importorskip("gradio", reason='the web app needs the ui extra: pip install "agetool[ui]"')
gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def client(served):
    return gradio_client.Client(served.url, verbose=False)


def _tiles(path, n: int) -> list[np.ndarray]:
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    grid = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert grid.shape == (256, 256 * n, 3)
    return [grid[:, 256 * i:256 * (i + 1)] for i in range(n)]


def test_age_endpoint_returns_the_grid(client):
    tiles = _tiles(client.predict(gradio_client.handle_file(EXAMPLE), "5,45", api_name="/age"), 3)
    assert not np.array_equal(tiles[1], tiles[2])  # two ages, two faces
    six = _tiles(client.predict(gradio_client.handle_file(EXAMPLE), "", api_name="/age"), 1 + len(AGE_CLASSES))
    assert len({t[:200].tobytes() for t in six[1:]}) == len(AGE_CLASSES)  # above the caption band
    # the input column is the same aligned crop whatever the ages
    np.testing.assert_array_equal(tiles[0][:200], six[0][:200])


def test_video_endpoint_returns_the_mp4(client):
    from agetool.video import read_video_frames

    path = client.predict(gradio_client.handle_file(EXAMPLE), api_name="/video")
    assert str(path).endswith(".mp4")
    frames, size = read_video_frames(path)
    assert frames == 5 * 20 + 1 and size == (256, 256)


def test_clip_endpoint_returns_the_aged_clip(client, tmp_path):
    from agetool.clip import probe
    from tests.helpers import astronaut_clip

    src = astronaut_clip(tmp_path)
    path = client.predict(gradio_client.handle_file(src), 60, api_name="/clip")
    assert str(path).endswith("walk_age60.mp4")
    a, b = probe(src), probe(path)
    assert (b.frames, b.width, b.height, b.audio) == (a.frames, a.width, a.height, a.audio) == (6, 160, 128, ["aac"])
    with pytest.raises(gradio_client.exceptions.AppError, match="not a video clip"):
        client.predict(gradio_client.handle_file(EXAMPLE), 60, api_name="/clip")


@pytest.mark.parametrize("make, ages, expected", [
    (lambda p: p.write_text("not a picture"), "", "not a readable image"),
    (lambda p: Image.fromarray(np.full((300, 300, 3), 128, np.uint8)).save(p), "", "no face found"),
    (lambda p: Image.new("RGB", (7000, 6000)).save(p), "", "over the limit of 40,000,000"),
    (None, "5,forty", "ages='forty'"),
    (None, "5,,45", "empty entry"),
])
def test_errors_come_back_as_one_short_line(client, tmp_path, make, ages, expected):
    path = EXAMPLE
    if make is not None:
        path = tmp_path / "upload.png"
        make(path)
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        client.predict(gradio_client.handle_file(path), ages, api_name="/age")
    message = str(info.value)
    assert expected in message and "\n" not in message and "Traceback" not in message
    assert "agetool-serve-" not in message  # the server's temporary paths are not shown


def test_limits_and_a_clean_stop(tmp_path, stand_in_generator, seeded_parser_file):
    """Uploads over the byte or pixel limit are refused; Ctrl-C stops the server and removes its files."""
    served = start_server(tmp_path, stand_in_generator, seeded_parser_file, "--max-upload-mb", "0.1",
                          "--max-pixels", "200000")
    try:
        client = gradio_client.Client(served.url, verbose=False)
        big = tmp_path / "big.png"  # 250 KB of noise, 300 x 300 pixels
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)
        with pytest.raises(Exception, match="(?i)too large|exceeds|limit"):
            client.predict(gradio_client.handle_file(big), "", api_name="/age")
        wide = tmp_path / "wide.png"  # a few KB, 600 x 400 pixels
        Image.new("RGB", (600, 400), (90, 90, 90)).save(wide)
        with pytest.raises(gradio_client.exceptions.AppError, match="over the limit of 200,000"):
            client.predict(gradio_client.handle_file(wide), "", api_name="/age")
        small = tmp_path / "crop.png"
        Image.fromarray(face_like(256)).save(small)
        with pytest.raises(gradio_client.exceptions.AppError, match="no face found"):
            client.predict(gradio_client.handle_file(small), "", api_name="/age")
        assert any(served.tmp.iterdir())  # the server's folder, with the uploads, while it runs
    finally:
        code = served.stop(signal.SIGINT)
    log = served.log.read_text()
    assert code == 130, log
    assert "Traceback" not in log
    assert "agetool serve: stopped (Ctrl-C)" in log and "error:" not in log, log  # a stop, not a failure
    assert list(served.tmp.iterdir()) == []  # uploads and results removed
    assert list(served.home.iterdir()) == []  # nothing written to the working folder or HOME


def test_sigterm_stops_cleanly(tmp_path, stand_in_generator, seeded_parser_file):
    served = start_server(tmp_path, stand_in_generator, seeded_parser_file)
    code = served.stop(signal.SIGTERM)
    assert code == 143, served.log.read_text()
    assert "agetool serve: stopped (SIGTERM)" in served.log.read_text()
    assert list(served.tmp.iterdir()) == []


def test_without_gradio_one_line_names_the_extra(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    code, _, err = cli(["serve"], capsys)
    assert code == 1
    assert err.strip().count("\n") == 0 and 'pip install "agetool[ui]"' in err
