"""DeepLabV3 face parser on a ResNet-101 backbone with GroupNorm and weight standardization.

19 CelebAMask-HQ classes (``CLASSES``). Module names reproduce the released ``deeplab_model.pth``
keys (after its ``module.`` prefix), so that file loads strictly. The semantics follow the network
LATS used for its in-the-wild preprocessing:

- every conv but the classifier standardizes its weight per output channel: subtract the mean,
  divide by (unbiased std + 1e-5);
- GroupNorm with 32 groups (eps 1e-5) after every standardized conv;
- output stride 16: layer4 keeps stride 1, its first block uses dilation 1 and the others 2;
- ASPP with rates 6, 12, 18 plus image pooling (GroupNorm on the 1x1 map, bilinear upsample with
  ``align_corners=True``), then a plain 1x1 conv with bias to the classes;
- the logits are upsampled to the input size, bilinear, ``align_corners=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CLASSES: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
GROUPS = 32
WS_EPS = 1e-5


def standardize(weight: torch.Tensor) -> torch.Tensor:
    """Weight standardization of a conv weight [O, I, kh, kw]: zero mean, unit (unbiased) std per output.

    The reference's operations in the reference's order: the network is sensitive enough that a
    fused std_mean (equal to float32 rounding in the weights) moves its logits by about 0.04."""
    mean = weight.mean(dim=1, keepdim=True).mean(dim=2, keepdim=True).mean(dim=3, keepdim=True)
    centered = weight - mean
    std = centered.reshape(weight.shape[0], -1).std(dim=1).reshape(-1, 1, 1, 1) + WS_EPS
    return centered / std


class WSConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized at every forward (or once, after ``freeze``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._frozen: torch.Tensor | None = None
        self._prestandardized = False  # ``weight`` holds the standardized weight (a prepared network)

    def freeze(self, on: bool = True) -> None:
        """Cache the standardized weight (inference: the weight no longer changes)."""
        if self._prestandardized:
            if not on:
                raise RuntimeError("this conv was loaded with standardized weights: inference only")
            return
        self._frozen = standardize(self.weight.detach()) if on else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self._frozen if self._frozen is not None else standardize(self.weight)
        if self.kernel_size == (1, 1) and self.groups == 1 and self.padding == (0, 0):
            return pointwise(x, w, self.bias, self.stride)
        if x.device.type == "cpu" and self.in_channels >= WIDE and self.stride == (1, 1) and self.groups == 1:
            return by_taps(x, w, self.padding, self.dilation)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


#: Input channels from which a k x k convolution on the CPU is summed tap by tap (``by_taps``): the
#: ASPP's dilated convolutions over 2048 channels, where oneDNN splits the channel sum between threads.
WIDE = 1024


def by_taps(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """A stride-1 k x k convolution as the sum, in a fixed order, of one ``pointwise`` product per
    kernel tap over the shifted input: the same result whatever the number of threads."""
    b, c, h, w = x.shape
    (ph, pw), (dh, dw), (kh, kw) = padding, dilation, weight.shape[-2:]
    oh, ow = h + 2 * ph - dh * (kh - 1), w + 2 * pw - dw * (kw - 1)
    xp = F.pad(x, (pw, pw, ph, ph))
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = pointwise(xp[:, :, i * dh:i * dh + oh, j * dw:j * dw + ow].contiguous(), weight[:, :, i:i + 1, j:j + 1])
            out = tap if out is None else out.add_(tap)
    return out


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              stride: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """A 1x1 convolution [B, I, H, W] -> [B, O, H', W']. On the CPU a matrix product: oneDNN's 1x1
    convolution splits wide channel sums between threads, so its result (and the face mask after the
    argmax) would depend on the number of torch threads; the matrix product's does not, which keeps
    a run's outputs the same whatever threads the process has (a Ray worker has one)."""
    if x.device.type != "cpu":
        return F.conv2d(x, weight, bias, stride)
    if stride != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
    b, c, h, w = x.shape
    y = torch.matmul(weight.reshape(weight.shape[0], c), x.reshape(b, c, h * w))  # [B, O, H*W]
    if bias is not None:
        y += bias.view(1, -1, 1)
    return y.view(b, -1, h, w)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = WSConv2d(inplanes, planes, 1, bias=False)
        self.bn1 = group_norm(planes)
        self.conv2 = WSConv2d(planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = group_norm(planes)
        self.conv3 = WSConv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = group_norm(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place: each activation is a fresh tensor (and neither the norms nor the sum need theirs kept)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)
        return F.relu(out, inplace=True)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and an image-pooling branch."""

    def __init__(self, channels: int, depth: int, n_classes: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()
        self.aspp1 = WSConv2d(channels, depth, 1, bias=False)
        self.aspp2 = WSConv2d(channels, depth, 3, padding=rates[0], dilation=rates[0], bias=False)
        self.aspp3 = WSConv2d(channels, depth, 3, padding=rates[1], dilation=rates[1], bias=False)
        self.aspp4 = WSConv2d(channels, depth, 3, padding=rates[2], dilation=rates[2], bias=False)
        self.aspp5 = WSConv2d(channels, depth, 1, bias=False)
        self.aspp1_bn = group_norm(depth)
        self.aspp2_bn = group_norm(depth)
        self.aspp3_bn = group_norm(depth)
        self.aspp4_bn = group_norm(depth)
        self.aspp5_bn = group_norm(depth)
        self.conv2 = WSConv2d(depth * 5, depth, 1, bias=False)
        self.bn2 = group_norm(depth)
        self.conv3 = nn.Conv2d(depth, n_classes, 1)  # plain conv with bias, no standardization

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, h, w] -> [B, classes, h, w]
        h, w = x.shape[-2:]
        branches = [
            F.relu(norm(conv(x)), inplace=True)
            for conv, norm in ((self.aspp1, self.aspp1_bn), (self.aspp2, self.aspp2_bn),
                               (self.aspp3, self.aspp3_bn), (self.aspp4, self.aspp4_bn))
        ]
        pooled = F.relu(self.aspp5_bn(self.aspp5(x.mean(dim=(2, 3), keepdim=True))))  # [B, depth, 1, 1]
        branches.append(F.interpolate(pooled, size=(h, w), mode="bilinear", align_corners=True))
        x = F.relu(self.bn2(self.conv2(torch.cat(branches, dim=1))), inplace=True)  # [B, depth, h, w]
        return pointwise(x, self.conv3.weight, self.conv3.bias)  # a 1x1 conv, as WSConv2d's


class DeepLabV3(nn.Module):
    """DeepLabV3, ResNet-101 (GN + WS) backbone, output stride 16. ``forward`` returns logits at input size."""

    def __init__(self, n_classes: int = len(CLASSES), blocks: tuple[int, int, int, int] = (3, 4, 23, 3)):
        super().__init__()
        self.conv1 = WSConv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = group_norm(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = 64
        self.layer1 = self._make_layer(64, blocks[0])
        self.layer2 = self._make_layer(128, blocks[1], stride=2)
        self.layer3 = self._make_layer(256, blocks[2], stride=2)
        self.layer4 = self._make_layer(512, blocks[3], dilation=2)
        self.aspp = ASPP(512 * Bottleneck.expansion, 256, n_classes)

    def _make_layer(self, planes: int, n: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_ch = planes * Bottleneck.expansion
        first_dilation = max(1, dilation // 2)
        downsample = None
        if stride != 1 or dilation != 1 or self._inplanes != out_ch:
            downsample = nn.Sequential(WSConv2d(self._inplanes, out_ch, 1, stride=stride, bias=False),
                                       group_norm(out_ch))
        layers = [Bottleneck(self._inplanes, planes, stride, first_dilation, downsample)]
        self._inplanes = out_ch
        layers += [Bottleneck(out_ch, planes, dilation=dilation) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def freeze(self, on: bool = True) -> "DeepLabV3":
        """Cache every standardized conv weight (call after loading weights, for inference)."""
        for m in self.modules():
            if isinstance(m, WSConv2d):
                m.freeze(on)
        return self

    def prepared_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict with each standardized conv's weight in its standardized form (the network
        must be frozen): ``load_prepared`` reads it back with no standardization to compute."""
        sd = self.state_dict()
        for name, m in self.named_modules():
            if isinstance(m, WSConv2d):
                if m._frozen is None:
                    raise RuntimeError("freeze() the network before taking its prepared state dict")
                sd[f"{name}.weight"] = m._frozen
        return sd

    def load_prepared(self, state_dict: dict[str, torch.Tensor]) -> "DeepLabV3":
        """Load a ``prepared_state_dict`` (tensors taken as they are, memory-mapped ones included):
        a frozen, inference-only network, the same numbers as loading the raw weights and freezing."""
        self.load_state_dict(state_dict, strict=True, assign=True)
        for m in self.modules():
            if isinstance(m, WSConv2d):
                m._frozen = m.weight.detach()
                m._prestandardized = True
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 3, H, W] normalized -> [B, classes, H, W]
        size = x.shape[-2:]
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))  # [B, 64, H/4, W/4]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))  # [B, 2048, H/16, W/16]
        x = self.aspp(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def read_parser_state_dict(path) -> dict:
    """Tensors of a parser checkpoint: the released ``deeplab_model.pth`` layout (``state_dict`` with
    ``module.``-prefixed keys; counters named ``*tracked*`` dropped) or agetool's safetensors."""
    from agetool.nn.checkpoint import read_state_dict, strip_prefix

    sd, _ = read_state_dict(path)
    return strip_prefix({k: v for k, v in sd.items() if "tracked" not in k})


def parser_from_file(path) -> DeepLabV3:
    """An eval-mode ``DeepLabV3`` with the checkpoint's weights, standardized for inference
    (``CheckpointError`` when the file is not a face parser)."""
    from agetool.errors import CheckpointError
    from agetool.nn.checkpoint import load_into

    with torch.device("meta"):  # no random init of 58M parameters: the checkpoint replaces them all
        net = DeepLabV3()
    sd = {k: v.float() for k, v in read_parser_state_dict(path).items()}
    try:
        load_into(net, sd, str(path), assign=True)  # the meta module takes the checkpoint's tensors
    except CheckpointError as e:
        raise CheckpointError(e.message, hint="is it the face parser, deeplab_model.pth?") from None
    return net.eval().freeze()
