"""Inference engine: encode a face once, decode any number of latents in bounded chunks."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from agetool.ages import all_class_codes, traversal_latents, transition_alphas
from agetool.nn.generator import Generator


class AgingEngine:
    """Runs a loaded generator on one device and dtype.

    ``chunk`` bounds how many frames are decoded at once, so memory does not grow with the number
    of frames. Latents are always computed in float32; decoding runs in ``dtype``.
    """

    def __init__(self, generator: Generator, device: torch.device, dtype: torch.dtype = torch.float32,
                 chunk: int = 8):
        self.generator = generator.eval().to(device)
        self.device = device
        self.dtype = dtype
        self.chunk = max(1, int(chunk))

    def _autocast(self):
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> identity features [B, 256, H/4, W/4] (float32)"""
        with self._autocast():
            return self.generator.encode(x.to(self.device)).float()

    @torch.inference_mode()
    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        """class codes [K, 300] -> w [K, 256] (float32)"""
        return self.generator.latent(codes.to(self.device).float())

    def anchor_latents(self, noise: float, seed: int) -> torch.Tensor:
        """The six class latents [6, 256] with seeded code noise."""
        return self.latents(all_class_codes(noise=noise, seed=seed))

    @torch.inference_mode()
    def decode_stream(self, features: torch.Tensor, w: torch.Tensor) -> Iterator[torch.Tensor]:
        """One face's features [C, h, w] and latents [N, 256] -> chunks [n, 3, 4h, 4w] (float32, CPU)."""
        feats = features.to(self.device)
        for start in range(0, w.shape[0], self.chunk):
            wc = w[start:start + self.chunk].to(self.device)
            with self._autocast():
                out = self.generator.decode(feats[None].expand(wc.shape[0], -1, -1, -1), wc)
            yield out.float().cpu()

    def decode(self, features: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[C, h, w], [N, 256] -> [N, 3, 4h, 4w]"""
        return torch.cat(list(self.decode_stream(features, w)))

    def traversal(self, anchors: torch.Tensor, steps: int) -> torch.Tensor:
        """Anchor latents [6, 256] -> video latents [5 * steps + 1, 256], youngest to oldest."""
        return traversal_latents(anchors, transition_alphas(steps).to(anchors.device))
