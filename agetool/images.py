"""Reading, writing and arranging images; conversion to and from network tensors.

Images are numpy uint8 arrays [H, W, 3] RGB. Network tensors are float32 [B, 3, H, W] in [-1, 1].
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from agetool.errors import InputError, OutputError, UsageError, arg, detail
from agetool.files import replacing

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
DEFAULT_MAX_PIXELS = 40_000_000


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, *,
               data: bytes | None = None) -> np.ndarray:
    """Decode a photo to RGB uint8 [H, W, 3]: EXIF orientation applied, first frame of animations,
    grayscale / palette / RGBA (on white) / 16-bit / CMYK converted. With ``data`` (the file's
    bytes, read elsewhere: object storage) ``path`` only names the photo in messages."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    if data is None:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: no such file", hint="check the path")
        if path.is_dir():
            raise UsageError(f"{path}: is a folder; one photo is expected here")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise InputError(f"{path}: empty file")
    # PIL's own limit (Image.MAX_IMAGE_PIXELS, process-wide) is left as the program set it: it refuses
    # images over twice that before decoding; ``max_pixels`` is checked here, also before decoding
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise InputError(f"{path}: {w}x{h} pixels is over the limit of {max_pixels:,}",
                                 hint=f"raise {arg('max_pixels')} if the image is genuine")
            if w < 8 or h < 8:
                raise InputError(f"{path}: {w}x{h} pixels is too small to hold a face")
            im.seek(0)
            im = ImageOps.exif_transpose(im)
            return to_rgb_array(im)
    except Image.DecompressionBombError as e:  # over twice PIL's own limit: refused before its size is known here
        import re

        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)):,} pixels" if found else "the image"
        if max_pixels <= 2 * (Image.MAX_IMAGE_PIXELS or 0):
            raise InputError(f"{path}: {size} is over the limit of {max_pixels:,}",
                             hint=f"raise {arg('max_pixels')} if the image is genuine") from None
        raise InputError(f"{path}: {size} is over the image decoder's limit of {2 * Image.MAX_IMAGE_PIXELS:,}",
                         hint="raise PIL.Image.MAX_IMAGE_PIXELS in your program if the image is genuine") from None
    except UnidentifiedImageError as e:
        raise InputError(f"{path}: not a readable image ({_short(e)})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: can't decode image ({_short(e)})") from None


def load_image(image, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> tuple[np.ndarray, str]:
    """A path, a PIL image (any mode) or an RGB uint8 array [H, W, 3] -> (RGB uint8 [H, W, 3], name).

    Paths and PIL images get their EXIF orientation applied; grayscale [H, W] and RGBA [H, W, 4]
    arrays are converted. Anything else is a ``UsageError`` naming the argument ``what``.
    """
    from agetool.errors import UsageError, arg

    if isinstance(image, (str, os.PathLike)):
        if not str(image):
            raise UsageError(f"{arg(what)}: empty path")
        return read_image(image, max_pixels=max_pixels), str(image)
    if isinstance(image, np.ndarray):
        a = image
        if a.dtype != np.uint8:
            raise UsageError(f"{arg(what)}: expected a uint8 array, got {a.dtype}",
                             hint="convert with np.clip(x, 0, 255).astype(np.uint8)")
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        elif a.ndim == 3 and a.shape[2] == 4:
            a = to_rgb_array(_pil().fromarray(a, "RGBA"))
        elif not (a.ndim == 3 and a.shape[2] == 3):
            raise UsageError(f"{arg(what)}: expected an RGB array [H, W, 3], got shape {tuple(a.shape)}")
        _check_size(a.shape[1], a.shape[0], max_pixels, what)
        return np.ascontiguousarray(a), "image"
    pil = _pil()
    if isinstance(image, pil.Image):
        from PIL import ImageOps

        _check_size(image.size[0], image.size[1], max_pixels, what)
        try:
            image.load()
        except ValueError as e:  # "Operation on closed image"
            raise UsageError(f"{arg(what)}: can't use this PIL image ({_short(e)})",
                             hint="pass an open image, or the file's path") from None
        except (OSError, SyntaxError) as e:
            raise InputError(f"{arg(what)}: can't decode the PIL image ({_short(e)})") from None
        return to_rgb_array(ImageOps.exif_transpose(image)), Path(getattr(image, "filename", "") or "image").name
    raise UsageError(f"{arg(what)}: expected a file path, a numpy array or a PIL image, got {type(image).__name__}")


def _pil():
    from PIL import Image

    return Image


def _check_size(w: int, h: int, max_pixels: int, what: str) -> None:
    from agetool.errors import arg

    if w * h > max_pixels:
        raise InputError(f"{arg(what)}: {w}x{h} pixels is over the limit of {max_pixels:,}",
                         hint=f"raise {arg('max_pixels')} if the image is genuine")
    if w < 8 or h < 8:
        raise InputError(f"{arg(what)}: {w}x{h} pixels is too small to hold a face")


def fit(image: np.ndarray, long_side: int) -> np.ndarray:
    """Shrink ``image`` so that its long side is at most ``long_side`` (never enlarges)."""
    h, w = image.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    return resize(image, (max(2, round(w * scale)), max(2, round(h * scale))))


def _short(e: Exception) -> str:
    import re

    # Pillow names the stream it was given: for photos handed over as bytes, an object address
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", detail(e, 120))


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


WRITE_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}


