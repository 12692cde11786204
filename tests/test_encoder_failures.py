"""Video numbers are checked before any work, and an encoder failure is one line that leaves no file."""

from __future__ import annotations

import numpy as np
import pytest

from agetool.errors import OutputError
from agetool.options import MIN_FPS
from agetool.video import VideoWriter
from tests.helpers import cli, common, partials


@pytest.mark.parametrize("fps", ["1e-5", "0.001", "0.0099"])
def test_too_few_frames_per_second_is_refused_before_any_work(tmp_path, crop, weights, capsys, fps):
    out, frames = tmp_path / "v.mp4", tmp_path / "frames"
    code, _, err = cli(["video", crop, "--out", out, "--fps", fps, "--frames", frames, "--steps", "1",
                        *common(weights)], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "--fps" in err and f"{MIN_FPS:g}" in err
    assert not out.exists() and not frames.exists()


def _frames(writer: VideoWriter, n: int = 6) -> None:
    for _ in range(n):
        writer.write(np.zeros((64, 64, 3), np.uint8))


def test_a_failure_to_finish_leaves_no_file(tmp_path):
    out = tmp_path / "v.mp4"
    writer = VideoWriter(out, fps=30)
    writer.fps = 1e-5  # past the checks: ffmpeg's muxer refuses the rate when it finishes the file
    with pytest.raises(OutputError) as e:
        with writer:
            _frames(writer)
    assert str(e.value).startswith(f"ffmpeg failed to finish {out}: ") and "\n" not in str(e.value)
    assert not out.exists() and not partials(tmp_path)


def test_an_encoder_that_dies_while_writing_leaves_no_file(tmp_path):
    out = tmp_path / "v.mp4"
    writer = VideoWriter(out, fps=30)
    with pytest.raises(OutputError, match="ffmpeg failed while writing"):
        with writer:
            _frames(writer, 1)
            writer._proc.kill()
            writer._proc.wait()
            _frames(writer, 200)
    assert not out.exists() and not partials(tmp_path)


def test_an_encoder_failure_is_one_line_on_the_command_line(tmp_path, crop, weights, capsys, monkeypatch):
    command = VideoWriter._command

    def failing(self, width, height):
        args = command(self, width, height)
        args[args.index("-r") + 1] = "1/100000"  # the muxer fails as the file is finished
        return args

    monkeypatch.setattr(VideoWriter, "_command", failing)
    out = tmp_path / "v.mp4"
    code, _, err = cli(["video", crop, "--out", out, "--steps", "1", *common(weights)], capsys)
    assert code == 1, err
    assert err.strip().splitlines() == [err.strip()] and "ffmpeg failed to finish" in err
    assert not out.exists() and not partials(tmp_path)


def test_rates_pass_to_the_encoder_exactly(tmp_path):
    from agetool.video import read_video_frames

    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=29.97) as writer:
        assert writer._command(64, 64)[writer._command(64, 64).index("-r") + 1] == "2997/100"
        _frames(writer, 3)
    assert read_video_frames(out) == (3, (64, 64))


def test_no_encoder_program_is_one_line_and_no_file(tmp_path, monkeypatch):
    import imageio_ffmpeg

    def missing():
        raise RuntimeError("No ffmpeg exe could be found. Install ffmpeg on your system.")

    monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", missing)
    out = tmp_path / "v.mp4"
    with pytest.raises(OutputError, match="can't start ffmpeg to write .*: No ffmpeg exe could be found"):
        with VideoWriter(out, fps=30) as writer:
            _frames(writer, 1)
    assert not out.exists() and not partials(tmp_path)
