"""The two Real-ESRGAN super-resolution networks, with the state-dict layout of the released files.

- ``SRVGGNetCompact`` (``realesr-general-x4v3``): a plain stack of 3x3 convolutions with PReLU at
  the input resolution, a pixel shuffle to the output size, plus the nearest-upsampled input.
- ``RRDBNet`` (``RealESRGAN_x4plus`` / ``RealESRGAN_x2plus``, the ESRGAN generator): residual-in-
  residual dense blocks at the input resolution (x2 models first fold 2x2 pixels into channels),
  two nearest x2 upsampling steps, then two convolutions.

Both take RGB in [0, 1], [B, 3, H, W], and return [B, 3, s H, s W] (not clamped). The released
files hold the tensors under ``params`` or ``params_ema``; :func:`network_from_state_dict` reads
the architecture and its sizes from the tensors' names and shapes (Wang et al., "Real-ESRGAN:
Training Real-World Blind Super-Resolution with Pure Synthetic Data", ICCVW 2021).
"""

from __future__ import annotations

import math
import os
import re

import torch
import torch.nn.functional as F
from torch import nn

from agetool.errors import CheckpointError, detail

#: where the released files keep their tensors (the EMA copy first)
WRAPPERS = ("params_ema", "params", "state_dict")


class SRVGGNetCompact(nn.Module):
    """``num_conv`` 3x3 convolutions of ``num_feat`` channels with PReLU, then a pixel shuffle."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 32,
                 upscale: int = 4):
        super().__init__()
        self.upscale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return self.upsampler(out) + F.interpolate(x, scale_factor=self.upscale, mode="nearest")


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convolutions; the result is added back at 0.2."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        for i in range(1, 5):
            setattr(self, f"conv{i}", nn.Conv2d(num_feat + (i - 1) * num_grow_ch, num_grow_ch, 3, 1, 1))
        self.conv5 = nn.Conv2d(num_feat + 4 * num_grow_ch, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Three residual dense blocks inside one more residual connection (scaled by 0.2)."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """The ESRGAN generator; ``scale`` 2 and 1 fold 2x2 / 4x4 input pixels into channels first."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32):
        super().__init__()
        if scale not in (1, 2, 4):
            raise ValueError(f"RRDBNet scale must be 1, 2 or 4, not {scale}")
        self.scale = scale
        self.fold = {4: 1, 2: 2, 1: 4}[scale]
        self.conv_first = nn.Conv2d(num_in_ch * self.fold ** 2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = F.pixel_unshuffle(x, self.fold) if self.fold > 1 else x
        feat = self.conv_first(feat)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def unwrap(sd: dict) -> dict:
    """The tensors of a released file: the ``params_ema`` / ``params`` table if there is one."""
    for key in WRAPPERS:
        if isinstance(sd.get(key), dict):
            return sd[key]
    return sd


#: the largest network of each kind read: well above the released ones (num_feat 64, 32 convolutions,
#: 23 blocks), below what would take gigabytes for one 256 px tile
LIMITS = {"num_feat": 256, "num_conv": 128, "num_block": 64, "num_grow_ch": 256}
#: the largest enlargement of a network: the output of a tile is scale^2 times its input, so the
#: tiling bounds memory only up to x4 (what --upscale offers)
MAX_SCALE = 4


def recognise(sd: dict[str, torch.Tensor], what: str = "weights") -> tuple[str, dict] | None:
    """``(architecture, keyword arguments)`` of the network whose tensors ``sd`` holds, or None;
    ``CheckpointError`` (naming ``what``) for tensors of the right names but impossible shapes, and
    for networks over ``LIMITS`` or ``MAX_SCALE``."""
    try:
        found = _recognise(sd)
    except (IndexError, ZeroDivisionError, ValueError, TypeError, AttributeError, KeyError) as e:
        raise CheckpointError(f"{what}: malformed super-resolution tensors ({type(e).__name__}: {str(e)[:80]})",
                              hint="the file is damaged, or not a Real-ESRGAN network") from None
    if found is None:
        return None
    arch, kwargs = found
    scale = kwargs.get("scale", kwargs.get("upscale", 1))
    if not 1 <= scale <= MAX_SCALE:
        raise CheckpointError(f"{what}: a x{scale} network; networks up to x{MAX_SCALE} are read (the tiling "
                              "bounds the memory of x2 and x4)", hint="use a x2 or x4 model")
    over = [f"{k} {kwargs[k]} (at most {limit})" for k, limit in LIMITS.items() if kwargs.get(k, 0) > limit]
    if over or min(v for v in kwargs.values() if isinstance(v, int)) < 1:
        raise CheckpointError(f"{what}: an {arch} of {', '.join(over) or 'empty layers'}; larger networks "
                              "than the released ones are refused", hint="use a released Real-ESRGAN model")
    return found


def _recognise(sd: dict[str, torch.Tensor]) -> tuple[str, dict] | None:
    if "conv_first.weight" in sd and "conv_last.weight" in sd and "body.0.rdb1.conv1.weight" in sd:
        first = sd["conv_first.weight"]
        fold2 = first.shape[1] // sd["conv_last.weight"].shape[0]
        scale = {1: 4, 4: 2, 16: 1}.get(fold2)
        if scale is None:
            return None
        blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.", k)))
        return "RRDBNet", {"num_in_ch": first.shape[1] // fold2, "num_out_ch": sd["conv_last.weight"].shape[0],
                           "scale": scale, "num_feat": first.shape[0], "num_block": blocks,
                           "num_grow_ch": sd["body.0.rdb1.conv1.weight"].shape[0]}
    if "body.0.weight" in sd and "body.1.weight" in sd and sd["body.1.weight"].ndim == 1:
        convs = sorted(int(m.group(1)) for k, v in sd.items()
                       if (m := re.fullmatch(r"body\.(\d+)\.weight", k)) and v.ndim == 4)
        if len(convs) < 2 or convs != list(range(0, 2 * len(convs) - 1, 2)):
            return None
        first, last = sd["body.0.weight"], sd[f"body.{convs[-1]}.weight"]
        out_ch = first.shape[1]  # as many channels out as in (RGB)
        scale = math.isqrt(last.shape[0] // out_ch)
        if scale < 1 or scale * scale * out_ch != last.shape[0]:
            return None
        return "SRVGGNetCompact", {"num_in_ch": first.shape[1], "num_out_ch": out_ch, "num_feat": first.shape[0],
                                   "num_conv": len(convs) - 2, "upscale": scale}
    return None


ARCHITECTURES = {"SRVGGNetCompact": SRVGGNetCompact, "RRDBNet": RRDBNet}


def network_scale(net: nn.Module) -> int:
    return net.upscale if isinstance(net, SRVGGNetCompact) else net.scale


def network_from_state_dict(sd: dict, what: str = "weights") -> nn.Module:
    """The eval-mode network whose released (or plain) state dict ``sd`` is, strictly loaded;
    ``CheckpointError`` when the tensors are neither architecture's."""
    from agetool.nn.checkpoint import load_into

    sd = unwrap(sd)
    found = recognise(sd, what)
    if found is None:
        raise CheckpointError(f"{what}: not a Real-ESRGAN network (SRVGGNetCompact or RRDBNet)")
    arch, kwargs = found
    with torch.device("meta"):  # no random init: the file's tensors replace them all
        net = ARCHITECTURES[arch](**kwargs)
    try:
        load_into(net, {k: v.float() for k, v in sd.items()}, what, assign=True)
    except CheckpointError as e:
        raise CheckpointError(e.message, hint=f"the tensors look like {arch} but do not fit it") from None
    return net.eval()


def read_tensors(path) -> dict:
    """The tensors of a super-resolution file, never unpickling anything but tensors and plain
    containers: a ``.pth`` (``torch.load(weights_only=True)``; ``params`` / ``params_ema`` tables
    kept as they are) or a ``.safetensors`` file."""
    from pathlib import Path

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from agetool.nn.checkpoint import read_state_dict

        return read_state_dict(path)[0]
    from agetool.nn.checkpoint import _torch_load

    # the generator's loader: tensors memory-mapped where the file allows (a compressed "zip bomb" is
    # refused, never inflated), nothing but tensors and plain containers unpickled
    return _torch_load(path, str(path), hint="pass a .pth state dict or a .safetensors file")


def read_network(path: str | os.PathLike) -> tuple[object, int, str, int]:
    """``(network, scale, architecture, multiple)`` of a super-resolution file."""
    sd = read_tensors(path)
    if recognise(unwrap(sd), str(path)) is not None:
        net = network_from_state_dict(sd, str(path))
        return net, network_scale(net), type(net).__name__, 2 if getattr(net, "fold", 1) > 1 else 1
    return _spandrel(sd, path)


def _spandrel(sd: dict, path) -> tuple[object, int, str, int]:
    try:
        import spandrel
    except Exception:  # noqa: BLE001 - not installed, or broken (an operator of a torchvision that doesn't fit)
        raise CheckpointError(f"{path}: not a built-in architecture (Real-ESRGAN SRVGGNetCompact or RRDBNet); "
                              f"other super-resolution models load with spandrel",
                              hint='pip install "agetool[upscale]"') from None
    try:
        desc = spandrel.ModelLoader().load_from_state_dict(sd)
    except Exception as e:  # noqa: BLE001 - spandrel's errors for unknown or damaged files
        raise CheckpointError(f"{path}: spandrel can't load it ({detail(e)})") from None
    scale = int(getattr(desc, "scale", 1))
    if getattr(desc, "input_channels", 3) != 3 or getattr(desc, "output_channels", 3) != 3 or scale < 2:
        raise CheckpointError(f"{path}: not an RGB super-resolution model (x{scale}, "
                              f"{getattr(desc, 'input_channels', '?')} channels in)")
    if scale > MAX_SCALE:
        raise CheckpointError(f"{path}: a x{scale} network; networks up to x{MAX_SCALE} are read (the tiling "
                              "bounds the memory of x2 and x4)", hint="use a x2 or x4 model")
    req = getattr(desc, "size_requirements", None)
    multiple = max(1, int(getattr(req, "multiple_of", 1) or 1))
    arch = getattr(getattr(desc, "architecture", None), "name", None) or type(desc.model).__name__
    return desc.model.eval(), scale, str(arch), multiple
