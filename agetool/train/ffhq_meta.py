"""FFHQ's metadata JSON (``ffhq-dataset-v2.json``), read as a stream, and lists of image numbers.

The file is one object keyed by image index (``"0"`` ... ``"69999"``); each value holds ``metadata``
(author, Flickr URL, licence, ...) and ``in_the_wild`` (``file_path``, ``file_url``, ``file_size``,
``file_md5``, ``pixel_size``, ``face_landmarks``: 68 [x, y] points of dlib's model, ...). It is 255 MB:
``iter_entries`` decodes it one entry at a time from fixed-size chunks, so memory stays at one chunk
plus one entry whatever the file's size.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agetool.errors import DatasetError, UsageError, arg

CHUNK_CHARS = 1 << 20
MAX_ENTRY_CHARS = 16 << 20  # an entry is about 4 kB; anything near this is not FFHQ's layout
MAX_INDEX = 10_000_000


@dataclass(frozen=True)
class WildPhoto:
    """What the builder needs of one entry: where its in-the-wild photo is, how to check it, the face."""

    index: int
    file_path: str          # relative, e.g. in-the-wild-images/00000/00000.png
    file_url: str
    file_size: int
    file_md5: str
    landmarks: tuple        # 68 (x, y) pairs as the JSON gives them
    author: str = ""
    photo_url: str = ""
    license: str = ""
    license_url: str = ""

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


class EntryError(ValueError):
    """One entry lacks what the builder needs; the message says what."""


def iter_entries(path: str | os.PathLike, wanted: Container[int] | None = None) -> Iterator[tuple[int, dict]]:
    """(index, entry) for each entry of the JSON at ``path`` (those in ``wanted`` when given), in file order.

    A file that is not one JSON object of objects is a ``DatasetError`` naming the place."""
    path = Path(path)
    decoder = json.JSONDecoder()
    try:
        f = open(path, encoding="utf-8", errors="strict")
    except OSError as e:
        raise DatasetError(f"{path}: can't open ({e.strerror or e})") from None
    with f:
        buf, pos, eof, consumed = "", 0, False, 0

        def fill() -> bool:
            nonlocal buf, pos, eof, consumed
            try:
                more = f.read(CHUNK_CHARS)
            except UnicodeDecodeError:
                raise DatasetError(f"{path}: not UTF-8 text", hint="pass FFHQ's ffhq-dataset-v2.json") from None
            consumed += pos
            buf, pos = buf[pos:] + more, 0
            eof = not more
            return bool(more)

        def bad(what: str) -> DatasetError:
            return DatasetError(f"{path}: not FFHQ's metadata JSON ({what} at character {consumed + pos})",
                                hint="pass ffhq-dataset-v2.json as published, one object keyed by image index")

        def skip_space() -> str:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf):
                    return buf[pos]
                if not fill():
                    return ""

        def value():
            nonlocal pos
            while True:
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    if eof or len(buf) - pos > MAX_ENTRY_CHARS:
                        raise bad(e.msg) from None
                    fill()
                    continue
                if end == len(buf) and not eof and not isinstance(obj, (dict, list, str)):
                    fill()  # a number or literal may go on in the next chunk
                    continue
                pos = end
                return obj

        if skip_space() != "{":
            raise bad("expected '{'")
        pos += 1
        if skip_space() == "}":
            return
        while True:
            if skip_space() != '"':
                raise bad("expected an image index")
            key = value()
            if skip_space() != ":":
                raise bad("expected ':'")
            pos += 1
            skip_space()
            entry = value()
            try:
                index = int(key)
            except ValueError:
                raise bad(f"image index {key[:20]!r} is not a number") from None
            if not isinstance(entry, dict):
                raise bad(f"entry {index} is not an object")
            if wanted is None or index in wanted:
                yield index, entry
            sep = skip_space()
            if sep == "}":
                return
            if sep != ",":
                raise bad("expected ',' or '}'")
            pos += 1


def _text(d: dict, key: str) -> str:
    v = d.get(key)
    return v if isinstance(v, str) else ""


def wild_photo(index: int, entry: dict) -> WildPhoto:
    """The ``WildPhoto`` of one entry; an ``EntryError`` says what is missing or malformed."""
    wild = entry.get("in_the_wild")
    if not isinstance(wild, dict):
        raise EntryError("no in_the_wild entry")
    rel = wild.get("file_path")
    if not isinstance(rel, str) or not rel:
        raise EntryError("no in_the_wild file_path")
    parts = PurePosixPath(rel).parts
    if rel.startswith(("/", "\\")) or ":" in rel or ".." in parts or "\\" in rel:
        raise EntryError(f"file_path {rel[:80]!r} is not a relative path inside the source")
    size, md5 = wild.get("file_size"), wild.get("file_md5")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise EntryError("no valid in_the_wild file_size")
    if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-fA-F]{32}", md5):
        raise EntryError("no valid in_the_wild file_md5")
    lm = wild.get("face_landmarks")
    try:
        points = tuple((float(x), float(y)) for x, y in lm)
    except (TypeError, ValueError):
        points = ()
    if len(points) != 68:
        raise EntryError("no landmarks (68 [x, y] points expected in face_landmarks)")
    meta = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
    return WildPhoto(index=index, file_path=rel, file_url=_text(wild, "file_url"), file_size=size,
                     file_md5=md5.lower(), landmarks=tuple(lm), author=_text(meta, "author"),
                     photo_url=_text(meta, "photo_url"), license=_text(meta, "license"),
                     license_url=_text(meta, "license_url"))


# ----------------------------------------------------------------------------------------------
# lists of image numbers: "0-999,1500"


class IdSet:
    """A set of image numbers given as ranges; ``in`` is a binary search, memory is per range."""

    def __init__(self, ranges: list[tuple[int, int]]):
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.ranges = [(lo, hi) for lo, hi in merged]
        self._starts = [lo for lo, _ in self.ranges]

    def __contains__(self, n: object) -> bool:
        import bisect

        if not isinstance(n, int):
            return False
        i = bisect.bisect_right(self._starts, n) - 1
        return i >= 0 and self.ranges[i][0] <= n <= self.ranges[i][1]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def __iter__(self) -> Iterator[int]:
        for lo, hi in self.ranges:
            yield from range(lo, hi + 1)


def parse_ids(text: str, what: str = "ids", where: str | None = None) -> IdSet:
    """``"0-999,1500"`` (commas, spaces or new lines between items; ``#`` starts a comment) -> ``IdSet``.
    Errors name ``where`` (a file) and the line, else the argument ``what``."""
    ranges = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0]
        for item in re.split(r"[,\s]+", line.strip()):
            if not item:
                continue
            m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
            place = f"{where} line {line_no}" if where else arg(what, text)
            if not m:
                raise UsageError(f"{place}: {item[:40]!r} is not an image number or a range such as 0-999")
            lo = int(m.group(1))
            hi = int(m.group(2)) if m.group(2) is not None else lo
            if hi < lo:
                raise UsageError(f"{place}: range {item} runs backwards")
            if hi > MAX_INDEX:
                raise UsageError(f"{place}: {hi} is beyond any image number")
            ranges.append((lo, hi))
    if not ranges:
        raise UsageError(f"{where or arg(what, text)}: no image numbers given")
    return IdSet(ranges)


def read_id_file(path: str | os.PathLike, what: str = "ids") -> IdSet:
    """Image numbers listed in a text file (one or more a line, ranges allowed, ``#`` comments)."""
    from agetool.userfiles import read_text

    return parse_ids(read_text(path, what, limit=64 << 20), what, where=str(path))
