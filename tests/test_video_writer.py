"""The one H.264 writer of photo videos and clips: files every player opens (checked with PyAV and the
ffmpeg program), frames close to what was rendered, and the same bytes whatever the machine's CPUs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import ROOT, astronaut_clip, cli, common, ffmpeg


def top_boxes(path: Path) -> list[str]:
    """The top-level boxes of an ISO media file, in order."""
    data, pos, kinds = path.read_bytes(), 0, []
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        size = struct.unpack(">Q", data[pos + 8:pos + 16])[0] if size == 1 else size
        kinds.append(kind.decode("latin-1"))
        if size < 8:
            break
        pos += size
    return kinds


def test_photo_video_opens_everywhere_and_shows_its_frames(tmp_path, crop, weights, capsys):
    import av

    out, frames = tmp_path / "v.mp4", tmp_path / "frames"
    code, _, err = cli(["video", crop, "--out", out, "--steps", "2", "--fps", "12", "--hold", "0.25",
                        "--frames", frames, *common(weights)], capsys)
    assert code == 0, err
    boxes = top_boxes(out)
    assert boxes.index("moov") < boxes.index("mdat")  # the index first: playback starts before the file ends
    assert boxes[-1] == "uuid"  # the provenance XMP, after everything that holds the frames
    pngs = [np.asarray(Image.open(p).convert("RGB")).astype(float) for p in sorted(frames.glob("frame_*.png"))]
    shown = [pngs[0]] * 3 + pngs + [pngs[-1]] * 3  # 11 frames, 3 held (0.25 s at 12 fps) at each end
    with av.open(str(out)) as box:
        vs = box.streams.video[0]
        assert (vs.codec_context.name, vs.codec_context.pix_fmt, vs.codec_context.profile) == ("h264", "yuv420p", "High")
        assert vs.average_rate == 12 and (vs.codec_context.width, vs.codec_context.height) == (256, 256)
        decoded = [(f.to_ndarray(format="rgb24").astype(float), float(f.pts * f.time_base)) for f in box.decode(vs)]
        assert abs(box.duration / 1e6 - 17 / 12) < 0.01
    assert len(decoded) == len(shown) == 17
    assert np.allclose([t for _, t in decoded], np.arange(17) / 12, atol=1e-3)
    for (image, _), want in zip(decoded, shown):
        psnr = 10 * np.log10(255 ** 2 / np.mean((image - want) ** 2))
        assert psnr > 32, psnr  # about 41 dB at the default quality; a swapped plane or shifted frame is < 20
    # a reader no one here wrote either: the ffmpeg program decodes every frame without an error
    result = subprocess.run([_ffmpeg_exe(), "-v", "error", "-i", str(out), "-f", "null", "-"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def test_clips_have_their_index_first_and_keep_odd_sizes(tmp_path):
    import av

    from agetool.clip.media import ClipWriter, probe

    src = tmp_path / "odd.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=65x47:rate=10", "-frames:v", 4, "-c:v", "libx264",
           "-pix_fmt", "yuv444p", src)
    info = probe(src)
    images = [np.full((47, 65, 3), 40 * i, np.uint8) for i in range(4)]
    for name in ("o.mp4", "o.mkv"):
        with ClipWriter(tmp_path / name, info) as writer:
            for i, image in enumerate(images):
                writer.write(image, i)
        with av.open(str(tmp_path / name)) as box:
            vs = box.streams.video[0]
            assert vs.codec_context.pix_fmt == "yuv444p"
            got = [f.to_ndarray(format="rgb24").astype(int) for f in box.decode(vs)]
        assert len(got) == 4 and all(np.abs(g - i).max() <= 2 for g, i in zip(got, images))
    boxes = top_boxes(tmp_path / "o.mp4")
    assert boxes.index("moov") < boxes.index("mdat")


#: in a child process: a photo video's frames and a clip's frames through the writers, as files in argv[1]
_WRITE = """
import sys
from pathlib import Path
import numpy as np
from agetool.clip.media import ClipWriter, probe, read_frames
from agetool.video import VideoWriter
out, src = Path(sys.argv[1]), Path(sys.argv[2])
rng = np.random.default_rng(0)
base = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
with VideoWriter(out / "photo.mp4", fps=25) as w:
    for i in range(24):
        w.write(np.roll(base, 3 * i, axis=1))
info = probe(src)
with ClipWriter(out / "clip.mp4", info) as w:
    for i, (image, pts) in enumerate(read_frames(info)):
        w.write(np.roll(image, 7 * i, axis=1), pts)
"""


def test_same_bytes_whatever_the_machines_cpus(tmp_path, crop, weights):
    """The same frames, written with one CPU and one torch thread, and with every CPU: the same files
    (x264's output follows its number of threads, which by default follows the CPUs)."""
    src = astronaut_clip(tmp_path, 12)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    one = dict(env, OMP_NUM_THREADS="1")
    files = []
    for k, (child_env, cpus) in enumerate([(env, None), (one, {min(os.sched_getaffinity(0))})]):
        folder = tmp_path / f"run{k}"
        folder.mkdir()

        def pin(cpus=cpus):
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        subprocess.run([sys.executable, "-c", _WRITE, folder, src], env=child_env, preexec_fn=pin, check=True)
        video = folder / "video.mp4"
        subprocess.run([sys.executable, "-m", "agetool", "video", crop, "--out", video, "--steps", "1",
                        *map(str, common(weights))], env=child_env, preexec_fn=pin, check=True,
                       capture_output=True)
        files.append([(folder / n).read_bytes() for n in ("photo.mp4", "clip.mp4", "video.mp4")])
    assert files[0] == files[1]


def test_each_chroma_sample_is_the_colour_of_its_block():
    """Red and blue columns: every 2x2 block's chroma is that of their mean (one picked pixel would
    say red or blue, and fine colour detail would alias)."""
    from agetool.video import yuv_frame

    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 0::2, 0] = 255  # red columns
    image[:, 1::2, 2] = 255  # blue columns
    planes = yuv_frame(image).to_ndarray().astype(int)  # I420: Y rows, then U and V
    u, v = planes[8:10].reshape(-1)[:16], planes[10:12].reshape(-1)[:16]
    mean = np.array([127.5, 0, 127.5])  # of each block
    want_u = 128 + (-0.148223 * mean[0] - 0.290993 * mean[1] + 0.439216 * mean[2])
    want_v = 128 + (0.439216 * mean[0] - 0.367788 * mean[1] - 0.071427 * mean[2])
    assert np.abs(u - want_u).max() <= 1 and np.abs(v - want_v).max() <= 1, (u, v)
