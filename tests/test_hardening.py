"""Stopping, leftovers, file permissions, numbers and memory: the command line under abuse.

Signals are real: the command runs in a subprocess and receives them with ``os.kill``.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import common, ROOT, cli, face_like, partials, spawn, wait_for


# ---------------------------------------------------------------- stop signals
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_stop_signal_during_video(tmp_path, crop, weights, signame):
    signum = getattr(signal, signame)
    out = tmp_path / "v.mp4"
    proc = spawn(["video", crop, "--out", out, "--steps", "2000", "--batch-size", "2", *common(weights)], tmp_path)
    wait_for(lambda: partials(tmp_path), proc)  # the encoder has started
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signame}" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    assert not partials(tmp_path)


def test_sigterm_during_folder_run_keeps_finished_grids(tmp_path, weights):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(40):
        Image.fromarray(face_like(seed=i)).save(src / f"p{i:02d}.png")
    proc = spawn(["age", src, "--out", out, *common(weights)], tmp_path)
    wait_for(lambda: out.is_dir() and len(list(out.glob("*_ages.png"))) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert not partials(tmp_path)
    kept = list(out.glob("*_ages.png"))
    assert 2 <= len(kept) < 40
    for p in kept:
        assert Image.open(p).size == (7 * 256, 256)


def test_leftovers_of_a_killed_video_are_removed_by_the_next_run(tmp_path, crop, weights):
    out = tmp_path / "v.mp4"
    proc = spawn(["video", crop, "--out", out, "--steps", "2000", "--batch-size", "2", *common(weights)], tmp_path)
    wait_for(lambda: partials(tmp_path), proc)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.communicate(timeout=60)
    left = partials(tmp_path)
    assert left, "a killed run leaves its temporary file"
    code, _, _ = cli(["video", crop, "--out", out, "--steps", "1", *common(weights)])
    assert code == 0 and out.is_file()
    assert not partials(tmp_path)


def test_temporary_files_of_running_processes_are_kept(tmp_path, crop, weights):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "out"
    out.mkdir()
    stale = out / f".g.{dead_pid}-0123abcd.part.png"
    live = out / f".g.{os.getppid()}-89abcdef.part.png"  # the process that runs the tests' runner
    other = out / ".notes.txt"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    code, _, _ = cli(["age", crop, "--out", out / "g.png", *common(weights)])
    assert code == 0
    assert not stale.exists()
    assert live.exists() and other.exists()


# ---------------------------------------------------------------- permissions
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_have_the_permissions_of_new_files(tmp_path, crop, weights, umask):
    old = os.umask(umask)
    try:
        grid, tiles, video, frames = tmp_path / "g.png", tmp_path / "tiles", tmp_path / "v.mp4", tmp_path / "f"
        assert cli(["age", crop, "--out", grid, "--tiles", tiles, *common(weights)])[0] == 0
        assert cli(["video", crop, "--out", video, "--steps", "1", "--frames", frames, *common(weights)])[0] == 0
    finally:
        os.umask(old)
    files = [grid, video, *tiles.rglob("*.png"), *frames.glob("*.png")]
    assert len(files) > 4
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("args, flag", [
    (["--fps", "inf"], "--fps"), (["--fps", "nan"], "--fps"), (["--fps", "1e9"], "--fps"),
])
def test_video_numbers_out_of_range_are_usage_errors(tmp_path, crop, weights, capsys, args, flag):
    out = tmp_path / "v.mp4"
    code, _, err = cli(["video", crop, "--out", out, *args, *common(weights)], capsys)
    assert code == 2, err
    line = err.strip()
    assert line.startswith("error: ") and flag in line and "\n" not in line
    assert not out.exists() and not partials(tmp_path)


def test_frame_total_states_the_estimate():
    from agetool.errors import UsageError
    from agetool.options import VideoOptions
    from agetool.options import MAX_FRAMES, frame_total

    assert frame_total(20, 30.0, 1.0) == 5 * 20 + 1 + 60
    with pytest.raises(UsageError, match=r"make 338,001 frames \(.* min of video\); the limit is") as e:
        frame_total(10_000, 240.0, 600.0)  # each value allowed, the sum not
    assert MAX_FRAMES < 338_001
    assert "steps=10000" in str(e.value)
    for steps, fps, hold in [(0, 30, 0), (20, float("inf"), 0), (20, 30, float("inf")), (20, 30, float("nan")),
                             (20, 0.0, 0), (20, 30, -1), (2.5, 30, 0)]:
        with pytest.raises(UsageError):
            VideoOptions.of(steps=steps, fps=fps, hold=hold)
    with pytest.raises(UsageError, match="338,001 frames"):
        VideoOptions.of(steps=10_000, fps=240.0, hold=600.0)


def test_validate_helpers():
    from agetool import validate
    from agetool.errors import UsageError

    assert str(validate.finite("noise", -0.0, 0)) == "0.0"
    assert validate.finite("noise", "0.5", 0, 1) == 0.5
    for bad in ("nan", "inf", "-inf", float("nan"), "x", None):
        with pytest.raises(UsageError, match="noise="):
            validate.finite("noise", bad, 0)
    with pytest.raises(UsageError, match="must be > 0"):
        validate.finite("fps", 0, 0, low_open=True)
    assert validate.seed(2 ** 64 - 1) == 2 ** 64 - 1 and validate.seed(-(2 ** 63)) == -(2 ** 63)
    for bad in (2 ** 64, -(2 ** 63) - 1, 1.5, True, "12a"):
        with pytest.raises(UsageError, match="seed="):
            validate.seed(bad)


# ---------------------------------------------------------------- out of memory
@pytest.mark.parametrize("exc", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore details"),
])
def test_allocation_failures_are_one_out_of_memory_line(tmp_path, crop, weights, capsys, monkeypatch, exc):
    import agetool.images

    def fail(*a, **k):
        raise exc

    monkeypatch.setattr(agetool.images, "grid", fail)
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", *common(weights)], capsys)
    assert code == 1
    assert err.strip().splitlines() == ["error: out of memory; try a smaller --batch-size, a smaller photo, or "
                                        "another --device"]


def test_video_is_refused_before_any_work(tmp_path, crop, weights, capsys):
    """Bad numbers are found before the generator is loaded (a missing weights file is not reported)."""
    code, _, err = cli(["video", crop, "--fps", "inf", "--out", tmp_path / "v.mp4", "--aligned",
                        "--weights", tmp_path / "nothing.safetensors"], capsys)
    assert code == 2 and "--fps" in err and "nothing.safetensors" not in err


# ---------------------------------------------------------------- no silent overwrites
def test_unique_stems():
    from agetool.images import unique_stems

    assert unique_stems(["a.jpg", "a.png", "a_2.png"]) == ["a", "a_3", "a_2"]
    assert unique_stems(["x/a.png", "y/A.png", "b.png"]) == ["a", "A_2", "b"]
    names = unique_stems([f"{d}/{s}.png" for d in "xyz" for s in ("p", "p_2", "p_3")])
    assert len({n.casefold() for n in names}) == 9


def test_align_gives_inputs_with_one_stem_their_own_crops(tmp_path, capsys):
    photo = Image.open(ROOT / "examples" / "astronaut.png").convert("RGB")
    inputs = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.jpg", tmp_path / "b" / "x_2.png"]
    for p in inputs:
        p.parent.mkdir(exist_ok=True)
        photo.save(p)
    out = tmp_path / "crops"
    code, _, err = cli(["align", *inputs, "--out", out, "--landmarks", "dlib"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["x_2_face0.png", "x_3_face0.png", "x_face0.png"]
    assert "done: 3 aligned, 0 failed" in err


@pytest.mark.parametrize("extra, needle", [
    (["--out", "{crop}"], "--out {crop}: is an input"),
    (["--out", "{tmp}/l.png", "--overlay", "{tmp}/l.png"], "--out {tmp}/l.png and --overlay {tmp}/l.png are the same file"),
    (["--out", "{tmp}/l.png", "--overlay", "{tmp}/sub/../l.png"], "are the same file"),
    (["--out", "{tmp}/labels.txt"], "--out {tmp}/labels.txt: unknown image suffix .txt"),
    (["--out", "{tmp}/labels"], "unknown image suffix (none)"),
    (["--out", "{tmp}/l.png", "--overlay", "{tmp}/o.gif"], "--overlay {tmp}/o.gif: unknown image suffix .gif"),
])
def test_parse_outputs_are_checked_before_any_work(tmp_path, crop, capsys, extra, needle):
    (tmp_path / "sub").mkdir()
    before = crop.read_bytes()
    args = [a.format(crop=crop, tmp=tmp_path) for a in extra]
    code, _, err = cli(["parse", crop, "--aligned", *args, "--parser-weights", tmp_path / "none.pth",
                        "--device", "cpu"], capsys)
    assert code == 2, err
    assert needle.format(crop=crop, tmp=tmp_path) in err and "none.pth" not in err
    assert crop.read_bytes() == before


def test_folder_run_gives_every_input_its_own_grid_and_tiles(tmp_path, weights, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    names = ["a.jpg", "a.png", "a_2.png", "sub/a.png", "B.png", "sub/b.png"]
    for i, name in enumerate(names):
        Image.fromarray(face_like(seed=i)).save(src / name)
    out, tiles = tmp_path / "out", tmp_path / "tiles"
    code, _, err = cli(["age", src, "--out", out, "--tiles", tiles, *common(weights)], capsys)
    assert code == 0, err
    grids = sorted(out.iterdir())
    assert len(grids) == len(names)
    assert f"done: {len(names)} written, 0 failed, 0 skipped" in err
    assert len({p.name.casefold() for p in grids}) == len(names)
    assert len(list(tiles.iterdir())) == len(names)
    # each grid shows its own input: the first tile of every grid differs
    firsts = {np.asarray(Image.open(p))[:200, :256].tobytes() for p in grids}
    assert len(firsts) == len(names)


@pytest.mark.parametrize("args, needle", [
    (["{crop}", "--out", "{crop}"], "--out {crop}: is an input"),
    (["{crop}", "{other}", "--out", "{tmp}/g.png"], "with several inputs --out is a folder"),
    (["{crop}", "--out", "{tmp}/g.txt"], "--out {tmp}/g.txt: unknown image suffix .txt"),
    (["{crop}", "--out", "{tmp}/grid"], "--out {tmp}/grid: unknown image suffix (none)"),
])
def test_age_outputs_are_checked_before_any_work(tmp_path, crop, capsys, args, needle):
    other = tmp_path / "other.png"
    Image.fromarray(face_like(seed=3)).save(other)
    before = crop.read_bytes()
    fill = dict(crop=crop, other=other, tmp=tmp_path)
    code, _, err = cli(["age", *[a.format(**fill) for a in args], "--aligned", "--no-mask",
                        "--weights", tmp_path / "none.safetensors", "--device", "cpu"], capsys)
    assert code == 2, err
    assert needle.format(**fill) in err and "none.safetensors" not in err
    assert crop.read_bytes() == before


def test_out_ending_in_a_slash_is_a_folder(tmp_path, crop, weights, capsys):
    code, _, err = cli(["age", crop, "--out", f"{tmp_path}/grids/", *common(weights)], capsys)
    assert code == 0, err
    assert (tmp_path / "grids" / "crop_ages.png").is_file()
    code, _, err = cli(["video", crop, "--out", f"{tmp_path}/videos/", "--steps", "1", *common(weights)], capsys)
    assert code == 0, err
    assert (tmp_path / "videos" / "crop_aging.mp4").is_file()
    (tmp_path / "existing").mkdir()
    code, _, err = cli(["age", crop, "--out", tmp_path / "existing", *common(weights)], capsys)
    assert code == 0, err
    assert (tmp_path / "existing" / "crop_ages.png").is_file()


def test_video_out_equal_to_input_is_refused(tmp_path, capsys):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video")
    code, _, err = cli(["video", clip, "--out", clip, "--aligned"], capsys)
    assert code == 2 and "is an input" in err
    assert clip.read_bytes() == b"not really a video"
