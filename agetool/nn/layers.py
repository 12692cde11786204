"""Building blocks of the LATS networks, with paper names.

Parameter names follow the released checkpoints (``conv.weight_orig``, ``linear.weight_orig``,
``mlp_class_std.0.linear``, ``blur.weight``), so a released state dict loads strictly.
Equalized learning rate is applied at run time: the stored weight is scaled by sqrt(2 / fan_in)
at every forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PN_EPS = 1e-5
DEMOD_EPS = 1e-5


class PixelNorm(nn.Module):
    """x / sqrt(mean_c(x^2) + 1e-5), over dim 1 only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_norm(x)


def pixel_norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + PN_EPS)


class _EqualConvCore(nn.Module):
    """Holds ``bias`` then ``weight_orig`` (the released order) and convolves with the scaled weight."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, padding: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.weight_orig = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.stride = stride
        self.padding = padding
        self.scale = math.sqrt(2.0 / (in_ch * kernel * kernel))

    def weight(self) -> torch.Tensor:
        return self.weight_orig * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, stride=self.stride, padding=self.padding)


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate (weight scaled by sqrt(2 / (in * k * k)) at run time)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = _EqualConvCore(in_ch, out_ch, kernel, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _EqualLinearCore(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.weight_orig = nn.Parameter(torch.randn(out_dim, in_dim))
        self.scale = math.sqrt(2.0 / in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_orig * self.scale, self.bias)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weight scaled by sqrt(2 / in) at run time)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = _EqualLinearCore(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def blur_kernel(channels: int) -> torch.Tensor:
    """Depthwise [1,2,1]^T [1,2,1] / 16 kernel, [C, 1, 3, 3]."""
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :]) / 16.0
    return k.expand(channels, 1, 3, 3).contiguous()


class Blur(nn.Module):
    """Depthwise 3x3 binomial blur with zero padding 1. ``weight_flip`` is kept for checkpoint layout."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("weight", blur_kernel(channels))
        self.register_buffer("weight_flip", blur_kernel(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight, padding=1, groups=x.shape[1])


class ModulatedConv2d(nn.Module):
    """3x3 style-modulated, demodulated conv with reflect padding (StyleGAN2 style).

    Style: s = 1 + PN(EqualLinear(w)) over the ``in`` channels. ``upsample`` puts a nearest x2
    before the conv and a blur after the bias. Two computations of the same function:
    ``grouped`` builds per-sample weights (the reference form); the default scales the input by s,
    runs one shared-weight conv and scales the output by the demodulation factor, which lets the
    conv library batch all samples.
    """

    def __init__(self, in_ch: int, out_ch: int, latent_dim: int = 256, upsample: bool = False):
        super().__init__()
        self.in_ch, self.out_ch, self.upsample = in_ch, out_ch, upsample
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, 3, 3))
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))
        self.mlp_class_std = nn.Sequential(EqualLinear(latent_dim, in_ch), PixelNorm())
        self.blur = Blur(out_ch)
        self.scale = math.sqrt(2.0 / (in_ch * 9))
        self.grouped = False

    def style(self, w: torch.Tensor) -> torch.Tensor:
        """[B, latent] -> [B, in]"""
        return 1.0 + self.mlp_class_std(w)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [B, in, H, W], w [B, latent] -> [B, out, H', W']"""
        s = self.style(w)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        if self.grouped:
            out = self._grouped(x, s)
        else:
            out = self._shared(x, s)
        out = out + self.bias
        if self.upsample:
            out = self.blur(out)
        return out

    def _grouped(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        weight = self.weight * self.scale  # [O, I, 3, 3]
        weight = weight[None] * s[:, None, :, None, None]  # [B, O, I, 3, 3]
        demod = torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + DEMOD_EPS)
        weight = (weight * demod).reshape(b * self.out_ch, self.in_ch, 3, 3)
        out = F.conv2d(x.reshape(1, b * self.in_ch, *x.shape[2:]), weight, groups=b)
        return out.reshape(b, self.out_ch, *out.shape[2:])

    def _shared(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.scale  # [O, I, 3, 3]
        wsq = weight.pow(2).sum(dim=(2, 3))  # [O, I]
        demod = torch.rsqrt(s.pow(2) @ wsq.t() + DEMOD_EPS)  # [B, O]
        out = F.conv2d(x * s[:, :, None, None], weight)
        return out * demod[:, :, None, None]
