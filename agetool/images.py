"""Reading, writing and arranging images; conversion to and from network tensors.

Images are numpy uint8 arrays [H, W, 3] RGB. Network tensors are float32 [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agetool.errors import InputError, OutputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
DEFAULT_MAX_PIXELS = 40_000_000


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a photo to RGB uint8 [H, W, 3]: EXIF orientation applied, first frame of animations,
    grayscale / palette / RGBA (on white) / 16-bit / CMYK converted."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    old_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the size is checked below, before any pixel is decoded
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(f"{path}: {w}x{h} pixels is over the limit of {max_pixels:,}",
                                 hint="raise --max-pixels if the image is genuine")
            if w < 8 or h < 8:
                raise InputError(f"{path}: {w}x{h} pixels is too small to hold a face")
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            return to_rgb_array(im)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({_short(e)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: can't decode image ({_short(e)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:120]


def to_rgb_array(im) -> np.ndarray:
    """PIL image of any mode -> RGB uint8 [H, W, 3]."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float64), 0, 1) * 255 + 0.5
        return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))


def resize(image: np.ndarray, size: int | tuple[int, int], method: str = "lanczos") -> np.ndarray:
    """Resize RGB uint8 with Pillow. ``size`` is an int (square) or (width, height)."""
    from PIL import Image

    wh = (size, size) if isinstance(size, int) else tuple(size)
    if image.shape[1] == wh[0] and image.shape[0] == wh[1]:
        return image
    resample = {"lanczos": Image.LANCZOS, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}[method]
    return np.asarray(Image.fromarray(image).resize(wh, resample))


def to_tensor(image: np.ndarray):
    """uint8 [H, W, 3] (or [B, H, W, 3]) -> float32 [B, 3, H, W] in [-1, 1], as (u8/255 - 0.5)/0.5."""
    import torch

    a = image if image.ndim == 4 else image[None]
    t = torch.from_numpy(np.array(a, dtype=np.uint8, copy=True)).permute(0, 3, 1, 2).float()
    return (t / 255.0 - 0.5) / 0.5


def to_uint8(x) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3] as floor((x + 1) / 2 * 255), clamped."""
    import torch

    x = x.detach().float().cpu()
    u = torch.clamp(torch.floor((x + 1) / 2 * 255), 0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).contiguous().numpy()


def atomic_path(target: Path) -> Path:
    """A temporary sibling of ``target`` (same folder, same suffix) to write and then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=f".part{target.suffix}", dir=target.parent)
    os.close(fd)
    return Path(tmp)


def ensure_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"can't create folder {path.parent}: {e.strerror or e}",
                          hint="choose another --out") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{path.parent}: folder is not writable", hint="choose another --out")


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write RGB uint8 atomically (temporary name, then rename); format from the suffix."""
    from PIL import Image

    path = Path(path)
    ensure_parent(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
           ".tif": "TIFF", ".tiff": "TIFF"}.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"{path}: unsupported image suffix {path.suffix or '(none)'}",
                          hint="use .png, .jpg or .webp")
    tmp = None
    try:
        tmp = atomic_path(path)
        extra = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format=fmt, **extra)
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise OutputError(f"can't write {path}: {e.strerror or e}", hint="check free space and permissions") from None
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        raise
    return path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` on a dark band at the bottom of a tile."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(tile).convert("RGBA")
    h = im.size[1]
    size = max(10, h // 14)
    band = max(size + 8, h // 10)
    overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle([0, h - band, im.size[0], h], fill=(0, 0, 0, 150))
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (im.size[0] - (right - left)) // 2
    y = h - band + (band - (bottom - top)) // 2 - top
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(im, overlay).convert("RGB"))


def grid(rows: Sequence[Sequence[np.ndarray]], labels: Sequence[str] | None = None, pad: int = 0) -> np.ndarray:
    """Tile rows of equal-size RGB tiles into one image; ``labels`` captions each column."""
    if not rows or not rows[0]:
        raise ValueError("grid needs at least one tile")
    th, tw = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full(((th + pad) * len(rows) - pad, (tw + pad) * ncol - pad, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if labels is not None and c < len(labels) and labels[c]:
                tile = caption(tile, labels[c])
            y, x = r * (th + pad), c * (tw + pad)
            out[y:y + th, x:x + tw] = tile
    return out


def find_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; folders searched recursively for image suffixes, sorted."""
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
                            and not q.name.startswith("."))
        else:
            found.append(p)
    return found


def even_size(image: np.ndarray) -> np.ndarray:
    """Crop one row / column if needed so that both sides are even (yuv420p)."""
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]
