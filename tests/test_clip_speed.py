"""Clips at the networks' cost: the stage profile, features reused for crops that did not change,
reading and writing overlapped with the networks, the encoder's bfloat16 fast path.

Clips are made with the ffmpeg of imageio-ffmpeg from the astronaut photo (a real face); the
generator is the tiny seeded one and the paste-back mask elliptical (no parser) unless a test is
about parsing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, astronaut256, cli, make_clip

FAST = ["--no-mask", "--device", "cpu", "--landmarks", "dlib"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    return astronaut256(tmp_path_factory.mktemp("clips"))


def test_profile_names_each_stage_of_a_clip_with_its_share(tmp_path, photo, weights, capsys):
    src = make_clip(photo, tmp_path / "walk.mp4", 4)
    code, _, err = cli(["video", src, "--from", "20", "--to", "70", "--out", tmp_path / "old.mp4",
                        "--weights", weights, "--profile", *FAST], capsys)
    assert code == 0, err
    rows = {}
    for line in err.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 3 and cells[2].endswith("%"):
            rows[cells[0]] = (float(cells[1]), int(cells[2].rstrip("%")))
    for stage in ("detect", "encode", "decode", "paste", "write", "total"):
        assert stage in rows, err
    assert rows["total"][1] == 100
    mine = [share for stage, (_, share) in rows.items() if stage != "total" and not stage.endswith("(background)")]
    assert abs(sum(mine) - 100) <= len(mine) / 2 + 1, err  # each stage's share of the run, rounded


# ---------------------------------------------------------------- features reused

@pytest.fixture()
def encoded(monkeypatch) -> list:
    """Crops the generator's encoder is given, counted (one entry per call: the batch's size)."""
    from agetool.engine import AgingEngine

    calls: list[int] = []
    real = AgingEngine.encode

    def encode(self, x, *args, **kwargs):
        calls.append(int(x.shape[0]))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(AgingEngine, "encode", encode)
    return calls


@pytest.fixture(scope="module")
def pipe(weights):
    import agetool

    return agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib")


def _aged(pipe, clip: Path, **options) -> list[np.ndarray]:
    return [f.image for f in pipe.clip_frames(clip, ages=60, mask=False, **options)]


def test_a_still_face_is_encoded_once(tmp_path, photo, pipe, encoded, monkeypatch):
    from agetool.clip import runner

    still = make_clip(photo, tmp_path / "still.mp4", 6, motion=False)
    frames = _aged(pipe, still)
    assert len(frames) == 6 and sum(encoded) == 1  # six frames of one face: one crop encoded
    encoded.clear()
    monkeypatch.setattr(runner, "REUSE_LEVELS", -1.0)  # nothing reused: every crop encoded
    assert len(_aged(pipe, still)) == 6 and sum(encoded) == 6


def test_crops_that_change_are_encoded_again(tmp_path, photo, pipe, encoded, monkeypatch):
    """A face that moves across the frame: the crops that the threshold lets through reuse the last
    encoded one's work; the others are encoded. Either way the frames stay within a few levels of
    the path that encodes every crop."""
    from agetool.clip import runner
    from agetool.clip.tracks import blocks, change

    seen: list = []
    real = runner.ClipRunner._step

    def step(self, index, time, image):
        faces = real(self, index, time, image)
        seen.extend(f.network_input for f in faces)
        return faces

    monkeypatch.setattr(runner.ClipRunner, "_step", step)
    clip = make_clip(photo, tmp_path / "walk.mp4", 10)
    fast = _aged(pipe, clip)
    # the count the rule gives: a crop is encoded when it differs from the last encoded one by more
    expected, last = 0, None
    for crop in seen:
        if last is None or change(blocks(crop), last) > runner.REUSE_LEVELS:
            expected, last = expected + 1, blocks(crop)
    assert sum(encoded) == expected and 1 < expected < 10, (expected, sum(encoded))
    monkeypatch.setattr(runner, "REUSE_LEVELS", -1.0)
    full = _aged(pipe, clip)
    assert len(fast) == len(full) == 10
    for a, b in zip(fast, full):
        diff = np.abs(a.astype(np.int16) - b)
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 16, (diff.mean(), np.percentile(diff, 99))


# ---------------------------------------------------------------- reading and writing beside the networks

def _threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name in ("agetool-read", "agetool-write")]


def test_read_ahead_keeps_every_item_in_order_and_stops_its_thread():
    from agetool.clip.overlap import Ahead

    closed = []

    def items(n):
        try:
            yield from range(n)
        finally:
            closed.append(True)

    with Ahead(items(500), 3) as ahead:
        assert list(ahead) == list(range(500))
    assert closed == [True] and not _threads()
    with Ahead(items(500), 3) as ahead:  # the caller stops early: the reading stops, its generator is closed
        assert [next(ahead) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert closed == [True, True] and not _threads()


def test_read_ahead_raises_a_readers_error_in_its_place():
    from agetool.clip.overlap import Ahead
    from agetool.errors import InputError

    def items():
        yield from range(7)
        raise InputError("clip.mp4: frame 7 is damaged")

    got = []
    with pytest.raises(InputError, match="frame 7"):
        with Ahead(items(), 2) as ahead:
            for item in ahead:
                got.append(item)
    assert got == list(range(7)) and not _threads()


def test_write_behind_keeps_order_and_stops_at_the_first_error():
    from agetool.clip.overlap import Behind
    from agetool.errors import OutputError

    done = []
    with Behind(done.append, 4) as behind:
        for i in range(300):
            behind.put(i)
        behind.finish()
    assert done == list(range(300)) and not _threads()

    done.clear()

    def write(i):
        if i == 5:
            raise OutputError("out.mp4: no space left")
        done.append(i)

    with pytest.raises(OutputError, match="no space"):
        with Behind(write, 2) as behind:
            for i in range(100):
                behind.put(i)
            behind.finish()
    assert done == [0, 1, 2, 3, 4] and not _threads()  # nothing after the failed call


def test_a_clip_that_fails_to_write_leaves_no_file_and_no_thread(tmp_path, photo, pipe, monkeypatch):
    from agetool.clip.media import ClipWriter
    from agetool.errors import OutputError

    clip = make_clip(photo, tmp_path / "walk.mp4", 12)
    real = ClipWriter.write

    def write(self, image, pts):
        if self.frames == 9:
            raise OutputError(f"writing {self.path} failed: no space left on device")
        real(self, image, pts)

    monkeypatch.setattr(ClipWriter, "write", write)
    with pytest.raises(OutputError, match="no space"):
        pipe.age_clip(clip, tmp_path / "old.mp4", ages=60, mask=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["walk.mp4"] and not _threads()


def test_frames_stopped_early_stop_the_reading(tmp_path, photo, pipe):
    clip = make_clip(photo, tmp_path / "walk.mp4", 12)
    frames = pipe.clip_frames(clip, ages=60, mask=False)
    first = [next(frames) for _ in range(3)]
    assert [f.index for f in first] == [0, 1, 2]
    frames.close()
    assert not _threads()


def test_written_clip_has_every_frame_in_order(tmp_path, photo, pipe):
    """The frames written behind the networks are those the runner gives, in its order (lossless H.264)."""
    from agetool.clip.media import probe, read_frames

    clip = make_clip(photo, tmp_path / "walk.mp4", 12)
    out = pipe.age_clip(clip, tmp_path / "old.mp4", ages=60, mask=False, crf=0)[0]
    runner = [(f.pts, f.image) for f in pipe.clip_frames(clip, ages=60, mask=False)]
    written = list(read_frames(probe(out)))
    assert [p for _, p in written] == [p for p, _ in runner] == [p for _, p in read_frames(probe(clip))]
    for (_, a), (b, _) in zip(runner, written):  # yuv420p: the colours subsampled, nothing else
        assert np.abs(a.astype(np.int16) - b).mean() < 3
    assert not _threads()


# ---------------------------------------------------------------- the encoder's bfloat16

def test_a_clips_encoder_runs_in_the_engines_bfloat16_where_a_photos_stays_float32(weights):
    """On this CPU bfloat16 is emulated (slow, but computed): the batched (clip) path is checked for
    what it computes; where the CPU has it natively, ``dtype="auto"`` picks it (next test)."""
    import torch

    from agetool.engine import AgingEngine
    from agetool.images import to_tensor
    from agetool.nn.checkpoint import load_generator
    from tests.helpers import face_like

    gen = load_generator(weights, device=torch.device("cpu"))
    x = to_tensor(np.stack([face_like(64, seed) for seed in range(3)]))
    exact = AgingEngine(gen, torch.device("cpu"), torch.float32).encode(x, batched=True)
    half = AgingEngine(gen, torch.device("cpu"), torch.bfloat16)
    assert torch.equal(half.encode(x), exact)  # a photo's faces: float32 whatever the engine's dtype
    fast = half.encode(x, batched=True)
    assert fast.dtype == torch.float32 and fast.shape == exact.shape
    error = (fast - exact).norm() / exact.norm()
    assert 0 < error < 0.03, float(error)  # computed in bfloat16 (8 bits of mantissa), close to float32


@pytest.mark.skipif("not __import__('agetool.device', fromlist=['x']).cpu_has_native_bf16()",
                    reason="the CPU has no native bfloat16 (AVX512-BF16 or AMX)")
def test_auto_dtype_gives_clips_a_bfloat16_encoder_on_a_cpu_with_native_bfloat16(weights, tmp_path, photo, encoded):
    import torch

    import agetool

    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib", dtype="auto")
    assert pipe.dtype == torch.bfloat16
    clip = make_clip(photo, tmp_path / "walk.mp4", 4)
    assert len(_aged(pipe, clip)) == 4 and sum(encoded) >= 1


# ---------------------------------------------------------------- parsing less often

def test_held_labels_follow_a_face_that_only_moved_in_its_crop():
    """The camera moved (the face is shifted, scaled and turned in the frame) and the crop's square
    lags the face (shifted by 7 px and scaled by 6%, as smoothed landmarks do on a moving face): the
    last parse's labels are moved with the face, not parsed again, and land where the same regions
    of the face are in the new crop. A different picture is parsed."""
    import cv2

    from agetool.clip.tracks import Track, fast_align, similarity, thumbnail
    from agetool.face.detect import DlibDetector, bundled_dlib_predictor
    from agetool.images import read_image

    photo = read_image(ROOT / "examples" / "astronaut.png")
    (face,) = DlibDetector(predictor=bundled_dlib_predictor()).detect(photo)
    lm = face.landmarks.astype(np.float64)
    yy, xx = np.mgrid[:photo.shape[0], :photo.shape[1]]
    regions = ((xx // 32 + yy // 32) % 5).astype(np.uint8)  # labels painted on the photo: a checker of 5 classes
    camera = cv2.getRotationMatrix2D((256.0, 256.0), 3.0, 1.08)
    camera[:, 2] += (14, -9)
    frame = cv2.warpAffine(photo, camera, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    frame_regions = cv2.warpAffine(regions, camera, (512, 512), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT)
    measured = lm @ camera[:, :2].T + camera[:, 2]  # the face's landmarks in the new frame

    def crop(image, labels, points):
        a = fast_align(image, points, 256)
        return a.image, a, cv2.warpAffine(labels, a.photo_to_crop_matrix(256)[:2], (256, 256), flags=cv2.INTER_NEAREST)

    first, first_alignment, first_labels = crop(photo, regions, lm)
    centre = measured.mean(0)
    now, now_alignment, expected = crop(frame, frame_regions, (measured - centre) * 1.06 + centre + (7, -4))
    assert np.allclose(similarity(lm, measured)[:2], camera, atol=1e-6)
    t = Track.start(0, face)
    t.landmarks = measured
    t.parsed_crop, t.labels = (first, first_alignment, first_labels, lm), first_labels
    assert t.carry_labels(now, now_alignment, thumbnail(now), 0.95)
    inside = (slice(16, 240), slice(16, 240))  # off the edges (reflected there)
    assert (t.labels[inside] == expected[inside]).mean() > 0.95  # nearest resampling twice: the edges differ
    assert (first_labels[inside] == expected[inside]).mean() < 0.8  # held as they were, they would be off
    assert t.target_mask is not None
    other = np.ascontiguousarray(now[::-1])  # not the face moved: a different picture
    assert not t.carry_labels(other, now_alignment, thumbnail(other), 0.95)
