"""The web app's work per request is bounded: ages per request, one decode per age shared by the grid
and the tiles archive, a time budget and cancellation checked between decodes, unique archive member
names, and a quota on uploads kept (the oldest go first); a pipeline built from a generator file is the
page's one model, named by its file."""

from __future__ import annotations

import os
import time
import zipfile

import pytest

from agetool.errors import ResourceError, UsageError
from agetool.results import unique_labels
from agetool.serve.studio import MAX_REQUEST_AGES, Limits, Session, Studio


@pytest.fixture(scope="module")
def pipe(weights):
    from agetool import AgingPipeline

    return AgingPipeline.from_pretrained(model=weights, device="cpu")


@pytest.fixture()
def studio(pipe, tmp_path):
    return Studio(pipe, tmp_path / "work")


@pytest.fixture()
def session(pipe, crop):
    return Session(pipe.encode(crop, aligned=True, mask=False), pipe.model, False, name="crop")


def _count_decodes(monkeypatch) -> list:
    """The latent of every frame the generator decodes, in order."""
    from agetool.engine import AgingEngine

    seen = []
    decode_pairs = AgingEngine.decode_pairs

    def counting(self, jobs):
        rows = [w[i] for _, w in jobs for i in range(len(w))]
        for row, frame in zip(rows, decode_pairs(self, jobs)):
            seen.append(row)
            yield frame

    monkeypatch.setattr(AgingEngine, "decode_pairs", counting)
    return seen


def test_ages_per_request_are_bounded_and_parsed_once(studio, session, monkeypatch):
    from agetool import ages

    render = studio.options(",".join(["5"] * MAX_REQUEST_AGES))
    assert len(render.targets) == MAX_REQUEST_AGES
    with pytest.raises(UsageError, match=f"at most {MAX_REQUEST_AGES} a request"):
        studio.options(",".join(["5"] * (MAX_REQUEST_AGES + 1)))
    calls = []
    parse = ages.parse_ages
    monkeypatch.setattr(ages, "parse_ages", lambda *a, **k: calls.append(a) or parse(*a, **k))
    studio.grid(session, studio.options("5, 30, 50-69, 80"), paste_back=False)
    studio.warnings(studio.options("80"))
    assert len(calls) == 2  # one web grid and its warnings: the ages parsed once each


def test_each_age_is_decoded_once_for_the_grid_and_the_tiles(studio, session, monkeypatch):
    seen = _count_decodes(monkeypatch)
    _, archive = studio.grid(session, [5.0, 30.0, "50-69"])
    assert len(seen) == 3 and not any(bool((a == b).all()) for i, a in enumerate(seen) for b in seen[:i])
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["face0_30.png", "face0_5.png", "face0_50-69.png", "face0_input.png"]


def test_repeated_ages_get_their_own_archive_members(studio, session):
    _, archive = studio.grid(session, [5.0, 5.0, 30.0])
    with zipfile.ZipFile(archive) as z:
        names = z.namelist()
    assert sorted(names) == ["face0_30.png", "face0_5.png", "face0_5_2.png", "face0_input.png"]
    assert unique_labels(["input", "5", "5_2", "5"]) == ["input", "5", "5_2", "5_3"]


def test_a_request_over_its_time_budget_stops_between_decodes(studio, session, monkeypatch):
    seen = _count_decodes(monkeypatch)
    studio.budget_s = 0.0
    with pytest.raises(ResourceError, match="took more than 0 s"):
        studio.grid(session, [5.0, 30.0, 45.0])
    assert len(seen) <= 1
    assert not list((studio.workdir).glob("out-*/*.zip"))


def test_a_cancelled_request_stops_between_decodes(studio, session, monkeypatch):
    from agetool.engine import frame_pool

    seen = _count_decodes(monkeypatch)
    with pytest.raises(UsageError, match="cancelled"):
        studio.grid(session, [5.0, 30.0, 45.0, 60.0, 69.0] * 3, stop=lambda: len(seen) >= 1)
    pool = frame_pool()
    assert 1 <= len(seen) <= 1 + (0 if pool is None else 2 * pool.workers)  # frames already under way finish


