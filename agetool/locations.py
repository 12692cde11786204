"""Where inputs come from and outputs go: local paths and the URIs of filesystems pyarrow reads
(``s3://bucket/photos``, ``gs://...``, ``file:///data``): listing photos, reading and writing files,
whether one exists. ``agetool.ray`` reads and writes through these; a ``file://`` URI is written as
the local path it names (atomically). Every wait on a filesystem is bounded: listing, reading and
writing give up after ``timeout`` seconds with one line saying so."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agetool import errors

#: seconds a job waits for a filesystem or a cluster before it gives up
DEFAULT_TIMEOUT = 60.0

T = TypeVar("T")


def bounded(fn: Callable[[], T], timeout: float, what: str, error=errors.InputError) -> T:
    """``fn()`` in a helper thread, waited for at most ``timeout`` seconds; ``error`` (one line naming
    ``what``) when it takes longer. The wait wakes often, so a stop signal is seen at once; a call
    still hanging is left behind in its (daemon) thread."""
    box: dict = {}

    def call() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the waiting thread
            box["error"] = e

    thread = threading.Thread(target=call, name="agetool-bounded", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise error(f"{what}: no answer within {timeout:g} s",
                    hint=f"check the network and the address, or allow longer with {errors.arg('timeout')}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def is_uri(text: str | os.PathLike) -> bool:
    """Whether ``text`` is a URI of a filesystem Ray reads (``s3://bucket/photos``, ``gs://...``,
    ``file:///data``), not a local path."""
    return isinstance(text, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text) is not None


def _filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of ``uri``."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def list_photos(uri: str, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """The photos at ``uri``: the file itself, or every image under the folder (recursively, sorted,
    hidden files left out) as URIs of the same filesystem. ``InputError`` when nothing is there, the
    filesystem can't be reached or does not answer within ``timeout`` seconds (a missing extra such
    as ``s3fs`` is not needed: pyarrow's own)."""
    import posixpath

    import pyarrow.fs

    from agetool.images import IMAGE_SUFFIXES

    scheme = uri.split("://", 1)[0]

    def listing():
        fs, root = _filesystem(uri)
        info = fs.get_file_info(root)
        if info.type == pyarrow.fs.FileType.File:
            return None
        if info.type != pyarrow.fs.FileType.Directory:
            raise errors.InputError(f"{uri}: no such file or folder")
        return fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))

    try:
        found = bounded(listing, timeout, f"{uri}: listing")
    except (OSError, ValueError) as e:
        raise errors.InputError(f"{uri}: can't list ({errors.detail(e, 200)})",
                                hint="check the URI and the filesystem's credentials") from None
    if found is None:
        return [uri]
    names = sorted(f.path for f in found if f.type == pyarrow.fs.FileType.File
                   and posixpath.splitext(f.path)[1].lower() in IMAGE_SUFFIXES
                   and not posixpath.basename(f.path).startswith("."))
    return [f"{scheme}://{name}" for name in names]


def fetch(uri: str, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """The bytes of the file ``uri`` (``InputError`` naming it when it can't be read in time)."""
    def whole() -> bytes:
        fs, inner = _filesystem(uri)
        with fs.open_input_stream(inner) as stream:
            return stream.read()

    try:
        return bounded(whole, timeout, f"{uri}: reading")
    except (OSError, ValueError) as e:
        raise errors.InputError(f"{uri}: can't read ({errors.detail(e, 200)})") from None


def store(target: str, data: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
    """``data`` as the file ``target``: a local path (or ``file://`` URI) written atomically, or an
    object of the URI's filesystem (an object store publishes it whole when the stream closes)."""
    from agetool.files import write_bytes

    local = local_path(target) if is_uri(target) else target
    if local is not None:
        write_bytes(local, data)
        return

    try:
        bounded(lambda: _put(target, data), timeout, f"{target}: writing", errors.OutputError)
    except (OSError, ValueError) as e:
        raise errors.OutputError(f"{target}: can't write ({errors.detail(e, 200)})") from None


def _put(target: str, data: bytes):
    """Write ``data`` as the object ``target`` (its parent made where the filesystem has folders);
    returns the filesystem and the object's path in it."""
    fs, inner = _filesystem(target)
    parent = inner.rsplit("/", 1)[0]
    if parent and parent != inner:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(data)
    return fs, inner


def check_writable(folder: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Before any work: the folder URI ``folder`` can be made and written (a small probe object is
    written and removed; a ``file://`` folder is made); ``OutputError`` naming it otherwise."""
    import secrets

    if not is_uri(folder):
        return
    local = local_path(folder)
    if local is not None:  # made here, and written by the workers as it is (a shared filesystem)
        from agetool.files import ensure_parent

        ensure_parent(Path(local) / "probe")
        return
    probe = join(folder, f".agetool-probe-{secrets.token_hex(4)}")

    def try_it() -> None:
        fs, inner = _put(probe, b"")
        fs.delete_file(inner)

    try:
        bounded(try_it, timeout, f"{folder}: writing", errors.OutputError)
    except (OSError, ValueError) as e:
        raise errors.OutputError(f"{folder}: can't write there ({errors.detail(e, 200)})",
                                 hint="check the URI and the filesystem's credentials") from None


def exists(target: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Whether the file ``target`` (a local path or a URI) is there."""
    local = local_path(target) if is_uri(target) else target
    if local is not None:
        return Path(local).exists()
    import pyarrow.fs

    def look() -> bool:
        fs, inner = _filesystem(target)
        return fs.get_file_info(inner).type == pyarrow.fs.FileType.File

    try:
        return bounded(look, timeout, f"{target}: looking up")
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
