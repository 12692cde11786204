"""`agetool train` as a user meets it: resumed settings, damaged checkpoints, malformed files, absurd
sizes, out of memory, warnings and the bfloat16 spelling."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agetool.train.checkpoints import checkpoint_dirs, read_checkpoint
from tests.test_train import make_dataset, one_thread  # noqa: F401 (the autouse fixture, shared)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"), per_class=2, size=64)


def args(data: Path | None, out: Path, *extra: str) -> list[str]:
    base = ["train", "--out", str(out), "--workers", "0", "--device", "cpu", "--sample-every", "0",
            "--no-tensorboard"]
    return base + (["--data", str(data)] if data is not None else []) + list(extra)


SMALL = ("--size", "64", "--ngf", "8", "--batch-size", "2")


def cli(argv: list[str]) -> int:
    from agetool.cli import run

    return run(argv)


@pytest.fixture(scope="module")
def base_run(data, tmp_path_factory) -> Path:
    """A finished run with checkpoints at steps 2 and 4 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("base") / "run"
    assert cli(args(data, out, *SMALL, "--max-steps", "4", "--save-every", "2", "--keep", "0")) == 0
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000002", "step_00000004"]
    return out


def copy_run(base: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(base, out)
    return out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert "internal error" not in err and "Traceback" not in err
    return lines[0]


# -- resume keeps the run's settings


def test_resume_keeps_batch_size_and_refuses_contradictions(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(args(data, out, *SMALL, "--lr", "0.002", "--max-steps", "1")) == 0
    capsys.readouterr()
    # no --data, --size, --batch-size or --lr: all the run's own
    assert cli(args(None, out, "--resume", "--max-steps", "2")) == 0
    err = capsys.readouterr().err
    assert "batch 2 pairs" in err
    state = read_checkpoint(checkpoint_dirs(out)[-1])["state"]
    assert state["step"] == 2
    assert (state["config"]["batch_size"], state["config"]["lr"], state["config"]["ngf"]) == (2, 0.002, 8)
    # the same values again are fine; other values are refused naming both
    assert cli(args(None, out, "--resume", "--max-steps", "3", "--batch-size", "2", "--size", "64")) == 0
    capsys.readouterr()
    assert cli(args(None, out, "--resume", "--max-steps", "4", "--batch-size", "4")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--batch-size 4" in line and "--batch-size 2" in line
    assert cli(args(None, out, "--resume", "--max-steps", "4", "--no-flip")) == 2
    assert "flip" in one_error_line(capsys.readouterr().err)
    assert cli(args(None, out, "--resume", "--max-steps", "4", "--lr", "0.001")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--lr 0.001" in line and "--lr 0.002" in line
    assert [p.name for p in checkpoint_dirs(out)][-1] == "step_00000003"


def test_amp_takes_the_dtype_spelling(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(args(data, out, *SMALL, "--amp", "bfloat16", "--max-steps", "1")) == 0
    assert read_checkpoint(checkpoint_dirs(out)[-1])["config"].amp == "bfloat16"
    assert "bfloat16" in capsys.readouterr().err
    assert cli(args(None, out, "--resume", "--amp", "bf16", "--max-steps", "2")) == 0  # the same, spelled short
    capsys.readouterr()
    assert cli(args(None, out, "--resume", "--amp", "none", "--max-steps", "3")) == 2
    capsys.readouterr()
    assert cli(args(data, tmp_path / "other", *SMALL, "--amp", "fp16", "--max-steps", "1")) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "--amp fp16" in line and "bfloat16" in line


# -- sizes, memory, warnings


@pytest.mark.parametrize("flags,words", [
    (("--ngf", "100000"), ["--ngf 100000", "1..1024"]),
    (("--ngf", "1024"), ["billion parameters"]),
    (("--ngf", "8", "--size", "100"), ["--size 100", "power of two"]),
    (("--ngf", "8", "--lr", "nan"), ["--lr nan", "finite"]),
])
def test_absurd_settings_are_refused_up_front(data, tmp_path, capsys, flags, words):
    out = tmp_path / "run"
    assert cli(args(data, out, "--batch-size", "2", "--max-steps", "1", *flags)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert all(w in line for w in words), line
    assert not out.exists()


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 9663676416 bytes"),
])
def test_out_of_memory_suggests_the_ways_out(data, tmp_path, capsys, monkeypatch, error):
    from agetool.train.trainer import Trainer

    def update(self, *a, **k):
        raise error

    monkeypatch.setattr(Trainer, "update", update)
    assert cli(args(data, tmp_path / "run", *SMALL, "--max-steps", "1")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "out of memory" in line
    assert all(flag in line for flag in ("--grad-checkpoint", "--batch-size", "--size")), line


def test_training_prints_no_warnings(data, tmp_path):
    cmd = [sys.executable, "-m", "agetool", *args(data, tmp_path / "run", *SMALL, "--max-steps", "3",
                                                  "--log-every", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 3/3" in done.stderr
    assert "Warning" not in done.stderr and "not writable" not in done.stderr, done.stderr[-2000:]


# -- damaged checkpoints


def _flip_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) - 64  # inside the tensor data, past the header
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name,damage", [
    ("G.safetensors", _flip_bytes),
    ("D.safetensors", _flip_bytes),
    ("G_ema.safetensors", _flip_bytes),
    ("train_state.safetensors", _flip_bytes),
    ("train_state.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100])),
    ("state.json", lambda p: p.write_text(p.read_text()[:200])),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(base_run, tmp_path, capsys, name, damage):
    out = copy_run(base_run, tmp_path)
    damage(out / "checkpoints" / "step_00000004" / name)
    assert cli(args(None, out, "--resume", "--max-steps", "5")) == 0
    err = capsys.readouterr().err
    assert "skipping the damaged checkpoint step_00000004" in err and name in err
    assert "resumed from" in err and "step_00000002" in err
    assert read_checkpoint(checkpoint_dirs(out)[-1])["state"]["step"] == 5


@pytest.mark.parametrize("edit,words", [
    (lambda s: s["config"].update(batch_size="two"), ["batch_size", "'two'"]),
    (lambda s: s.update(step=-3), ["step", "-3"]),
    (lambda s: s["optimizer_G"].update(param_groups="x"), ["optimizer_G"]),
    (lambda s: s["rng"].update(python=[1]), ["random state"]),
    (lambda s: s["config"].update(ngf=100000), ["ngf", "100000"]),
    (lambda s: s.clear(), ["not an agetool training checkpoint"]),
])
def test_hand_edited_state_is_one_line_naming_the_file(base_run, tmp_path, capsys, edit, words):
    out = copy_run(base_run, tmp_path)
    shutil.rmtree(out / "checkpoints" / "step_00000002")  # no older checkpoint to fall back to
    file = out / "checkpoints" / "step_00000004" / "state.json"
    state = json.loads(file.read_text())
    edit(state)
    file.write_text(json.dumps(state))
    assert cli(args(None, out, "--resume", "--max-steps", "5")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "step_00000004" in line and all(w in line for w in words), line


def _rewrite_metadata(path: Path, metadata: dict) -> None:
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata=metadata)


@pytest.mark.parametrize("metadata,words", [
    ({"agetool_format": "generator", "agetool_config": "{not json"}, ["not valid JSON"]),
    ({"agetool_format": "generator", "agetool_config": "[1, 2]"}, ["expected a JSON object"]),
    ({"agetool_format": "generator", "agetool_config": '{"generator": {"ngf": 100000}}'}, ["ngf", "100000"]),
    ({"agetool_format": "generator", "agetool_config": '{"generator": {"n_residual": "x"}}'}, ["n_residual"]),
])
def test_malformed_weights_metadata_is_one_line(data, base_run, tmp_path, capsys, metadata, words):
    out = copy_run(base_run, tmp_path)
    g_ema = out / "checkpoints" / "step_00000004" / "G_ema.safetensors"
    _rewrite_metadata(g_ema, metadata)
    assert cli(["train", "export", str(out), "--out", str(tmp_path / "g.safetensors")]) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "G_ema.safetensors" in line and all(w in line for w in words), line
    assert not (tmp_path / "g.safetensors").exists()
    # the same file as a starting point
    assert cli(args(data, tmp_path / "ft", "--init-from", str(g_ema), "--max-steps", "1")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "G_ema.safetensors" in line


@pytest.mark.parametrize("sidecar,words", [
    ("[1, 2", ["g.safetensors.json", "not valid JSON"]),
    ('{"generator": {"ngf": 100000}}', ["g.safetensors", "ngf=100000", "out of range"]),
    ('{"generator": {"ngf": 16}}', ["g.safetensors", "does not fit"]),
    ('{"generator": ["x"]}', ["g.safetensors", "generator config"]),
])
def test_malformed_sidecar_is_one_line(base_run, tmp_path, capsys, sidecar, words):
    from agetool.errors import CheckpointError
    from agetool.nn.checkpoint import load_generator

    assert cli(["train", "export", str(base_run), "--out", str(tmp_path / "g.safetensors")]) == 0
    path = tmp_path / "g.safetensors"
    _rewrite_metadata(path, {"agetool_format": "generator"})  # config in a sidecar instead
    assert load_generator(path).cfg.ngf == 8  # no sidecar: the width comes from the weights
    Path(str(path) + ".json").write_text(sidecar)
    with pytest.raises(CheckpointError) as e:
        load_generator(path)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert "\n" not in str(e.value)
