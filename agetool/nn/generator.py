"""The LATS generator: identity encoder, age encoder, age mapping MLP and style decoder.

Module names reproduce the released checkpoint keys (``id_encoder.encoder.12.conv_block.1...``),
so ``latest_net_g_running.pth`` loads strictly. Networks know nothing of training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agetool.nn.layers import EqualConv2d, EqualLinear, ModulatedConv2d, PixelNorm, pixel_norm


@dataclass(frozen=True)
class GeneratorConfig:
    """Hyper-parameters of the released generator (the defaults) or a smaller experiment."""

    ngf: int = 64
    n_downsample: int = 2
    n_residual: int = 4
    n_classes: int = 6
    code_per_class: int = 50
    latent_dim: int = 256
    mlp_layers: int = 8
    n_style_blocks: int = 4

    @property
    def style_dim(self) -> int:
        return self.n_classes * self.code_per_class

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class ReflectPad(nn.ReflectionPad2d):
    pass


class ResidualBlock(nn.Module):
    """x + PN(conv(pad(ReLU(PN(conv(pad(x))))))), no activation after the sum."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            ReflectPad(1), EqualConv2d(ch, ch, 3), PixelNorm(), nn.ReLU(),
            ReflectPad(1), EqualConv2d(ch, ch, 3), PixelNorm(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class IdentityEncoder(nn.Module):
    """[B, 3, H, W] -> [B, ngf * 2^n_down, H / 2^n_down, W / 2^n_down]"""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        layers: list[nn.Module] = [ReflectPad(3), EqualConv2d(3, cfg.ngf, 7), PixelNorm(), nn.ReLU()]
        ch = cfg.ngf
        for _ in range(cfg.n_downsample):
            layers += [ReflectPad(1), EqualConv2d(ch, ch * 2, 3, stride=2), PixelNorm(), nn.ReLU()]
            ch *= 2
        layers += [ResidualBlock(ch) for _ in range(cfg.n_residual)]
        self.encoder = nn.Sequential(*layers)
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class AgeEncoder(nn.Module):
    """[B, 3, H, W] -> [B, style_dim]: LReLU convs down four times, 1x1 to the code, spatial mean."""

    def __init__(self, cfg: GeneratorConfig, n_down: int = 4):
        super().__init__()
        layers: list[nn.Module] = [ReflectPad(3), EqualConv2d(3, cfg.ngf, 7), nn.LeakyReLU(0.2)]
        ch = cfg.ngf
        for _ in range(n_down):
            layers += [ReflectPad(1), EqualConv2d(ch, ch * 2, 3, stride=2), nn.LeakyReLU(0.2)]
            ch *= 2
        layers += [EqualConv2d(ch, cfg.style_dim, 1)]
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).mean(dim=(2, 3))


class MappingMLP(nn.Module):
    """Class code [B, style_dim] -> latent w [B, latent_dim] with RMS 1."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()]
        dim = cfg.style_dim
        for _ in range(cfg.mlp_layers - 1):
            layers += [EqualLinear(dim, cfg.latent_dim), nn.LeakyReLU(0.2), PixelNorm()]
            dim = cfg.latent_dim
        layers += [EqualLinear(dim, cfg.latent_dim), PixelNorm()]
        self.model = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.model(code)


class StyledConvBlock(nn.Module):
    """modconv0 -> LReLU*sqrt(2) -> PN -> modconv1 -> LReLU*sqrt(2) -> PN, both convs styled by w."""

    def __init__(self, in_ch: int, out_ch: int, latent_dim: int, upsample: bool):
        super().__init__()
        self.conv0 = ModulatedConv2d(in_ch, out_ch, latent_dim, upsample=upsample)
        self.conv1 = ModulatedConv2d(out_ch, out_ch, latent_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(F.leaky_relu(self.conv0(x, w), 0.2) * 2**0.5)
        return pixel_norm(F.leaky_relu(self.conv1(x, w), 0.2) * 2**0.5)


class StyleDecoder(nn.Module):
    """Identity features [B, C, h, w] + latent w [B, latent] -> image [B, 3, h * 2^n_up, ...] in [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        ch = cfg.ngf * 2**cfg.n_downsample
        self.block_names: list[str] = []
        for i in range(cfg.n_style_blocks):
            self.add_module(f"StyledConvBlock_{i}", StyledConvBlock(ch, ch, cfg.latent_dim, False))
            self.block_names.append(f"StyledConvBlock_{i}")
        for i in range(cfg.n_downsample):
            self.add_module(f"StyledConvBlock_up{i}", StyledConvBlock(ch, ch // 2, cfg.latent_dim, True))
            self.block_names.append(f"StyledConvBlock_up{i}")
            ch //= 2
        self.conv_img = nn.Sequential(EqualConv2d(ch, 3, 1), nn.Tanh())
        self.mlp = MappingMLP(cfg)

    def blocks(self) -> list[StyledConvBlock]:
        return [getattr(self, n) for n in self.block_names]

    def forward(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x = features
        for block in self.blocks():
            x = block(x, w)
        return self.conv_img(x)


class Generator(nn.Module):
    """LATS generator. ``infer`` = identity encoder then decoder; the age encoder serves training."""

    def __init__(self, cfg: GeneratorConfig | None = None):
        super().__init__()
        self.cfg = cfg or GeneratorConfig()
        self.id_encoder = IdentityEncoder(self.cfg)
        self.age_encoder = AgeEncoder(self.cfg)
        self.decoder = StyleDecoder(self.cfg)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> identity features [B, 256, H/4, W/4]"""
        return self.id_encoder(x)

    def encode_age(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> age code [B, 300]"""
        return self.age_encoder(x)

    def latent(self, code: torch.Tensor) -> torch.Tensor:
        """class code [B, 300] -> w [B, 256], one row at a time: a matrix product of several rows is
        split between threads differently by thread count, one row's is not, so the latents (and every
        output) are the same whatever the number of torch threads."""
        if code.shape[0] == 1 or torch.is_grad_enabled():
            return self.decoder.mlp(code)
        return torch.cat([self.decoder.mlp(row) for row in code.split(1)])

    def decode(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """features [B, 256, h, w] + w [B, 256] -> image [B, 3, 4h, 4w] in [-1, 1]"""
        return self.decoder(features, w)

    def infer(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """Non-deploy mode: row b of ``code`` goes with image b. [B,3,H,W], [B,300] -> [B,3,H,W]"""
        return self.decode(self.encode(x), self.latent(code))

    def set_grouped_modconv(self, grouped: bool) -> None:
        """Switch every modulated conv between the per-sample grouped form and the batched form."""
        for m in self.modules():
            if isinstance(m, ModulatedConv2d):
                m.grouped = grouped

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return self.infer(x, code)
