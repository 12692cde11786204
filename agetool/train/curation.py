"""Looking after a built FFHQ-Aging folder: take-down records, attributions, what is in it.

- ``TAKEDOWN.txt`` in the dataset folder lists image numbers removed on request (one a line, ``#``
  comments). ``take_down`` removes the images, their parsings and any kept in-the-wild photos and
  appends the numbers; the builder, ``prepare_ffhq_aging`` and training skip every listed number.
- ``ATTRIBUTION.csv`` credits each image's author (image, author, photo URL, licence, licence URL),
  from FFHQ's metadata JSON; training copies it into the run folder.
- ``BUILD.json`` is what the builder records of a build (sources, resolution, what each rule removed).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from agetool.errors import DatasetError

TAKEDOWN_FILE = "TAKEDOWN.txt"
ATTRIBUTION_FILE = "ATTRIBUTION.csv"
BUILD_FILE = "BUILD.json"
ATTRIBUTION_COLUMNS = ("image_number", "author", "photo_url", "license", "license_url")
DATASET_LICENSE = "CC BY-NC-SA 4.0"
DATASET_LICENSE_URL = "https://creativecommons.org/licenses/by-nc-sa/4.0/"
WILDS_FOLDER = "in-the-wild-images"
GENDER_FOLDERS = ("males", "females")
_LAYOUT = re.compile(r"^(train|test)(\d+-\d+)$")


def taken_down(folder: str | os.PathLike) -> set[int]:
    """The image numbers listed in ``folder/TAKEDOWN.txt`` (empty when there is none)."""
    path = Path(folder) / TAKEDOWN_FILE
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return set()
    except OSError as e:
        raise DatasetError(f"{path}: can't read the take-down record ({e.strerror or e})") from None
    numbers = set()
    for line in text.splitlines():
        for item in line.split("#", 1)[0].replace(",", " ").split():
            if item.isdigit():
                numbers.add(int(item))
    return numbers


def taken_down_near(data: str | os.PathLike) -> set[int]:
    """The take-down records of a training folder: its own and its dataset's (``data`` is one gender's
    folder, ``ffhq-aging/males``, and the record lives in ``ffhq-aging``)."""
    data = Path(data)
    return taken_down(data) | (taken_down(data.parent) if data.name in GENDER_FOLDERS else set())


def layout_images(root: str | os.PathLike) -> Iterable[tuple[str, str, str, Path]]:
    """(gender folder, phase, age group, path) of each numbered image of the layout under ``root``."""
    root = Path(root)
    for gender in GENDER_FOLDERS:
        base = root / gender
        if not base.is_dir():
            continue
        for folder in sorted(base.iterdir()):
            m = _LAYOUT.match(folder.name)
            if not m or not folder.is_dir():
                continue
            for p in sorted(folder.glob("*.png")):
                if p.stem.isdigit() and not p.name.startswith("."):
                    yield gender, m.group(1), m.group(2), p


def _wild_copies(root: Path, numbers: set[int]) -> list[Path]:
    base = root / WILDS_FOLDER
    if not base.is_dir():
        return []
    return [p for p in base.rglob("*.png") if p.stem.isdigit() and int(p.stem) in numbers]


def take_down(root: str | os.PathLike, numbers: Iterable[int]) -> dict[str, int]:
    """Remove images ``numbers`` (and their parsings, kept in-the-wild photos, attribution rows) from
    the dataset folder ``root`` and record them in ``TAKEDOWN.txt``. Returns what was removed."""
    from agetool.files import write_text

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    numbers = set(numbers)
    removed = Counter()
    for _, _, _, image in list(layout_images(root)):
        if int(image.stem) in numbers:
            image.unlink()
            removed["images"] += 1
            parsing = image.parent / "parsings" / image.name
            if parsing.exists():
                parsing.unlink()
                removed["parsings"] += 1
    for wild in _wild_copies(root, numbers):
        wild.unlink()
        removed["in-the-wild photos"] += 1
    attribution = root / ATTRIBUTION_FILE
    if attribution.exists():
        rows = read_attributions(attribution)
        kept = [r for r in rows if int(r["image_number"]) not in numbers]
        removed["attribution rows"] = len(rows) - len(kept)
        write_text(attribution, _attribution_text(kept))
    before = taken_down(root)
    new = sorted(numbers - before)
    if new:
        stamp = time.strftime("%Y-%m-%d", time.gmtime())
        header = "" if (root / TAKEDOWN_FILE).exists() else (
            "# Image numbers removed from this dataset on request; agetool's builder, prepare and train skip them.\n")
        old = (root / TAKEDOWN_FILE).read_text(encoding="utf-8") if (root / TAKEDOWN_FILE).exists() else ""
        if old and not old.endswith("\n"):
            old += "\n"
        lines = "".join(f"{n:05d}  # {stamp}\n" for n in new)
        write_text(root / TAKEDOWN_FILE, header + old + lines)
    removed["recorded"] = len(new)
    return dict(removed)


# ----------------------------------------------------------------------------------------------
# attributions


def _attribution_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ATTRIBUTION_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in ATTRIBUTION_COLUMNS})
    return buf.getvalue()


def read_attributions(path: str | os.PathLike) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return [r for r in csv.DictReader(f) if (r.get("image_number") or "").isdigit()]


def built_numbers(root: str | os.PathLike) -> set[int]:
    return {int(p.stem) for _, _, _, p in layout_images(root)}


def write_attributions(root: str | os.PathLike, metadata_json: str | os.PathLike) -> tuple[Path, int, list[int]]:
    """Write ``root/ATTRIBUTION.csv`` for every image of the built set, from FFHQ's metadata JSON
    (streamed). Returns the file, the rows written and the built numbers the JSON does not list."""
    from agetool.files import replacing
    from agetool.train.ffhq_meta import iter_entries

    root = Path(root)
    numbers = built_numbers(root) - taken_down(root)
    if not numbers:
        raise DatasetError(f"{root}: no built images found (<gender>/<train|test><group>/<number>.png)",
                           hint="build it first with agetool dataset ffhq-aging")
    seen = set()
    target = root / ATTRIBUTION_FILE
    with replacing(target) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=ATTRIBUTION_COLUMNS, lineterminator="\n")
        w.writeheader()
        for index, entry in iter_entries(metadata_json, numbers):
            meta = entry.get("metadata") if isinstance(entry.get("metadata"), dict) else {}
            w.writerow({"image_number": f"{index:05d}", **{k: str(meta.get(k) or "") for k in ATTRIBUTION_COLUMNS[1:]}})
            seen.add(index)
    return target, len(seen), sorted(numbers - seen)


def copy_attribution(data: str | os.PathLike, run: str | os.PathLike) -> Path | None:
    """Copy the ``ATTRIBUTION.csv`` of a training folder (or of its dataset) into the run folder."""
    import shutil

    data = Path(data)
    for folder in (data, data.parent) if data.name in GENDER_FOLDERS else (data,):
        src = folder / ATTRIBUTION_FILE
        if src.is_file():
            dst = Path(run) / ATTRIBUTION_FILE
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            return dst
    return None


# ----------------------------------------------------------------------------------------------
# build record and counts


def read_build(root: str | os.PathLike) -> dict | None:
    path = Path(root) / BUILD_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: can't read the build record ({e})") from None


def write_build(root: str | os.PathLike, record: dict) -> Path:
    from agetool.files import write_text

    return write_text(Path(root) / BUILD_FILE, json.dumps(record, indent=1, sort_keys=True) + "\n")


def counts(root: str | os.PathLike) -> Counter:
    """(age group, gender folder) -> images in the layout under ``root`` (train and test together)."""
    found = Counter()
    for gender, _, group, _ in layout_images(root):
        found[(group, gender)] += 1
    return found
