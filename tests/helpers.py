"""Small helpers shared by tests: tiny seeded generators, CLI runner, synthetic images."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.seeding import arcface_standin, genderage_standin, onnx_linear_model  # noqa: F401 (stand-in ONNX models)

ROOT = Path(__file__).resolve().parents[1]


def tiny_generator_file(path: Path, seed: int = 1, ngf: int = 8) -> Path:
    """An agetool safetensors generator with ngf=8 (fast on CPU), deterministically seeded."""
    from agetool.nn.checkpoint import save_generator
    from agetool.nn.generator import Generator, GeneratorConfig
    from tests.seeding import seed_module

    g = seed_module(Generator(GeneratorConfig(ngf=ngf)), seed, "generator")
    return save_generator(path, g)


def common(weights) -> list:
    """Options for a fast run on an aligned crop with the tiny generator."""
    return ["--aligned", "--no-mask", "--weights", weights, "--device", "cpu"]


def cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from agetool.cli import run

    code = run([str(a) for a in args])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the system's pick, released at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def face_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB image (not a real face) for aligned-crop tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 3)), np.cos(5 * yy + rng.uniform(0, 3)), xx * yy], -1)
    return ((base - base.min()) / (np.ptp(base) + 1e-9) * 255).astype(np.uint8)


def spawn(args: list, cwd: Path) -> subprocess.Popen:
    """The CLI in a subprocess (this checkout first on the path), for tests that send it signals."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "agetool", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0):
    """Poll ``predicate`` until it returns something true (returned); fail if ``proc`` ends first."""
    t0 = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.returncode} {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for progress")
        time.sleep(0.05)


def partials(folder: Path) -> list[Path]:
    """Temporary files (``*.part*``) anywhere under ``folder``."""
    return [p for p in folder.rglob("*") if ".part" in p.name]


def ffmpeg(*args) -> None:
    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", *map(str, args)], check=True)


def make_clip(photo: Path, out: Path, frames: int = 12, *, motion: bool = True, vfr: bool = False,
              gray_frame: int | None = None, crf: int = 12, gray_until: int | None = None) -> Path:
    """A 160x128 clip cut from ``photo`` (panning 2 px a frame unless still) with a 440 Hz AAC track."""
    x = "30+2*n" if motion else "30"
    filters = [f"crop=160:128:x='{x}':y=0"]
    if gray_frame is not None:
        last = gray_frame if gray_until is None else gray_until
        filters.append(f"drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill:enable='between(n,{gray_frame},{last})'")
    if vfr:  # 0.1 s apart for 4 frames, then 0.25 s apart
        filters += ["settb=1/1000", "setpts='if(lt(N,4),N*100,400+(N-4)*250)/1000/TB'"]
    seconds = frames / 10 if not vfr else 0.4 + (frames - 4) * 0.25
    ffmpeg("-loop", "1", "-framerate", "10", "-i", photo, "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
           "-vf", ",".join(filters), "-frames:v", frames, "-t", f"{seconds:.2f}", *(["-fps_mode", "passthrough"] if vfr else []),
           "-c:v", "libx264", "-crf", crf, "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", out)
    return out


def astronaut256(folder: Path) -> Path:
    """The astronaut photo at 256 px (a real face, about 45 px wide) as ``folder``/astronaut256.png."""
    from PIL import Image

    photo = folder / "astronaut256.png"
    Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256), Image.LANCZOS).save(photo)
    return photo


def astronaut_clip(folder: Path, frames: int = 6, name: str = "walk.mp4") -> Path:
    """``make_clip`` of ``astronaut256`` in ``folder``."""
    return make_clip(astronaut256(folder), folder / name, frames)


#: a small launcher between the test process and the command: a child's peak resident size counts
#: the memory of the process it was forked from, so the command is started from this small one (its
#: own peak, not pytest's, which grows to gigabytes in a whole run); it writes "status maxrss_kb"
_LAUNCHER = ("import os, subprocess, sys\n"
             "p = subprocess.Popen(sys.argv[2:])\n"
             "_, status, usage = os.wait4(p.pid, 0)\n"
             "open(sys.argv[1], 'w').write(f'{status} {usage.ru_maxrss}')\n")


def run_measured(args: list, cwd: Path, timeout: float = 600, preexec_fn=None,
                 env: dict | None = None) -> tuple[int, str, float]:
    """The CLI in a subprocess of its own (``env``: more variables): (exit code, stderr, the process's
    peak resident bytes)."""
    import signal
    import tempfile

    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    with tempfile.TemporaryFile() as err, tempfile.TemporaryDirectory() as box:
        report = Path(box) / "rusage"
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, report, sys.executable, "-m", "agetool",
                                 *map(str, args)], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=preexec_fn, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{args[:2]} ran past {timeout} s") from None
        status, maxrss = map(int, report.read_text().split())
        err.seek(0)
        return os.waitstatus_to_exitcode(status), err.read().decode(errors="replace"), maxrss * 1024.0


def one_line_message(err: str) -> str:
    """The error line of a failed command (asserting it is one line, no traceback, no raw escape)."""
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err and "\x1b" not in err, err
    return lines[0]


class FakeClock:
    """A clock for code that is handed one (``clock=``) or for ``time.monotonic``: time passes only
    when a test says so (``sleep``), whatever the machine's load."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

