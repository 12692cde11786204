"""The trainer: networks, the step and the run (optimizers, schedule and EMA in ``agetool.train.optim``).

One step = a discriminator update, then a generator update (see ``agetool.train.losses``), then an
EMA update of the generator used for inference. Adam (lr 1e-3, betas (0, 0.999)) with the mapping
MLP at 0.01 x lr, halved at epochs 50 and 100 (``agetool.train.config`` holds the settings).

Determinism: the pairs of step ``s`` come from (seed, epoch, index) and the class-code noise from
(seed, step, rank), never from a global random state, so a run continued with ``resume`` repeats
the uninterrupted run bit for bit on the CPU.

Launched by ``torchrun``, every process trains on its share of each epoch (DistributedSampler),
gradients are averaged by DistributedDataParallel (NCCL on GPUs, gloo on the CPU) and rank 0 alone
reports, writes samples and checkpoints. Progress reaches the caller through a callback of
``TrainEvent``; this module never prints.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from collections import deque
from pathlib import Path

import torch
from torch import nn

from agetool.errors import CheckpointError, DatasetError, Interrupted, ResourceError, UsageError, arg
from agetool.loading import Loading
from agetool.train.checkpoints import (checkpoint_dirs, init_widths, load_init, optimizer_state, read_checkpoint,
                                       remove_stale_parts, save_checkpoint, set_rng_states)
from agetool.train.config import TrainConfig, network_configs
from agetool.train.losses import (Codes, GeneratorPass, discriminate, discriminator_fake_loss,
                                  discriminator_real_losses, generator_losses, generator_pass, make_codes, translate)
from agetool.train.optim import ema_update, learning_rate, make_optimizers, set_learning_rate, step_seed
from agetool.train.report import Callback, TrainEvent, sample_grid

SAMPLES = "samples"


def build_networks(cfg: TrainConfig):
    """Fresh G, D and EMA G (a copy of G) for a resolved config; weights from ``cfg.seed``."""
    from agetool.nn.discriminator import Discriminator
    from agetool.nn.generator import Generator

    gcfg, dcfg = network_configs(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        g = Generator(gcfg)
        d = Discriminator(dcfg)
    g_ema = copy.deepcopy(g).eval().requires_grad_(False)
    return g, d, g_ema


def _is_out_of_memory(e: BaseException) -> bool:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


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
    """Builds everything from a ``TrainConfig``; ``run()`` trains and returns the final step.

    ``cfg`` is the resolved configuration (every setting filled in, a resumed run's own values).
    """

    def __init__(self, cfg: TrainConfig, callback: Callback | None = None):
        from agetool.device import env_dist, pick_device

        if not cfg.out:
            raise UsageError(f"{arg('out')} is required", hint="the run folder, e.g. runs/males")
        cfg = cfg.checked()
        self.dist = env_dist()
        self.device = pick_device(cfg.device, dist=self.dist)
        self.callback = callback if self.dist.main else None
        self.run_dir = Path(cfg.out)
        self._init_process_group()

        candidates = self._resume_candidates(cfg)
        if candidates:
            self._resume(cfg, candidates)
        else:
            init = None
            if cfg.init_from:
                init = load_init(cfg.init_from, Loading(cfg.offline, report=self._warn))
            widths = init_widths(init[0]) if init is not None else (None, None)
            self._build(cfg.resolved(widths=widths, init_from=cfg.init_from))
            if init is not None:
                self._apply_init(*init)
        self.resumed = bool(candidates)

        self.g_train, self.d_train = GeneratorObjective(self.g, self.cfg.grad_checkpoint), self.d
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.g_train = DDP(self.g_train, device_ids=ids, broadcast_buffers=False)
            self.d_train = DDP(self.d, device_ids=ids, broadcast_buffers=False)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

    # -- setup

    def _emit(self, event: TrainEvent) -> None:
        if self.callback is not None:
            self.callback(event)

    def _warn(self, message: str) -> None:
        self._emit(TrainEvent("warning", message=message))

    def _init_process_group(self) -> None:
        import torch.distributed as td

        if self.dist.world > 1 and not td.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            td.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    def _resume_candidates(self, cfg: TrainConfig) -> list[Path]:
        found = checkpoint_dirs(cfg.out)
        if not cfg.resume:
            if found:
                raise UsageError(f"{cfg.out} already holds checkpoints (newest: {found[-1].name})",
                                 hint=f"pass {arg('resume', True)} to continue that run, or choose another {arg('out')}")
            return []
        if not found:
            self._warn(f"{arg('resume', True)}: no checkpoint in {cfg.out} yet; starting a new run")
        return found

    def _resume(self, cfg: TrainConfig, candidates: list[Path]) -> None:
        """Continue from the newest checkpoint that reads and restores; damaged ones are skipped."""
        problem = None
        for path in reversed(candidates):
            try:
                ck = read_checkpoint(path)
                self._build(cfg.resolved(saved=ck["config"]))
                self._restore(ck)
                return
            except CheckpointError as e:
                problem = e
                self._warn(f"skipping the damaged checkpoint {path.name}: {e.message}")
        raise CheckpointError(f"{self.run_dir}: no readable checkpoint to resume from (newest problem: {problem.message})",
                              hint="start a new run in another folder")

    def _build(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.weights = cfg.loss_weights()
        self.g, self.d, self.g_ema = build_networks(cfg)
        self.g.to(self.device)
        self.d.to(self.device)
        self.g_ema.to(self.device)
        self.opt_g, self.opt_d = make_optimizers(self.g, self.d, cfg)
        self.step = self.epoch = self.step_in_epoch = 0
        self._build_data()

    def _apply_init(self, nets: dict, notes: list[str], what: str) -> None:
        from agetool.nn.checkpoint import load_into

        load_into(self.g, nets["G"], f"{what} (generator)")
        load_into(self.g_ema, nets["G_ema"], f"{what} (EMA generator)")
        if "D" in nets:
            try:
                load_into(self.d, nets["D"], f"{what} (discriminator)")
            except CheckpointError as e:
                raise CheckpointError(f"{e.message}; the released discriminator is for {arg('size', 256)}",
                                      hint=f"fine-tune at {arg('size', 256)}, or pass a generator file alone") from None
        for note in notes:
            self._warn(note)
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
            raise DatasetError(f"{cfg.data}: too few images for {arg('batch_size', cfg.batch_size)}")
        total = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps is not None else total

    def _restore(self, ck: dict) -> None:
        from agetool.nn.checkpoint import load_into

        path, state, nets = ck["path"], ck["state"], ck["nets"]
        for key, module in (("G", self.g), ("D", self.d), ("G_ema", self.g_ema)):
            load_into(module, nets[key], f"{path}/{key}")
        tensors = {k: v.to(self.device) if not k.startswith("rng.") else v for k, v in ck["tensors"].items()}
        try:
            self.opt_g.load_state_dict(optimizer_state(tensors, state["optimizer_G"], "opt_G"))
            self.opt_d.load_state_dict(optimizer_state(tensors, state["optimizer_D"], "opt_D"))
            set_rng_states(tensors, state.get("rng", {}))
        except (KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError) as e:
            if _is_out_of_memory(e):
                raise
            raise CheckpointError(f"{path}: the optimizer or random state doesn't fit the run "
                                  f"({type(e).__name__}: {str(e)[:100]})") from None
        self.step, self.epoch, self.step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        if state.get("steps_per_epoch") != self.steps_per_epoch:
            old = state.get("steps_per_epoch") or self.steps_per_epoch
            self.step_in_epoch = min(self.steps_per_epoch - 1, round(self.step_in_epoch * self.steps_per_epoch / old))
            self._warn("the process count or the data changed since the checkpoint: "
                       "the run continues, but not bit for bit")
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        self._emit(TrainEvent("start", step=self.step, message=f"resumed from {path}"))

    # -- one step

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bfloat16")

    def step_codes(self, class_a: torch.Tensor, class_b: torch.Tensor) -> tuple[Codes, Codes]:
        """The class codes of this step's discriminator and generator updates, from (seed, step, rank)."""
        rng = torch.Generator().manual_seed(step_seed(self.cfg.seed, self.step, self.dist.rank))
        n_classes, per_class = self.g.cfg.n_classes, self.g.cfg.code_per_class
        return (make_codes(class_a, class_b, self.cfg.noise, per_class, n_classes, rng),
                make_codes(class_a, class_b, self.cfg.noise, per_class, n_classes, rng))

    def train_step(self, batch: dict) -> dict:
        """One step on a loader batch: its codes drawn, then ``update``. Returns the loss tensors."""
        class_a = torch.as_tensor(batch["A_class"]).long()
        class_b = torch.as_tensor(batch["B_class"]).long()
        reals = torch.cat([batch["A"], batch["B"]])  # [2N, 3, S, S]
        codes_d, codes_g = self.step_codes(class_a, class_b)
        return self.update(reals, class_a, class_b, codes_d, codes_g)

    def update(self, reals: torch.Tensor, class_a: torch.Tensor, class_b: torch.Tensor,
               codes_d: Codes, codes_g: Codes, probe: dict | None = None) -> dict:
        """One discriminator update, one generator update, one EMA update on ``reals`` = cat(A, B).

        Returns the loss terms, each computed before its own network's update. ``probe``, when given,
        receives what the update computed on the way (detached): ``real_logits``, ``r1_grad`` and the
        generator pass's ``gen``, ``rec``, ``cyc``, ``age_real``, ``age_fake``.
        """
        dev = self.device
        reals = reals.to(dev, non_blocking=True)
        codes_d, codes_g = codes_d.to(dev), codes_g.to(dev)
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
        loss_real, loss_r1, r1_grad = discriminator_real_losses(real_logits, reals_d, class_a, class_b, self.weights)
        (loss_real + loss_r1).backward()
        if probe is not None:
            probe.update(real_logits=real_logits.detach(), r1_grad=r1_grad.detach())
        del r1_grad
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
        if probe is not None:
            probe.update({k: getattr(out, k).detach() for k in ("gen", "rec", "cyc", "age_real", "age_fake")})
        loss_g.backward()
        self.opt_g.step()
        self.d.requires_grad_(True)
        ema_update(self.g_ema, self.g, self.cfg.ema_decay)
        return {**terms_d, **{k: v.detach() for k, v in terms_g.items()}}

    def _out_of_memory(self) -> ResourceError:
        cfg = self.cfg
        return ResourceError(f"out of memory training at {arg('size', cfg.size)} with "
                             f"{arg('batch_size', cfg.batch_size)} on {self.device}",
                             hint=f"try {arg('grad_checkpoint', True)}, a smaller {arg('batch_size')} "
                                  f"or a smaller {arg('size')}")

    # -- the run

    def save(self) -> Path | None:
        if not self.dist.main:
            return None
        path = save_checkpoint(self.run_dir, g=self.g, d=self.d, g_ema=self.g_ema, opt_g=self.opt_g,
                               opt_d=self.opt_d, step=self.step, epoch=self.epoch, step_in_epoch=self.step_in_epoch,
                               steps_per_epoch=self.steps_per_epoch, config=self.cfg.to_dict(),
                               world=self.dist.world, keep=self.cfg.keep)
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

    def _start_event(self) -> TrainEvent:
        cfg = self.cfg
        return TrainEvent("start", step=self.step, total_steps=self.total_steps, epoch=self.epoch,
                          info={"device": str(self.device), "world": self.dist.world, "size": cfg.size,
                                "ngf": cfg.ngf, "ndf": cfg.ndf, "batch_size": cfg.batch_size,
                                "images_per_step": 2 * cfg.batch_size * self.dist.world,
                                "steps_per_epoch": self.steps_per_epoch, "classes": self.dataset.summary(),
                                "ignored": self.dataset.ignored(),
                                "amp": cfg.amp, "run": str(self.run_dir)})

    def run(self) -> int:
        cfg = self.cfg
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_parts(self.run_dir)
            (self.run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
            from agetool.train.curation import copy_attribution

            copy_attribution(cfg.data, self.run_dir)  # the photos' credits travel with the weights
        per_step_images = 2 * cfg.batch_size * self.dist.world
        self._emit(self._start_event())
        self.g.train()
        self.d.train()
        times: deque[float] = deque(maxlen=20)
        last_saved = self.step if self.resumed else -1
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
                    try:
                        terms = self.train_step(batch)
                    except (RuntimeError, MemoryError) as e:
                        if _is_out_of_memory(e):
                            raise self._out_of_memory() from None
                        raise
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
                              hint=f"continue with {arg('resume', True)}")
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
