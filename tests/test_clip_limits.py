"""Clips under abuse: frame-size limits on every decoded frame, memory bounded whatever the number
of ages, odd frame sizes, broken timestamps, files cut short, a full disk, and options that don't
apply to clips. Each runs the command in a process of its own (its peak memory measured where memory
was the defect), with the full-size released-layout generator where loading and memory matter.
"""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, cli, ffmpeg, make_clip, one_line_message, partials, run_measured

FAST = ["--no-mask", "--device", "cpu", "--landmarks", "dlib"]
GB = 1e9


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("clips") / "astronaut256.png"
    Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256), Image.LANCZOS).save(p)
    return p


def test_clip(path: Path, size: str, frames: int = 3, *extra, source: str = "testsrc") -> Path:
    """``frames`` of ffmpeg's test pattern (``source="color"``: flat gray, quick to make at 8K)."""
    ffmpeg("-f", "lavfi", "-i", f"{source}=size={size}:rate=10", "-frames:v", frames, "-c:v", "libx264",
           "-preset", "ultrafast", *extra, path)
    return path


test_clip.__test__ = False


def frames_of(path: Path) -> tuple[tuple[int, int], list[int]]:
    import av

    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        pts = [f.pts for f in box.decode(vs)]
        return (vs.codec_context.width, vs.codec_context.height), pts


# ---------------------------------------------------------------- item: frame size and memory
def test_a_clip_over_the_frame_limit_is_refused_before_decoding(tmp_path, released_generator_file):
    big = test_clip(tmp_path / "8k.mp4", "7680x4320", 2, "-pix_fmt", "yuv420p", source="color")
    code, err, peak = run_measured(["age", big, "--ages", "60", "--out", tmp_path / "o.mp4",
                                    "--weights", released_generator_file, *FAST], tmp_path)
    line = one_line_message(err)
    assert code == 1 and "7680x4320" in line and "8,847,360" in line, err
    assert peak < 3 * GB, peak / GB
    assert not (tmp_path / "o.mp4").exists() and not partials(tmp_path)
    # --max-pixels applies to clips too: a 320x240 clip passes 76,800 and fails 76,799
    small = test_clip(tmp_path / "s.mp4", "320x240", 2, "-pix_fmt", "yuv420p")
    code, err, _ = run_measured(["age", small, "--ages", "60", "--out", tmp_path / "s_old.mp4", "--max-pixels",
                                 "76799", "--weights", released_generator_file, *FAST], tmp_path)
    assert code == 1 and "320x240" in one_line_message(err) and "76,799" in err


def test_a_clip_that_grows_mid_stream_stops_at_its_first_large_frame(tmp_path, released_generator_file):
    """Three 320x240 frames, then three 7680x4320 ones (the clip probes as 320x240)."""
    test_clip(tmp_path / "a.h264", "320x240", 3, "-pix_fmt", "yuv420p")
    test_clip(tmp_path / "b.h264", "7680x4320", 3, "-pix_fmt", "yuv420p", source="color")
    (tmp_path / "ab.h264").write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "b.h264").read_bytes())
    grows = tmp_path / "grows.mp4"
    ffmpeg("-r", "10", "-i", tmp_path / "ab.h264", "-c", "copy", grows)
    out = tmp_path / "o.mp4"
    code, err, peak = run_measured(["age", grows, "--ages", "60", "--out", out, "--weights", released_generator_file,
                                    *FAST], tmp_path)
    line = one_line_message(err)
    assert code == 1 and "grows.mp4" in line and ("over the limit" in line or "changes size" in line), err
    assert peak < 3 * GB, peak / GB
    assert not out.exists() and not partials(tmp_path)
    # grown within the limit: the first frame of another size stops the run, named
    test_clip(tmp_path / "c.h264", "640x480", 3, "-pix_fmt", "yuv420p")
    (tmp_path / "ac.h264").write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "c.h264").read_bytes())
    ffmpeg("-r", "10", "-i", tmp_path / "ac.h264", "-c", "copy", tmp_path / "grows2.mp4")
    code, err, _ = run_measured(["age", tmp_path / "grows2.mp4", "--ages", "60", "--out", out,
                                 "--weights", released_generator_file, *FAST], tmp_path)
    assert code == 1 and "changes size" in one_line_message(err) and not out.exists()