def test_uploads_are_kept_within_a_quota_oldest_first(pipe, tmp_path, crop):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    now = time.time()
    for k in range(4):  # four old uploads of 1000 bytes, oldest first
        old = uploads / f"u{k}" / "photo.bin"
        old.parent.mkdir()
        old.write_bytes(b"x" * 1000)
        os.utime(old, (now - 100 + k, now - 100 + k))
    current = uploads / "new" / "crop.png"
    current.parent.mkdir()
    current.write_bytes(crop.read_bytes())
    quota = current.stat().st_size + 2000
    studio = Studio(pipe, tmp_path / "work", uploads=uploads, upload_quota=quota)
    assert studio.read(current).shape == (256, 256, 3)
    left = sorted(p.parent.name for p in uploads.rglob("*") if p.is_file())
    assert left == ["new", "u2", "u3"]


def test_client_mistakes_are_one_log_line_and_none_after_the_stop(caplog):
    import logging
    import sys

    from agetool.serve.server import ClientNoise

    noise = ClientNoise()
    try:
        {}[999]  # what Gradio meets with a request for an event that does not exist
    except KeyError:
        record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application\n",
                                   None, sys.exc_info())
    assert noise.filter(record) and record.exc_info is None
    assert record.getMessage() == "Exception in ASGI application (KeyError: 999)"
    with caplog.at_level(logging.WARNING, logger="agetool.serve"):
        try:
            raise ValueError("1 validation error for ImageData\n  Input should be a valid dictionary")
        except ValueError:
            noise.print_exc()  # in place of Gradio's traceback.print_exc()
    assert [r.getMessage() for r in caplog.records] == ["rejected a request: ValueError: 1 validation error for ImageData"]
    noise.stopped = True
    assert not noise.filter(logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "late", None, None))
    caplog.clear()
    try:
        raise ValueError("late")
    except ValueError:
        noise.print_exc()
    assert not caplog.records


def test_a_job_gradio_gave_up_on_stops_the_work():
    from types import SimpleNamespace

    from agetool.serve.app import cancelled

    mine = SimpleNamespace(session_hash="s1", alive=True)
    other = SimpleNamespace(session_hash="s2", alive=False)
    demo = SimpleNamespace(_queue=SimpleNamespace(active_jobs=[None, [mine, other]]))
    stop = cancelled(demo, SimpleNamespace(session_hash="s1"))
    assert not stop()  # another session's cancelled job is not this one
    mine.alive = False  # what Gradio does when the page is closed or the job cancelled
    assert stop()


# ------------------------------------------------------------------------ short clips

@pytest.fixture(scope="module")
def clip_studio_pipe(weights):
    from agetool import AgingPipeline

    return AgingPipeline.from_pretrained(model=weights, device="cpu", landmarks="dlib")


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory):
    from tests.helpers import astronaut_clip

    return astronaut_clip(tmp_path_factory.mktemp("page-clip"))


def test_the_page_ages_a_short_clip(clip_studio_pipe, short_clip, tmp_path):
    from agetool.clip import probe

    studio = Studio(clip_studio_pipe, tmp_path / "work", fixed_model="tiny.safetensors")
    out = studio.clip(short_clip, 60, mask=False)
    assert out.name == "walk_age60.mp4" and (tmp_path / "work") in out.parents
    a, b = probe(short_clip), probe(out)
    assert (b.frames, b.width, b.height, b.audio) == (a.frames, a.width, a.height, a.audio) == (6, 160, 128, ["aac"])


