"""Building FFHQ-Aging from its published sources: FFHQ's metadata JSON, the FFHQ-Aging labels CSV and
the in-the-wild photos.

For each image the labels keep (``agetool.train.prepare.selection``; numbers in ``TAKEDOWN.txt`` are
skipped), the photo is read from the source and checked against the JSON's size and MD5
(``agetool.train.wilds``), aligned from the JSON's 68 landmarks with the dataset builder's arithmetic
(``align_face(variant="ffhq-aging")``: the 2.2 eye-to-mouth square, shrink, crop, reflect padding
with blur, a 4096 px quad warp, a Lanczos resize to the resolution), parsed with agetool's face parser,
and written into ``dataset prepare``'s layout: ``<out>/<males|females>/<train|test><group>/<NNNNN>.png``
with the labels in ``parsings/``. Photos are fetched and aligned by a pool of threads, a bounded number
ahead of the parser; the JSON is streamed. An image whose picture and parsing both exist is finished
(each is written atomically, the parsing last); a rerun skips those and redoes the rest.
"""

from __future__ import annotations

import io
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agetool.errors import AgetoolError, DatasetError, UsageError, arg
from agetool.train.prepare import GENDER_FOLDERS, PrepareReport, Progress, read_labels, selection

RESOLUTIONS = (256, 512, 1024)
MAX_JSON_BYTES = 4 << 30
SCRATCH = ".downloads"


@dataclass
class BuildReport(PrepareReport):
    """``PrepareReport`` plus the failures (image number, why), what earlier runs had finished, and
    seconds spent per stage over the images built in this run."""

    failed: list[tuple[int, str]] = field(default_factory=list)
    finished_before: int = 0
    built: int = 0
    seconds: Counter = field(default_factory=Counter)  # read, align, parse, write

    def rate(self, stage: str) -> float | None:
        """Images per second of one stage (its own time, summed over the images built)."""
        t = self.seconds.get(stage, 0.0)
        return self.built / t if self.built and t > 0 else None


@dataclass(frozen=True)
class Planned:
    number: int
    folder: Path
    gender: str
    phase: str
    group: str

    @property
    def image(self) -> Path:
        return self.folder / f"{self.number:05d}.png"

    @property
    def parsing(self) -> Path:
        return self.folder / "parsings" / f"{self.number:05d}.png"


def check_resolution(resolution: int) -> int:
    if resolution not in RESOLUTIONS:
        raise UsageError(f"{arg('resolution', resolution)}: expected one of {', '.join(map(str, RESOLUTIONS))}")
    return resolution


def plan(labels: str | os.PathLike, out: Path, *, ids=None, train_split: int = 69000,
         report: BuildReport) -> dict[int, Planned]:
    """The images to have in ``out``: label rows (within ``ids``) that pass the selection rules and are
    not taken down; the rest is counted in ``report.dropped``."""
    from agetool.train.curation import taken_down
    from agetool.train.prepare import _without_contradictions

    problems: list[str] = []
    numbered = read_labels(labels, problems)
    if ids is not None:
        numbered = [(line, row) for line, row in numbered if row.image_number in ids]
    report.rows = len(numbered) + len(problems)
    report.problems = problems
    for problem in problems:
        report.drop("bad_row", problem)
    gone = taken_down(out)
    planned = {}
    for row in _without_contradictions(numbered, report):
        name = f"{row.image_number:05d}"
        reason = "taken_down" if row.image_number in gone else selection(row)
        if reason is not None:
            report.drop(reason, name)
            continue
        phase = "train" if row.image_number < train_split else "test"
        gender = GENDER_FOLDERS[row.gender]
        planned[row.image_number] = Planned(row.image_number, out / gender / f"{phase}{row.age_group}", gender,
                                            phase, row.age_group)
    return planned


def decode(data: bytes) -> np.ndarray:
    """The photo's pixels as the builder reads them (no EXIF rotation: the landmarks are in file pixels)."""
    from PIL import Image

    from agetool.train.wilds import PhotoFailed

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - any decoder failure fails this photo only
        raise PhotoFailed(f"unreadable image ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})") from None


def align_wild(photo: np.ndarray, landmarks, resolution: int) -> np.ndarray:
    """The FFHQ-Aging crop of ``photo`` at ``resolution`` from the JSON's landmarks."""
    from agetool.face.align import align_face
    from agetool.train.wilds import PhotoFailed

    try:
        return align_face(photo, np.asarray(landmarks, dtype=np.float64), size=resolution, variant="ffhq-aging").image
    except AgetoolError as e:
        raise PhotoFailed(f"landmarks unusable: {e.message}") from None


class _Fetcher:
    """Read, check, keep (``--keep-wilds``), decode and align one photo (runs in a worker thread)."""

    def __init__(self, source, out: Path, keep_wilds: bool, resolution: int):
        from agetool.train.wilds import FolderSource

        self.source = source
        self.keep = keep_wilds and not isinstance(source, FolderSource)
        self.kept = FolderSource(out) if self.keep else None
        self.out = out
        self.resolution = resolution

    def __call__(self, photo) -> tuple[np.ndarray, float, float]:
        from agetool.files import write_bytes
        from agetool.train.wilds import PhotoFailed

        t0 = time.perf_counter()
        data = None
        if self.kept is not None and self.kept.path_of(photo).is_file():
            try:
                data = self.kept.read(photo)
            except PhotoFailed:
                data = None  # a damaged copy: fetch it again
        if data is None:
            data = self.source.read(photo)
            if self.keep:
                write_bytes(self.out / Path(*photo.file_path.split("/")), data)
        t1 = time.perf_counter()
        crop = align_wild(decode(data), photo.landmarks, self.resolution)
        return crop, t1 - t0, time.perf_counter() - t1


