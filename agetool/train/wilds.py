"""Where the in-the-wild photos come from, and how each is checked against FFHQ's metadata.

A source is a local folder in the JSON's relative layout (``SRC/in-the-wild-images/00000/00000.png``,
or ``SRC/00000/00000.png`` when SRC is that folder itself), an http(s) URL prefix (any mirror of the
same layout: resumable, retried, rate-checked downloads of ``agetool.weights.transfer``), or a URI of a
filesystem pyarrow reads (``s3://bucket/ffhq``, ``gs://...``, ``file:///...``). Every photo's size and
MD5 are checked against the JSON before it is used.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import quote, urlparse

from agetool.errors import UsageError, arg
from agetool.train.ffhq_meta import WildPhoto

MAX_PHOTO_BYTES = 512 << 20


class PhotoFailed(Exception):
    """One photo could not be had or did not match the metadata; the message says why."""


def check_bytes(photo: WildPhoto, data: bytes) -> None:
    """``PhotoFailed`` unless ``data`` has the size and MD5 the metadata gives."""
    if len(data) != photo.file_size:
        raise PhotoFailed(f"size mismatch: {len(data)} bytes, the metadata says {photo.file_size}")
    got = hashlib.md5(data).hexdigest()
    if got != photo.file_md5:
        raise PhotoFailed(f"md5 mismatch: {got}, the metadata says {photo.file_md5}")


class Source:
    """``read(photo)`` gives the photo's bytes, checked; ``PhotoFailed`` when it can't."""

    kind = "local"

    def read(self, photo: WildPhoto) -> bytes:
        data = self._read(photo)
        check_bytes(photo, data)
        return data

    def _read(self, photo: WildPhoto) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root = root

    def path_of(self, photo: WildPhoto) -> Path:
        rel = Path(*photo.file_path.split("/"))
        full = self.root / rel
        if not full.exists() and len(rel.parts) > 1 and (self.root / Path(*rel.parts[1:])).exists():
            return self.root / Path(*rel.parts[1:])  # SRC is the in-the-wild-images folder itself
        return full

    def _read(self, photo: WildPhoto) -> bytes:
        path = self.path_of(photo)
        try:
            if not path.is_file():
                raise PhotoFailed(f"missing file {path}")
            with open(path, "rb") as f:
                return f.read(min(photo.file_size, MAX_PHOTO_BYTES) + 1)
        except OSError as e:
            raise PhotoFailed(f"can't read {path} ({e.strerror or e})") from None


class HttpSource(Source):
    kind = "http"

    def __init__(self, prefix: str, scratch: Path):
        self.prefix = prefix.rstrip("/")
        self.scratch = scratch  # where downloads are written before they are checked

    def url_of(self, photo: WildPhoto) -> str:
        return f"{self.prefix}/{quote(photo.file_path)}"

    def _read(self, photo: WildPhoto) -> bytes:
        from agetool.files import temp_sibling
        from agetool.weights.registry import Artifact
        from agetool.weights.registry import Source as Place
        from agetool.weights.transfer import SourceFailed, download_url

        if photo.file_size > MAX_PHOTO_BYTES:
            raise PhotoFailed(f"the metadata gives {photo.file_size} bytes, over the limit of {MAX_PHOTO_BYTES}")
        url = self.url_of(photo)
        art = Artifact(name=f"in-the-wild photo {photo.name}", kind="photo", description="", license="",
                       license_url="", filename=Path(photo.file_path).name, size=photo.file_size,
                       md5=photo.file_md5, sources=(Place(url=url),))
        self.scratch.mkdir(parents=True, exist_ok=True)
        part = temp_sibling(self.scratch / f"{photo.name}.png")
        try:
            try:
                download_url(art, Place(url=url), part)
            except SourceFailed as e:
                raise PhotoFailed(f"download of {url} failed: {e.reason}") from None
            return part.read_bytes()
        finally:
            part.unlink(missing_ok=True)


class ArrowSource(Source):
    kind = "uri"

    def __init__(self, uri: str):
        try:
            import pyarrow.fs
        except ImportError:
            raise UsageError(f"{arg('wilds', uri)}: reading URIs needs pyarrow",
                             hint="pip install pyarrow (or agetool[ray]), or give a folder or an http(s) URL") from None
        try:
            self.fs, self.base = pyarrow.fs.FileSystem.from_uri(uri)
        except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for bad URIs
            raise UsageError(f"{arg('wilds', uri)}: not a filesystem pyarrow can open ({str(e).splitlines()[0][:160]})") from None
        self.base = self.base.rstrip("/")

    def _read(self, photo: WildPhoto) -> bytes:
        path = f"{self.base}/{photo.file_path}"
        try:
            with self.fs.open_input_stream(path) as f:
                return f.read(min(photo.file_size, MAX_PHOTO_BYTES) + 1)
        except FileNotFoundError:
            raise PhotoFailed(f"missing file {path}") from None
        except Exception as e:  # noqa: BLE001 - a storage error of any kind fails this photo only
            text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            if "not found" in text.lower() or "no such file" in text.lower():
                raise PhotoFailed(f"missing file {path}") from None
            raise PhotoFailed(f"can't read {path} ({text})") from None


def open_source(src: str | os.PathLike, scratch: Path) -> Source:
    """The ``Source`` for ``src``: an http(s) URL prefix, a URI with a scheme, or a local folder."""
    text = os.fspath(src)
    scheme = urlparse(text).scheme.lower()
    if scheme in ("http", "https"):
        return HttpSource(text, scratch)
    if len(scheme) > 1 and "://" in text:
        return ArrowSource(text)
    root = Path(text).expanduser()
    if not root.is_dir():
        raise UsageError(f"{arg('wilds', text)}: no such folder",
                         hint="a folder holding in-the-wild-images/, an http(s) URL prefix, or a URI such as s3://bucket/ffhq")
    return FolderSource(root)
