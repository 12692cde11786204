"""Writing files so that no partial file ever appears: one owner for temporary names, atomic
replacement, sweeping of dead processes' leftovers, and link-or-copy.

Every temporary file is a sibling of its target named ``.<name>.<pid>-<random>.part<suffix>``:
hidden, in the same folder (so the final rename is atomic), keeping the suffix (writers and
readers go by it), and carrying the writer's process id, so a later run can tell the leftovers of
a killed run (whose process is gone) from the files of a run still in progress.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from agetool.errors import OutputError

#: temporary siblings made by ``temp_sibling``: ``.<name>.<pid>-<random>.part<suffix>``
TEMP_NAME = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.part(\.[^.]*)?$")
_swept: set[str] = set()


def temp_sibling(target: str | os.PathLike) -> Path:
    """A new, empty temporary sibling of ``target`` to write and then rename over it. It has the
    permissions of any new file (0666 less the umask, as ``open`` gives), not ``mkstemp``'s 0600.
    Leftovers of killed runs in that folder are removed first (once per folder and process)."""
    target = Path(target)
    sweep(target.parent)
    for _ in range(100):
        tmp = target.with_name(f".{target.stem}.{os.getpid()}-{secrets.token_hex(4)}.part{target.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise OutputError(f"{target.parent}: can't create a temporary file")  # pragma: no cover


def new_file_mode() -> int:
    """The permissions a new file gets here (0666 less the umask), read without changing the umask
    where the system says it (Linux); writers that make files their own way (safetensors writes
    0600) are given these afterwards, so every output follows the umask as images do."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # pragma: no cover - elsewhere: read it back at once
    os.umask(mask)  # pragma: no cover
    return 0o666 & ~mask  # pragma: no cover


def is_temp(name: str) -> bool:
    """Whether a file name is one of ``temp_sibling``'s."""
    return TEMP_NAME.match(name) is not None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` may still be running (its temporary files are then left alone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process, or no way to tell: leave its file alone
    return True


def stale(name: str) -> bool:
    """Whether ``name`` is a temporary file whose writer no longer runs."""
    m = TEMP_NAME.match(name)
    return bool(m) and not pid_alive(int(m.group(1)))


def sweep(folder: str | os.PathLike, *, again: bool = False) -> None:
    """Remove the temporary files that killed runs left in ``folder`` (once per folder and process,
    unless ``again``)."""
    key = os.path.abspath(folder)
    if key in _swept and not again:
        return
    _swept.add(key)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if stale(entry.name):
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


def ensure_parent(path: str | os.PathLike) -> None:
    """Create ``path``'s folder; ``OutputError`` when it can't be made or written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"can't create folder {path.parent}: {e.strerror or e}",
                          hint="choose another output path") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{path.parent}: folder is not writable", hint="choose another output path")


@contextlib.contextmanager
def replacing(target: str | os.PathLike, *, errors: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of ``target`` to write; it replaces ``target`` when the block
    succeeds and is removed when it fails (or is interrupted). With ``errors``, OS errors become one
    ``OutputError`` naming ``target``; without, they propagate as they are."""
    target = Path(target)
    if errors:
        ensure_parent(target)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        if not errors:
            raise
        raise OutputError(f"can't write {target}: {e.strerror or e}",
                          hint="check free space and permissions") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_bytes(target: str | os.PathLike, data: bytes, *, errors: bool = True) -> Path:
    """``data`` written to ``target`` atomically."""
    with replacing(target, errors=errors) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | os.PathLike, text: str, *, errors: bool = True) -> Path:
    """``text`` written to ``target`` atomically, as UTF-8."""
    return write_bytes(target, text.encode("utf-8"), errors=errors)


def link_or_copy(src: str | os.PathLike, target: str | os.PathLike) -> Path:
    """``target`` as a hard link to ``src`` where the file system allows it, else a copy; atomically
    either way (OS errors propagate)."""
    src, target = Path(src), Path(target)
    with replacing(target, errors=False) as tmp:
        tmp.unlink()
        try:
            os.link(src.resolve(), tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return target


class Finishing:
    """The ``with`` shape of a writer that keeps its file with ``close()`` and removes its partial file
    with ``abort()``: the block's success keeps it, any exception (or a stop signal) removes it."""

    def close(self):  # pragma: no cover - each writer defines it
        raise NotImplementedError

    def abort(self) -> None:  # pragma: no cover - each writer defines it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
