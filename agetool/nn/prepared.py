"""The style decoder prepared for inference: the same function as ``StyleDecoder.forward``, faster.

Everything that does not depend on the latent is done once, when the decoder is prepared: the
equalized-learning-rate scaling of each modulated conv, the squared weight sums that demodulation
needs, and the sub-pixel form of the upsampling convs. Per frame only the styles, the demodulation
factors and the elementwise work remain. Activations are channels-last and written straight into
padded buffers, so pixel norm, style scaling and reflect padding cost one pass over memory.

Two equivalent schedules:

- ``per_sample`` (CPU): every frame gets its own modulated, demodulated weights (the reference's
  formulation) and the bias rides in the conv, so no activation is scaled before or after a conv.
  Frames run one at a time through the whole network, which keeps activations cache-sized and
  memory independent of the batch.
- batched (GPU): one shared-weight conv for all frames, the input scaled by the style and the
  output by the demodulation factor, which lets the conv library fill the device.

Two algebraic rewrites (exact in real arithmetic, equal to float32 rounding in practice):

- LReLU(x)·sqrt(2) followed by pixel norm is LReLU(x) · rsqrt(mean(LReLU(x)^2) + eps / 2).
- Nearest x2 then reflect-pad then a 3x3 conv is, per output phase (row parity a, column parity b),
  a 2x2 conv of the replicate-padded low-resolution input: 4/9 of the multiply-adds.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from agetool.nn.layers import DEMOD_EPS, PN_EPS, ModulatedConv2d, pixel_norm

CHANNELS_LAST = torch.channels_last

# Row (or column) taps of a 3x3 kernel seen by output phase a of a nearest x2 upsampling: phase 0
# reads low-res rows (i-1, i) with taps (k0, k1+k2); phase 1 reads (i, i+1) with (k0+k1, k2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
                            [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)


def subpixel_kernels(weight: torch.Tensor) -> torch.Tensor:
    """3x3 kernels [O, I, 3, 3] -> the four 2x2 phase kernels [4, O, I, 2, 2], phase = 2a + b."""
    taps = _PHASE_TAPS.to(weight.device)
    k = torch.einsum("akh,oihw,blw->aboikl", taps, weight.double(), taps)
    return k.reshape(4, *weight.shape[:2], 2, 2).to(weight.dtype)


_WORKSPACE = threading.local()


def _empty(shape: tuple, like: torch.Tensor, reuse: bool) -> torch.Tensor:
    """A channels-last buffer; with ``reuse``, this thread's buffer of that shape from an earlier
    frame (the per-sample schedule frees each one before it asks for the next of its shape)."""
    if not reuse:
        return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST)
    cache = getattr(_WORKSPACE, "buffers", None)
    if cache is None:
        cache = _WORKSPACE.buffers = {}
    key = (shape, like.dtype, like.device)
    if key not in cache:
        cache[key] = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=CHANNELS_LAST)
    return cache[key]


def _pad_edges(buf: torch.Tensor, reflect: bool) -> torch.Tensor:
    """Fill the 1-pixel frame of ``buf`` from its interior: reflect or replicate padding."""
    k = 2 if reflect else 1
    buf[:, :, 0, 1:-1] = buf[:, :, k, 1:-1]
    buf[:, :, -1, 1:-1] = buf[:, :, -1 - k, 1:-1]
    buf[:, :, :, 0] = buf[:, :, :, k]
    buf[:, :, :, -1] = buf[:, :, :, -1 - k]
    return buf


def _padded(x: torch.Tensor, scales: tuple, reflect: bool, reuse: bool = False) -> torch.Tensor:
    """x times each of ``scales`` (broadcast), written into a new channels-last buffer padded by 1."""
    if torch.compiler.is_compiling():  # the compiler fuses the functional form into one kernel
        for s in scales:
            x = x if s is None else x * s
        return F.pad(x, (1, 1, 1, 1), mode="reflect" if reflect else "replicate")
    b, c, h, w = x.shape
    buf = _empty((b, c, h + 2, w + 2), x, reuse)
    inner = buf[:, :, 1:-1, 1:-1]
    scales = [s for s in scales if s is not None]
    if scales:
        torch.mul(x, scales[0], out=inner)
        for s in scales[1:]:
            inner.mul_(s)
    else:
        inner.copy_(x)
    return _pad_edges(buf, reflect)


def _norm_scale(y: torch.Tensor) -> torch.Tensor:
    """rsqrt(mean_c(y^2) + eps/2) [B, 1, H, W]: pixel norm of sqrt(2)·y, statistics in float32."""
    ss = torch.linalg.vector_norm(y, dim=1, keepdim=True, dtype=torch.float32)
    return ss.square_().div_(y.shape[1]).add_(PN_EPS / 2).rsqrt_().to(y.dtype)


def _interleave(z: torch.Tensor, out_ch: int, h: int, w: int, reuse: bool = False) -> torch.Tensor:
    """Phase outputs [B, 4·O, h+1, w+1] -> the upsampled map [B, O, 2h, 2w]."""
    if torch.compiler.is_compiling():
        rows = [torch.stack([z[:, (2 * a + b) * out_ch:(2 * a + b + 1) * out_ch, a:a + h, b:b + w]
                             for b in range(2)], dim=-1) for a in range(2)]  # [B, O, h, w, 2] per a
        return torch.stack(rows, dim=-3).reshape(z.shape[0], out_ch, 2 * h, 2 * w)
    y = _empty((z.shape[0], out_ch, 2 * h, 2 * w), z, reuse)
    for a in range(2):
        for b in range(2):
            p = 2 * a + b
            y[:, :, a::2, b::2] = z[:, p * out_ch:(p + 1) * out_ch, a:a + h, b:b + w]
    return y


class _PreparedModConv:
    """One ModulatedConv2d with its latent-independent work done."""

    def __init__(self, m: ModulatedConv2d, device: torch.device, dtype: torch.dtype, per_sample: bool):
        affine = m.mlp_class_std[0].linear  # the style's EqualLinear
        self.style_weight = (affine.weight_orig.detach() * affine.scale).float().to(device)
        self.style_bias = affine.bias.detach().float().to(device)
        self.upsample = m.upsample
        self.out_ch, self.in_ch = m.out_ch, m.in_ch
        weight = (m.weight.detach() * m.scale).float().to(device)
        self.wsq = weight.pow(2).sum(dim=(2, 3))  # [O, I], for demodulation
        if self.upsample:
            weight = subpixel_kernels(weight).reshape(4 * self.out_ch, self.in_ch, 2, 2)
        bias = m.bias.detach().reshape(-1).float().to(device)
        self.bias = (bias.repeat(4) if self.upsample else bias).to(dtype)
        self.dtype = dtype
        # per-sample weights are made in float32 then cast; the shared weight is cast once
        self.weight = weight if per_sample else weight.to(dtype).contiguous(memory_format=CHANNELS_LAST)
        self.blur = m.blur.weight.detach().to(device=device, dtype=dtype)

    def modulation(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """w [B, latent] -> style s [B, I] and demodulation factor [B, O] (float32)."""
        s = 1.0 + pixel_norm(F.linear(w.float(), self.style_weight, self.style_bias))
        return s, torch.rsqrt(s.pow(2) @ self.wsq.t() + DEMOD_EPS)

    def sample_weight(self, s: torch.Tensor, demod: torch.Tensor) -> torch.Tensor:
        """One frame's modulated, demodulated weight from its s [I] and demod [O]."""
        mod = demod[:, None] * s[None, :]  # [O, I]
        if self.upsample:
            mod = mod.repeat(4, 1)
        return (self.weight * mod[:, :, None, None]).to(self.dtype)

    def interleave(self, z: torch.Tensor, h: int, w: int, reuse: bool = False) -> torch.Tensor:
        """Sub-pixel conv output [B, 4·O, h+1, w+1] -> the map at twice the size [B, O, 2h, 2w]."""
        return _interleave(z, self.out_ch, h, w, reuse)

    def blurred(self, y: torch.Tensor) -> torch.Tensor:
        return F.conv2d(y, self.blur, padding=1, groups=self.out_ch)


