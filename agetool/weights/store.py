"""The local cache: where files live, what was verified, hashing and atomic placement.

Layout under ``AGETOOL_CACHE`` (default ``$XDG_CACHE_HOME/agetool``, else ``~/.cache/agetool``)::

    files/<name>/<filename>         URL downloads and imported files
    files/<name>/<member>           an imported unzipped member of a released zip (checked by loading)
    files/<name>/<name>.safetensors an imported agetool safetensors file (checked by loading)
    files/<name>/<filename>.part    an interrupted download, resumed with an HTTP Range request
    converted/<name>.safetensors    released checkpoints converted to agetool's format (+ .json)
    records/<name>.json             what was verified: path, size, hashes, source, file stamp

Hub downloads stay in the Hugging Face cache (``HF_HOME``); their record points there. A record
whose stamp (size, mtime, inode) still matches the file lets later runs skip re-hashing. A record's
``form`` says which of those a file is: ``released`` (the registry's artifact, checked against its
published size and checksums), ``member`` or ``safetensors`` (checked by loading it into its
network on import; later copies must match the sha256 recorded then), or ``own`` (a user's own file
registered for the name with ``trust=True``: ``files/<name>/own<suffix>``, pinned the same way).

Temporary files (``.<name>.<pid>.tmp``) of processes that no longer run are removed by the next
run; a ``.part`` file is resumed by the next download of the same artifact.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from agetool import files
from agetool.errors import WeightsError
from agetool.weights.registry import Artifact, check_name

CACHE_ENV = "AGETOOL_CACHE"
CHUNK = 1 << 20
RELEASED, MEMBER, SAFETENSORS, OWN = "released", "member", "safetensors", "own"
#: forms without a published checksum, pinned when imported; OWN is a user's own file (``--trust``)
LOCAL_FORMS = (MEMBER, SAFETENSORS, OWN)


def temp_path(dest: Path) -> Path:
    """A new temporary file beside ``dest``, keeping its suffix (readers go by it)."""
    return files.temp_sibling(dest)


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


_RECORD_TYPES = {"path": str, "sha256": str, "md5": str, "size": int, "stamp": list, "pinned": str,
                 "form": str, "source": str, "revision": str, "converted": dict, "placed": dict}


def read_record(name: str) -> dict:
    """What was verified for ``name``; a missing, unreadable or malformed record reads as none
    (the file it described is then hashed again)."""
    try:
        data = json.loads(record_path(name).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    for key, kind in _RECORD_TYPES.items():
        if data.get(key) is not None and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            return {}
    for key in ("converted", "placed"):
        sub = data.get(key)
        if sub is not None and not all(isinstance(sub.get(k), (str, type(None))) for k in ("path", "sha256", "from_sha256")):
            data.pop(key)
    return data


def write_record(name: str, record: dict, *, best_effort: bool = False) -> None:
    """Save ``record``; with ``best_effort`` a cache that can't be written (read-only) is left as is."""
    path = record_path(name)
    try:
        write_atomic(path, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    except (OSError, WeightsError):
        if not best_effort:
            raise


def cache_error(e: OSError) -> WeightsError:
    """One line for a cache that can't be written: a file in its place, read-only, full."""
    root = cache_dir()
    if root.exists() and not root.is_dir() or any(p.is_file() for p in root.parents if p != Path(p.anchor)):
        return WeightsError(f"the weights cache {root} is not a folder",
                            hint=f"set {CACHE_ENV} to a folder")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return WeightsError(f"the weights cache {root} is not writable ({e.strerror})",
                            hint=f"set {CACHE_ENV} to a writable folder")
    if e.errno == errno.ENOSPC:
        return WeightsError(f"no space left for the weights cache {root}",
                            hint=f"free some space or set {CACHE_ENV} to another disk")
    return WeightsError(f"can't write to the weights cache {root}: {e.strerror or type(e).__name__}"
                        + (f" ({e.filename})" if e.filename else ""))


@contextlib.contextmanager
def writing():
    """Turn OS errors raised while writing the cache into one-line ``WeightsError``."""
    try:
        yield
    except OSError as e:
        raise cache_error(e) from None


def clean_stale(art: Artifact) -> None:
    """Remove temporary files of ``art`` left by processes that no longer run, and partial
    downloads that the registry's current file name no longer resumes."""
    folder = file_path(art).parent
    for place in (folder, converted_path(art).parent, record_path(art.name).parent):
        files.sweep(place, again=True)
    keep = part_path(art)
    for path in folder.glob("*.part"):
        if path != keep and not files.is_temp(path.name):
            with contextlib.suppress(OSError):
                path.unlink()


def write_atomic(path: Path, data: bytes) -> None:
    files.write_bytes(path, data, errors=False)


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
    publishes no checksum (or the file is an imported member or safetensors form), the sha256
    recorded on first use."""
    if record.get("form") in LOCAL_FORMS:
        return {"size": record.get("size"), "md5": None, "sha256": record.get("sha256")}
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
    if record.get("form") in LOCAL_FORMS:
        return bool(record.get("sha256"))
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
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks
        yield
        return
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        f = open(lock, "a+b")
    except OSError as e:
        raise cache_error(e) from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError as e:  # pragma: no cover - file systems without locks
            raise WeightsError(f"can't lock {lock}: {e}") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
