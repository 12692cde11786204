"""Video numbers are checked before any work, and an encoder failure is one line that leaves no file."""

from __future__ import annotations

import resource
import signal
from fractions import Fraction

import numpy as np
import pytest

from agetool.errors import OutputError
from agetool.options import MIN_FPS
from agetool.video import VideoWriter
from tests.helpers import cli, common, one_line_message, partials, run_measured


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


def _past_the_checks(writer: VideoWriter) -> None:
    """A rate the checks refuse, set past them: the MP4 muxer fails as it finishes the file."""
    writer.rate = Fraction(1, 100_000)
    writer.time_base = 1 / writer.rate


def test_a_failure_to_finish_leaves_no_file(tmp_path):
    out = tmp_path / "v.mp4"
    writer = VideoWriter(out, fps=30)
    _past_the_checks(writer)
    with pytest.raises(OutputError) as e:
        with writer:
            _frames(writer)
    message = str(e.value)
    assert message.startswith(f"finishing {out} failed: ") and "\n" not in message
    assert ".part" not in message  # the user's file is named, not the temporary one
    assert not out.exists() and not partials(tmp_path)


def test_an_encoder_failure_is_one_line_on_the_command_line(tmp_path, crop, weights, capsys, monkeypatch):
    init = VideoWriter.__init__

    def failing(self, *args, **kwargs):
        init(self, *args, **kwargs)
        _past_the_checks(self)

    monkeypatch.setattr(VideoWriter, "__init__", failing)
    out = tmp_path / "v.mp4"
    code, _, err = cli(["video", crop, "--out", out, "--steps", "1", *common(weights)], capsys)
    assert code == 1, err
    assert err.strip().splitlines() == [err.strip()] and f"finishing {out} failed" in err
    assert not out.exists() and not partials(tmp_path)


def test_settings_the_encoder_refuses_are_one_line_and_no_file(tmp_path, monkeypatch):
    import agetool.video

    monkeypatch.setattr(agetool.video, "x264_options", lambda: {"preset": "no-such-preset"})
    out = tmp_path / "v.mp4"
    with pytest.raises(OutputError, match=f"^can't write {out}: "):
        with VideoWriter(out, fps=30) as writer:
            _frames(writer, 1)
    assert not out.exists() and not partials(tmp_path)


def test_odd_photo_video_frames_are_refused(tmp_path):
    out = tmp_path / "v.mp4"
    with pytest.raises(OutputError, match="even sides, got 65x64"):
        with VideoWriter(out, fps=30) as writer:
            writer.write(np.zeros((64, 65, 3), np.uint8))
    assert not out.exists() and not partials(tmp_path)


def test_rates_pass_to_the_encoder_exactly(tmp_path):
    import av

    out = tmp_path / "v.mp4"
    with VideoWriter(out, fps=29.97) as writer:
        _frames(writer, 3)
    with av.open(str(out)) as box:
        vs = box.streams.video[0]
        assert vs.average_rate == Fraction(2997, 100)
        times = [float(f.pts * f.time_base) for f in box.decode(vs)]
    assert np.allclose(times, [0, 100 / 2997, 200 / 2997], atol=1e-4)


def test_a_full_disk_while_writing_a_photo_video_is_one_line(tmp_path, crop, weights):
    out = tmp_path / "out" / "v.mp4"

    def small_files():  # in the child: writes past 20 kB fail as on a full disk (EFBIG, not a signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    code, err, _ = run_measured(["video", crop, "--out", out, "--steps", "4", "--crf", "0", *common(weights)],
                                tmp_path, preexec_fn=small_files)
    line = one_line_message(err)
    assert code == 1 and f"{out} failed: the file is larger than this process may write" in line, err
    assert not out.exists() and not partials(tmp_path / "out")
