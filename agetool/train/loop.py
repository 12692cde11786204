"""The training loop: optimizers, learning-rate schedule, EMA generator, checkpoints, torchrun / DDP.

One step = a discriminator update, then a generator update (see ``agetool.train.losses``), then an
EMA update of the generator used for inference. Adam (lr 1e-3, betas (0, 0.999)) with the mapping
MLP at 0.01 x lr, halved at epochs 50 and 100.

Determinism: the pairs of step ``s`` come from (seed, epoch, index) and the class-code noise from
(seed, step, rank), never from a global random state, so a run continued with ``resume`` repeats
the uninterrupted run bit for bit on the CPU.

Checkpoints are folders ``RUN/checkpoints/step_<8 digits>/`` written under a temporary name and
renamed when complete, so a crash during a write leaves the previous checkpoints intact:
``G.safetensors``, ``D.safetensors``, ``G_ema.safetensors`` (agetool's weights format, loadable by
``agetool age --weights``), ``train_state.safetensors`` (optimizer moments and torch RNG states) and
``state.json`` (step, epoch, config, optimizer settings, Python / NumPy RNG states), written last.

Launched by ``torchrun``, every process trains on its share of each epoch (DistributedSampler),
gradients are averaged by DistributedDataParallel (NCCL on GPUs, gloo on the CPU) and rank 0 alone
reports, writes samples and checkpoints. Progress reaches the caller through a callback of
``TrainEvent``; this module never prints.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agetool.errors import CheckpointError, DatasetError, Interrupted, UsageError
from agetool.ages import CODE_PER_CLASS, N_CLASSES
from agetool.train.losses import (Codes, GeneratorPass, LossWeights, discriminate, discriminator_fake_loss,
                                  discriminator_real_losses, generator_losses, generator_pass, make_codes, translate)

CHECKPOINTS = "checkpoints"
SAMPLES = "samples"
STATE_FILE = "state.json"
TENSOR_STATE_FILE = "train_state.safetensors"
CHECKPOINT_FORMAT = "agetool-train-checkpoint"
RELEASED_MEMBERS = {"G": "latest_net_G.pth", "D": "latest_net_D.pth", "G_ema": "latest_net_g_running.pth"}


@dataclass
class TrainConfig:
    """Everything a run needs. ``size``, ``ngf``, ``ndf`` and ``seed`` left as None are taken from the
    checkpoint when resuming, else from the released configuration (256, 64, 64) and 0."""

    data: str = ""
    out: str = ""
    size: int | None = None
    ngf: int | None = None
    ndf: int | None = None
    batch_size: int = 6              # pairs per process and step (2 x batch_size images)
    epochs: int = 400
    max_steps: int | None = None
    save_every: int = 1000
    sample_every: int = 500
    log_every: int = 10
    keep: int = 3                     # newest checkpoints kept (0 = all)
    lr: float = 1e-3
    beta1: float = 0.0
    beta2: float = 0.999
    mlp_lr_mult: float = 0.01
    decay_epochs: tuple[int, ...] = (50, 100)
    decay_gamma: float = 0.5
    ema_decay: float = 0.999
    noise: float = 0.2
    cycle_weight: float = 10.0
    rec_weight: float = 10.0
    identity_weight: float = 1.0
    age_weight: float = 1.0
    r1_weight: float = 10.0
    flip: bool = True
    mask: bool = True
    seed: int | None = None
    device: str = "auto"
    amp: str = "none"                 # none | bf16
    grad_checkpoint: bool = False     # recompute generator activations in the backward pass (less memory)
    workers: int = 2
    resume: bool = False
    init_from: str | None = None
    offline: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decay_epochs"] = list(self.decay_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "decay_epochs" in d:
            d["decay_epochs"] = tuple(d["decay_epochs"])
        return cls(**d)

    def loss_weights(self) -> LossWeights:
        return LossWeights(cycle=self.cycle_weight, rec=self.rec_weight, identity=self.identity_weight,
                           age=self.age_weight, r1=self.r1_weight)


@dataclass
class TrainEvent:
    """What the loop reports. kind: start | step | sample | checkpoint | warning | end."""

    kind: str
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    images_per_sec: float = 0.0
    eta_s: float | None = None
    lr: float = 0.0
    path: Path | None = None
    image: np.ndarray | None = None
    message: str = ""
    info: dict = field(default_factory=dict)


Callback = Callable[[TrainEvent], None]


# ----------------------------------------------------------------------------------------------
# processes and devices


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_dist() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(name: str, dist: Dist):
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device is available", hint="use --device cpu")
        if dist.world > 1:
            return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        return torch.device(name)
    if name == "mps":
        if dist.world > 1:
            raise UsageError("multi-process training runs on CUDA or the CPU, not on mps")
        return torch.device("mps")
    if name != "cpu":
        raise UsageError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    return torch.device("cpu")


def _init_process_group(dist: Dist, device) -> None:
    import torch.distributed as td

    if dist.world > 1 and not td.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        td.init_process_group(backend=backend)


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, step, rank, stream)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank, stream, 0x7A11])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


# ----------------------------------------------------------------------------------------------
# networks and optimizers


def build_networks(size: int, ngf: int, ndf: int, seed: int):
    """Fresh G, D and EMA G (a copy of G); weights from ``seed`` (equalized-LR N(0, 1), zero biases)."""
    import copy

    from agetool.nn.discriminator import Discriminator, DiscriminatorConfig
    from agetool.nn.generator import Generator, GeneratorConfig

    try:
        dcfg = DiscriminatorConfig(size=size, ndf=ndf)
        dcfg.n_down  # noqa: B018 - validates the size
    except ValueError as e:
        raise UsageError(f"--size {size}: {e}") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(GeneratorConfig(ngf=ngf))
        d = Discriminator(dcfg)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    return g, d, g_ema


def make_optimizers(g, d, cfg: TrainConfig):
    mlp = [p for n, p in g.named_parameters() if n.startswith("decoder.mlp.")]
    rest = [p for n, p in g.named_parameters() if not n.startswith("decoder.mlp.")]
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam([{"params": rest, "lr": cfg.lr, "lr_mult": 1.0},
                              {"params": mlp, "lr": cfg.lr * cfg.mlp_lr_mult, "lr_mult": cfg.mlp_lr_mult}],
                             lr=cfg.lr, betas=betas)
    opt_d = torch.optim.Adam([{"params": list(d.parameters()), "lr": cfg.lr, "lr_mult": 1.0}], lr=cfg.lr, betas=betas)
    return opt_g, opt_d


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Step decay: x decay_gamma for every decay epoch already reached (epochs count from 0)."""
    return cfg.lr * cfg.decay_gamma ** sum(1 for e in cfg.decay_epochs if epoch >= e)


