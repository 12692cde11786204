"""Reading the small files users hand in (anchor ages, landmarks, sidecars, CSV lists): regular
files only (a FIFO would block, a device never end), within a size limit, and JSON that is neither
nested without end nor holding numbers no float can hold. Each failure is one error naming the
argument; the class of error is the caller's (``UsageError`` for options, ``CheckpointError`` ...).
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

from agetool.errors import AgetoolError, UsageError, arg, detail

#: the most bytes of a JSON or text file read whole (anchor ages, landmarks, a config: a few kB)
MAX_TEXT_BYTES = 16 * 2**20
#: the most bytes of a CSV list (read row by row; FFHQ-Aging's labels are about 10 MB)
MAX_CSV_BYTES = 1 * 2**30
#: digits of the longest whole number read from JSON (Python's own limit is 4300)
MAX_DIGITS = 40


def _where(path: Path, name: str | None) -> str:
    return arg(name, path) if name else str(path)


def check_regular(path: str | os.PathLike, name: str | None = None, *, limit: int | None = None,
                  error: type[AgetoolError] = UsageError) -> int:
    """The size of ``path``, a regular file of at most ``limit`` bytes (default ``MAX_TEXT_BYTES``);
    ``error`` otherwise."""
    path = Path(path)
    limit = MAX_TEXT_BYTES if limit is None else limit
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{_where(path, name)}: can't read ({e.strerror or e})", hint="check the path") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{_where(path, name)}: is a folder; a file is expected")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{_where(path, name)}: not a regular file (a pipe, a device or a socket)",
                    hint="save it to a file first")
    if st.st_size > limit:
        raise error(f"{_where(path, name)}: {st.st_size:,} bytes is over the limit of {limit:,} for this file")
    return st.st_size


def read_bytes(path: str | os.PathLike, name: str | None = None, *, limit: int | None = None,
               error: type[AgetoolError] = UsageError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked again while reading: a file
    that grows, or is swapped for a pipe between the check and the read, is refused too)."""
    path = Path(path)
    limit = MAX_TEXT_BYTES if limit is None else limit
    check_regular(path, name, limit=limit, error=error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise error(f"{_where(path, name)}: not a regular file (a pipe, a device or a socket)")
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{_where(path, name)}: can't read ({e.strerror or e})") from None
    if len(data) > limit:
        raise error(f"{_where(path, name)}: over the limit of {limit:,} bytes for this file")
    return data


def read_text(path: str | os.PathLike, name: str | None = None, *, limit: int | None = None,
              error: type[AgetoolError] = UsageError) -> str:
    """UTF-8 text (a BOM allowed) of a regular file of at most ``limit`` bytes."""
    data = read_bytes(path, name, limit=limit, error=error)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise error(f"{_where(Path(path), name)}: not UTF-8 text") from None


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise ValueError(f"a number of {len(text.lstrip('-')):,} digits is too large")
    return int(text)


def _no_constant(text: str):
    raise ValueError(f"{text} is not a number JSON allows")


def parse_json(text: str, where: str, *, error: type[AgetoolError] = UsageError):
    """``text`` as JSON: numbers finite and of at most ``MAX_DIGITS`` digits, no NaN / Infinity,
    nesting within Python's limit; ``error`` naming ``where`` otherwise."""
    try:
        return json.loads(text, parse_float=_finite_float, parse_int=_bounded_int, parse_constant=_no_constant)
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as e:
        raise error(f"{where}: not valid JSON ({detail(e, 80)})") from None


def read_json(path: str | os.PathLike, name: str | None = None, *, limit: int | None = None,
              error: type[AgetoolError] = UsageError):
    """A regular JSON file of at most ``limit`` bytes, parsed with ``parse_json``'s bounds."""
    text = read_text(path, name, limit=limit, error=error)
    return parse_json(text, _where(Path(path), name), error=error)