def test_many_ages_of_a_full_hd_clip_stay_in_bounded_memory(tmp_path, released_generator_file):
    """Sixteen ages of a 1920x1080 clip: four passes of four encoders, under 3 GB (one encoder per
    age took 0.42 GB each: 6.7 GB for these)."""
    src = test_clip(tmp_path / "hd.mp4", "1920x1080", 3, "-pix_fmt", "yuv420p")
    ages = ",".join(str(a) for a in range(5, 85, 5))
    code, err, peak = run_measured(["age", src, "--ages", ages, "--out", f"{tmp_path}/out/",
                                    "--weights", released_generator_file, *FAST], tmp_path)
    assert code == 0, err
    print(f"16 ages of 1920x1080: peak {peak / GB:.2f} GB")
    assert peak < 3 * GB, f"{peak / GB:.2f} GB"
    written = sorted((tmp_path / "out").glob("hd_age*.mp4"))
    assert len(written) == 16
    for path in written:
        assert frames_of(path)[0] == (1920, 1080) and len(frames_of(path)[1]) == 3


def test_ages_in_several_passes_give_the_clips_of_one_pass(tmp_path, photo, weights, monkeypatch):
    import agetool
    import agetool.options

    src = make_clip(photo, tmp_path / "walk.mp4", 6)
    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib")
    one = pipe.age_clip(src, f"{tmp_path}/one/", ages=[20, 60, 80], mask=False)
    monkeypatch.setattr(agetool.options, "CLIP_PASS_PIXELS", 160 * 128)  # one age a pass
    from agetool.clip import age_groups, probe

    assert len(age_groups(pipe.targets([20, 60, 80]), probe(src))) == 3
    three = pipe.age_clip(src, f"{tmp_path}/three/", ages=[20, 60, 80], mask=False)
    for a, b in zip(one, three):
        assert a.read_bytes() == b.read_bytes()


# ---------------------------------------------------------------- odd frame sizes
@pytest.mark.parametrize("size", ["641x359", "640x359", "1x1"])
def test_odd_frame_sizes_keep_their_size(tmp_path, weights, size):
    src = test_clip(tmp_path / "odd.mp4", size, 3, "-pix_fmt", "yuv444p")
    out = tmp_path / "odd_old.mp4"
    code, err, _ = run_measured(["age", src, "--ages", "60", "--out", out, "--weights", weights, *FAST], tmp_path)
    assert code == 0, err
    w, h = map(int, size.split("x"))
    (ow, oh), pts = frames_of(out)
    assert (ow, oh) == (w, h) and pts == frames_of(src)[1]
    import av

    with av.open(str(out)) as box:  # every pixel of the source's frame, unchanged where no face was found
        frame = next(box.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(str(src)) as box:
        source = next(box.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == source.shape and np.abs(frame.astype(int) - source).mean() < 4


# ---------------------------------------------------------------- honest results
@pytest.mark.parametrize("pts", ["floor(N/2)*100+1", "if(eq(N\\,3)\\,150\\,N*100)"], ids=["repeated", "backwards"])
def test_broken_timestamps_are_repaired_before_the_work(tmp_path, weights, pts):
    src = tmp_path / "ts.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-frames:v", 8, "-c:v", "libx264", "-g", 1, "-bf", 0,
           "-pix_fmt", "yuv420p", "-bsf:v", f"setts=dts=N:pts={pts}", src)
    source = frames_of(src)[1]
    assert any(b <= a for a, b in zip(source, source[1:]))  # the clip's own timestamps repeat or go back
    out = tmp_path / "ts_old.mkv"
    code, err, _ = run_measured(["age", src, "--ages", "60", "--out", out, "--weights", weights, *FAST], tmp_path)
    assert code == 0, err
    assert "timestamp that repeated or went back" in err
    pts_out = frames_of(out)[1]
    assert len(pts_out) == 8 and all(b > a for a, b in zip(pts_out, pts_out[1:]))


@pytest.mark.parametrize("at_packet", [True, False], ids=["between-packets", "mid-packet"])
def test_a_clip_cut_short_fails_unless_kept(tmp_path, photo, weights, at_packet):
    whole = make_clip(photo, tmp_path / "whole.mp4", 40)
    ffmpeg("-i", whole, "-c", "copy", "-movflags", "+faststart", tmp_path / "indexed.mp4")  # the index first
    import av

    with av.open(str(tmp_path / "indexed.mp4")) as box:  # where the 8th video packet ends
        packets = [p for p in box.demux(box.streams.video[0]) if p.size]
        end = packets[7].pos + packets[7].size
    data = (tmp_path / "indexed.mp4").read_bytes()
    cut = tmp_path / ("cut.mp4" if at_packet else "cut_mid.mp4")
    cut.write_bytes(data[:end if at_packet else end - 100])  # the index lists 40 frames; the data holds 8
    out = tmp_path / "cut_old.mp4"
    code, err, _ = run_measured(["age", cut, "--ages", "60", "--out", out, "--weights", weights, *FAST], tmp_path)
    line = one_line_message(err)
    assert code == 1 and "of its 40 frames could be read" in line and "--truncated keep" in line, err
    assert not out.exists() and not partials(tmp_path)
    code, err, _ = run_measured(["age", cut, "--ages", "60", "--out", out, "--truncated", "keep", "--weights", weights,
                                 *FAST], tmp_path)
    assert code == 0 and "of its 40 frames could be read" in err, err
    assert 6 <= len(frames_of(out)[1]) <= 8


def test_a_full_disk_is_reported_when_it_happens(tmp_path, photo, weights):
    src = make_clip(photo, tmp_path / "long.mp4", 16, crf=0)
    out = tmp_path / "out" / "long_old.mp4"

    def small_files():  # in the child: writes past 20 kB fail as on a full disk (EFBIG, not a signal)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    code, err, _ = run_measured(["age", src, "--ages", "60", "--out", out, "--crf", "0", "--batch-size", "1",
                                 "--weights", weights, *FAST], tmp_path, preexec_fn=small_files)
    line = one_line_message(err)
    assert code == 1 and "larger than this process may write" in line and "audio" not in line, err
    assert not out.exists() and not partials(tmp_path / "out")