def encode_image(image: np.ndarray, name: str | os.PathLike, marking=None) -> bytes:
    """RGB uint8 as the bytes of an image file, the format from ``name``'s suffix (what
    ``write_image`` writes). ``marking`` (an ``agetool.provenance.Marking``): the XMP that says
    what the image is and how it was made, and its signature when one is asked for."""
    import io

    from PIL import Image

    suffix = os.path.splitext(str(name))[1]
    fmt = WRITE_FORMATS.get(suffix.lower())
    if fmt is None:
        raise OutputError(f"{name}: unsupported image suffix {suffix or '(none)'}",
                          hint="use .png, .jpg or .webp")
    extra = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    if marking is not None and fmt in ("WEBP", "TIFF"):  # PNG and JPEG: inserted below, without re-encoding
        extra["xmp" if fmt == "WEBP" else "tiffinfo"] = marking.xmp() if fmt == "WEBP" else {700: marking.xmp()}
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format=fmt, **extra)
    return buffer.getvalue() if marking is None else marking.embed(buffer.getvalue(), fmt)


def write_image(path: str | os.PathLike, image: np.ndarray, marking=None) -> Path:
    """Write RGB uint8 atomically (temporary name, then rename); format from the suffix; with
    ``marking`` as ``encode_image`` writes it."""
    data = encode_image(image, path, marking)
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def read_label_map(path: str | os.PathLike) -> np.ndarray:
    """A face-parsing label map as uint8 [H, W] (gray, or the first channel of a color file)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            a = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: can't read the label map ({_short(e)})") from None
    return np.ascontiguousarray(a[..., 0] if a.ndim == 3 else a).astype(np.uint8)


def write_label_map(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a uint8 [H, W] label map as a gray PNG, atomically."""
    from PIL import Image

    path = Path(path)
    with replacing(path) as tmp:
        Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8)).save(tmp, format="PNG")
    return path


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


#: what the built-in font lacks, written with characters it has
_ASCII = {"\u2192": "->", "\u2190": "<-", "\u2194": "<->", "\u2013": "-", "\u2014": "-", "\u2212": "-",
          "\u2026": "...", "\u2265": ">=", "\u2264": "<=", "\u00d7": "x", "\u00b1": "+/-", "\u2248": "~",
          "\u00a0": " ", "\u2009": " ", "\u202f": " "}


def has_glyph(font, char: str) -> bool:
    """Whether ``font`` draws ``char`` itself, not its missing-glyph box."""
    if char.isspace():
        return True
    missing = font.getmask("\uffff")  # a noncharacter: no font maps it
    mask = font.getmask(char)
    return mask.size != missing.size or bytes(mask) != bytes(missing)


