"""A training run's settings: ``TrainConfig``, its defaults, its checks and how a resumed run keeps them.

A setting left as None means "the default" for a new run and "the run's own value" for a resumed
one. Settings that decide what a run computes (``RUN_SETTINGS``: sizes, seed, batch size, optimizer
and loss settings, augmentation, mixed precision) can't change when resuming: giving another value is
a ``UsageError`` naming both. Stopping points and bookkeeping (``CARRIED``) are taken from the run
unless given again. Where and how to compute (device, workers) is never stored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from agetool.errors import UsageError, arg

AMP_MODES = ("none", "bfloat16")
_AMP_ALIASES = {"none": "none", "no": "none", "off": "none", "float32": "none", "fp32": "none",
                "bfloat16": "bfloat16", "bf16": "bfloat16"}

DEFAULTS: dict[str, object] = {
    "size": 256, "ngf": 64, "seed": 0, "batch_size": 6, "lr": 1e-3, "beta1": 0.0, "beta2": 0.999,
    "mlp_lr_mult": 0.01, "decay_epochs": (50, 100), "decay_gamma": 0.5, "ema_decay": 0.999, "noise": 0.2,
    "cycle_weight": 10.0, "rec_weight": 10.0, "identity_weight": 1.0, "age_weight": 1.0, "r1_weight": 10.0,
    "flip": True, "mask": True, "amp": "none",
    "epochs": 400, "max_steps": None, "save_every": 1000, "sample_every": 500, "log_every": 10, "keep": 3,
    "grad_checkpoint": False,
}
#: ndf's default: the released 64, or ngf when that is smaller (a narrow experiment stays narrow).
RELEASED_NDF = 64

#: Settings that decide what the run computes: fixed for the life of a run.
RUN_SETTINGS = ("size", "ngf", "ndf", "seed", "batch_size", "lr", "beta1", "beta2", "mlp_lr_mult", "decay_epochs",
                "decay_gamma", "ema_decay", "noise", "cycle_weight", "rec_weight", "identity_weight", "age_weight",
                "r1_weight", "flip", "mask", "amp")
#: Settings a resumed run takes from its checkpoint unless given again.
CARRIED = ("data", "epochs", "max_steps", "save_every", "sample_every", "log_every", "keep", "grad_checkpoint")

#: Largest generator + discriminator (parameters) a run may build: 50 x the released pair.
MAX_PARAMETERS = 2_000_000_000

_INTS = {"size": (8, 4096), "ngf": (1, 1024), "ndf": (1, 1024), "seed": (0, 2**63 - 1), "batch_size": (1, 65536),
         "epochs": (1, 10**7), "max_steps": (0, 10**12), "save_every": (0, 10**12), "sample_every": (0, 10**12),
         "log_every": (1, 10**12), "keep": (0, 10**6)}
_FLOATS = {"lr": (0.0, 1.0), "beta1": (0.0, 1.0), "beta2": (0.0, 1.0), "mlp_lr_mult": (0.0, 100.0),
           "decay_gamma": (0.0, 1.0), "ema_decay": (0.0, 1.0), "noise": (0.0, 10.0), "cycle_weight": (0.0, 1e6),
           "rec_weight": (0.0, 1e6), "identity_weight": (0.0, 1e6), "age_weight": (0.0, 1e6), "r1_weight": (0.0, 1e6)}
_BOOLS = ("flip", "mask", "grad_checkpoint")


@dataclass
class TrainConfig:
    """Everything a run needs. None: the default (``DEFAULTS``), or the resumed run's value.

    ``batch_size`` counts pairs per process and step (2 x batch_size images); ``keep`` the newest
    checkpoints kept (0 = all); ``amp`` is ``none`` or ``bfloat16`` (``bf16`` is accepted);
    ``grad_checkpoint`` recomputes generator activations in the backward pass (less memory).
    """

    data: str | None = None
    out: str = ""
    size: int | None = None
    ngf: int | None = None
    ndf: int | None = None
    batch_size: int | None = None
    epochs: int | None = None
    max_steps: int | None = None
    save_every: int | None = None
    sample_every: int | None = None
    log_every: int | None = None
    keep: int | None = None
    lr: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    mlp_lr_mult: float | None = None
    decay_epochs: tuple[int, ...] | None = None
    decay_gamma: float | None = None
    ema_decay: float | None = None
    noise: float | None = None
    cycle_weight: float | None = None
    rec_weight: float | None = None
    identity_weight: float | None = None
    age_weight: float | None = None
    r1_weight: float | None = None
    flip: bool | None = None
    mask: bool | None = None
    seed: int | None = None
    amp: str | None = None
    grad_checkpoint: bool | None = None
    device: str = "auto"
    workers: int = 2
    resume: bool = False
    init_from: str | None = None
    offline: bool = False

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["decay_epochs"] is not None:
            d["decay_epochs"] = list(self.decay_epochs)
        return d

    @classmethod
    def from_dict(cls, d: dict, what: str = "config") -> "TrainConfig":
        """A config from ``to_dict``'s output (a checkpoint's), checked; unknown keys are ignored."""
        if not isinstance(d, dict):
            raise UsageError(f"{what}: expected an object of settings, found {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if isinstance(d.get("decay_epochs"), list):
            d["decay_epochs"] = tuple(d["decay_epochs"])
        return cls(**d).checked(what)

    def checked(self, what: str | None = None) -> "TrainConfig":
        """This config with ``amp`` spelled canonically, after checking every given value's type and range.

        Errors name the argument, or ``what`` (a file) followed by the setting when reading a checkpoint.
        """
        def bad(name: str, value, expected: str) -> UsageError:
            where = f"{what}: {name} = {value!r}" if what else arg(name, value)
            return UsageError(f"{where}: expected {expected}")

        for name, (lo, hi) in _INTS.items():
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi):
                raise bad(name, v, f"an integer in {lo}..{hi}")
        for name, (lo, hi) in _FLOATS.items():
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v) or not lo <= v <= hi):
                raise bad(name, v, f"a finite number in {lo:g}..{hi:g}")
        for name in _BOOLS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                raise bad(name, v, "true or false")
        if self.decay_epochs is not None and (
                not isinstance(self.decay_epochs, tuple)
                or not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in self.decay_epochs)):
            raise bad("decay_epochs", self.decay_epochs, "a list of epochs (integers >= 0)")
        amp = self.amp
        if amp is not None:
            amp = _AMP_ALIASES.get(str(amp).strip().lower()) if isinstance(amp, str) else None
            if amp is None:
                raise bad("amp", self.amp, " or ".join(AMP_MODES))
        if self.size is not None and self.size & (self.size - 1):
            raise bad("size", self.size, "a power of two (256 released, 128 or 64 for experiments)")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise bad("workers", self.workers, "an integer >= 0")
        return replace(self, amp=amp)

    def resolved(self, saved: "TrainConfig | None" = None, widths: tuple[int | None, int | None] = (None, None),
                 init_from: str | None = None) -> "TrainConfig":
        """Every setting filled in: from this config, else the resumed run's ``saved`` config, else
        the widths of the ``--init-from`` weights, else ``DEFAULTS``.

        A run setting given here that differs from ``saved`` raises a ``UsageError`` naming both values.
        """
        cfg = self.checked()
        if saved is not None:
            for name in RUN_SETTINGS:
                mine, theirs = getattr(cfg, name), getattr(saved, name)
                if mine is not None and theirs is not None and mine != theirs:
                    raise UsageError(f"{arg(name, mine)} contradicts the run being resumed, "
                                     f"which has {arg(name, theirs)}",
                                     hint=f"leave {arg(name)} out to continue the run, or start a new run elsewhere")
            cfg = replace(cfg, **{name: getattr(saved, name) for name in RUN_SETTINGS + CARRIED
                                  if getattr(cfg, name) is None})
        ngf, ndf = widths
        if ngf is not None and cfg.ngf is not None and cfg.ngf != ngf:
            raise UsageError(f"{arg('ngf', cfg.ngf)} does not fit {arg('init_from', init_from)} (ngf {ngf})",
                             hint=f"leave {arg('ngf')} out when fine-tuning")
        cfg = replace(cfg, ngf=cfg.ngf or ngf, ndf=cfg.ndf or ndf)
        cfg = replace(cfg, **{k: v for k, v in DEFAULTS.items() if getattr(cfg, k) is None})
        if cfg.ndf is None:
            cfg = replace(cfg, ndf=min(cfg.ngf, RELEASED_NDF))
        if not cfg.data:
            raise UsageError(f"{arg('data')} is required", hint="one gender's folder, e.g. ffhq-aging/males")
        check_network_size(cfg)
        return cfg

    def loss_weights(self):
        from agetool.train.losses import LossWeights

        return LossWeights(cycle=self.cycle_weight, rec=self.rec_weight, identity=self.identity_weight,
                           age=self.age_weight, r1=self.r1_weight)


def network_configs(cfg: TrainConfig):
    """The (GeneratorConfig, DiscriminatorConfig) of a resolved config."""
    from agetool.nn.discriminator import DiscriminatorConfig
    from agetool.nn.generator import GeneratorConfig

    return GeneratorConfig(ngf=cfg.ngf), DiscriminatorConfig(size=cfg.size, ndf=cfg.ndf)


def check_network_size(cfg: TrainConfig) -> int:
    """The parameter count of the run's G + D, counted without allocating them; a ``UsageError`` with
    the estimate when it is above ``MAX_PARAMETERS``."""
    import torch

    from agetool.nn.discriminator import Discriminator
    from agetool.nn.generator import Generator

    gcfg, dcfg = network_configs(cfg)
    try:
        dcfg.n_down  # noqa: B018 - checks the size
    except ValueError as e:
        raise UsageError(f"{arg('size', cfg.size)}: {e}") from None
    with torch.device("meta"):
        count = (sum(p.numel() for p in Generator(gcfg).parameters())
                 + sum(p.numel() for p in Discriminator(dcfg).parameters()))
    if count > MAX_PARAMETERS:
        raise UsageError(f"{arg('ngf', cfg.ngf)} and {arg('ndf', cfg.ndf)} give networks of "
                         f"{count / 1e9:.3g} billion parameters (about {count * 20 / 2**30:,.0f} GiB with the "
                         f"optimizer state)", hint="the released model has ngf 64 and ndf 64: 39 million")
    return count
