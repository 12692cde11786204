"""Training's arithmetic outside the loop: per-step seeds, the Adam optimizers (the mapping MLP at
its own learning-rate multiple), the step-decay schedule and the EMA update of the generator."""

from __future__ import annotations

import numpy as np
import torch

from agetool.train.config import TrainConfig


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed that depends only on (seed, step, rank, stream)."""
    ss = np.random.SeedSequence([seed & 0xFFFFFFFF, step, rank, stream, 0x7A11])
    return int(ss.generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


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
        e = list(ema.parameters())
        m = [p.detach() for p in model.parameters()]
        torch._foreach_mul_(e, decay)
        torch._foreach_add_(e, m, alpha=1.0 - decay)
