"""Face parsing of aligned crops with the DeepLabV3 parser, exactly as LATS prepares its inputs.

Crop -> Pillow bilinear resize to 513 x 513 -> /255 -> ImageNet normalization -> DeepLabV3 ->
argmax over the 19 classes -> Pillow nearest resize back to the crop size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from agetool.loading import LOADING, Loading


#: the registry entry whose ``preprocess`` table says what the parser expects (size, mean, std)
ENTRY = "deeplab-parser"
FORMAT = "parser"


def load_parser_network(path: str | os.PathLike, device=None, *, prepared: bool = True):
    """A ready, eval-mode ``DeepLabV3`` from ``path`` (weights standardized once, for inference).

    With ``prepared`` the standardized weights are kept in the cache (``prepared_path``) the first
    time, and read from there while ``path`` is unchanged (same path, size and modification time):
    standardizing the 58M weights costs more than everything else in loading them. The results are
    the same to the bit.
    """
    import torch

    from agetool.nn.parser import DeepLabV3, parser_from_file

    device = device or torch.device("cpu")
    cached = _read_prepared(path) if prepared else None
    if cached is not None:
        with torch.device("meta"):  # no random init of 58M parameters: the cache replaces them all
            net = DeepLabV3()
        try:
            return net.load_prepared(cached).eval().to(device)
        except RuntimeError:  # a cache file of another layout: standardize again
            pass
    net = parser_from_file(path)
    if prepared:
        _write_prepared(path, net)
    return net.to(device)


PREPARED_FORMAT = "parser-prepared"


def prepared_path(path: str | os.PathLike) -> Path:
    """Where the standardized weights of the parser file ``path`` are kept: one file per source path."""
    import hashlib

    from agetool.weights.store import cache_dir

    key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "prepared" / f"parser-{key}.safetensors"


def _stamp(path: str | os.PathLike) -> str:
    st = Path(path).stat()
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _read_prepared(path: str | os.PathLike) -> dict | None:
    """The cached standardized weights of ``path``; None if absent, stale or unreadable."""
    try:
        from safetensors import safe_open
        from safetensors.torch import load_file

        from agetool.nn.checkpoint import CONFIG_KEY, FORMAT_KEY

        cached = prepared_path(path)
        if not cached.is_file():
            return None
        with safe_open(str(cached), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get(FORMAT_KEY) != PREPARED_FORMAT or json.loads(meta.get(CONFIG_KEY, "{}")).get("source") != _stamp(path):
            return None
        # copied out of the mapping: the file's offsets leave tensors 8-byte aligned, and the conv
        # library takes another path (other rounding) for weights that are not 64-byte aligned
        return {k: v.clone() for k, v in load_file(str(cached), device="cpu").items()}
    except Exception:  # noqa: BLE001 - a damaged or foreign cache file: standardize again
        return None


def _write_prepared(path: str | os.PathLike, net) -> None:
    """Keep ``net``'s standardized weights for the next run (atomically; skipped where it can't write)."""
    from agetool.nn.checkpoint import save_safetensors

    try:  # written atomically: processes preparing the same file at once don't collide
        save_safetensors(prepared_path(path), net.prepared_state_dict(), PREPARED_FORMAT,
                         {"network": "deeplabv3-resnet101-gn-ws", "classes": 19, "standardized": True,
                          "source": _stamp(path)})
    except OSError:
        pass


def save_parser(path: str | os.PathLike, state_dict: dict) -> Path:
    """Write a parser state dict in agetool's safetensors format."""
    from agetool.nn.checkpoint import save_safetensors

    return save_safetensors(path, state_dict, FORMAT, {"network": "deeplabv3-resnet101-gn-ws", "classes": 19})


class FaceParser:
    """A loaded parser; ``parse(crop)`` gives the 19-class label map at the crop's size."""

    def __init__(self, network, device=None, preprocessing: dict | None = None):
        import torch

        from agetool.weights.registry import preprocessing as registered

        self.network = network
        self.device = device or torch.device("cpu")
        self.preprocessing = dict(preprocessing or registered(ENTRY))  # the entry's size, mean and std

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, device=None, loading: Loading = LOADING) -> "FaceParser":
        """From ``path``, or (None) the registry's ``deeplab-parser``, downloaded once and cached."""
        import torch

        if path is None:
            from agetool import weights

            path = weights.fetch("deeplab-parser", loading=loading)
        device = torch.device(device) if device is not None else torch.device("cpu")
        return cls(load_parser_network(path, device), device)

    def logits(self, crop: np.ndarray):
        """Class scores [19, 513, 513] (float32, on the CPU) of an RGB uint8 crop [H, W, 3]."""
        import torch

        x = preprocess(crop, self.preprocessing).to(self.device)
        with torch.inference_mode():
            return self.network(x)[0].float().cpu()

    def parse(self, crop: np.ndarray) -> np.ndarray:
        """Label map [H, W] uint8 of an RGB uint8 crop [H, W, 3] (class ids as in ``CLASSES``)."""
        return labels_from_logits(self.logits(crop), (crop.shape[1], crop.shape[0]))


def preprocess(crop: np.ndarray, preprocessing: dict | None = None):
    """uint8 [H, W, 3] -> normalized float32 [1, 3, S, S], as the reference: a bilinear resize to the
    entry's ``size`` (513), pixels / 255, then its ImageNet ``mean`` and ``std``."""
    import torch
    from PIL import Image

    from agetool.weights.registry import preprocessing as registered

    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 crop [H, W, 3], got {crop.dtype} {crop.shape}")
    p = preprocessing or registered(ENTRY)
    size = int(p["size"])
    resized = np.array(Image.fromarray(crop).resize((size, size), Image.BILINEAR))
    x = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0  # [3, S, S]
    mean = torch.tensor(p["mean"], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(p["std"], dtype=torch.float32).view(3, 1, 1)
    return ((x - mean) / std)[None]


def labels_from_logits(logits, size: tuple[int, int]) -> np.ndarray:
    """argmax over classes of [C, h, w] scores, then a Pillow nearest resize to ``size`` (width, height)."""
    from PIL import Image

    pred = logits.argmax(dim=0).numpy().astype(np.uint8)  # [h, w]
    if (pred.shape[1], pred.shape[0]) == tuple(size):
        return pred
    return np.asarray(Image.fromarray(pred).resize(tuple(size), Image.NEAREST))


#: One colour per class for overlays (background black).
PALETTE = np.array([
    [0, 0, 0], [204, 0, 0], [76, 153, 0], [204, 204, 0], [51, 51, 255], [204, 0, 204], [0, 255, 255],
    [255, 204, 204], [102, 51, 0], [255, 0, 0], [102, 204, 0], [255, 255, 0], [0, 0, 153], [0, 0, 204],
    [255, 51, 153], [0, 204, 204], [0, 51, 0], [255, 153, 51], [0, 204, 0],
], dtype=np.uint8)


def colorize(labels: np.ndarray) -> np.ndarray:
    """[H, W] class ids -> [H, W, 3] uint8 colours."""
    return PALETTE[np.clip(labels, 0, len(PALETTE) - 1)]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The crop with the label colours blended on top (background left as is)."""
    colours = colorize(labels).astype(np.float32)
    out = image.astype(np.float32)
    fg = labels > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * colours[fg]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
