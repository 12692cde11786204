"""The age and video commands, driven through the command line with a tiny seeded generator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agetool.ages import AGE_CLASSES
from tests.helpers import common, cli, face_like, free_port


def test_help_is_fast_and_lists_commands():
    # the help page in a process of its own, which reports what it imported and how long it took
    script = ("import sys, time; t0 = time.perf_counter(); from agetool.cli import run; code = run(['--help']); "
              "print(code, 'torch' in sys.modules, round(time.perf_counter() - t0, 3), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    code, torch_loaded, seconds = r.stderr.split()[-3:]
    assert code == "0"
    for name in ("age", "video"):
        assert name in r.stdout
    assert torch_loaded == "False", "the help page must not import torch"
    assert float(seconds) < 10  # about 0.3 s on a quiet 2-core machine; the imports of torch alone take 2 s


def test_age_grid_and_tiles(tmp_path, crop, weights, capsys):
    out, tiles = tmp_path / "grid.png", tmp_path / "tiles"
    code, _, err = cli(["age", crop, "--out", out, "--tiles", tiles, *common(weights)], capsys)
    assert code == 0, err
    grid = np.asarray(Image.open(out))
    assert grid.shape == (256, 7 * 256, 3)
    names = sorted(p.name for p in (tiles / "crop").iterdir())
    assert names == sorted(f"face0_{label}.png" for label in ["input", *AGE_CLASSES])
    tile = np.asarray(Image.open(tiles / "crop" / "face0_30-39.png"))
    # the unlabelled tile equals the grid's column (labels only cover a bottom band)
    np.testing.assert_array_equal(tile[:200], grid[:200, 5 * 256:6 * 256])
    assert np.asarray(Image.open(tiles / "crop" / "face0_input.png")).tolist() == np.asarray(Image.open(crop)).tolist()


def test_age_is_deterministic_and_seed_and_noise_matter(tmp_path, crop, weights, capsys):
    outs = {}
    for name, extra in {"a": [], "b": [], "seed1": ["--seed", "1"], "clean": ["--noise", "0"]}.items():
        out = tmp_path / f"{name}.png"
        assert cli(["age", crop, "--out", out, "--no-labels", *common(weights), *extra], capsys)[0] == 0
        outs[name] = np.asarray(Image.open(out))
    assert np.array_equal(outs["a"], outs["b"])
    assert not np.array_equal(outs["a"], outs["seed1"])
    assert not np.array_equal(outs["a"], outs["clean"])


def test_age_matches_engine_math(tmp_path, crop, weights, capsys):
    """The tiles are floor((G(x, w_k) + 1) / 2 * 255) for the clean class codes."""
    from agetool.ages import class_codes
    from agetool.images import read_image, to_tensor, to_uint8
    from agetool.nn.checkpoint import load_generator

    tiles = tmp_path / "t"
    assert cli(["age", crop, "--out", tmp_path / "g.png", "--tiles", tiles, "--noise", "0", *common(weights)],
               capsys)[0] == 0
    g = load_generator(weights)
    with torch.inference_mode():
        x = to_tensor(read_image(crop))
        want = to_uint8(g.infer(x.expand(6, -1, -1, -1), class_codes(range(6), noise=0)))
    for k, label in enumerate(AGE_CLASSES):
        got = np.asarray(Image.open(tiles / "crop" / f"face0_{label}.png"))
        assert np.abs(got.astype(int) - want[k]).max() <= 1


def test_aligned_input_of_other_size_is_resized(tmp_path, weights, capsys):
    p = tmp_path / "big.png"
    Image.fromarray(face_like(300)).save(p)
    code, _, err = cli(["age", p, "--out", tmp_path / "g.png", *common(weights)], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "g.png").size == (7 * 256, 256)


def test_video_frames_and_mp4(tmp_path, crop, weights, capsys):
    from agetool.video import read_video_frames

    out, frames = tmp_path / "v.mp4", tmp_path / "frames"
    code, _, err = cli(["video", crop, "--out", out, "--steps", "3", "--frames", frames, "--batch-size", "4",
                        *common(weights)], capsys)
    assert code == 0, err
    pngs = sorted(frames.glob("frame_*.png"))
    assert [p.name for p in pngs] == [f"frame_{i:05d}.png" for i in range(16)]
    n, size = read_video_frames(out)
    assert n == 16 and size == (256, 256)
    assert not list(tmp_path.glob(".*part*"))
    # first and last frames are the youngest and oldest class renders
    tiles = tmp_path / "tiles"
    assert cli(["age", crop, "--out", tmp_path / "g.png", "--tiles", tiles, *common(weights)], capsys)[0] == 0
    first = np.asarray(Image.open(pngs[0])).astype(int)
    last = np.asarray(Image.open(pngs[-1])).astype(int)
    assert np.abs(first - np.asarray(Image.open(tiles / "crop" / "face0_0-2.png"))).max() <= 1
    assert np.abs(last - np.asarray(Image.open(tiles / "crop" / "face0_50-69.png"))).max() <= 1


def test_video_frames_follow_the_latent_schedule(tmp_path, crop, weights, capsys):
    from agetool.ages import all_class_codes
    from agetool.images import read_image, to_tensor, to_uint8
    from agetool.nn.checkpoint import load_generator

    frames = tmp_path / "f"
    assert cli(["video", crop, "--out", tmp_path / "v.mp4", "--steps", "2", "--frames", frames,
                *common(weights)], capsys)[0] == 0
    g = load_generator(weights)
    with torch.inference_mode():
        w = g.latent(all_class_codes(0.2, 0))
        feats = g.encode(to_tensor(read_image(crop)))
        mid = 0.5 * w[2] + 0.5 * w[3]  # frame 5 = halfway between 7-9 and 15-19
        want = to_uint8(g.decode(feats, mid[None]))[0]
    got = np.asarray(Image.open(frames / "frame_00005.png")).astype(int)
    assert np.abs(got - want).max() <= 1


def test_hold_adds_frames(tmp_path, crop, weights, capsys):
    from agetool.video import read_video_frames

    out = tmp_path / "v.mp4"
    assert cli(["video", crop, "--out", out, "--steps", "1", "--fps", "10", "--hold", "0.5",
                *common(weights)], capsys)[0] == 0
    assert read_video_frames(out)[0] == 6 + 2 * 5


@pytest.mark.parametrize("args,needle", [
    (["age", "missing.png"], "no such file"),
    (["video", "missing.png"], "no such file"),
])
def test_missing_input_is_one_line_exit_1(tmp_path, weights, capsys, args, needle):
    code, out, err = cli([*args, "--out", tmp_path / ("x.mp4" if args[0] == "video" else "x.png"),
                          *common(weights)], capsys)
    assert code == 1
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_not_an_image(tmp_path, weights, capsys):
    p = tmp_path / "notes.jpg"
    p.write_text("hello")
    code, _, err = cli(["age", p, "--out", tmp_path / "g.png", *common(weights)], capsys)
    assert code == 1 and "not a readable image" in err
    assert not (tmp_path / "g.png").exists()


def test_checkpoint_that_does_not_fit(tmp_path, crop, capsys):
    bad = tmp_path / "bad.pth"
    torch.save({"foo.weight": torch.zeros(3)}, bad)
    code, _, err = cli(["age", crop, "--out", tmp_path / "g.png", "--aligned", "--no-mask", "--weights", bad], capsys)
    assert code == 1
    assert "does not fit" in err and "missing" in err and "foo.weight" in err


def test_unwritable_output(tmp_path, crop, weights, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if (ro / "probe").exists() or _can_write(ro):
            pytest.skip("running with permissions that ignore read-only folders")
        code, _, err = cli(["age", crop, "--out", ro / "g.png", *common(weights)], capsys)
        assert code == 1 and "not writable" in err
    finally:
        ro.chmod(0o755)


def _can_write(folder: Path) -> bool:
    try:
        (folder / ".probe").write_text("x")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_usage_errors_exit_2(tmp_path, crop, weights, capsys):
    assert cli(["age", crop, "--model", "robot", *common(weights)], capsys)[0] == 2
    assert cli(["age", crop, "--nonsense"], capsys)[0] == 2
    assert cli(["video", crop, "--steps", "0", *common(weights)], capsys)[0] == 2


def test_debug_shows_traceback(tmp_path, weights, capsys):
    code, _, err = cli(["age", tmp_path / "nope.png", "--debug", *common(weights)], capsys)
    assert code == 1 and "Traceback" in err


def test_folder_run_keeps_going_and_reports(tmp_path, weights, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(face_like(seed=1)).save(src / "a.png")
    Image.fromarray(face_like(seed=2)).save(src / "sub" / "b.png")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    code, _, err = cli(["age", src, "--out", out, *common(weights)], capsys)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_ages.png", "b_ages.png"]
    assert "1 failed" in err
    before = (out / "a_ages.png").stat().st_mtime_ns
    code, _, err = cli(["age", src, "--out", out, "--skip-existing", *common(weights)], capsys)
    assert (out / "a_ages.png").stat().st_mtime_ns == before
    assert "2 skipped" in err


def test_output_folder_that_cannot_be_created(tmp_path, crop, weights, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli(["age", crop, "--out", blocker / "sub" / "g.png", *common(weights)], capsys)
    assert code == 1 and "can't create folder" in err
    code, _, err = cli(["video", crop, "--out", blocker / "v.mp4", *common(weights)], capsys)
    assert code == 1 and "can't create folder" in err


def test_missing_output_folder_is_created(tmp_path, crop, weights, capsys):
    out = tmp_path / "new" / "deeper" / "g.png"
    assert cli(["age", crop, "--out", out, *common(weights)], capsys)[0] == 0
    assert out.is_file()


def test_folder_run_shared_by_two_torchrun_ranks(tmp_path, weights):
    """Each rank takes every other photo; together they write what one process writes; one summary."""
    import os

    photos = tmp_path / "photos"
    photos.mkdir()
    for s in range(3):
        Image.fromarray(face_like(seed=s)).save(photos / f"p{s}.png")
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(["age", photos, "--out", one, *common(weights)])[0] == 0
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "agetool", "age",
                           str(photos), "--out", str(two), *map(str, common(weights))],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) == ["p0_ages.png", "p1_ages.png", "p2_ages.png"]
    for name in names:  # one intra-op thread per rank: float sums in another order, same image to a level
        diff = np.abs(np.asarray(Image.open(one / name)).astype(int) - np.asarray(Image.open(two / name)))
        assert diff.max() <= 2 and diff.mean() < 0.05, name
    assert (proc.stdout + proc.stderr).count("done: 3 written, 0 failed") == 1
