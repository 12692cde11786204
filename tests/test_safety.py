"""Safe loading of weights files and clean interrupts (real signals)."""

from __future__ import annotations

import io
import signal
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from agetool.errors import CheckpointError
from agetool.nn.checkpoint import load_generator, read_state_dict
from tests.helpers import cli, face_like, partials, spawn, tiny_generator_file, wait_for


class _Payload:
    """Unpickling this would create a marker file: a stand-in for code hidden in a download."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = tmp_path / "latest_net_g_running.pth"
    torch.save({"id_encoder.encoder.1.conv.bias": _Payload(marker)}, evil)
    with pytest.raises(CheckpointError, match="not a readable weights file"):
        load_generator(evil)
    assert not marker.exists()
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like()).save(crop)
    code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--weights", evil, "--out", tmp_path / "g.png"], capsys)
    assert code == 1 and "not a readable weights file" in err
    assert not marker.exists()


def test_zip_members_never_land_beside_the_archive(tmp_path):
    from agetool.nn.generator import Generator, GeneratorConfig

    sd = Generator(GeneratorConfig(ngf=8)).state_dict()
    buf = io.BytesIO()
    torch.save(sd, buf)
    inner = tmp_path / "inner"
    inner.mkdir()
    archive = inner / "males_model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../escaped/latest_net_g_running.pth", buf.getvalue())
        zf.writestr("/abs/evil.txt", b"x")
    before = set(tmp_path.rglob("*"))
    loaded, _ = read_state_dict(archive)
    assert set(loaded) == set(sd)
    assert set(tmp_path.rglob("*")) == before
    assert not (tmp_path.parent / "escaped").exists()


def test_zip_without_the_member(tmp_path):
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", b"hello")
    with pytest.raises(CheckpointError, match="has no latest_net_g_running.pth"):
        read_state_dict(archive)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_generator_file(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_sigint_during_video_leaves_no_partial_file(tmp_path, weights):
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like()).save(crop)
    frames, out = tmp_path / "frames", tmp_path / "v.mp4"
    proc = spawn(["video", crop, "--out", out, "--frames", frames, "--steps", "400", "--batch-size", "2",
                   "--aligned", "--no-mask", "--weights", weights, "--device", "cpu"], tmp_path)
    wait_for(lambda: frames.is_dir() and len(list(frames.glob("frame_*.png"))) >= 3, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not out.exists()
    assert not partials(tmp_path)
    for png in frames.glob("frame_*.png"):
        assert Image.open(png).size == (256, 256)  # every kept frame is complete


def test_sigint_during_folder_run_then_resume(tmp_path, weights):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        Image.fromarray(face_like(seed=i)).save(src / f"p{i:02d}.png")
    args = ["age", src, "--out", out, "--aligned", "--no-mask", "--weights", weights, "--device", "cpu"]
    proc = spawn(args, tmp_path)
    wait_for(lambda: out.is_dir() and len(list(out.glob("*_ages.png"))) >= 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not partials(tmp_path)
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*_ages.png")}
    assert 2 <= len(kept) < 40
    for name in kept:
        assert Image.open(out / name).size == (7 * 256, 256)
    proc = spawn([*args, "--skip-existing"], tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert len(list(out.glob("*_ages.png"))) == 40
    assert all((out / n).stat().st_mtime_ns == t for n, t in kept.items())


@pytest.mark.parametrize("chained", [True, False], ids=["raised-while-handling", "raised-after"])
def test_an_error_that_ctrl_c_causes_ends_as_the_interrupt(tmp_path, weights, monkeypatch, capsys, chained):
    """Ctrl-C can land inside a lock's or a thread pool's bookkeeping (a wait it cut short), so that
    what reaches the command line is another error, such as "cannot release un-acquired lock": the
    run still ends as interrupted (exit 130, the one line), not as an internal error."""
    import os
    import time

    from agetool.pipeline import AgingPipeline

    def stopped_while_loading(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the command line's handler raises in this thread
            time.sleep(30)  # cut short by the signal
        except KeyboardInterrupt:
            if chained:
                raise RuntimeError("cannot release un-acquired lock")  # noqa: B904 - raised while handling it
        raise RuntimeError("cannot release un-acquired lock")

    monkeypatch.setattr(AgingPipeline, "from_pretrained", stopped_while_loading)
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like()).save(crop)
    code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--weights", weights, "--out", tmp_path / "g.png"], capsys)
    assert code == 130, err
    assert err.strip().splitlines() == ["error: interrupted; finished outputs were kept, partial ones removed"]
    assert not (tmp_path / "g.png").exists()
