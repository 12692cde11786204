"""Building training folders in the reference layout.

``<out>/<males|females>/<train|test><group>/<name>.png`` with the face-parsing labels in
``parsings/<name>.png`` beside the images. Groups are the ten FFHQ-Aging age groups; training uses
the six of ``agetool.ages.AGE_CLASSES``.

- ``prepare_ffhq_aging``: the FFHQ-Aging images, their parsings and ``ffhq_aging_labels.csv``, with
  the dataset's selection rules (see ``selection``).
- ``build_from_photos``: a user's photos listed in a CSV (path, age or age_group, gender), aligned
  and parsed with agetool's face pipeline.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agetool.ages import AGE_CLASSES
from agetool.errors import AgetoolError, DatasetError, UsageError, arg
from agetool.files import link_or_copy, replacing

AGE_GROUPS: tuple[str, ...] = ("0-2", "3-6", "7-9", "10-14", "15-19", "20-29", "30-39", "40-49", "50-69", "70-120")
GENDER_FOLDERS = {"male": "males", "female": "females"}
LABEL_COLUMNS = ("image_number", "age_group", "age_group_confidence", "gender", "gender_confidence",
                 "head_pitch", "head_roll", "head_yaw", "left_eye_occluded", "right_eye_occluded", "glasses")
REASONS = {
    "age_confidence": "age-group confidence <= 0.6",
    "gender_confidence": "gender confidence <= 0.66",
    "head_pose": "head |pitch| >= 30 or |yaw| >= 40 degrees",
    "eyes_occluded": "eyes occluded",
    "dark_glasses": "dark glasses",
    "unknown_age_group": "age group not one of " + ", ".join(AGE_GROUPS),
    "unknown_gender": "gender neither male nor female",
    "missing_image": "image file not found",
    "missing_parsing": "parsing file not found",
    "unreadable": "unreadable image",
    "no_face": "no face found",
    "bad_row": "malformed row (listed above)",
    "contradictory": "image listed twice with different labels",
    "taken_down": "taken down (listed in TAKEDOWN.txt)",
}

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class LabelRow:
    """One line of ffhq_aging_labels.csv."""

    image_number: int
    age_group: str
    age_confidence: float
    gender: str
    gender_confidence: float
    head_pitch: float
    head_roll: float
    head_yaw: float
    left_eye_occluded: float
    right_eye_occluded: float
    glasses: str


@dataclass
class PrepareReport:
    """What was written and why the rest was left out."""

    rows: int = 0
    kept: Counter = field(default_factory=Counter)      # (gender folder, phase, group) -> images
    dropped: Counter = field(default_factory=Counter)   # reason key -> images
    notes: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # reason key -> first affected item
    problems: list[str] = field(default_factory=list)  # one line per malformed or contradictory row

    @property
    def n_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def n_dropped(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, item: str) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, item)


def _float(value: str, column: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column} = {value!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{column} = {value!r} is not a finite number")
    return x


def _open_csv(path: Path, required: Iterable[str]) -> tuple[csv.DictReader, object]:
    """A reader of ``path`` whose text is UTF-8 (a BOM allowed); bytes that aren't come through as
    surrogates, so the rows holding them can be reported (``_not_utf8``) instead of failing the file."""
    from agetool.userfiles import MAX_CSV_BYTES, check_regular

    check_regular(path, limit=MAX_CSV_BYTES)  # a pipe would block, a device never end
    try:
        f = open(path, newline="", encoding="utf-8-sig", errors="surrogateescape")
    except OSError as e:
        raise DatasetError(f"{path}: can't open ({e.strerror or e})") from None
    reader = csv.DictReader(f)
    try:
        have = [c.strip() for c in (reader.fieldnames or [])]
    except csv.Error as e:
        f.close()
        raise DatasetError(f"{path}: not a CSV file ({e})") from None
    reader.fieldnames = have
    missing = [c for c in required if c not in have]
    if missing:
        f.close()
        raise DatasetError(f"{path}: missing column(s) {', '.join(_printable(c) for c in missing)}",
                           hint=f"found: {', '.join(_printable(c) for c in have) or 'no header'}")
    return reader, f


def _printable(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _not_utf8(row: dict) -> bool:
    return any(isinstance(v, str) and any("\udc80" <= ch <= "\udcff" for ch in v) for v in row.values())


def _rows(reader: csv.DictReader, path: Path):
    """(line, row) for each CSV row; a malformed CSV file is one DatasetError naming the line."""
    try:
        for r in reader:
            yield reader.line_num, r
    except csv.Error as e:
        raise DatasetError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None


def _label_row(r: dict) -> LabelRow:
    try:
        number = int(float(r["image_number"]))
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"image_number = {r['image_number']!r} is not a number") from None
    if number < 0:
        raise ValueError(f"image_number = {number} is negative")
    return LabelRow(
        image_number=number, age_group=(r["age_group"] or "").strip(),
        age_confidence=_float(r["age_group_confidence"], "age_group_confidence"),
        gender=(r["gender"] or "").strip().lower(),
        gender_confidence=_float(r["gender_confidence"], "gender_confidence"),
        head_pitch=_float(r["head_pitch"], "head_pitch"),
        head_roll=_float(r["head_roll"], "head_roll"),
        head_yaw=_float(r["head_yaw"], "head_yaw"),
        left_eye_occluded=_float(r["left_eye_occluded"], "left_eye_occluded"),
        right_eye_occluded=_float(r["right_eye_occluded"], "right_eye_occluded"),
        glasses=(r["glasses"] or "").strip())


def read_labels(path: str | os.PathLike, problems: list[str] | None = None) -> list[LabelRow]:
    """Parse ffhq_aging_labels.csv (columns ``LABEL_COLUMNS``).

    A row that isn't UTF-8 text, or holds a value that is not a finite number where one is expected,
    raises a ``DatasetError`` naming its line. With a ``problems`` list, such a row is skipped and
    "line N: fault" appended there instead, and the result is (line, row) pairs.
    """
    path = Path(path)
    reader, f = _open_csv(path, LABEL_COLUMNS)
    rows = []
    with f:
        for line, r in _rows(reader, path):
            try:
                if _not_utf8(r):
                    raise ValueError("not UTF-8 text (save the file as UTF-8)")
                if None in r or any(r.get(c) is None for c in LABEL_COLUMNS):
                    raise ValueError("wrong number of fields")
                rows.append((line, _label_row(r)))
            except ValueError as e:
                if problems is None:
                    raise DatasetError(f"{path} line {line}: {e}") from None
                problems.append(f"line {line}: {e}")
    return [row for _, row in rows] if problems is None else rows
def _without_contradictions(numbered: list[tuple[int, LabelRow]], report: PrepareReport) -> list[LabelRow]:
    """The rows, each image once: repeats of the same labels are merged, and an image listed with
    different labels is left out (each of its rows reported)."""
    by_number: dict[int, list[tuple[int, LabelRow]]] = {}
    for line, row in numbered:
        by_number.setdefault(row.image_number, []).append((line, row))
    rows = []
    for number, entries in by_number.items():
        if len({row for _, row in entries}) == 1:
            rows.append(entries[0][1])
            report.rows -= len(entries) - 1
            continue
        lines = ", ".join(str(line) for line, _ in entries)
        for line, _ in entries:
            problem = f"line {line}: image {number} is listed with different labels on lines {lines}"
            report.problems.append(problem)
            report.drop("contradictory", problem)
    return rows


def _no_attributes(row: LabelRow) -> bool:
    """The face-attribute service found nothing: every attribute is -1."""
    values = (row.head_pitch, row.head_roll, row.head_yaw, row.left_eye_occluded, row.right_eye_occluded)
    return all(v == -1 for v in values) and row.glasses in ("-1", "-1.0")


def selection(row: LabelRow) -> str | None:
    """None when FFHQ-Aging keeps the image, else the reason key (see ``REASONS``) it is dropped.

    Kept: age-group confidence > 0.6 and gender confidence > 0.66, and either no attributes were found
    or |pitch| < 30, |yaw| < 40, eye occlusion below 90 and 50 (either eye order) and no dark glasses.
    """
    if row.age_group not in AGE_GROUPS:
        return "unknown_age_group"
    if row.gender not in GENDER_FOLDERS:
        return "unknown_gender"
    if not row.age_confidence > 0.6:
        return "age_confidence"
    if not row.gender_confidence > 0.66:
        return "gender_confidence"
    if _no_attributes(row):
        return None
    if not (abs(row.head_pitch) < 30.0 and abs(row.head_yaw) < 40.0):
        return "head_pose"
    left, right = row.left_eye_occluded, row.right_eye_occluded
    if not ((left < 90.0 and right < 50.0) or (left < 50.0 and right < 90.0)):
        return "eyes_occluded"
    if row.glasses.lower() == "dark":
        return "dark_glasses"
    return None


def _index_pngs(root: Path, parsings: bool | None) -> dict[int, Path]:
    """Numbered PNGs under ``root``: only inside ``parsings`` folders (True), only outside (False), any (None)."""
    found: dict[int, Path] = {}
    for p in root.rglob("*.png"):
        if not p.stem.isdigit() or p.name.startswith("."):
            continue
        inside = "parsings" in p.relative_to(root).parts[:-1]
        if parsings is not None and inside != parsings:
            continue
        found.setdefault(int(p.stem), p)
    return found


def _place(src: Path, dst: Path, link: bool) -> None:
    if dst.exists() and dst.stat().st_size == src.stat().st_size:
        return
    if link:
        link_or_copy(src, dst)
        return
    with replacing(dst, errors=False) as tmp:
        shutil.copyfile(src, tmp)


def _check_outputs(rows: list[LabelRow], out: Path, train_split: int, inputs: list) -> None:
    """Refuse, before any copy, a layout in ``out`` that would replace one of the ``inputs``."""
    from agetool.images import distinct_outputs

    planned = []
    for row in rows:
        if selection(row) is None:
            phase = "train" if row.image_number < train_split else "test"
            folder = out / GENDER_FOLDERS[row.gender] / f"{phase}{row.age_group}"
            name = f"{row.image_number:05d}.png"
            planned += [("out", folder / name), ("out", folder / "parsings" / name)]
    distinct_outputs(planned, inputs)


def prepare_ffhq_aging(images: str | os.PathLike, labels: str | os.PathLike, out: str | os.PathLike,
                       parsings: str | os.PathLike | None = None, train_split: int = 69000, link: bool = False,
                       progress: Progress | None = None) -> PrepareReport:
    """Select and copy FFHQ-Aging images (``<number>.png`` anywhere under ``images``) and their parsings
    (``<number>.png`` under ``parsings``, or in ``parsings/`` folders beside the images when
    ``parsings`` is None or the same folder). Images numbered below ``train_split`` go to ``train``."""
    images, out = Path(images), Path(out)
    for p, what in ((images, "--images"), (Path(parsings) if parsings else images, "--parsings")):
        if not p.is_dir():
            raise DatasetError(f"{what} {p}: no such folder")
    problems: list[str] = []
    numbered = read_labels(labels, problems)
    report = PrepareReport(rows=len(numbered) + len(problems), problems=problems)
    for problem in problems:
        report.drop("bad_row", problem)
    rows = _without_contradictions(numbered, report)
    from agetool.train.curation import taken_down

    gone = taken_down(out)  # removed on request: never copied in again
    for row in [r for r in rows if r.image_number in gone]:
        report.drop("taken_down", f"{row.image_number:05d}.png")
    rows = [r for r in rows if r.image_number not in gone]
    same = parsings is None or Path(parsings).resolve() == images.resolve()
    image_index = _index_pngs(images, parsings=False)
    parsing_index = _index_pngs(images, parsings=True) if same else _index_pngs(Path(parsings), parsings=None)
    _check_outputs(rows, out, train_split, [*image_index.values(), *parsing_index.values(), labels])
    for done, row in enumerate(rows, start=1):
        name = f"{row.image_number:05d}.png"
        reason = selection(row)
        if reason is None:
            src = image_index.get(row.image_number)
            lab = parsing_index.get(row.image_number)
            if src is None:
                reason = "missing_image"
            elif lab is None:
                reason = "missing_parsing"
            else:
                phase = "train" if row.image_number < train_split else "test"
                folder = out / GENDER_FOLDERS[row.gender] / f"{phase}{row.age_group}"
                _place(src, folder / name, link)
                _place(lab, folder / "parsings" / name, link)
                report.kept[(GENDER_FOLDERS[row.gender], phase, row.age_group)] += 1
        if reason is not None:
            report.drop(reason, name)
        if progress is not None:
            progress(done, len(rows))
    if report.n_kept == 0:
        report.notes.append("nothing was kept: check --images / --parsings (files are found by number, e.g. 00042.png)")
    return report


# ----------------------------------------------------------------------------------------------
# from a user's photos


@dataclass(frozen=True)
class PhotoRow:
    path: Path
    group: str     # one of AGE_GROUPS
    gender: str    # male | female
    line: int


def age_group(age: float) -> str:
    """The FFHQ-Aging group of an age in years (0-2, 3-6, 7-9, 10-14, 15-19, 20-29, 30-39, 40-49, 50-69, 70-120)."""
    if not math.isfinite(age) or age < 0 or age > 130:
        raise ValueError(f"age {age} is out of range")
    years = int(math.floor(age))
    for group in AGE_GROUPS:
        lo, hi = (int(x) for x in group.split("-"))
        if years <= hi:
            return group
    return AGE_GROUPS[-1]


def _gender(value: str) -> str | None:
    v = value.strip().lower()
    return {"m": "male", "male": "male", "man": "male", "males": "male",
            "f": "female", "female": "female", "woman": "female", "females": "female"}.get(v)


def read_photo_csv(path: str | os.PathLike) -> list[PhotoRow]:
    """Columns ``path``, ``age`` (years) or ``age_group`` (an FFHQ-Aging group), ``gender`` (male / female).

    Relative paths are relative to the CSV's folder. A bad line is an error naming the line.
    """
    path = Path(path)
    reader, f = _open_csv(path, ("path", "gender"))
    if "age" not in reader.fieldnames and "age_group" not in reader.fieldnames:
        f.close()
        raise DatasetError(f"{path}: needs an age or an age_group column",
                           hint="columns: path, age (years) or age_group (e.g. 30-39), gender")
    rows = []
    with f:
        for line, r in _rows(reader, path):
            if not any((v or "").strip() for v in r.values() if isinstance(v, str)):
                continue
            where = f"{path} line {line}"
            if _not_utf8(r):
                raise DatasetError(f"{where}: not UTF-8 text", hint="save the CSV as UTF-8")
            photo = Path((r.get("path") or "").strip()).expanduser()
            if not str(photo) or str(photo) == ".":
                raise DatasetError(f"{where}: empty path")
            if not photo.is_absolute():
                photo = path.parent / photo
            gender = _gender(r.get("gender") or "")
            if gender is None:
                raise DatasetError(f"{where}: gender {r.get('gender')!r} is not male or female")
            group = (r.get("age_group") or "").strip()
            if group:
                if group not in AGE_GROUPS:
                    raise DatasetError(f"{where}: age_group {group!r} is not one of {', '.join(AGE_GROUPS)}")
            else:
                raw = (r.get("age") or "").strip()
                try:
                    group = age_group(float(raw))
                except ValueError:
                    raise DatasetError(f"{where}: age {raw!r} is not a number of years between 0 and 130") from None
            rows.append(PhotoRow(photo, group, gender, line))
    if not rows:
        raise DatasetError(f"{path}: no photos listed")
    return rows


def build_from_photos(rows: list[PhotoRow], out: str | os.PathLike, *, landmarks: str = "auto",
                      parser_weights: str | os.PathLike | None = None, device="cpu", offline: bool = False,
                      phase: str = "train", progress: Progress | None = None,
                      report: Callable[[str], None] | None = None) -> PrepareReport:
    """Prepare the largest face of every listed photo as ``agetool age`` does (``agetool.faces``:
    detect, align to 256 px, parse) and write the crop and its labels into the reference layout."""
    from agetool.errors import NoFaceError
    from agetool.images import distinct_outputs, read_image, write_image, write_label_map
    from agetool.faces import prepare_faces
    from agetool.loading import Loading
    from agetool.models import Models

    if phase not in ("train", "test"):
        raise UsageError(f"{arg('phase', phase)}: expected train or test")
    out = Path(out)
    planned = []
    for row in rows:
        folder = out / GENDER_FOLDERS[row.gender] / f"{phase}{row.group}"
        name = f"{row.line:05d}_{row.path.stem}.png"
        planned += [("out", folder / name), ("out", folder / "parsings" / name)]
    distinct_outputs(planned, [row.path for row in rows])  # before any model loads
    models = Models(parser_weights=Path(parser_weights) if parser_weights else None, landmarks=landmarks,
                    loading=Loading.of(offline, report=report), device=device)
    result = PrepareReport(rows=len(rows))
    for done, row in enumerate(rows, start=1):
        item = f"line {row.line}: {row.path}"
        try:
            image = read_image(row.path)
        except AgetoolError:
            result.drop("unreadable" if row.path.exists() else "missing_image", item)
        else:
            try:
                (face,) = prepare_faces(models, image, mask=False, parse=True, faces="largest", name=str(row.path))
            except NoFaceError:
                result.drop("no_face", item)
            else:
                folder = out / GENDER_FOLDERS[row.gender] / f"{phase}{row.group}"
                name = f"{row.line:05d}_{row.path.stem}.png"
                write_image(folder / name, face.aligned)
                write_label_map(folder / "parsings" / name, face.parsing)
                result.kept[(GENDER_FOLDERS[row.gender], phase, row.group)] += 1
        if progress is not None:
            progress(done, len(rows))
    note_unused_groups(result)
    return result


def note_unused_groups(result: PrepareReport) -> None:
    """A note for photos written to age groups that training does not read (40-49, 10-14, ...)."""
    unused = Counter()
    for (gender, phase, group), n in result.kept.items():
        if group not in AGE_CLASSES:
            unused[group] += n
    if unused:
        groups = ", ".join(f"{g}: {n}" for g, n in sorted(unused.items(), key=lambda t: AGE_GROUPS.index(t[0])))
        result.notes.append(f"{sum(unused.values())} photo(s) fall in age groups that training does not use "
                            f"({groups}); they were written, but `agetool train` reads only the six classes "
                            f"{', '.join(AGE_CLASSES)}")
