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
