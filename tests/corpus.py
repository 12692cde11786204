"""A corpus of awkward inputs, generated on the fly (nothing large is committed).

    python -m tests.corpus DIR      # writes the files and prints the expected outcome of each

Each case says what ``agetool age`` / ``agetool video`` must do with it: exit 0 with a correct
output, or exit 1 with a specific one-line message. Never a traceback, never a partial output.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import face_like


@dataclass(frozen=True)
class Case:
    name: str  # file name inside the corpus folder
    exit_code: int  # 0 or 1
    message: str = ""  # a fragment of the one-line error, for exit 1


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def exif_rotated_jpeg(image: np.ndarray, orientation: int) -> bytes:
    im = Image.fromarray(image)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def build(folder: Path) -> list[Case]:
    """Write the corpus into ``folder``; return the cases with their expected outcome."""
    folder.mkdir(parents=True, exist_ok=True)
    face = face_like(256)
    rect = face_like(256)[:, :200]
    cases: list[Case] = []

    def save(name: str, data: bytes, exit_code: int, message: str = "") -> None:
        (folder / name).write_bytes(data)
        cases.append(Case(name, exit_code, message))

    def save_pil(name: str, im: Image.Image, exit_code: int = 0, message: str = "", **kw) -> None:
        buf = io.BytesIO()
        im.save(buf, format=kw.pop("format", None) or Image.registered_extensions()[Path(name).suffix], **kw)
        save(name, buf.getvalue(), exit_code, message)

    save("empty.jpg", b"", 1, "empty file")
    good_jpeg = io.BytesIO()
    Image.fromarray(face).save(good_jpeg, format="JPEG", quality=90)
    save("truncated.jpg", good_jpeg.getvalue()[: len(good_jpeg.getvalue()) // 3], 1, "can't decode image")
    save("notes.jpg", b"this is a text file, not a photo\n" * 20, 1, "not a readable image")
    save_pil("one_pixel.png", Image.new("RGB", (1, 1), (200, 100, 50)), 1, "too small")
    save("bomb.png", bomb_png(), 1, "over the limit")
    save_pil("gray16.png", Image.fromarray((face[..., 1].astype(np.uint16) * 257)), format="PNG")
    save_pil("cmyk.jpg", Image.fromarray(face).convert("CMYK"), format="JPEG")
    rgba = np.dstack([face, np.where(np.arange(256)[None, :] < 128, 0, 255).repeat(256, 0).astype(np.uint8)])
    save_pil("rgba.png", Image.fromarray(rgba, "RGBA"))
    save_pil("gray.png", Image.fromarray(face[..., 1]))
    save_pil("palette.gif", Image.fromarray(face).convert("P", palette=Image.ADAPTIVE))
    frames = [Image.fromarray(face_like(256, seed=s)).convert("P", palette=Image.ADAPTIVE) for s in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    save("animated.gif", buf.getvalue(), 0)
    save("exif6.jpg", exif_rotated_jpeg(rect, 6), 0)
    save("exif8.jpg", exif_rotated_jpeg(rect, 8), 0)
    save_pil("naïve 名前 with spaces.png", Image.fromarray(face))
    return cases


def case_names() -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return [c.name for c in build(Path(tmp))]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus")
    for case in build(target):
        print(f"{case.exit_code}  {case.name}  {case.message}")