def test_the_page_refuses_what_is_not_a_short_clip(clip_studio_pipe, short_clip, tmp_path, crop, monkeypatch):
    import agetool.serve.studio as studio_module
    from agetool.errors import InputError

    studio = Studio(clip_studio_pipe, tmp_path / "work", fixed_model="tiny.safetensors")
    with pytest.raises(InputError, match="crop.png: not a video clip"):
        studio.clip(crop, 60)
    monkeypatch.setattr(studio_module, "MAX_CLIP_FRAMES", 5)
    with pytest.raises(InputError, match="walk.mp4: 6 frames.*up to 5 frames"):
        studio.clip(short_clip, 60)
    monkeypatch.undo()
    with pytest.raises(UsageError, match="age=80.0"):
        studio.clip(short_clip, 80)
    small = Studio(clip_studio_pipe, tmp_path / "work", fixed_model="tiny.safetensors", limits=Limits(max_bytes=4096))
    with pytest.raises(InputError, match="walk.mp4: .* MB, over the limit of 0.0 MB"):
        small.clip(short_clip, 60)
    assert not list((tmp_path / "work").rglob("*.mp4"))


def test_a_cancelled_clip_leaves_no_file(clip_studio_pipe, short_clip, tmp_path):
    studio = Studio(clip_studio_pipe, tmp_path / "work", fixed_model="tiny.safetensors")
    calls, told = [], []
    with pytest.raises(UsageError, match="cancelled after 2 of 6 frames"):
        studio.clip(short_clip, 60, mask=False, stop=lambda: calls.append(1) or len(calls) > 2,
                    frame=lambda done, total: told.append((done, total)))
    assert len(calls) == 3  # checked before the work and frame by frame
    assert told == [(1, 6), (2, 6)]  # each frame told as it is done
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]


def test_a_job_its_client_cancelled_stops_the_work():
    """A cancel from the page or a program takes the job out of the queue's running jobs (its handler
    runs on): the work stops too, while another session's running job does not stop this one."""
    from types import SimpleNamespace

    from agetool.serve.app import cancelled

    mine, other = SimpleNamespace(session_hash="s1", alive=True), SimpleNamespace(session_hash="s2", alive=True)
    jobs = [[mine], [other]]
    demo = SimpleNamespace(_queue=SimpleNamespace(active_jobs=jobs))
    stop = cancelled(demo, SimpleNamespace(session_hash="s1"))
    assert not stop()
    jobs[1] = None  # the other session's job ends
    assert not stop()
    jobs[0] = None  # what Gradio does with a job cancelled by its client
    assert stop()


def test_the_clip_budget_counts_from_when_the_work_starts(clip_studio_pipe, short_clip, tmp_path, monkeypatch):
    """A request that waited 700 s for the one slot still has its whole budget (a fake clock)."""
    import threading

    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    studio = Studio(clip_studio_pipe, tmp_path / "work", fixed_model="tiny.safetensors")
    held, release = threading.Event(), threading.Event()

    def busy():  # another request holding the slot
        with studio._lock:
            held.set()
            release.wait(60)

    other = threading.Thread(target=busy)
    other.start()
    held.wait(60)
    result, asked = [], threading.Event()
    folder = studio.new_folder
    monkeypatch.setattr(studio, "new_folder", lambda: asked.set() or folder())  # just before it waits for the slot
    waiting = threading.Thread(target=lambda: result.append(studio.clip(short_clip, 60, mask=False)))
    waiting.start()
    asked.wait(60)
    clock[0] += 700  # longer than CLIP_BUDGET_S spent waiting
    release.set()
    other.join()
    waiting.join(300)
    assert result and result[0].is_file()


def test_an_age_too_large_for_a_float_is_shown_as_typed(studio, session):
    with pytest.raises(UsageError) as e:
        studio.grid(session, "5, 1e309")
    assert "1e309" in str(e.value) and "inf" not in str(e.value)


def test_the_app_is_built_without_gradio_warnings(studio):
    """Gradio takes each handler's gr.Request parameter as its own (no "Expected 4 arguments" lines)."""
    import warnings

    pytest.importorskip("gradio")
    from agetool.serve.app import build_app

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_app(studio)
    assert not [str(w.message) for w in seen if issubclass(w.category, UserWarning)]