def caption_text(text: str, font=None) -> str:
    """``text`` as drawn by ``caption``: characters the font lacks spelled in ones it has (an arrow
    as ``->``, accents dropped), anything else as ``?`` — never a missing-glyph box."""
    import unicodedata

    font = font if font is not None else _font(20)
    out = []
    for ch in text:
        if ch.isascii() or has_glyph(font, ch):
            out.append(ch)
            continue
        alt = _ASCII.get(ch)
        if alt is None:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
            alt = base if base and all(c.isascii() or has_glyph(font, c) for c in base) else "?"
        out.append(alt)
    return "".join(out)


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` on a dark band at the bottom of a tile (see ``caption_text`` for what is drawn)."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(tile).convert("RGBA")
    h = im.size[1]
    small = h < 128  # a training sample's 64 px tile: a smaller font and band, so the face shows
    size = max(7, h // 9) if small else max(10, h // 14)
    band = max(size + (4 if small else 8), h // 10)
    overlay = Image.new("RGBA", im.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle([0, h - band, im.size[0], h], fill=(0, 0, 0, 150))
    font = _font(size)
    text = caption_text(text, font)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x = (im.size[0] - (right - left)) // 2
    y = h - band + (band - (bottom - top)) // 2 - top
    draw.text((x, y), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(im, overlay).convert("RGB"))


#: the visible disclosure ``disclose`` draws
DISCLOSURE = "AI-aged"


def disclose(image: np.ndarray, text: str = DISCLOSURE) -> np.ndarray:
    """``image`` with ``text`` in its bottom-right corner, white on a dark box, its height about 1/25
    of the image's short side (at least 10 px): the same place and proportion at any size."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    size = max(10, min(h, w) // 25)
    font = _font(size)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    pad, margin = max(2, size // 4), max(2, size // 2)
    bw, bh = min(w, (right - left) + 2 * pad), min(h, (bottom - top) + 2 * pad)
    x0, y0 = max(0, w - margin - bw), max(0, h - margin - bh)
    corner = Image.fromarray(np.ascontiguousarray(image[y0:y0 + bh, x0:x0 + bw])).convert("RGBA")
    overlay = Image.new("RGBA", corner.size, (0, 0, 0, 170))  # only the corner is drawn: cheap for every frame
    ImageDraw.Draw(overlay).text((pad - left, pad - top), text, font=font, fill=(255, 255, 255, 255))
    out = np.array(image, copy=True)
    out[y0:y0 + bh, x0:x0 + bw] = np.asarray(Image.alpha_composite(corner, overlay).convert("RGB"))
    return out


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


def unique_stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """A distinct name per input for its outputs: the file's stem, and ``<stem>_2``, ``<stem>_3`` ...
    for later inputs with the same stem (``a.jpg`` and ``a.png``), never equal to another input's
    own stem (``a_2.png`` keeps ``a_2``). Compared without case, for case-insensitive disks."""
    stems = [Path(p).stem for p in paths]
    taken = {s.casefold() for s in stems}
    used: set[str] = set()
    out = []
    for stem in stems:
        name, k = stem, 1
        while name.casefold() in used or (k > 1 and name.casefold() in taken):
            k += 1
            name = f"{stem}_{k}"
        used.add(name.casefold())
        out.append(name)
    return out


def output_image(name: str, path: str | os.PathLike) -> Path:
    """An output image path checked before any work: a suffix ``write_image`` knows (``UsageError``
    naming the argument ``name`` otherwise)."""
    path = Path(path)
    if path.suffix.lower() not in WRITE_FORMATS:
        known = ", ".join(sorted({".png", ".jpg", ".webp", ".bmp", ".tif"}))
        raise UsageError(f"{arg(name, path)}: unknown image suffix {path.suffix or '(none)'}",
                         hint=f"use one of {known}")
    if path.is_dir():
        raise UsageError(f"{arg(name, path)}: is a folder; a file name is expected")
    return path


def _file_key(path: Path) -> tuple:
    """What tells files apart: device and inode where the file exists (links, letter case on
    case-insensitive disks), else the normalised absolute path."""
    try:
        st = os.stat(path)
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.normcase(os.path.abspath(path)))


def distinct_outputs(outputs, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Refuse (``UsageError``) two outputs that are one file, or an output that is an input.
    ``outputs`` maps argument names to paths (a dict, or ``(name, path)`` pairs; None: not written)."""
    pairs = outputs.items() if isinstance(outputs, dict) else outputs
    sources = {_file_key(Path(p)) for p in inputs}
    seen: dict[tuple, tuple[str, Path]] = {}
    for name, path in pairs:
        if path is None:
            continue
        path = Path(path)
        key = _file_key(path)
        if key in sources:
            typed = next((Path(p) for p in inputs if _file_key(Path(p)) == key), path)
            also = "" if os.path.abspath(typed) == os.path.abspath(path) else f" ({typed})"
            raise UsageError(f"{arg(name, path)}: is an input{also}; it would be overwritten",
                             hint="choose another output path")
        if key in seen:
            other, other_path = seen[key]
            raise UsageError(f"{arg(other, other_path)} and {arg(name, path)} are the same file")
        seen[key] = (name, path)


def _case_insensitive(path: Path) -> bool:
    """Whether the folder of the existing file ``path`` ignores letter case."""
    other = path.with_name(path.name.swapcase())
    if other.name == path.name:
        return False
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def outputs_clear(name: str, folder: str | os.PathLike | None, pattern: str,
                  inputs: Sequence[str | os.PathLike], typed: str | os.PathLike | None = None) -> None:
    """Refuse (``UsageError`` naming both paths) a run that would write, into ``folder`` (the
    argument ``name``), a file whose name fully matches the regular expression ``pattern`` over
    one of ``inputs``: the outputs whose exact names are known only during the work (a face count,
    a frame count) checked before it. ``typed``: the argument's value as given, when ``folder`` is
    a subfolder of it."""
    if folder is None:
        return
    folder = Path(folder)
    where = _file_key(folder)
    if where[0] != "inode":  # a folder that does not exist yet holds no input
        return
    regex = re.compile(pattern)
    for item in inputs:
        item = Path(item)
        if _file_key(item.parent) != where:
            continue
        flags = re.IGNORECASE if _case_insensitive(item) else 0
        if regex.fullmatch(item.name) or (flags and re.fullmatch(pattern, item.name, flags)):
            shown = folder if typed is None else typed
            raise UsageError(f"{arg(name, shown)}: would write {folder / item.name} over the input {item}",
                             hint=f"choose another {arg(name)} folder")


def even_size(image: np.ndarray) -> np.ndarray:
    """Crop one row / column if needed so that both sides are even (yuv420p)."""
    h, w = image.shape[:2]
    return image[: h - h % 2, : w - w % 2]