def build_ffhq_aging(metadata_json: str | os.PathLike, labels: str | os.PathLike, wilds: str | os.PathLike,
                     out: str | os.PathLike, *, resolution: int = 256, ids=None, keep_wilds: bool = False,
                     workers: int = 2, parser=None, parser_weights: str | os.PathLike | None = None,
                     device="cpu", offline: bool = False, train_split: int = 69000,
                     progress: Progress | None = None, report: Callable[[str], None] | None = None) -> BuildReport:
    """Build FFHQ-Aging into ``out`` (see the module docstring). ``ids``: image numbers to consider (an
    ``IdSet`` or any container; None = all). ``parser``: a loaded ``FaceParser`` (or anything with
    ``parse(crop)``); else one is loaded from ``parser_weights`` or the registry on ``device``.
    ``progress(done, total)`` counts the images this run builds. Failures are in ``result.failed``."""
    from concurrent.futures import ThreadPoolExecutor

    from agetool.train.curation import WILDS_FOLDER, write_attributions, write_build
    from agetool.train.ffhq_meta import EntryError, iter_entries, wild_photo
    from agetool.train.wilds import PhotoFailed, open_source
    from agetool.userfiles import check_regular

    check_resolution(resolution)
    if workers < 1:
        raise UsageError(f"{arg('workers', workers)}: must be at least 1")
    out = Path(out)
    check_regular(metadata_json, "metadata_json", limit=MAX_JSON_BYTES, error=DatasetError)
    result = BuildReport()
    planned = plan(labels, out, ids=ids, train_split=train_split, report=result)
    todo: dict[int, Planned] = {}
    for number, item in planned.items():
        if item.image.is_file() and item.parsing.is_file():
            result.kept[(item.gender, item.phase, item.group)] += 1
            result.finished_before += 1
        else:
            todo[number] = item
    source = open_source(wilds, out / SCRATCH)
    if todo:  # the file reads as FFHQ's JSON (a DatasetError if not) before the parser loads
        head = iter_entries(metadata_json)
        next(head, None)
        head.close()
    if todo and parser is None:
        from agetool.face.parse import FaceParser
        from agetool.loading import Loading

        parser = FaceParser.load(parser_weights, device=device, loading=Loading.of(offline, report=report))
    fetch = _Fetcher(source, out, keep_wilds, resolution)
    done, total = 0, len(todo)
    if progress is not None:
        progress(0, total)
    seen: set[int] = set()

    def finish(number: int, future) -> None:
        nonlocal done
        item = todo[number]
        try:
            crop, t_read, t_align = future.result()
        except (PhotoFailed, EntryError) as e:
            result.failed.append((number, str(e)))
        else:
            from agetool.images import write_image, write_label_map

            t0 = time.perf_counter()
            labels_map = parser.parse(crop)
            t1 = time.perf_counter()
            write_image(item.image, crop)
            write_label_map(item.parsing, labels_map)  # last: its presence marks the image finished
            result.seconds.update({"read": t_read, "align": t_align, "parse": t1 - t0,
                                   "write": time.perf_counter() - t1})
            result.built += 1
            result.kept[(item.gender, item.phase, item.group)] += 1
        done += 1
        if progress is not None:
            progress(done, total)

    def job(number: int, entry: dict):
        photo = wild_photo(number, entry)  # EntryError: the entry lacks what is needed
        return fetch(photo)

    if todo:
        pending: deque = deque()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ffhq-fetch")
        try:
            for number, entry in iter_entries(metadata_json, todo):
                if number in seen:
                    continue  # an index listed twice: the first entry counts
                seen.add(number)
                pending.append((number, pool.submit(job, number, entry)))
                while len(pending) >= 2 * workers:
                    finish(*pending.popleft())
            while pending:
                finish(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
        for number in sorted(set(todo) - seen):
            result.failed.append((number, "not in the metadata JSON"))
            done += 1
            if progress is not None:
                progress(done, total)
    scratch = out / SCRATCH
    if scratch.is_dir() and not any(scratch.iterdir()):
        scratch.rmdir()
    result.failed.sort()
    if result.n_kept:
        write_attributions(out, metadata_json)
        write_build(out, {
            "source": "ffhq-aging", "metadata_json": str(Path(metadata_json).resolve()),
            "labels": str(Path(labels).resolve()), "wilds": os.fspath(wilds), "resolution": resolution,
            "train_split": train_split, "rows": result.rows, "kept": result.n_kept,
            "dropped": dict(result.dropped), "failed": len(result.failed),
            "kept_wilds": keep_wilds and (out / WILDS_FOLDER).is_dir(),
            "ids": None if ids is None else [list(r) for r in getattr(ids, "ranges", [])] or None})
    if result.n_kept == 0 and not result.failed:
        result.notes.append("nothing was kept: check --labels and --ids")
    return result
