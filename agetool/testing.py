"""Test and benchmark support, not used by the tool itself: deterministic seeded weights (no downloads).

The fill reproduces the weights the reference fixtures were computed with, so parity tests and
benchmarks run the full-size networks without the released checkpoints.

The fill walks the state dict in order; parameter ``p`` (0-based among parameters only) draws
``torch.rand`` from a CPU generator seeded with ``seed * 100000 + p`` and maps it to a
unit-variance uniform. Biases are scaled by 0.1, the generator's and discriminator's output
conv (``decoder.conv_img.*``) by 0.25 and 1-D parser tensors (GroupNorm gamma) to 0.1 x + 1.
Buffers keep their constructor values. ``torch.rand`` gives identical bits on every CPU kernel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

Network = Literal["generator", "discriminator", "parser"]


def seeded_tensor(shape, seed: int, param_index: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(seed * 100000 + param_index)
    u = torch.rand(tuple(shape), generator=g, dtype=torch.float32)
    return (u * 2.0 - 1.0) * math.sqrt(3)


def seeded_value(key: str, shape, seed: int, param_index: int, network: Network) -> torch.Tensor:
    t = seeded_tensor(shape, seed, param_index)
    if key.endswith("bias"):
        return t * 0.1
    if network in ("generator", "discriminator") and key.startswith("decoder.conv_img."):
        return t * 0.25
    if network == "parser" and len(shape) == 1:
        return t * 0.1 + 1.0
    return t


def seeded_state_dict(module: nn.Module, seed: int, network: Network) -> dict[str, torch.Tensor]:
    """A full state dict for ``module`` with the deterministic fill; buffers as constructed."""
    params = {name for name, _ in module.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    p = 0
    for key, value in module.state_dict().items():
        if key in params:
            out[key] = seeded_value(key, value.shape, seed, p, network)
            p += 1
        else:
            out[key] = value.detach().clone()
    return out


def seed_module(module: nn.Module, seed: int, network: Network) -> nn.Module:
    module.load_state_dict(seeded_state_dict(module, seed, network), strict=True)
    return module
