"""Training: exact resume, crash-safe checkpoints, two-process DDP, a learning run, export, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agetool.ages import AGE_CLASSES
from agetool.train import checkpoints
from agetool.train.checkpoints import checkpoint_dirs, read_checkpoint
from agetool.train.config import TrainConfig
from agetool.train.trainer import train
from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest (and steadiest on a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_dataset(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    """Synthetic 'faces': a bright disc on a smooth background whose hue and disc size follow the class;
    the parsings mark a left band as background (label 0) so masking is exercised."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for k, name in enumerate(AGE_CLASSES):
        folder = root / f"train{name}"
        (folder / "parsings").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cx, cy = 0.5 + 0.1 * rng.standard_normal(2)
            r = 0.15 + 0.03 * k
            disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r).astype(float)
            base = np.stack([0.3 + 0.4 * xx, 0.2 + 0.1 * k * yy, 0.6 - 0.3 * xx * yy], -1)
            img = base * (1 - disc[..., None]) + disc[..., None] * np.array([0.9, 0.75 - 0.08 * k, 0.6])
            img = (img * 255).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
            labels = np.ones((size, size), np.uint8)
            labels[:, : size // 10] = 0
            Image.fromarray(labels).save(folder / "parsings" / f"{i:05d}.png")
    return root


def tiny(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), size=64, ngf=8, ndf=8, batch_size=2, save_every=2,
                sample_every=0, workers=0, device="cpu", log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    ck = read_checkpoint(path)
    out = {f"{net}/{k}": v for net, sd in ck["nets"].items() for k, v in sd.items()}
    out.update({f"state/{k}": v for k, v in ck["tensors"].items() if not k.startswith("rng.")})
    return out


@pytest.fixture(scope="module")
def data64(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data64"), per_class=2, size=64)


def test_resume_is_bit_exact(data64, tmp_path):
    # 2 images per class -> 6 pairs per epoch -> 3 steps of 2 pairs: step 4 is in epoch 1, where the
    # learning rate decays, so the resumed run also has to follow the schedule.
    straight = tmp_path / "straight"
    train(tiny(data64, straight, max_steps=4, decay_epochs=(1,)))
    split = tmp_path / "split"
    train(tiny(data64, split, max_steps=2, decay_epochs=(1,)))
    train(tiny(data64, split, max_steps=4, decay_epochs=(1,), resume=True, size=None, ngf=None, ndf=None, workers=1))
    a = checkpoint_tensors(straight / "checkpoints" / "step_00000004")
    b = checkpoint_tensors(split / "checkpoints" / "step_00000004")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, first: {different[:3]}"
    # and training did move the weights away from the step-2 checkpoint
    mid = checkpoint_tensors(split / "checkpoints" / "step_00000002")
    assert not torch.equal(mid["G/decoder.conv_img.0.conv.weight_orig"], a["G/decoder.conv_img.0.conv.weight_orig"])
    state = read_checkpoint(straight / "checkpoints" / "step_00000004")["state"]
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (4, 1, 1)
    assert state["optimizer_G"]["param_groups"][0]["lr"] == pytest.approx(5e-4)
    assert state["optimizer_G"]["param_groups"][1]["lr"] == pytest.approx(5e-6)  # mapping MLP at 0.01 x


def test_activation_checkpointing_gives_the_same_training(data64, tmp_path):
    from agetool.train.trainer import Trainer

    params = []
    for flag in (False, True):
        trainer = Trainer(tiny(data64, tmp_path / f"run{flag}", max_steps=2, grad_checkpoint=flag))
        batch = next(iter(trainer.loader))
        for _ in range(2):
            trainer.train_step(batch)
            trainer.step += 1
        params.append({**{f"G/{k}": v for k, v in trainer.g.state_dict().items()},
                       **{f"D/{k}": v for k, v in trainer.d.state_dict().items()}})
    assert all(torch.allclose(params[0][k], params[1][k], rtol=0, atol=1e-6) for k in params[0])


def test_a_failed_checkpoint_write_keeps_the_previous_one(data64, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny(data64, run, max_steps=2))
    real_save = checkpoints.optimizer_tensors
    calls = {"n": 0}

    def crash(*a, **k):  # fail in the middle of writing the next checkpoint
        calls["n"] += 1
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "optimizer_tensors", crash)
    with pytest.raises(OSError):
        train(tiny(data64, run, max_steps=4, resume=True, size=None, ngf=None, ndf=None))
    assert calls["n"] == 1
    monkeypatch.setattr(checkpoints, "optimizer_tensors", real_save)
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000002"]
    assert not any(p.name.startswith(".step_") for p in (run / "checkpoints").iterdir())
    assert train(tiny(data64, run, max_steps=4, resume=True, size=None, ngf=None, ndf=None)) == 4


def test_sigkill_during_checkpointing_never_corrupts(data64, tmp_path):
    """A real SIGKILL while the run checkpoints every step: every complete checkpoint stays readable and
    --resume continues from the newest one."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "agetool", "train", "--data", str(data64), "--out", str(run), "--size", "64",
           "--ngf", "8", "--batch-size", "2", "--max-steps", "200", "--save-every", "1", "--keep", "0",
           "--sample-every", "0", "--workers", "0", "--device", "cpu", "--no-tensorboard"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while len(checkpoint_dirs(run)) < 3 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.02)
        # kill while the temporary folder of the next checkpoint exists, if we catch it
        parts = run / "checkpoints"
        t_end = time.time() + 5
        while time.time() < t_end and not any(p.name.startswith(".step_") for p in parts.iterdir()):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    found = checkpoint_dirs(run)
    assert len(found) >= 3
    for path in found:
        read_checkpoint(path)  # complete and readable
    newest = int(found[-1].name[5:])
    assert train(tiny(data64, run, max_steps=newest + 1, resume=True, size=None, ngf=None, ndf=None)) == newest + 1
    assert not any(p.name.startswith(".step_") for p in (run / "checkpoints").iterdir())


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str, dump: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from agetool.train.trainer import Trainer

    trainer = Trainer(tiny(Path(data), Path(out), max_steps=3, save_every=0))
    try:
        trainer.run()
        tensors = {f"G/{k}": v for k, v in trainer.g.state_dict().items()}
        tensors.update({f"D/{k}": v for k, v in trainer.d.state_dict().items()})
        tensors.update({f"E/{k}": v for k, v in trainer.g_ema.state_dict().items()})
        save_file({k: v.contiguous() for k, v in tensors.items()}, f"{dump}/rank{rank}.safetensors")
    finally:
        trainer.close()


def test_two_gloo_processes_keep_identical_parameters(data64, tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.start_processes(_ddp_worker, args=(2, free_port(), str(data64), str(tmp_path / "run"), str(tmp_path)),
                       nprocs=2, start_method="fork")
    r0, r1 = load_file(str(tmp_path / "rank0.safetensors")), load_file(str(tmp_path / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    ck = read_checkpoint(checkpoint_dirs(tmp_path / "run")[-1])  # rank 0 wrote the final checkpoint
    assert ck["state"]["step"] == 3 and ck["state"]["world_size"] == 2
    assert torch.equal(ck["nets"]["G"]["decoder.conv_img.0.conv.weight_orig"], r0["G/decoder.conv_img.0.conv.weight_orig"])


def test_reconstruction_loss_falls(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=4, size=32, seed=1)
    rec: list[float] = []

    def on_event(ev):
        if ev.kind == "step" and ev.losses:
            rec.append(ev.losses["G_rec"])

    train(tiny(data, tmp_path / "run", size=32, max_steps=60, save_every=0, sample_every=60), on_event)
    first, last = np.mean(rec[:10]), np.mean(rec[-10:])
    assert last < 0.5 * first, f"G_rec {first:.3f} -> {last:.3f}"
    assert (tmp_path / "run" / "samples" / "step_00000060.png").is_file()


def test_cli_torchrun_resume_and_export(data64, tmp_path):
    """The launcher path: torchrun with two CPU processes, then --resume in one, then export -> load."""
    from agetool.cli import run as cli
    from agetool.nn.checkpoint import load_generator

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "agetool", "train", "--data", str(data64), "--out", str(out), "--size", "64",
           "--ngf", "8", "--batch-size", "2", "--max-steps", "2", "--save-every", "2", "--sample-every", "0",
           "--workers", "0", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 process(es)" in done.stderr
    assert cli(["train", "--data", str(data64), "--out", str(out), "--max-steps", "3", "--resume",
                "--batch-size", "2", "--workers", "0", "--device", "cpu", "--sample-every", "0"]) == 0
    assert [p.name for p in checkpoint_dirs(out)] == ["step_00000002", "step_00000003"]
    assert cli(["train", "export", str(out), "--out", str(tmp_path / "g.safetensors")]) == 0
    g = load_generator(tmp_path / "g.safetensors")
    assert g.cfg.ngf == 8
    ema = read_checkpoint(checkpoint_dirs(out)[-1])["nets"]["G_ema"]
    assert all(torch.equal(v, ema[k]) for k, v in g.state_dict().items())
    with torch.no_grad():
        y = g.infer(torch.zeros(1, 3, 64, 64), torch.zeros(1, 300))
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()


def test_cli_refuses_to_overwrite_a_run_and_explains_missing_data(data64, tmp_path):
    from agetool.cli import run as cli

    out = tmp_path / "run"
    args = ["train", "--data", str(data64), "--out", str(out), "--size", "64", "--ngf", "8", "--batch-size", "2",
            "--max-steps", "1", "--workers", "0", "--device", "cpu", "--sample-every", "0"]
    assert cli(args) == 0
    assert cli(args) == 2  # checkpoints exist: needs --resume
    assert cli(args + ["--resume", "--ngf", "16"]) == 2  # the architecture is the run's
    assert cli(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]) == 1
    assert cli(["train", "--out", str(tmp_path / "r3")]) == 2


def test_init_from_released_layout(data64, tmp_path):
    """--init-from a folder in the released layout (latest_net_G/D/g_running.pth), and one without D."""
    from agetool.nn.generator import Generator, GeneratorConfig
    from agetool.train.trainer import Trainer

    g = Generator(GeneratorConfig(ngf=8))
    released = tmp_path / "released"
    released.mkdir()
    torch.save(g.state_dict(), released / "latest_net_g_running.pth")
    notes = []
    trainer = Trainer(tiny(data64, tmp_path / "run", max_steps=1, ngf=None, init_from=str(released)),
                      callback=lambda ev: notes.append(ev.message))
    assert trainer.cfg.ngf == 8
    assert all(torch.equal(v, trainer.g_ema.state_dict()[k]) for k, v in g.state_dict().items())
    assert any("no discriminator" in n for n in notes)
    assert any("no training generator" in n for n in notes)


def test_tensorboard_scalars_and_samples(data64, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agetool.cli import run as cli

    out = tmp_path / "run"
    assert cli(["train", "--data", str(data64), "--out", str(out), "--size", "64", "--ngf", "8", "--batch-size", "2",
                "--max-steps", "2", "--log-every", "1", "--sample-every", "2", "--workers", "0",
                "--device", "cpu"]) == 0
    acc = EventAccumulator(str(out / "tb")).Reload()
    assert {"loss/G_rec", "loss/D_r1", "train/images_per_sec"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("loss/G")] == [1, 2]
    assert acc.Tags()["images"] == ["samples"]
