"""Where inputs come from and outputs go: local paths and the URIs of filesystems pyarrow reads
(``s3://bucket/photos``, ``gs://...``, ``file:///data``): listing photos, reading and writing files,
whether one exists. ``agetool.ray`` reads and writes through these; a ``file://`` URI is written as
the local path it names (atomically)."""

from __future__ import annotations

import os
from pathlib import Path

from agetool import errors


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a URI of a filesystem Ray reads (``s3://bucket/photos``, ``gs://...``,
    ``file:///data``), not a local path."""
    import re

    return isinstance(text, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def list_photos(uri: str) -> list[str]:
    """The photos at ``uri``: the file itself, or every image under the folder (recursively, sorted,
    hidden files left out) as URIs of the same filesystem. ``InputError`` when nothing is there or
    the filesystem can't be reached (a missing extra such as ``s3fs`` is not needed: pyarrow's own)."""
    import posixpath

    import pyarrow.fs

    from agetool.images import IMAGE_SUFFIXES

    scheme = uri.split("://", 1)[0]
    try:
        fs, root = _filesystem(uri)
        info = fs.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File:
            return [uri]
        if info.type != pyarrow.fs.FileType.Directory:
            raise errors.InputError(f"{uri}: no such file or folder")
        found = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:
        raise errors.InputError(f"{uri}: can't list ({errors.detail(e, 200)})",
                                hint="check the URI and the filesystem's credentials") from None
    names = sorted(f.path for f in found if f.type == pyarrow.fs.FileType.File
                   and posixpath.splitext(f.path)[1].lower() in IMAGE_SUFFIXES
                   and not posixpath.basename(f.path).startswith("."))
    return [f"{scheme}://{name}" for name in names]


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of ``uri``."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def store(target: str, data: bytes) -> None:
    """``data`` as the file ``target``: a local path (or ``file://`` URI) written atomically, or an
    object of the URI's filesystem (an object store publishes it whole when the stream closes)."""
    from agetool.files import write_bytes

    local = local_path(target) if is_uri(target) else target
    if local is not None:
        write_bytes(local, data)
        return
    try:
        fs, inner = _filesystem(target)
        parent = inner.rsplit("/", 1)[0]
        if parent and parent != inner:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(inner) as stream:
            stream.write(data)
    except (OSError, ValueError) as e:
        raise errors.OutputError(f"{target}: can't write ({errors.detail(e, 200)})") from None


def exists(target: str) -> bool:
    """Whether the file ``target`` (a local path or a URI) is there."""
    local = local_path(target) if is_uri(target) else target
    if local is not None:
        return Path(local).exists()
    import pyarrow.fs

    try:
        fs, inner = _filesystem(target)
        return fs.get_file_info(inner).type == pyarrow.fs.FileType.File
    except (OSError, ValueError):
        return False


def join(folder: str, name: str) -> str:
    """``name`` inside ``folder`` (a local path or a URI)."""
    return f"{folder.rstrip('/')}/{name}" if is_uri(folder) else os.path.join(folder, name)


def local_path(uri: str) -> str | None:
    """The local path a ``file://`` URI names (None for other filesystems)."""
    from urllib.parse import unquote, urlparse

    parts = urlparse(uri)
    return unquote(parts.path) if parts.scheme == "file" else None


def fetch(uri: str) -> bytes:
    """The bytes of the file ``uri`` (``InputError`` when it can't be read)."""
    try:
        fs, inner = _filesystem(uri)
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except (OSError, ValueError) as e:
        raise errors.InputError(f"{uri}: can't read ({errors.detail(e, 200)})") from None
