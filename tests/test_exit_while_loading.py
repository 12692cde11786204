"""Exit codes hold while models load in background threads.

With full-size checkpoint files the parser and the generator are still loading when a run fails on
its input (an unreadable photo, no face, a folder of non-images) or is stopped by a signal. The
command must then exit with its documented code and one error line, never abort (exit 134 with
"terminate called without an active exception": a thread stopped inside torch at interpreter exit).
Stand-in weights that load instantly cannot show this, so every case runs the real command in a
subprocess with released-layout files of the real size.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT

ABORT_TEXT = ("terminate called", "Aborted", "core dumped", "Traceback")


@pytest.fixture(scope="module")
def case(tmp_path_factory, released_generator_file, seeded_parser_file):
    """A working folder with failing inputs; the options naming the full-size files."""
    folder = tmp_path_factory.mktemp("exits")
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    Image.fromarray(np.full((240, 240, 3), 128, np.uint8)).save(folder / "blank.png")
    junk = folder / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"\x89PNG but not really")
    (junk / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    options = ["--weights", released_generator_file, "--parser-weights", seeded_parser_file, "--offline",
               "--device", "cpu", "--landmarks", "dlib"]
    return folder, [str(o) for o in options]


def _run(args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "agetool", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("attempt", range(3))
def test_unreadable_photo_exits_1_every_time(case, attempt):
    folder, options = case
    done = _run(["age", "broken.jpg", "--out", "grid.png", *options], folder)
    assert done.returncode == 1, done.stderr
    assert not any(t in done.stderr for t in ABORT_TEXT), done.stderr
    assert _error_lines(done.stderr) == [line for line in done.stderr.splitlines() if line.strip()]
    assert "broken.jpg" in done.stderr and not (folder / "grid.png").exists()


@pytest.mark.parametrize("args, expected", [
    (["age", "blank.png", "--out", "grid.png"], "no face found in blank.png"),
    (["age", "junk", "--out", "grids/"], "done: 0 written, 2 failed"),
    (["video", "broken.jpg", "--out", "clip.mp4"], "not a readable image"),
], ids=["no-face", "folder-of-non-images", "video-on-a-bad-file"])
def test_early_failures_exit_1_not_abort(case, args, expected):
    folder, options = case
    done = _run([*args, *options], folder)
    assert done.returncode == 1, done.stderr
    assert not any(t in done.stderr for t in ABORT_TEXT), done.stderr
    assert expected in done.stderr
    assert not (folder / "grid.png").exists() and not (folder / "clip.mp4").exists()
    assert not list(folder.rglob("*.part*"))


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_while_models_load_gives_its_exit_code(case, signum, code):
    folder, options = case
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    photo = ROOT / "examples" / "astronaut.png"
    proc = subprocess.Popen([sys.executable, "-m", "agetool", "age", str(photo), "--out", "sig.png", *options],
                            cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the parser and the generator load in the background while the photo is read and its faces
    # found; the detector's notice comes while they still load
    first = proc.stderr.readline()
    assert first.startswith("landmarks:"), first + proc.communicate()[1]
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    err = first + err
    assert proc.returncode == code, err
    assert not any(t in err for t in ABORT_TEXT), err
    assert len(_error_lines(err)) == 1, err
    assert not (folder / "sig.png").exists() and not list(folder.rglob("*.part*"))


def test_library_waits_for_loads_at_exit(case, tmp_path):
    """A program using the library that fails early and then ends: its interpreter exit waits for the
    background loads (non-daemon threads) instead of aborting inside torch."""
    folder, options = case
    script = tmp_path / "use.py"
    script.write_text(
        "import agetool\n"
        f"pipe = agetool.AgingPipeline.from_pretrained(model={options[1]!r}, parser_weights={options[3]!r},\n"
        "                                               offline=True, device='cpu', landmarks='dlib')\n"
        "try:\n"
        "    pipe('broken.jpg')\n"
        "except agetool.AgetoolError as e:\n"
        "    print('failed:', type(e).__name__)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script)], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "failed: InputError" in done.stdout
    assert not any(t in done.stderr for t in ABORT_TEXT), done.stderr


def test_close_waits_for_background_loads(case):
    """``close()`` joins the loads started for a call that failed, and starts no new ones."""
    import agetool
    from agetool.models import loading_in_background

    folder, options = case
    with agetool.AgingPipeline.from_pretrained(model=options[1], parser_weights=options[3], offline=True,
                                               device="cpu", landmarks="dlib") as pipe:
        with pytest.raises(agetool.AgetoolError):
            pipe(folder / "broken.jpg")
        assert pipe.close(timeout=120)
        assert not loading_in_background()
        pipe.models.preload(parser=True, model=pipe.core.model)  # closed: nothing starts
        assert not loading_in_background()
