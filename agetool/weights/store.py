"""The local cache: where files live, what was verified, hashing and atomic placement.

Layout under ``AGETOOL_CACHE`` (default ``$XDG_CACHE_HOME/agetool``, else ``~/.cache/agetool``)::

    files/<name>/<filename>         URL downloads and imported files
    files/<name>/<filename>.part    an interrupted download, resumed with an HTTP Range request
    converted/<name>.safetensors    released checkpoints converted to agetool's format (+ .json)
    records/<name>.json             what was verified: path, size, hashes, source, file stamp

Hub downloads stay in the Hugging Face cache (``HF_HOME``); their record points there. A record
whose stamp (size, mtime, inode) still matches the file lets later runs skip re-hashing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agetool.errors import WeightsError
from agetool.weights.registry import Artifact, check_name

CACHE_ENV = "AGETOOL_CACHE"
CHUNK = 1 << 20


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "agetool"


def hub_cache_dir() -> Path:
    """The Hugging Face Hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def file_path(art: Artifact) -> Path:
    return cache_dir() / "files" / check_name(art.name) / art.filename


def part_path(art: Artifact) -> Path:
    path = file_path(art)
    return path.with_name(path.name + ".part")


def converted_path(art: Artifact) -> Path:
    return cache_dir() / "converted" / f"{check_name(art.name)}.safetensors"


def record_path(name: str) -> Path:
    return cache_dir() / "records" / f"{check_name(name)}.json"


def stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def read_record(name: str) -> dict:
    try:
        data = json.loads(record_path(name).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_record(name: str, record: dict) -> None:
    path = record_path(name)
    write_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class Digest:
    size: int
    sha256: str
    md5: str | None = None


def hash_file(path: Path, *, md5: bool = False, advance=None, copy_to: Path | None = None) -> Digest:
    """sha256 (and md5 when asked) of a file in one pass; ``advance(n)`` is called per chunk.
    With ``copy_to`` the bytes hashed are also the bytes written there."""
    sha = hashlib.sha256()
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    size = 0
    with open(path, "rb") as f, (open(copy_to, "wb") if copy_to else contextlib.nullcontext()) as out:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            if m is not None:
                m.update(chunk)
            if out is not None:
                out.write(chunk)
            size += len(chunk)
            if advance is not None:
                advance(len(chunk))
    return Digest(size, sha.hexdigest(), m.hexdigest() if m is not None else None)


def expected(art: Artifact, record: dict) -> dict:
    """What a good copy must match: the registry's size and checksums, or, where the registry
    publishes no checksum, the sha256 recorded on first use."""
    want = {"size": art.size, "md5": art.md5, "sha256": art.sha256}
    if not art.has_checksum and record.get("pinned") == "first-use":
        want["sha256"] = record.get("sha256")
        want["size"] = want["size"] or record.get("size")
    return want


def mismatch(art: Artifact, digest: Digest, record: dict) -> str | None:
    """Why ``digest`` is not a good copy of ``art`` (None when it is)."""
    want = expected(art, record)
    if want["size"] is not None and digest.size != want["size"]:
        return f"size {digest.size} bytes, expected {want['size']}"
    for algo in ("sha256", "md5"):
        got = getattr(digest, algo)
        if want[algo] and got is not None and got != want[algo]:
            return f"{algo} {got}, expected {want[algo]}"
    return None


def record_agrees(art: Artifact, record: dict) -> bool:
    """True when what ``record`` verified is what the registry now asks for."""
    if not record.get("sha256") or (art.size is not None and record.get("size") != art.size):
        return False
    return all(getattr(art, algo) in (None, record.get(algo)) for algo in ("md5", "sha256"))


def record_matches(art: Artifact, record: dict, path: Path) -> bool:
    """True when ``record`` says ``path`` was verified as ``art`` and the file has not changed."""
    if not record or record.get("path") != str(path) or record.get("stamp") != stamp(path):
        return False
    return record_agrees(art, record)


def managed(path: Path) -> bool:
    """True for paths inside the agetool cache or the Hub cache: the only files this module
    reads back from its records or ever deletes."""
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):
        return False
    for root in (cache_dir(), hub_cache_dir()):
        if real.is_relative_to(Path(os.path.realpath(root))):
            return True
    return False


def remove(path: Path) -> None:
    """Delete a cached file; for a Hub snapshot link also the blob it points to. Paths outside
    the caches are never touched."""
    if not managed(path):
        return
    with contextlib.suppress(OSError):
        if path.is_symlink():
            target = path.resolve()
            path.unlink()
            target.unlink(missing_ok=True)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(art: Artifact):
    """An exclusive lock per artifact, so two processes never write the same partial file."""
    lock = file_path(art).with_name(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    with open(lock, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError as e:  # pragma: no cover - file systems without locks
            raise WeightsError(f"can't lock {lock}: {e}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