def set_learning_rate(optimizers, lr: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)


def ema_update(ema, model, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, parameters only (the buffers are constant kernels)."""
    with torch.no_grad():
        e = [p for p in ema.parameters()]
        m = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(e, decay)
        torch._foreach_add_(e, m, alpha=1.0 - decay)


# ----------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_dirs(run: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary ``.part`` folders are not listed)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or the newest complete checkpoint of a run folder."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise CheckpointError(f"{path}: no training checkpoint found",
                              hint="pass a run folder (agetool train --out) or one of its checkpoints/step_* folders")
    return found[-1]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _optimizer_tensors(opt, prefix: str) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict, meta: dict, prefix: str) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_states() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [version, list(mt), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def _set_rng_states(tensors: dict, meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "python" in meta:
        version, mt, gauss = meta["python"]
        random.setstate((version, tuple(mt), gauss))
    if "numpy" in meta:
        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(run: Path, *, g, d, g_ema, opt_g, opt_d, step: int, epoch: int, step_in_epoch: int,
                    steps_per_epoch: int, cfg: TrainConfig, world: int, keep: int = 0) -> Path:
    """Write ``RUN/checkpoints/step_<step>`` atomically; returns its path. Keeps the newest ``keep``."""
    from safetensors.torch import save_file

    from agetool.nn.checkpoint import save_generator, save_safetensors

    root = run / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    if (final / STATE_FILE).is_file():  # the same step was saved already: same state, nothing to do
        return final
    tmp = root / f".step_{step:08d}.part{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_generator(tmp / "G.safetensors", g)
        save_generator(tmp / "G_ema.safetensors", g_ema)
        save_safetensors(tmp / "D.safetensors", d.state_dict(), "discriminator", {"discriminator": d.cfg.to_dict()})
        tg, mg = _optimizer_tensors(opt_g, "opt_G")
        td, md = _optimizer_tensors(opt_d, "opt_D")
        tr, mr = _rng_states()
        tensors = {k: v.detach().cpu().contiguous() for k, v in {**tg, **td, **tr}.items()}
        save_file(tensors, str(tmp / TENSOR_STATE_FILE))
        state = {"format": CHECKPOINT_FORMAT, "version": 1, "step": step, "epoch": epoch,
                 "step_in_epoch": step_in_epoch, "steps_per_epoch": steps_per_epoch, "world_size": world,
                 "config": cfg.to_dict(), "generator": g.cfg.to_dict(), "discriminator": d.cfg.to_dict(),
                 "optimizer_G": mg, "optimizer_D": md, "rng": mr, "time": time.time()}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in checkpoint_dirs(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _remove_stale_parts(run: Path) -> None:
    root = run / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_") and ".part" in p.name:
                shutil.rmtree(p, ignore_errors=True)


def read_checkpoint(path: Path) -> dict:
    """Every tensor and setting of a checkpoint folder (raises CheckpointError if incomplete)."""
    from safetensors.torch import load_file

    from agetool.nn.checkpoint import read_state_dict

    try:
        state = json.loads((path / STATE_FILE).read_text())
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: not an agetool training checkpoint")
        nets = {name: read_state_dict(path / f"{name}.safetensors")[0] for name in ("G", "D", "G_ema")}
        tensors = load_file(str(path / TENSOR_STATE_FILE))
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: incomplete or damaged checkpoint ({str(e)[:120]})") from None
    return {"state": state, "nets": nets, "tensors": tensors}


# ----------------------------------------------------------------------------------------------
# starting points


def _released_dir_files(folder: Path) -> dict[str, Path]:
    return {k: folder / m for k, m in RELEASED_MEMBERS.items() if (folder / m).is_file()}


def load_init(spec: str, offline: bool = False, report: Callable[[str], None] | None = None) -> tuple[dict, list[str], str]:
    """State dicts to fine-tune from: ({"G"?, "D"?, "G_ema"?}, notes, description).

    ``spec`` is ``male`` / ``female`` (the released models, fetched from the registry), a released
    zip or a folder holding ``latest_net_{G,D,g_running}.pth``, an agetool run or checkpoint folder,
    or a single generator file (.pth / .safetensors).
    """
    import zipfile

    from agetool.nn.checkpoint import read_state_dict, strip_prefix

    if spec in ("male", "female"):
        from agetool.weights import fetch

        path = Path(fetch(f"lats-{spec}", offline=offline, report=report))
        what = f"the released {spec} model ({path.name})"
    else:
        path = Path(spec).expanduser()
        what = str(path)
        if not path.exists():
            raise CheckpointError(f"--init-from {spec}: no such file or folder",
                                  hint="pass male, female, a released zip, a run folder or a generator file")
    found: dict = {}
    if path.is_dir() and ((path / STATE_FILE).is_file() or (path / CHECKPOINTS).is_dir()):
        ck = read_checkpoint(find_checkpoint(path))
        found = dict(ck["nets"])
    elif path.is_dir():
        for key, f in _released_dir_files(path).items():
            found[key] = read_state_dict(f)[0]
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [n.replace("\\", "/").rsplit("/", 1)[-1] for n in zf.namelist()]
        for key, member in RELEASED_MEMBERS.items():
            if member in names:
                found[key] = read_state_dict(path, member=member)[0]
    else:
        found["G"] = read_state_dict(path)[0]
    found = {k: strip_prefix(v) for k, v in found.items()}
    if not found:
        raise CheckpointError(f"--init-from {what}: no generator or discriminator weights in it",
                              hint="expected " + ", ".join(RELEASED_MEMBERS.values()))
    notes = []
    if "G" not in found:
        found["G"] = found["G_ema"]
        notes.append(f"{what} has no training generator ({RELEASED_MEMBERS['G']}); starting it from the EMA generator")
    if "G_ema" not in found:
        found["G_ema"] = found["G"]
        notes.append(f"{what} has no EMA generator ({RELEASED_MEMBERS['G_ema']}); starting it from the generator")
    if "D" not in found:
        notes.append(f"{what} has no discriminator ({RELEASED_MEMBERS['D']}); the discriminator starts from scratch")
    return found, notes, what


def _infer_ngf(sd: dict) -> int | None:
    w = sd.get("id_encoder.encoder.1.conv.weight_orig")
    return int(w.shape[0]) if w is not None else None


def _infer_ndf(sd: dict) -> int | None:
    w = sd.get("model.1.conv.weight_orig")
    return int(w.shape[0]) if w is not None else None


# ----------------------------------------------------------------------------------------------
# samples and TensorBoard


def sample_grid(g_ema, images, noise: float, seed: int, device) -> np.ndarray:
    """One row per input: [input, the six classes], 0-based from the youngest. uint8 [H, W, 3]."""
    from agetool.ages import AGE_CLASSES, all_class_codes
    from agetool.images import grid, to_uint8

    codes = all_class_codes(noise=noise, seed=seed).to(device)
    rows = []
    with torch.no_grad():
        w = g_ema.latent(codes)  # [6, latent]
        for x in images:
            x = x[None].to(device)
            feats = g_ema.encode(x)
            out = g_ema.decode(feats.expand(len(codes), *feats.shape[1:]), w)
            rows.append([to_uint8(x)[0], *to_uint8(out)])
    return grid(rows, labels=["input", *AGE_CLASSES])


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


class TensorBoardLogger:
    """A callback writing loss scalars, learning rate, throughput and sample grids to ``logdir``."""

    def __init__(self, logdir: str | os.PathLike):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(logdir))

    def __call__(self, event: TrainEvent) -> None:
        if event.kind == "step" and event.losses:
            for k, v in event.losses.items():
                self.writer.add_scalar(f"loss/{k}", v, event.step)
            self.writer.add_scalar("train/lr", event.lr, event.step)
            self.writer.add_scalar("train/images_per_sec", event.images_per_sec, event.step)
        elif event.kind == "sample" and event.image is not None:
            self.writer.add_image("samples", event.image, event.step, dataformats="HWC")
        elif event.kind == "end":
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------------------------
# the loop


class GeneratorObjective(nn.Module):
    """The whole generator pass of a step as one ``forward``, so DistributedDataParallel can wrap it."""

    def __init__(self, g, checkpoint: bool = False):
        super().__init__()
        self.g = g
        self.checkpoint = checkpoint

    def forward(self, reals, gen, cyc, orig):
        return generator_pass(self.g, reals, Codes(gen, cyc, orig), self.checkpoint).as_tuple()


class _StopFlag:
    """First Ctrl-C: stop after the current step and save; the second interrupts at once."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


class Trainer:
    """Builds everything from a ``TrainConfig``; ``run()`` trains and returns the final step."""

    def __init__(self, cfg: TrainConfig, callback: Callback | None = None):
        self.dist = _env_dist()
        self.device = _resolve_device(cfg.device, self.dist)
        self.callback = callback if self.dist.main else None
        _init_process_group(self.dist, self.device)
        self.run_dir = Path(cfg.out)
        if not cfg.data:
            raise UsageError("--data is required")
        if not cfg.out:
            raise UsageError("--out is required")
        if cfg.amp not in ("none", "bf16"):
            raise UsageError(f"--amp {cfg.amp}: expected none or bf16")
        if cfg.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")

        resume_from = self._resume_source(cfg)
        ck = self._load_resume(resume_from) if resume_from is not None else None
        init = None
        if ck is None and cfg.init_from:
            init = load_init(cfg.init_from, cfg.offline, report=lambda m: self._emit(TrainEvent("warning", message=m)))
        cfg = self._resolve_arch(cfg, ck, init)
        self.cfg = cfg
        self.weights = cfg.loss_weights()

        self.g, self.d, self.g_ema = build_networks(cfg.size, cfg.ngf, cfg.ndf, cfg.seed)
        if init is not None:
            self._apply_init(*init)
        self.g.to(self.device)
        self.d.to(self.device)
        self.g_ema.to(self.device)
        self.opt_g, self.opt_d = make_optimizers(self.g, self.d, cfg)

        self.step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self._build_data()
        if ck is not None:
            self._restore(ck)

        self.g_train, self.d_train = GeneratorObjective(self.g, cfg.grad_checkpoint), self.d
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_train = DDP(self.g_train, device_ids=ids, broadcast_buffers=False)
            self.d_train = DDP(self.d, device_ids=ids, broadcast_buffers=False)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # -- setup helpers

    def _emit(self, event: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    def _resume_source(self, cfg: TrainConfig) -> list[Path] | None:
        found = checkpoint_dirs(cfg.out) if cfg.out else []
        if not cfg.resume:
            if found:
                raise UsageError(f"{cfg.out} already holds checkpoints (newest: {found[-1].name})",
                                 hint="pass --resume to continue that run, or choose another --out")
            return None
        if not found:
            self._emit(TrainEvent("warning", message=f"--resume: no checkpoint in {cfg.out} yet; starting a new run"))
            return None
        return found

    def _load_resume(self, candidates: list[Path]) -> dict:
        for path in reversed(candidates):
            try:
                ck = read_checkpoint(path)
                ck["path"] = path
                return ck
            except CheckpointError as e:
                self._emit(TrainEvent("warning", message=f"skipping {path.name}: {e}"))
        raise CheckpointError(f"{self.run_dir}: no readable checkpoint to resume from")

    def _resolve_arch(self, cfg: TrainConfig, ck: dict | None, init) -> TrainConfig:
        old = TrainConfig.from_dict(ck["state"]["config"]) if ck else None
        if ck is not None:
            for name in ("size", "ngf", "ndf", "seed"):
                mine, theirs = getattr(cfg, name), getattr(old, name)
                if mine is not None and mine != theirs:
                    raise UsageError(f"--{name} {mine} differs from the run being resumed ({theirs})",
                                     hint=f"leave --{name} out when resuming, or start a new --out")
            cfg = replace(cfg, size=old.size, ngf=old.ngf, ndf=old.ndf, seed=old.seed)
        if init is not None:
            nets = init[0]
            ngf, ndf = _infer_ngf(nets["G"]), _infer_ndf(nets["D"]) if "D" in nets else None
            if cfg.ngf is not None and ngf is not None and cfg.ngf != ngf:
                raise UsageError(f"--ngf {cfg.ngf} does not fit --init-from {init[2]} (ngf {ngf})",
                                 hint="leave --ngf out when fine-tuning")
            cfg = replace(cfg, ngf=cfg.ngf or ngf, ndf=cfg.ndf or ndf)
        return replace(cfg, size=cfg.size or 256, ngf=cfg.ngf or 64, ndf=cfg.ndf or 64,
                       seed=0 if cfg.seed is None else cfg.seed)

    def _apply_init(self, nets: dict, notes: list[str], what: str) -> None:
        from agetool.nn.checkpoint import load_into

        load_into(self.g, nets["G"], f"{what} (generator)")
        load_into(self.g_ema, nets["G_ema"], f"{what} (EMA generator)")
        if "D" in nets:
            try:
                load_into(self.d, nets["D"], f"{what} (discriminator)")
            except CheckpointError as e:
                raise CheckpointError(f"{e.message}; the released discriminator is for --size 256",
                                      hint="fine-tune at --size 256, or pass a generator file alone") from None
        for note in notes:
            self._emit(TrainEvent("warning", message=note))
        self._emit(TrainEvent("start", message=f"fine-tuning from {what}"))

    def _build_data(self) -> None:
        from torch.utils.data import DataLoader
        from torch.utils.data.distributed import DistributedSampler

        from agetool.train.data import PairDataset, ResumableSampler

        cfg, dist = self.cfg, self.dist
        per_step = cfg.batch_size * dist.world
        self.dataset = PairDataset(cfg.data, cfg.size, seed=cfg.seed, flip=cfg.flip, mask=cfg.mask,
                                   min_len=per_step)
        self.sampler = ResumableSampler(DistributedSampler(self.dataset, num_replicas=dist.world, rank=dist.rank,
                                                           shuffle=True, seed=cfg.seed, drop_last=True))
        workers = max(0, min(cfg.workers, os.cpu_count() or 1))
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True,
                                 num_workers=workers, pin_memory=self.device.type == "cuda",
                                 persistent_workers=False, generator=torch.Generator().manual_seed(cfg.seed))
        self.steps_per_epoch = len(self.loader)
        if self.steps_per_epoch < 1:
            raise DatasetError(f"{cfg.data}: too few images for --batch-size {cfg.batch_size}")
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps is not None else total

    def _restore(self, ck: dict) -> None:
        from agetool.nn.checkpoint import load_into

        state, nets, tensors = ck["state"], ck["nets"], ck["tensors"]
        load_into(self.g, nets["G"], f"{ck['path']}/G")
        load_into(self.d, nets["D"], f"{ck['path']}/D")
        load_into(self.g_ema, nets["G_ema"], f"{ck['path']}/G_ema")
        tensors = {k: v.to(self.device) if not k.startswith("rng.") else v for k, v in tensors.items()}
        self.opt_g.load_state_dict(_optimizer_state(tensors, state["optimizer_G"], "opt_G"))
        self.opt_d.load_state_dict(_optimizer_state(tensors, state["optimizer_D"], "opt_D"))
        _set_rng_states(tensors, state.get("rng", {}))
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            old = state.get("steps_per_epoch") or self.steps_per_epoch
            self.step_in_epoch = min(self.steps_per_epoch - 1, round(self.step_in_epoch * self.steps_per_epoch / old))
            self._emit(TrainEvent("warning", message="batch size or process count changed since the checkpoint: "
                                                     "the run continues, but not bit for bit"))
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self._emit(TrainEvent("start", step=self.step, message=f"resumed from {ck['path']}"))

    # -- one step

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def train_step(self, batch: dict) -> dict:
        """One discriminator update, one generator update, one EMA update. Returns the loss tensors."""
        dev = self.device
        class_a = torch.as_tensor(batch["A_class"]).long()
        class_b = torch.as_tensor(batch["B_class"]).long()
        reals = torch.cat([batch["A"], batch["B"]]).to(dev, non_blocking=True)  # [2N, 3, S, S]
        rng = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.step, self.dist.rank))
        codes_d = make_codes(class_a, class_b, self.cfg.noise, CODE_PER_CLASS, N_CLASSES, rng).to(dev)
        codes_g = make_codes(class_a, class_b, self.cfg.noise, CODE_PER_CLASS, N_CLASSES, rng).to(dev)
        class_a, class_b = class_a.to(dev), class_b.to(dev)

        # discriminator: the fake half first, so its graph is freed before the real half and R1
        self.d.requires_grad_(True)
        self.opt_d.zero_grad(set_to_none=True)
        with torch.no_grad(), self._autocast():
            fakes = translate(self.g, reals, codes_d.gen)
        with self._autocast():
            fake_logits = self.d_train(fakes)
        loss_fake = discriminator_fake_loss(fake_logits, class_a, class_b)
        loss_fake.backward()
        del fakes, fake_logits
        reals_d = reals.detach().requires_grad_(True)
        with self._autocast():
            real_logits = self.d_train(reals_d)
        loss_real, loss_r1, _ = discriminator_real_losses(real_logits, reals_d, class_a, class_b, self.weights)
        (loss_real + loss_r1).backward()
        self.opt_d.step()
        loss_fake, loss_real, loss_r1 = loss_fake.detach(), loss_real.detach(), loss_r1.detach()
        terms_d = {"D_real": loss_real, "D_fake": loss_fake, "D_r1": loss_r1, "D": loss_real + loss_fake + loss_r1}
        del real_logits, reals_d

        # generator
        self.d.requires_grad_(False)
        self.opt_g.zero_grad(set_to_none=True)
        with self._autocast():
            out = GeneratorPass(*self.g_train(reals, codes_g.gen, codes_g.cyc, codes_g.orig))
            fake_logits_g = discriminate(self.d, out.gen, self.cfg.grad_checkpoint)
        loss_g, terms_g = generator_losses(out, fake_logits_g, reals, codes_g, class_a, class_b, self.weights)
        loss_g.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        ema_update(self.g_ema, self.g, self.cfg.ema_decay)
        return {**terms_d, **{k: v.detach() for k, v in terms_g.items()}}

    # -- the run

    def save(self) -> Path | None:
        if not self.dist.main:
            return None
        path = save_checkpoint(self.run_dir, g=self.g, d=self.d, g_ema=self.g_ema, opt_g=self.opt_g,
                               opt_d=self.opt_d, step=self.step, epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                               steps_per_epoch=self.steps_per_epoch, cfg=self.cfg, world=self.dist.world,
                               keep=self.cfg.keep)
        self._emit(TrainEvent("checkpoint", step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                              path=path))
        return path

    def write_samples(self) -> Path | None:
        if not self.dist.main:
            return None
        from agetool.images import write_image

        images, _ = self.dataset.samples()
        image = sample_grid(self.g_ema, images, self.cfg.noise, self.cfg.seed, self.device)
        path = write_image(self.run_dir / SAMPLES / f"step_{self.step:08d}.png", image)
        self._emit(TrainEvent("sample", step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                              path=path, image=image))
        return path

    def _stop_everywhere(self, flag: bool) -> bool:
        if self.dist.world <= 1:
            return flag
        import torch.distributed as td

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        td.all_reduce(t)
        return bool(t.item() > 0)

    def run(self) -> int:
        cfg = self.cfg
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_parts(self.run_dir)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        per_step_images = 2 * cfg.batch_size * self.dist.world
        self._emit(TrainEvent("start", step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                              info={"device": str(self.device), "world": self.dist.world, "size": cfg.size,
                                    "ngf": cfg.ngf, "ndf": cfg.ndf, "batch_size": cfg.batch_size,
                                    "images_per_step": per_step_images, "steps_per_epoch": self.steps_per_epoch,
                                    "classes": self.dataset.summary(), "amp": cfg.amp,
                                    "run": str(self.run_dir)}))
        self.g.train()
        self.d.train()
        times: deque[float] = deque(maxlen=20)
        last_saved = self.step if cfg.resume else -1
        stopped = False
        with _StopFlag() as stop:
            while self.step < self.total_steps and not stopped:
                lr = learning_rate(cfg, self.epoch)
                set_learning_rate((self.opt_g, self.opt_d), lr)
                self.dataset.set_epoch(self.epoch)
                self.sampler.set_epoch(self.epoch)
                self.sampler.skip = self.step_in_epoch * cfg.batch_size
                t0 = time.perf_counter()
                for batch in self.loader:
                    terms = self.train_step(batch)
                    self.step += 1
                    self.step_in_epoch += 1
                    if self.step_in_epoch >= self.steps_per_epoch:
                        self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    if self.device.type == "cuda" and (self.step % cfg.log_every == 0):
                        torch.cuda.synchronize(self.device)
                    t1 = time.perf_counter()
                    times.append(t1 - t0)
                    t0 = t1
                    if self.callback is not None:
                        avg = sum(times) / len(times)
                        losses = {}
                        if self.step % cfg.log_every == 0 or self.step == self.total_steps or self.step == 1:
                            names = list(terms)
                            values = torch.stack([terms[k].detach().float() for k in names]).cpu().tolist()
                            losses = dict(zip(names, values))
                        self._emit(TrainEvent("step", step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                                              losses=losses, images_per_sec=per_step_images / avg,
                                              eta_s=avg * (self.total_steps - self.step), lr=lr))
                    if cfg.sample_every and self.step % cfg.sample_every == 0:
                        self.write_samples()
                    if cfg.save_every and self.step % cfg.save_every == 0:
                        self.save()
                        last_saved = self.step
                    if self._stop_everywhere(stop.requested):
                        stopped = True
                        break
                    if self.step >= self.total_steps:
                        break
                    if self.step_in_epoch == 0:
                        break  # next epoch: new learning rate and sampler order
        if last_saved != self.step:
            self.save()
        if cfg.sample_every and self.step % cfg.sample_every != 0:
            self.write_samples()
        self._emit(TrainEvent("end", step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                              message="stopped on request" if stopped else ""))
        if stopped:
            raise Interrupted(f"training stopped at step {self.step}; a checkpoint was saved",
                              hint="continue with --resume")
        return self.step

    def close(self) -> None:
        if self.dist.world > 1:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()


def train(cfg: TrainConfig, callback: Callback | None = None) -> int:
    """Train from ``cfg`` (single process, or one torchrun process). Returns the final step."""
    trainer = Trainer(cfg, callback)
    try:
        return trainer.run()
    finally:
        trainer.close()


def export_generator(source: str | os.PathLike, out: str | os.PathLike, which: str = "ema") -> Path:
    """Write the EMA (or the training) generator of a run / checkpoint as agetool safetensors."""
    from agetool.nn.checkpoint import load_generator, save_generator

    if which not in ("ema", "g"):
        raise UsageError(f"--which {which}: expected ema or g")
    ck = find_checkpoint(source)
    g = load_generator(ck / ("G_ema.safetensors" if which == "ema" else "G.safetensors"))
    return save_generator(out, g)
