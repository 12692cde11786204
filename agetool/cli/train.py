"""`agetool train` and `agetool train export`."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console

train_app = typer.Typer(
    name="train", invoke_without_command=True, no_args_is_help=True, add_completion=False,
    help=("Train or fine-tune the LATS generator on one gender's folder (DIR/train<class>/*.png with "
          "parsings/).\n\nExamples:\n\n"
          "  agetool train --data ffhq-aging/males --out runs/males\n\n"
          "  agetool train --out runs/males --resume\n\n"
          "  torchrun --nproc_per_node 8 -m agetool train --data ffhq-aging/males --out runs/males\n\n"
          "  agetool train export runs/males --out males.safetensors   (then: agetool age --weights males.safetensors)"),
)


LOSS_ORDER = ("D", "G", "D_real", "D_fake", "D_r1", "G_adv", "G_rec", "G_cyc", "G_id", "G_age")


def _fmt_losses(losses: dict[str, float], short: bool = False) -> str:
    names = ("D", "G", "G_rec") if short else LOSS_ORDER
    return "  ".join(f"{k} {losses[k]:.4g}" for k in names if k in losses)


class TrainDisplay:
    """Renders ``TrainEvent``s: a live line on a terminal, plain log lines otherwise."""

    def __init__(self, log_every: int):
        self.log_every = max(1, log_every)
        self.live = sys.stderr.isatty() and os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 draws
        self.losses: dict[str, float] = {}
        self.progress = None
        self.task = None
        self.started = time.time()

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self.progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"),
                                     TextColumn("{task.fields[losses]}"), console=console.err, transient=False)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, ev) -> None:
        kind = ev.kind
        if kind == "warning":
            console.warn(ev.message)
        elif kind == "start" and ev.message:
            console.info(ev.message)
        elif kind == "start":
            i = ev.info
            classes = ", ".join(f"{k}: {v}" for k, v in i.get("classes", {}).items())
            console.info(f"training {i.get('size')} px, ngf {i.get('ngf')}, ndf {i.get('ndf')}, "
                         f"batch {i.get('batch_size')} pairs x {i.get('world')} process(es) on {i.get('device')}"
                         f"{', bfloat16' if i.get('amp') == 'bfloat16' else ''}; {console.count_of(i.get('steps_per_epoch'), 'step')} per epoch; "
                         f"images per class: {classes}")
            console.info(f"run folder: {i.get('run')}  (steps {ev.step} -> {ev.total_steps})")
            ignored = i.get("ignored") or {}
            if ignored:
                console.warn("not used for training (age groups outside the six classes): "
                             + ", ".join(f"{name}/ ({n} images)" for name, n in ignored.items()))
            if self.progress is not None:
                self.task = self.progress.add_task("train", total=ev.total_steps, completed=ev.step, rate="",
                                                   eta="?", losses="")
        elif kind == "step":
            if ev.losses:
                self.losses = ev.losses
            rate = f"{ev.images_per_sec:.3g} img/s"
            if self.progress is not None and self.task is not None:
                self.progress.update(self.task, completed=ev.step, rate=rate, eta=console.clock(ev.eta_s),
                                     losses=_fmt_losses(self.losses, short=True))
            elif ev.step % self.log_every == 0 or ev.step == ev.total_steps or ev.step == 1:
                console.info(f"step {ev.step}/{ev.total_steps}  epoch {ev.epoch}  {rate}  lr {ev.lr:.3g}  "
                             f"ETA {console.clock(ev.eta_s)}  {_fmt_losses(self.losses)}")
        elif kind == "checkpoint":
            self._note(f"checkpoint: {ev.path}")
        elif kind == "sample":
            self._note(f"samples: {ev.path}")
        elif kind == "end":
            if self.progress is not None and self.task is not None:
                self.progress.update(self.task, completed=ev.step)
            console.info(f"done: step {ev.step} in {console.clock(time.time() - self.started)}"
                         + (f"  {_fmt_losses(self.losses)}" if self.losses else ""))

    def _note(self, text: str) -> None:
        if self.progress is not None:
            self.progress.console.print(text, markup=False, highlight=False)
        else:
            console.info(text)


def _default(name: str) -> str:
    from agetool.train.config import DEFAULTS

    return f"{DEFAULTS[name]}, or the resumed run's"


@train_app.callback()
def train(
    ctx: typer.Context,
    data: Annotated[Optional[Path], typer.Option("--data", help="One gender's folder: DIR/train<class>/*.png with parsings/ (resuming: the run's).", file_okay=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run folder: checkpoints/, samples/, config.json, TensorBoard logs.", file_okay=False)] = None,
    size: Annotated[Optional[int], typer.Option("--size", metavar="PX", help="Training resolution: 256 (released), 128 or 64. The discriminator's depth follows it.", show_default=_default("size"))] = None,
    ngf: Annotated[Optional[int], typer.Option("--ngf", help="Generator width (64 released; 8-16 for quick experiments).", show_default=_default("ngf"))] = None,
    ndf: Annotated[Optional[int], typer.Option("--ndf", help="Discriminator width (64 released).", show_default="64 or --ngf when that is smaller, or the resumed run's")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", metavar="N", help="Pairs per process and step (each pair = 2 images of different ages).", show_default=_default("batch_size"))] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs (one epoch = images / 2 pairs).", show_default=_default("epochs"))] = None,
    max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Stop at this total step count (counting resumed steps).", show_default="no limit, or the resumed run's")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Checkpoint every N steps (and always at the end).", show_default=_default("save_every"))] = None,
    sample_every: Annotated[Optional[int], typer.Option("--sample-every", help="Write RUN/samples/step_N.png every N steps (0 = only at the end).", show_default=_default("sample_every"))] = None,
    log_every: Annotated[Optional[int], typer.Option("--log-every", help="Report losses every N steps.", show_default=_default("log_every"))] = None,
    keep: Annotated[Optional[int], typer.Option("--keep", help="Keep the newest N checkpoints (0 = all).", show_default=_default("keep"))] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest complete checkpoint in --out, with the run's settings.")] = False,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="Fine-tune from male, female (released models), a released zip or folder, a run, or a generator file.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate (the mapping MLP uses 0.01 x).", show_default=_default("lr"))] = None,
    noise: Annotated[Optional[float], typer.Option("--noise", metavar="SIGMA", help="Sigma of the class-code noise.", show_default=_default("noise"))] = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Random horizontal flips.", show_default="flip, or the resumed run's")] = None,
    mask: Annotated[Optional[bool], typer.Option("--mask/--no-mask", help="Mask the background with the parsings (--no-mask: none are needed).", show_default="mask, or the resumed run's")] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N (torchrun: each process takes cuda:LOCAL_RANK).")] = "auto",
    amp: Annotated[Optional[str], typer.Option("--amp", help="Mixed precision: none or bfloat16 (GPUs; bf16 is accepted too).", show_default=_default("amp"))] = None,
    grad_checkpoint: Annotated[Optional[bool], typer.Option("--grad-checkpoint/--no-grad-checkpoint", help="Recompute activations in the backward pass: same results, much less memory, about a third more compute.", show_default="off, or the resumed run's")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", metavar="N", help="Seed of weights, pairs, flips and code noise.", show_default=_default("seed"))] = None,
    workers: Annotated[int, typer.Option("--workers", help="Data-loading processes per training process.", min=0)] = 2,
    tensorboard: Annotated[bool, typer.Option("--tensorboard/--no-tensorboard", help="Write TensorBoard logs to RUN/tb when tensorboard is installed.")] = True,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network (for --init-from male|female).", show_default=False)] = False,
) -> None:
    """Train or fine-tune the LATS generator.

    Examples:

      agetool train --data ffhq-aging/males --out runs/males

      agetool train --out runs/males --resume

      agetool train --data my-photos/females --out runs/ft --init-from female --epochs 20
    """
    if ctx.invoked_subcommand is not None:
        return
    from agetool.train.config import TrainConfig
    from agetool.train.report import TensorBoardLogger, tensorboard_available
    from agetool.train.trainer import Trainer

    cfg = TrainConfig(data=str(data) if data is not None else None, out=str(out) if out is not None else "",
                      size=size, ngf=ngf, ndf=ndf, batch_size=batch_size, epochs=epochs, max_steps=max_steps,
                      save_every=save_every, sample_every=sample_every, log_every=log_every, keep=keep, lr=lr,
                      noise=noise, flip=flip, mask=mask, seed=seed, device=device, amp=amp,
                      grad_checkpoint=grad_checkpoint, workers=workers, resume=resume, init_from=init_from,
                      offline=offline)
    with TrainDisplay(log_every or 1) as display:
        trainer = Trainer(cfg, callback=display)
        display.log_every = trainer.cfg.log_every
        callbacks = [display]
        tb = None
        try:
            if tensorboard and trainer.dist.main:
                if tensorboard_available():
                    tb = TensorBoardLogger(Path(out) / "tb")
                    callbacks.append(tb)
                else:
                    console.info("TensorBoard logs: not written (pip install 'agetool[train]' to enable)")
            trainer.callback = (lambda ev: [cb(ev) for cb in callbacks]) if trainer.dist.main else None
            trainer.run()
        finally:
            if tb is not None:
                tb.close()
            trainer.close()
    _licence_reminder(Path(trainer.run_dir))


def _licence_reminder(run: Path) -> None:
    from agetool.train.curation import ATTRIBUTION_FILE, DATASET_LICENSE, DATASET_LICENSE_URL

    if (run / ATTRIBUTION_FILE).is_file():
        console.info(f"weights trained on FFHQ-Aging inherit its {DATASET_LICENSE} terms ({DATASET_LICENSE_URL}): "
                     f"non-commercial use, shared alike; the photos' credits are in {run / ATTRIBUTION_FILE}")


@train_app.command("export", no_args_is_help=True)
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (its newest checkpoint) or a checkpoints/step_* folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Generator file to write (.safetensors).", dir_okay=False)],
    which: Annotated[str, typer.Option("--which", help="ema (the EMA generator, used for inference) or g (the training generator).")] = "ema",
) -> None:
    """Write a run's generator as a file for `agetool age --weights`.

    Example: agetool train export runs/males --out males.safetensors
    """
    from agetool.train.checkpoints import export_generator, find_checkpoint

    ck = find_checkpoint(run)
    path = export_generator(ck, out, which=which)
    console.info(f"wrote {path} ({'EMA' if which == 'ema' else 'training'} generator of {ck})")
