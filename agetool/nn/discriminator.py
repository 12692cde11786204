"""The LATS discriminator: StyleGAN-like, no modulation, one output per age class.

Key names reproduce the released ``latest_net_D.pth``. The released configuration (256 px)
has six down blocks; smaller training sizes drop blocks so that the head always sees 4x4.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from agetool.nn.layers import Blur, EqualConv2d
from agetool.nn.generator import ReflectPad


@dataclass(frozen=True)
class DiscriminatorConfig:
    size: int = 256
    ndf: int = 64
    max_channels: int = 512
    n_classes: int = 6

    @property
    def n_down(self) -> int:
        n = int(math.log2(self.size)) - 2
        if 2 ** (n + 2) != self.size or n < 1:
            raise ValueError(f"discriminator size must be a power of two >= 8, got {self.size}")
        return n

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DiscriminatorConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class DownBlock(nn.Module):
    """pad -> conv3x3 -> LReLU -> blur -> pad -> conv3x3 -> avgpool2 -> LReLU."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = nn.Sequential(ReflectPad(1), EqualConv2d(in_ch, out_ch, 3))
        self.conv1 = nn.Sequential(Blur(out_ch), ReflectPad(1), EqualConv2d(out_ch, out_ch, 3), nn.AvgPool2d(2))
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv1(self.act(self.conv0(x))))


def minibatch_stddev(x: torch.Tensor) -> torch.Tensor:
    """Append one channel: the mean over (c, h, w) of the batch standard deviation. [B,C,H,W] -> [B,C+1,H,W]"""
    std = torch.sqrt(x.var(dim=0, unbiased=False) + 1e-8).mean()
    return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], dim=1)


class Discriminator(nn.Module):
    """[B, 3, S, S] in [-1, 1] -> logits [B, n_classes, 1, 1] (after a final LReLU, as released)."""

    def __init__(self, cfg: DiscriminatorConfig | None = None):
        super().__init__()
        self.cfg = cfg or DiscriminatorConfig()
        ch = self.cfg.ndf
        layers: list[nn.Module] = [nn.Identity(), EqualConv2d(3, ch, 1), nn.LeakyReLU(0.2)]
        for _ in range(self.cfg.n_down):
            out = min(ch * 2, self.cfg.max_channels)
            layers.append(DownBlock(ch, out))
            ch = out
        self.model = nn.Sequential(*layers)
        self.gan_head = nn.Sequential(
            ReflectPad(1), EqualConv2d(ch + 1, ch, 3), nn.LeakyReLU(0.2),
            EqualConv2d(ch, self.cfg.n_classes, 4), nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gan_head(minibatch_stddev(self.model(x)))
