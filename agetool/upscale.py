"""Super-resolution of aged faces: 256 px tiles out at 512 or 1024 px, before paste-back.

A general super-resolution network (Real-ESRGAN) has no face prior, so it sharpens what the
generator drew, wrinkles included, instead of pulling faces towards a young, smooth average as
face restorers do. The default is the registry's ``realesr-general-x4v3`` (SRVGGNetCompact,
1.2M parameters, the one that runs on a CPU); ``realesrgan-x4plus`` / ``realesrgan-x2plus``
(RRDBNet, 16.7M) cost about ten times more. A factor below the network's scale runs the network,
then shrinks its output (area averaging).

Inference is tiled: the image is cut into ``tile`` px squares, each run with ``tile_pad`` px of
context on every side that is dropped afterwards, and written straight into the uint8 output. The
memory a call needs is thus the output plus one tile's activations, whatever the image size.

Files: ``load_upscaler(weights)`` takes a registered name or a file. The built-in architectures
(``agetool.nn.realesrgan``) are recognised from the tensors; any other super-resolution model
loads through spandrel when it is installed (``pip install "agetool[upscale]"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agetool import validate
from agetool.loading import LOADING, Loading
from agetool.errors import CheckpointError, UsageError, arg
from agetool.options import check_factor

DEFAULT_WEIGHTS = "realesr-general-x4v3"
#: Input pixels per tile side, and the context run around each tile (dropped from its output).
#: A 256 px face is one tile; a tile's activations stay under ~0.5 GB with RRDBNet x4.
TILE = 256
TILE_PAD = 16
EXTRA = "agetool[upscale]"


@dataclass
class Upscaler:
    """A loaded super-resolution network; ``upscale(image, factor)`` is its one job."""

    network: Callable  # [B, 3, h, w] float in [0, 1] -> [B, 3, s h, s w]
    scale: int  # the network's own factor
    name: str  # registry name or file name
    architecture: str
    device: object = None
    multiple: int = 1  # input sides must be a multiple of this
    tile: int = TILE
    tile_pad: int = TILE_PAD

    def describe(self) -> str:
        return f"{self.name} ({self.architecture}, x{self.scale})"

    def upscale(self, image: np.ndarray, factor: int | None = None) -> np.ndarray:
        """RGB uint8 [H, W, 3] (or a stack [N, H, W, 3]) -> [f H, f W, 3] uint8 (default f: the
        network's scale). ``factor`` above the network's scale is a ``UsageError``."""
        factor = self.scale if factor is None else check_factor(factor)
        if factor == 1:
            return image
        if factor > self.scale:
            fits = [f for f in (4, 2) if f <= self.scale]  # what --upscale takes and this network gives
            other = f", or {arg('upscale', fits[0])}" if fits else ""
            raise UsageError(f"{arg('upscale', factor)}: {self.describe()} enlarges only x{self.scale}",
                             hint=f"use a x{factor} model in {arg('upscale_weights')}{other}")
        if image.ndim == 4:
            return np.stack([self.upscale(im, factor) for im in image])
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
        out = self._tiled(image)
        if factor < self.scale:
            import cv2

            h, w = image.shape[:2]
            out = cv2.resize(out, (w * factor, h * factor), interpolation=cv2.INTER_AREA)
        return out

    __call__ = upscale

    def _tiled(self, image: np.ndarray) -> np.ndarray:
        import torch

        h, w = image.shape[:2]
        m, s, t, p = self.multiple, self.scale, self.tile, self.tile_pad
        t = max(m, t // m * m)
        hp, wp = -(-h // m) * m, -(-w // m) * m  # sides rounded up to the network's multiple
        if (hp, wp) != (h, w):
            image = np.pad(image, ((0, hp - h), (0, wp - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge")
        src = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # uint8, [1, 3, H, W]
        out = np.empty((hp * s, wp * s, 3), np.uint8)
        p = -(-p // m) * m
        with torch.inference_mode():
            for y0 in range(0, hp, t):
                for x0 in range(0, wp, t):
                    y1, x1 = min(y0 + t, hp), min(x0 + t, wp)
                    py0, px0 = max(y0 - p, 0), max(x0 - p, 0)
                    py1, px1 = min(y1 + p, hp), min(x1 + p, wp)
                    x = src[:, :, py0:py1, px0:px1].to(self.device, torch.float32) / 255.0
                    y = self.network(x)[0, :, (y0 - py0) * s:(y1 - py0) * s, (x0 - px0) * s:(x1 - px0) * s]
                    y = (y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
                    out[y0 * s:y1 * s, x0 * s:x1 * s] = y
        return out[:h * s, :w * s] if (hp, wp) != (h, w) else out


# ----------------------------------------------------------------------------- paste-back sizes

def native_side(alignment) -> float:
    """Side of the face square in photo pixels: the crop size that paste-back shows 1:1."""
    tl, _, _, tr = np.asarray(alignment.quad, dtype=np.float64)
    return float(np.hypot(*(tr - tl)))


def fit_face(tile: np.ndarray, alignment, least: int = 256) -> np.ndarray:
    """An upscaled face tile shrunk (area averaging) to its native size in the photo when it is
    larger, never below ``least``: the paste-back warp then resamples about 1:1 instead of skipping
    pixels. The crop -> photo transform follows the tile's size, so the face lands on the same spot."""
    import cv2

    side = max(least, int(np.ceil(native_side(alignment))))
    if tile.shape[0] <= side:
        return tile
    return cv2.resize(tile, (side, side), interpolation=cv2.INTER_AREA)


def fit_paste(tile: np.ndarray, alignment, mask: np.ndarray | None = None):
    """``(tile, mask)`` for ``paste_back``: an upscaled tile at its native size (``fit_face``), its
    blend ``mask`` (if any; weights of the 256 px crop) resized to match. A 256 px tile passes as is."""
    import cv2

    out = fit_face(tile, alignment)
    if mask is not None and mask.shape[0] != out.shape[0]:
        mask = cv2.resize(mask, (out.shape[1], out.shape[0]), interpolation=cv2.INTER_LINEAR)
    return out, mask


def input_tile(photo: np.ndarray, face, size: int) -> np.ndarray:
    """The input column of an upscaled grid: the face aligned again from the photo at ``size`` px
    (the photo's own pixels), or, for an aligned input, the crop enlarged (Lanczos)."""
    from agetool.images import resize

    if face.alignment is not None and face.landmarks is not None:
        from agetool.face.align import align_face

        return align_face(photo, face.landmarks, size=size).image
    return resize(face.aligned, size)


# ----------------------------------------------------------------------------- loading

def registered() -> list[str]:
    """Names of the registry's super-resolution models."""
    from agetool.weights.registry import load_registry

    return sorted(name for name, art in load_registry().items() if art.kind == "upscaler")


def resolve(weights: str | os.PathLike | None) -> tuple[Path | None, str]:
    """``(file, name)`` of ``weights``: None -> (None, the default name); a registered upscaler
    name -> (None, name); an existing file -> (file, its name). Anything else is a ``CheckpointError``."""
    if weights is None:
        return None, DEFAULT_WEIGHTS
    path = Path(weights).expanduser()
    if path.is_file():
        return path, path.name
    names = registered()
    if str(weights) in names:
        return None, str(weights)
    raise CheckpointError(f"{arg('upscale_weights', str(weights))}: no such file",
                          hint=f"a super-resolution model file, or one of: {', '.join(names)}")


def load_upscaler(weights: str | os.PathLike | None = None, *, device=None, loading: Loading = LOADING,
                  tile: int = TILE, tile_pad: int = TILE_PAD) -> Upscaler:
    """An ``Upscaler`` from ``weights``: None (the registry's ``realesr-general-x4v3``), a registered
    name (downloaded once, verified, cached) or a file (the built-in Real-ESRGAN architectures,
    else any model spandrel loads)."""
    import torch

    say = loading.say
    tile = validate.integer("tile", tile, low=16, high=4096)
    tile_pad = validate.integer("tile_pad", tile_pad, low=0, high=256)
    device = torch.device(device) if device is not None else torch.device("cpu")
    path, name = resolve(weights)
    if path is None:
        from agetool.weights.core import fetch, status  # not the package: its importing loads upscalers
        from agetool.weights.registry import get

        art = get(name)
        path = fetch(name, loading=loading)
        own = status(name).own  # a file of the user's own registered for the name: no borrowed licence
        licence = "; your own file" if own else f"; {art.license_line.split(': ', 1)[1]}"
    else:
        licence = ""
    network, scale, architecture, multiple = read_network(path)
    upscaler = Upscaler(network.to(device), scale, name, architecture, device, multiple, tile, tile_pad)
    say(f"upscale: {upscaler.describe()}{licence}")
    return upscaler


def read_network(path: str | os.PathLike) -> tuple[object, int, str, int]:
    """``(network, scale, architecture, multiple)`` of a super-resolution file (see
    ``agetool.nn.realesrgan.read_network``; torch loads only when this is called)."""
    from agetool.nn.realesrgan import read_network as read

    return read(path)
