"""Clips: `agetool age CLIP --ages`, `agetool video CLIP --from --to`, AgingPipeline.age_clip / clip_frames.

The clips are made here with the ffmpeg of imageio-ffmpeg from the astronaut photo (a real face),
with a sine audio track; the generator is the tiny seeded one, and most runs skip the parser
(--no-mask: an elliptical paste-back mask) to stay fast.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, cli, ffmpeg, make_clip, partials, spawn, wait_for

FAST = ["--no-mask", "--device", "cpu", "--landmarks", "dlib"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """The astronaut at 256 px (face about 45 px wide)."""
    from PIL import Image

    p = tmp_path_factory.mktemp("clips") / "astronaut256.png"
    Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256), Image.LANCZOS).save(p)
    return p


def video_facts(path: Path) -> dict:
    import av

    with av.open(str(path)) as box:
        vs = box.streams.video[0]
        times, rotation = [], 0
        for frame in box.decode(vs):
            times.append(float(frame.pts * frame.time_base))
            rotation = frame.rotation
        box.seek(0)
        audio = [(a.codec_context.name, a.codec_context.sample_rate) for a in box.streams.audio]
        ends = {}
        for packet in box.demux(*box.streams.audio):
            if packet.pts is not None:
                ends[packet.stream.index] = float((packet.pts + packet.duration) * packet.time_base)
        return {"size": (vs.codec_context.width, vs.codec_context.height), "codec": vs.codec_context.name,
                "pix_fmt": vs.codec_context.pix_fmt, "times": times, "rotation": rotation % 360, "audio": audio,
                "audio_end": sorted(ends.values())}


def decoded(path: Path) -> list[np.ndarray]:
    from agetool.clip.media import probe, read_frames

    return [f for f, _ in read_frames(probe(path))]


@pytest.fixture(scope="module")
def pipe(weights):
    import agetool

    return agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib")


def test_age_clip_keeps_frames_timing_size_and_audio(tmp_path, photo, weights, monkeypatch):
    src = make_clip(photo, tmp_path / "walk.mp4", 10, vfr=True)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")  # the default output folder is here: a folder of this test's own
    code = cli(["age", src, "--ages", "60", "--weights", weights, *FAST], None)[0]
    out = Path("walk_age60.mp4")  # the default: here
    try:
        assert code == 0 and out.is_file()
        a, b = video_facts(src), video_facts(out)
    finally:
        out.unlink(missing_ok=True)
    assert b["size"] == a["size"] == (160, 128)
    assert len(b["times"]) == len(a["times"]) == 10
    assert np.allclose(b["times"], a["times"], atol=1e-3)  # the variable frame timing, frame for frame
    steps = np.diff(a["times"])
    assert steps[:4].max() < 0.15 and steps[4:].min() > 0.15  # the source is variable-rate indeed
    assert (b["codec"], b["pix_fmt"]) == ("h264", "yuv420p")
    assert b["audio"] == a["audio"] == [("aac", 16000)]
    assert np.allclose(b["audio_end"], a["audio_end"], atol=1e-6)  # every audio packet copied


def test_face_aged_rest_kept_and_rotation(tmp_path, photo, pipe):
    src = make_clip(photo, tmp_path / "flat.mp4", 8)
    turned, rotated = tmp_path / "turned.mp4", tmp_path / "rot.mp4"  # stored on its side, shown upright (phones)
    ffmpeg("-i", src, "-vf", "transpose=clock", "-c:v", "libx264", "-crf", "12", "-c:a", "copy", turned)
    ffmpeg("-display_rotation", "90", "-i", turned, "-c", "copy", rotated)
    out = pipe.age_clip(rotated, tmp_path / "old.mp4", ages=60, mask=False)[0]
    a, b = video_facts(rotated), video_facts(out)
    assert b["rotation"] == a["rotation"] == 90 and b["size"] == a["size"] == (128, 160)
    before, after = decoded(rotated), decoded(out)
    assert before[0].shape == after[0].shape == (128, 160, 3)  # upright, as shown
    frames = list(pipe.clip_frames(rotated, ages=60, mask=False))
    assert [f.faces for f in frames] == [1] * 8
    diff = np.abs(after[0].astype(int) - before[0]).mean(axis=2)
    changed = diff > 12
    ys, xs = np.nonzero(changed)
    assert changed.mean() > 0.03 and changed.mean() < 0.3  # the face, not the frame
    assert np.median(diff[~changed]) < 3  # the rest: only the encoding


def test_static_clip_gives_identical_frames(tmp_path, photo, pipe):
    src = make_clip(photo, tmp_path / "still.mp4", 8, motion=False, crf=0)  # lossless: still frames decode equal
    source = decoded(src)
    assert all(np.array_equal(source[0], f) for f in source[1:])
    frames = [f.image for f in pipe.clip_frames(src, ages=60, mask=False)]
    assert all(np.array_equal(frames[0], f) for f in frames[1:])
    out = pipe.age_clip(src, tmp_path / "still_old.mp4", ages=60, crf=0, mask=False)[0]
    written = decoded(out)
    assert len(written) == 8 and all(np.array_equal(written[0], f) for f in written[1:])


def test_frame_without_a_face_passes_through(tmp_path, photo, pipe):
    src = make_clip(photo, tmp_path / "cut.mp4", 10, gray_frame=5)
    source = decoded(src)
    frames = list(pipe.clip_frames(src, ages=[60, "0-2"], mask=False))
    assert [f.faces for f in frames] == [1] * 5 + [0] + [1] * 4
    assert all(np.array_equal(img, source[5]) for img in frames[5].images)
    assert not np.array_equal(frames[4].image, source[4]) and not np.array_equal(frames[6].image, source[6])
    assert not np.array_equal(frames[4].images[0], frames[4].images[1])  # two ages, two renders


def _nearest_upscaler(path: Path, scale: int = 2) -> Path:
    """The real compact super-resolution architecture (small) whose last convolution is zero: it
    enlarges by repeating pixels, so the face shown at its size in the frame is the 256 px one again."""
    import torch

    from agetool.nn.realesrgan import SRVGGNetCompact

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=scale)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.zero_()
    torch.save({"params": net.state_dict()}, path)
    return path


def test_upscaled_clip_faces_land_where_the_256_px_ones_did(tmp_path, photo, weights, pipe):
    import agetool

    src = make_clip(photo, tmp_path / "up.mp4", 6)
    upscaling = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib",
                                                      upscale_weights=_nearest_upscaler(tmp_path / "nearest_x2.pth"))
    plain = [f.image for f in pipe.clip_frames(src, ages=60, mask=False)]
    upscaled = [f.image for f in upscaling.clip_frames(src, ages=60, mask=False, upscale=2)]
    assert upscaling.models.timer.seconds.get("upscale", 0) > 0  # the network ran
    assert len(upscaled) == len(plain) == 6
    for a, b in zip(plain, upscaled):  # a 512 px tile shown at the face's size: the same pixels, same place
        assert np.abs(a.astype(int) - b).max() <= 1


def test_age_clip_upscale_on_the_command_line(tmp_path, photo, weights, capsys):
    import torch

    from agetool.nn.realesrgan import SRVGGNetCompact

    src = make_clip(photo, tmp_path / "sharp.mp4", 4)
    torch.manual_seed(1)
    sr = tmp_path / "small_x4.pth"
    torch.save({"params": SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()}, sr)
    out = tmp_path / "sharp_old.mp4"
    code, _, err = cli(["age", src, "--ages", "60", "--out", out, "--weights", weights, "--upscale", "4",
                        "--upscale-weights", sr, *FAST], capsys)
    assert code == 0, err
    a, b = video_facts(src), video_facts(out)
    assert b["size"] == a["size"] and len(b["times"]) == len(a["times"]) == 4
    code, _, err = cli(["age", src, "--ages", "60", "--out", tmp_path / "x.mp4", "--weights", weights,
                        "--upscale", "3", *FAST], capsys)
    assert code == 2 and "--upscale 3" in err and not (tmp_path / "x.mp4").exists()


def test_encoder_bytes_do_not_depend_on_what_the_process_allocated(tmp_path, photo):
    """The same frames give the same file although the heap holds other leftovers each time. (x264's
    AVX-512 code read undefined memory at 150x100 for these frames: without the cap nearly every file
    differed.)"""
    from agetool.clip.media import ClipWriter, probe

    src = tmp_path / "small.mp4"
    ffmpeg("-loop", "1", "-framerate", "10", "-i", photo, "-vf", "crop=150:100", "-frames:v", 8,
           "-c:v", "libx264", "-pix_fmt", "yuv420p", src)
    info = probe(src)
    images = []
    for i in range(8):  # flat gray, a red square moving right
        image = np.full((100, 150, 3), 128, np.uint8)
        image[30:60, 20 + 4 * i:50 + 4 * i] = (250, 20, 20)
        images.append(image)
    rng = np.random.default_rng(0)
    files = set()
    for k in range(6):
        with ClipWriter(tmp_path / f"w{k}.mp4", info) as writer:
            for i, image in enumerate(images):
                junk = [rng.integers(0, 256, int(n), dtype=np.uint8) for n in rng.integers(4_000, 400_000, 30)]
                del junk  # freed blocks full of other values, for the encoder's next allocations
                writer.write(image, i)
        files.add((tmp_path / f"w{k}.mp4").read_bytes())
    assert len(files) == 1


def test_x264_is_capped_below_avx512_only_where_it_would_use_it():
    from agetool.video import x264_cpu_options

    avx2 = {"sse2", "avx", "avx2", "fma", "bmi1", "bmi2", "abm"}
    avx512 = {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}
    assert x264_cpu_options(avx2 | avx512) == {"x264-params": "asm=AVX2,SSE2Fast,Cache64"}
    assert x264_cpu_options(avx2) == {}
    assert x264_cpu_options(avx2 | {"avx512f", "avx512cd"}) == {}  # x264 leaves AVX-512 off there too
    assert x264_cpu_options(set()) == {}


def test_two_runs_give_identical_files(tmp_path, photo, weights):
    """Two runs of the command, each in a process of its own as a user runs them; piped, each says
    its progress from the start and at the first frame, with the faces of the frame."""
    src = make_clip(photo, tmp_path / "twice.mp4", 8)
    outs = []
    for k in range(2):
        out = tmp_path / f"run{k}.mp4"
        proc = spawn(["age", src, "--ages", "60", "--out", out, "--weights", weights, *FAST], tmp_path)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outs.append(out.read_bytes())
        lines = [line for line in err.splitlines() if line.startswith("ageing twice.mp4: ")]
        assert lines[0] == "ageing twice.mp4: 0/8 frames, 0 s", err
        assert lines[1].startswith("ageing twice.mp4: 1/8 frames, 1 face, "), err
        assert lines[-1].startswith("ageing twice.mp4: 8/8 frames, 1 face, "), err
    assert outs[0] == outs[1]


def test_a_progress_callback_hears_each_frames_faces(tmp_path, photo, pipe):
    src = make_clip(photo, tmp_path / "count.mp4", 3)
    heard, plain = [], []

    def progress(description, total):
        return lambda n, faces=None: heard.append((n, faces))

    pipe.age_clip(src, tmp_path / "a.mp4", 60, mask=False, progress=progress)
    assert heard == [(1, 1)] * 3
    pipe.age_clip(src, tmp_path / "b.mp4", 60, mask=False, progress=lambda d, t: plain.append)  # n alone
    assert plain == [1] * 3


def test_several_ages_and_progressive(tmp_path, photo, weights):
    src = make_clip(photo, tmp_path / "me.mp4", 10)
    code = cli(["age", src, "--ages", "20,60", "--out", f"{tmp_path / 'out'}/", "--weights", weights, *FAST], None)[0]
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["me_age20.mp4", "me_age60.mp4"]
    code = cli(["video", src, "--from", "20", "--to", "60", "--out", tmp_path / "grow.mp4", "--weights", weights,
                *FAST], None)[0]
    assert code == 0
    frames = decoded(tmp_path / "grow.mp4")
    young, old = decoded(tmp_path / "out" / "me_age20.mp4"), decoded(tmp_path / "out" / "me_age60.mp4")
    assert len(frames) == 10
    # 20 years at the start, 60 at the end: the first frame is the age-20 clip's, the last nearer the age-60 one
    d = lambda a, b: np.abs(a.astype(int) - b).mean()  # noqa: E731
    assert d(frames[0], young[0]) < d(frames[0], old[0]) and d(frames[-1], old[-1]) < d(frames[-1], young[-1])


def test_clip_usage_errors(tmp_path, photo, weights, capsys):
    src = make_clip(photo, tmp_path / "u.mp4", 4)
    code, _, err = cli(["age", src, "--weights", weights, *FAST], capsys)
    assert code == 2 and "--ages" in err
    code, _, err = cli(["age", src, "--ages", "60", "--aligned", "--weights", weights, *FAST], capsys)
    assert code == 2 and "--aligned" in err
    code, _, err = cli(["age", src, "--ages", "60,70", "--out", tmp_path / "x.mp4", "--weights", weights, *FAST],
                       capsys)
    assert code == 2 and "folder" in err
    code, _, err = cli(["video", src, "--from", "20", "--to", "60", "--caption", "--hold", "1", "--weights", weights,
                        *FAST], capsys)
    assert code == 2 and "--hold, --caption: only for a photo's video" in err
    code, _, err = cli(["age", src, "--ages", "+20", "--out", tmp_path / "rel.mp4", "--weights", weights, *FAST],
                       capsys)
    assert code == 1 and "relative age" in err and not (tmp_path / "rel.mp4").exists() and not partials(tmp_path)
    disguised = tmp_path / "clip.dat"  # recognised by its bytes, not its name
    disguised.write_bytes(src.read_bytes())
    code, _, err = cli(["age", disguised, "--ages", "60", "--out", tmp_path / "d.mp4", "--weights", weights, *FAST],
                       capsys)
    assert code == 0, err
    assert (tmp_path / "d.mp4").is_file()


def test_sigterm_leaves_no_file(tmp_path, photo, weights):
    src = make_clip(photo, tmp_path / "long.mp4", 150)
    out = tmp_path / "long_old.mp4"
    proc = spawn(["age", src, "--ages", "60", "--out", out, "--batch-size", "1", "--weights", weights, *FAST],
                 tmp_path)
    wait_for(lambda: any(p.stat().st_size > 0 for p in partials(tmp_path)), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert not out.exists() and not partials(tmp_path)


def test_parsing_is_held_between_frames(tmp_path, photo, weights, seeded_parser_file):
    """With the parser (the seeded full-size one), a face that keeps its look is parsed once, not per frame."""
    import agetool

    src = make_clip(photo, tmp_path / "parsed.mp4", 6)
    pipe = agetool.AgingPipeline.from_pretrained(model=weights, parser_weights=seeded_parser_file, device="cpu",
                                                 landmarks="dlib")
    parser = pipe.models.parser
    calls = []
    real = parser.parse
    parser.parse = lambda crop: calls.append(1) or real(crop)
    frames = list(pipe.clip_frames(src, ages=60))
    assert [f.faces for f in frames] == [1] * 6
    assert 1 <= len(calls) <= 2


def test_filters_and_links():
    from agetool.clip.filters import OneEuro
    from agetool.clip.tracks import iou, link
    from agetool.face.detect import DetectedFace

    f = OneEuro()
    x = np.array([[10.0, 20.0], [30.5, 40.25]])
    assert all(np.array_equal(f(x, t / 10), x) for t in range(5))  # still input, still output (exactly)
    jitter = [x + np.random.default_rng(k).normal(0, 1, x.shape) for k in range(30)]
    out = [f(j, 1 + k / 30) for k, j in enumerate(jitter)]
    assert np.std(np.diff(out, axis=0)) < 0.5 * np.std(np.diff(jitter, axis=0))  # jitter damped
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)

    def face(x0):
        lm = np.stack([np.linspace(x0, x0 + 40, 68), np.linspace(0, 40, 68)], 1).astype(np.float32)
        return DetectedFace(1.0, (x0, 0, x0 + 40, 40), lm)

    from agetool.clip.tracks import Track

    tracks = [Track.start(0, face(0)), Track.start(1, face(100))]
    pairs, left, new = link(tracks, [face(104), face(300), face(3)])
    assert [(t.id, d.box[0]) for t, d in pairs] == [(0, 3), (1, 104)] or \
           sorted((t.id, d.box[0]) for t, d in pairs) == [(0, 3), (1, 104)]
    assert not left and [d.box[0] for d in new] == [300]


def test_faces_by_reference_on_the_command_line(tmp_path, photo, weights, capsys):
    src = make_clip(photo, tmp_path / "ref.mp4", 4)
    code, _, err = cli(["age", src, "--ages", "60", "--faces", f"ref:{photo}", "--out", tmp_path / "r.mp4",
                        "--weights", weights, *FAST], capsys)
    assert code == 0, err
    assert not np.array_equal(decoded(tmp_path / "r.mp4")[0], decoded(src)[0])  # the person was found and aged


def test_a_person_who_comes_back_keeps_their_track(tmp_path, photo, pipe):
    """Gone for eight frames (longer than a missed detection is bridged), the same person is picked up
    again by their identity embedding: the same track, so the same model, estimate and noise draw."""
    src = make_clip(photo, tmp_path / "back.mp4", 20, gray_frame=6, gray_until=13)
    frames = list(pipe.clip_frames(src, ages=60, mask=False))
    assert [f.people for f in frames] == [[0]] * 6 + [[]] * 8 + [[0]] * 6


def test_landmarks_in_a_box_are_the_detectors(photo):
    """Following a face between detections gives, in the detection's own box, the detection's landmarks."""
    from PIL import Image

    from agetool.face.detect import DlibDetector

    image = np.asarray(Image.open(photo))
    detector = DlibDetector()
    face = detector.detect(image)[0]
    assert np.array_equal(detector.landmarks_in(image, face.box), face.landmarks)
    moved = detector.landmarks_in(image, tuple(v + 3 for v in face.box))
    assert 0 < np.abs(moved - face.landmarks).mean() < 5


def test_relative_ages_use_one_estimate_per_person(tmp_path, photo, weights):
    """'+20' on a person the classifier puts at 30 renders every frame at 50 years: one estimate held."""
    import agetool
    from tests.helpers import genderage_standin

    src = make_clip(photo, tmp_path / "rel.mp4", 6)
    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib",
                                                 classifier_weights=genderage_standin(tmp_path / "ga.onnx", age=30))
    relative = [f.image for f in pipe.clip_frames(src, ages="+20", mask=False)]
    years = [f.image for f in pipe.clip_frames(src, ages=50, mask=False)]
    assert all(np.array_equal(a, b) for a, b in zip(relative, years)) and len(relative) == 6


def test_one_clip_run_parses_its_ages_once(tmp_path, photo, weights, monkeypatch):
    """Two ages of one clip (two output clips): the ages are parsed once for the whole run."""
    from agetool import ages

    calls = []
    parse = ages.parse_ages
    monkeypatch.setattr(ages, "parse_ages", lambda *a, **k: calls.append(a) or parse(*a, **k))
    src = make_clip(photo, tmp_path / "walk.mp4", 3)
    code, _, err = cli(["age", src, "--ages", "60,5", "--out", f"{tmp_path / 'out'}/", "--weights", weights, *FAST], None)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["walk_age5.mp4", "walk_age60.mp4"]
    assert len(calls) == 1