def test_a_clip_that_changes_size_stops_at_its_first_other_frame(clip_studio_pipe, tmp_path):
    """Probed at its first size (within the page's 1920x1080), it stops at the first frame of another."""
    from agetool.errors import InputError
    from tests.helpers import ffmpeg

    for name, size in (("a", "320x240"), ("b", "640x480")):
        ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=10", "-frames:v", 3, "-c:v", "libx264",
               "-pix_fmt", "yuv420p", tmp_path / f"{name}.h264")
    (tmp_path / "ab.h264").write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "b.h264").read_bytes())
    ffmpeg("-r", "10", "-i", tmp_path / "ab.h264", "-c", "copy", tmp_path / "grows.mp4")
    studio = Studio(clip_studio_pipe, tmp_path / "work", fixed_model="tiny.safetensors")
    with pytest.raises(InputError, match="changes size"):
        studio.clip(tmp_path / "grows.mp4", 60, mask=False)
    assert not list((tmp_path / "work").rglob("*.mp4"))


def test_the_pages_files_are_signed_and_labelled_when_the_server_is(pipe, session, crop, clip_studio_pipe,
                                                                     short_clip, tmp_path):
    """`agetool serve --sign --sign-key --label`: the grid, every member of the tile archive, the aging
    video and the clip carry valid Content Credentials (our test CA is not trusted: nothing else
    fails), and the clip's frames the visible mark where an unlabelled server's have none."""
    import numpy as np

    pytest.importorskip("c2pa", reason='signing needs the c2pa extra: pip install "agetool[c2pa]"')
    from agetool.credentials import Signing
    from tests.test_clips import decoded
    from tests.test_provenance import _certificates, _reader

    chain, key, _ = _certificates(tmp_path)
    signing = Signing.load(chain, key)

    def signed(path) -> bool:
        import c2pa

        try:
            manifest, results = _reader(path)
        except c2pa.C2paError.ManifestNotFound:
            return False
        return manifest is not None and \
            [f["code"] for f in results["activeManifest"]["failure"]] == ["signingCredential.untrusted"]

    studio = Studio(pipe, tmp_path / "work", fixed_model="tiny.safetensors", signing=signing, label=True)
    for source in (None, crop):  # the input crop is signed as opened from the upload where there is one
        session.source = None if source is None else str(source)
        grid, archive = studio.grid(session, "20,60")
        assert signed(grid)
        members = tmp_path / f"members{source is None}"
        with zipfile.ZipFile(archive) as z:
            z.extractall(members)
        assert sorted((p.name, signed(p)) for p in members.iterdir()) == [
            ("face0_20.png", True), ("face0_60.png", True), ("face0_input.png", source is not None)]
    assert signed(studio.video(session, steps=2))
    marked = Studio(clip_studio_pipe, tmp_path / "marked", fixed_model="tiny.safetensors", signing=signing, label=True)
    plain = Studio(clip_studio_pipe, tmp_path / "plain", fixed_model="tiny.safetensors")
    a, b = marked.clip(short_clip, 60, mask=False), plain.clip(short_clip, 60, mask=False)
    assert signed(a)
    for x, y in zip(decoded(a), decoded(b)):
        h, w = x.shape[:2]
        differs = np.abs(x.astype(int) - y).max(axis=2) > 40
        assert differs[h // 2:, w // 2:].any() and not differs[: h // 2].any()  # the corner mark, nothing else


def test_a_generator_file_is_the_pages_one_model_named_plainly(studio, session, pipe):
    from agetool.serve.app import plain

    assert studio.fixed_model == "tiny.safetensors" and studio.pipe_for("female") is pipe  # no model choice
    assert studio.describe(session)[0].startswith("face 0: tiny.safetensors (the server's own generator file)")
    assert plain("face 0: my_model_2.safetensors") == "face 0: my\\_model\\_2\\.safetensors"