# ---------------------------------------------------------------- options that don't apply
@pytest.mark.parametrize("args", [["video", "{clip}", "--from", "20", "--to", "60", "--fps", "10"],
                                  ["video", "{clip}", "--from", "20", "--to", "60", "--steps", "3"],
                                  ["age", "{clip}", "--ages", "60", "--tiles", "{tmp}/tiles"],
                                  ["age", "{clip}", "--ages", "60", "--paste-back"],
                                  ["video", "{clip}", "--from", "20", "--to", "60", "--paste-back"],
                                  ["age", "{clip}", "--ages", "60", "--engine", "ray"]],
                         ids=["fps", "steps", "tiles", "paste-back", "video-paste-back", "ray"])
def test_options_that_do_not_apply_to_clips_are_refused(tmp_path, photo, weights, capsys, args):
    src = make_clip(photo, tmp_path / "c.mp4", 2)
    flag = next(a for a in args if a.startswith("--") and a not in ("--from", "--to", "--ages"))
    argv = [a.format(clip=src, tmp=tmp_path) for a in args] + ["--out", tmp_path / "o.mp4", "--weights", weights, *FAST]
    code, _, err = cli(argv, capsys)
    assert code == 2 and err.count("\n") == 1 and flag in err, err
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "tiles").exists()


# ---------------------------------------------------------------- the library's typed errors
def test_age_clip_typed_errors(tmp_path, photo, weights):
    import agetool
    from agetool.errors import InputError, UsageError

    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib")
    src = make_clip(photo, tmp_path / "clip.mp4", 2)
    with pytest.raises(UsageError, match="src.*file path, not ndarray"):
        pipe.age_clip(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(UsageError, match="progress.*got int"):
        pipe.age_clip(src, tmp_path / "b.mp4", progress=5)
    with pytest.raises(InputError, match="not a video clip"):
        pipe.age_clip(photo, tmp_path / "c.mp4")
    with pytest.raises(InputError, match="not a video clip"):
        next(iter(pipe.clip_frames(photo, ages=60)))
    assert not list(tmp_path.glob("?.mp4"))
