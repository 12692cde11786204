"""What a dataset folder holds: images per age group and gender (the counterpart of FFHQ-Aging's
published distribution figure) and how many images each selection rule removed, as numbers and as a
chart drawn with Pillow."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agetool.errors import DatasetError


@dataclass
class DatasetStats:
    root: Path
    counts: Counter                                   # (age group, males|females) -> images
    removed: dict[str, int] = field(default_factory=dict)  # reason key -> images removed
    removed_from: str = ""                            # where the removal counts come from
    taken_down: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def rows(self) -> list[tuple[str, int, int]]:
        from agetool.train.prepare import AGE_GROUPS

        return [(g, self.counts.get((g, "males"), 0), self.counts.get((g, "females"), 0)) for g in AGE_GROUPS]


def dataset_stats(root: str | os.PathLike, labels: str | os.PathLike | None = None) -> DatasetStats:
    """Count the images of the layout under ``root``; the removals come from ``labels`` (the selection
    rules applied to every row) when given, else from the build record (``BUILD.json``)."""
    from agetool.train.curation import counts, read_build, taken_down
    from agetool.train.prepare import PrepareReport, _without_contradictions, read_labels, selection

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset folder")
    found = counts(root)
    gone = taken_down(root)
    stats = DatasetStats(root, found, taken_down=len(gone))
    if labels is not None:
        problems: list[str] = []
        numbered = read_labels(labels, problems)
        report = PrepareReport(rows=len(numbered) + len(problems))
        for problem in problems:
            report.drop("bad_row", problem)
        for row in _without_contradictions(numbered, report):
            reason = "taken_down" if row.image_number in gone else selection(row)
            if reason is not None:
                report.drop(reason, str(row.image_number))
        stats.removed, stats.removed_from = dict(report.dropped), str(labels)
    else:
        record = read_build(root)
        if record is not None:
            stats.removed = {k: int(v) for k, v in (record.get("dropped") or {}).items()}
            stats.removed_from = f"{root / 'BUILD.json'} (the last build)"
    if stats.total == 0 and not stats.removed:
        raise DatasetError(f"{root}: no images in the layout (<males|females>/<train|test><group>/<number>.png)",
                           hint="build it with agetool dataset ffhq-aging or agetool dataset prepare")
    return stats


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


MALE, FEMALE, INK, GRID = (66, 114, 196), (221, 90, 110), (30, 30, 30), (225, 225, 225)


def draw_stats(stats: DatasetStats, width: int = 1100) -> np.ndarray:
    """An RGB chart: bars of males and females per age group, and the removals beside them."""
    from PIL import Image, ImageDraw

    from agetool.train.prepare import REASONS

    rows = stats.rows()
    removed = sorted(stats.removed.items(), key=lambda kv: -kv[1])
    height = 560
    chart_w = int(width * 0.64)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    title, small, tiny = _font(22), _font(15), _font(13)
    d.text((20, 14), f"{stats.root.name or stats.root}: {stats.total:,} images by age group and gender", fill=INK, font=title)
    left, top, bottom = 70, 70, height - 70
    right = chart_w
    peak = max([m for _, m, _ in rows] + [f for _, _, f in rows] + [1])
    step = _nice_step(peak)
    top_value = step * int(np.ceil(peak / step))
    for k in range(int(top_value / step) + 1):
        v = k * step
        y = bottom - (bottom - top) * v / top_value
        d.line([(left, y), (right, y)], fill=GRID)
        d.text((left - 8, y), f"{v:,}", fill=INK, font=tiny, anchor="rm")
    d.line([(left, top), (left, bottom), (right, bottom)], fill=INK)
    slot = (right - left) / len(rows)
    bar = slot * 0.36
    for i, (group, males, females) in enumerate(rows):
        x = left + i * slot + slot * 0.14
        for j, (n, colour) in enumerate(((males, MALE), (females, FEMALE))):
            x0 = x + j * bar
            y = bottom - (bottom - top) * n / top_value
            if n:
                d.rectangle([x0, y, x0 + bar - 2, bottom], fill=colour)
                d.text((x0 + bar / 2 - 1, y - 3), f"{n:,}", fill=INK, font=tiny, anchor="mb")
        d.text((left + (i + 0.5) * slot, bottom + 8), group, fill=INK, font=small, anchor="mt")
    d.text(((left + right) / 2, bottom + 34), "age group (years)", fill=INK, font=small, anchor="mt")
    for j, (name, colour) in enumerate((("males", MALE), ("females", FEMALE))):
        y = 20
        x = right - 190 + j * 95
        d.rectangle([x, y, x + 14, y + 14], fill=colour)
        d.text((x + 20, y + 7), name, fill=INK, font=small, anchor="lm")
    x = chart_w + 40
    y = 76
    d.text((x, y), "removed by the selection rules", fill=INK, font=small)
    y += 26
    if not removed:
        d.text((x, y), "(no record: pass --labels)" if not stats.removed_from else "none", fill=INK, font=tiny)
    for key, n in removed[:16]:
        text = REASONS.get(key, key)
        d.text((x, y), f"{n:>7,}  {text}"[:60], fill=INK, font=tiny)
        y += 20
    if stats.taken_down:
        d.text((x, y + 10), f"{stats.taken_down:,} image(s) listed in TAKEDOWN.txt", fill=INK, font=tiny)
    return np.asarray(img)


def _nice_step(peak: int) -> int:
    """A round grid step giving about five lines up to ``peak``."""
    raw = max(peak / 5, 1)
    power = 10 ** int(np.floor(np.log10(raw)))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return int(m * power)
    return int(10 * power)