class PreparedDecoder:
    """``StyleDecoder`` for inference on one device and dtype; weights are a snapshot taken here.

    Call with identity features [1 or B, C, h, w] and latents [B, latent_dim]; returns images
    [B, 3, 4h, 4w] in float32.
    """

    def __init__(self, decoder, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 per_sample: bool | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.per_sample = self.device.type == "cpu" if per_sample is None else per_sample
        self.convs = [
            _PreparedModConv(conv, self.device, dtype, self.per_sample)
            for block in decoder.blocks()
            for conv in (block.conv0, block.conv1)
        ]
        img = decoder.conv_img[0].conv
        self.img_weight = img.weight().detach().to(self.device, dtype).contiguous(memory_format=CHANNELS_LAST)
        self.img_bias = img.bias.detach().float().to(self.device)[None, :, None, None]

    @torch.inference_mode()
    def __call__(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.forward(features, w)

    def forward(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """``__call__`` without its inference-mode guard, for ``torch.compile`` (batched schedule)."""
        features = features.to(self.device, self.dtype).contiguous(memory_format=CHANNELS_LAST)
        w = w.to(self.device)
        mods = [c.modulation(w) for c in self.convs]
        if not self.per_sample:
            return self._batched(features.expand(w.shape[0], -1, -1, -1), mods)
        frames = []
        for i in range(w.shape[0]):
            x = features[i:i + 1] if features.shape[0] > 1 else features
            frames.append(self._one(x, [(s[i], d[i]) for s, d in mods]))
        return torch.cat(frames)

    def _one(self, x: torch.Tensor, mods: list) -> torch.Tensor:
        scale = None
        for conv, (s, demod) in zip(self.convs, mods):
            h, w = x.shape[-2:]
            # padded inputs and upsampled maps are this thread's buffers, reused frame after frame;
            # each map is dropped as soon as it is used: one frame's peak is about two maps
            buf = _padded(x, (scale,), reflect=not conv.upsample, reuse=True)
            del x
            x = F.conv2d(buf, conv.sample_weight(s, demod), conv.bias)
            del buf
            if conv.upsample:
                x = conv.interleave(x, h, w, reuse=True)
                x = conv.blurred(x)
            x = F.leaky_relu_(x, 0.2)
            scale = _norm_scale(x)
        return self._to_image(x, scale)

    def _batched(self, x: torch.Tensor, mods: list) -> torch.Tensor:
        scale = None
        for conv, (s, demod) in zip(self.convs, mods):
            h, w = x.shape[-2:]
            buf = _padded(x, (scale, s.to(self.dtype)[:, :, None, None]), reflect=not conv.upsample)
            if conv.upsample:
                demod = demod.repeat(1, 4)
            del x
            x = torch.addcmul(conv.bias[None, :, None, None], F.conv2d(buf, conv.weight),
                              demod.to(self.dtype)[:, :, None, None])
            del buf
            if conv.upsample:
                x = conv.interleave(x, h, w)
                x = conv.blurred(x)
            x = F.leaky_relu_(x, 0.2)
            scale = _norm_scale(x)
        return self._to_image(x, scale)

    def _to_image(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # the last pixel norm is per pixel, so it commutes with the 1x1 output conv
        rgb = F.conv2d(x, self.img_weight).float()
        return torch.tanh(torch.addcmul(self.img_bias, rgb, scale.float())).contiguous()
