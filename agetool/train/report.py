"""What a run reports: ``TrainEvent``s to a callback, sample grids, TensorBoard logs. Nothing here prints."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class TrainEvent:
    """What the trainer reports. kind: start | step | sample | checkpoint | warning | end."""

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


def sample_grid(g_ema, images, noise: float, seed: int, device) -> np.ndarray:
    """One row per input: [input, one column per age class], youngest first. uint8 [H, W, 3]."""
    import torch

    from agetool.ages import AGE_CLASSES, class_codes
    from agetool.images import grid, to_uint8

    cfg = g_ema.cfg
    classes = list(range(cfg.n_classes))
    codes = class_codes(classes, noise=noise, generator=torch.Generator().manual_seed(seed),
                        n_classes=cfg.n_classes, code_per_class=cfg.code_per_class).to(device)
    labels = [AGE_CLASSES[k] if k < len(AGE_CLASSES) else f"class {k}" for k in classes]
    rows = []
    with torch.no_grad():
        w = g_ema.latent(codes)  # [K, latent]
        for x in images:
            x = x[None].to(device)
            feats = g_ema.encode(x)
            out = g_ema.decode(feats.expand(len(codes), *feats.shape[1:]), w)
            rows.append([to_uint8(x)[0], *to_uint8(out)])
    return grid(rows, labels=["input", *labels])


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
