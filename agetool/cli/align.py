"""`agetool align`: every face of a photo as an FFHQ-aging aligned crop."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.cli.options import OPTION, report


def _read_landmarks(path: Path):
    """68 [x, y] pairs from JSON: a bare list, or an object with a "landmarks" list."""
    import numpy as np

    from agetool.errors import InputError
    from agetool.userfiles import read_json

    data = read_json(path, "landmarks_json")  # a regular file, of a bounded size, with finite numbers
    if isinstance(data, dict):
        data = data.get("landmarks")
    try:
        points = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        points = np.zeros((0,), np.float32)
    if points.shape != (68, 2) or not np.isfinite(points).all():
        raise InputError(f"{path}: expected 68 [x, y] pairs, found shape {points.shape}",
                         hint="one face per file, iBUG / dlib point order")
    return points


def align(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders (searched recursively).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the crops: <stem>_face<i>.png (<stem>_2 ... for a stem seen before).", file_okay=False)],
    size: Annotated[int, typer.Option("--size", metavar="PX", help="Side of the aligned crops in pixels.", min=16, max=4096)] = 256,
    landmarks_json: Annotated[Optional[Path], typer.Option("--landmarks-json", help="JSON list of the 68 (x, y) landmark pairs of one face (iBUG order): skips detection. One input only.", dir_okay=False)] = None,
    landmarks: OPTION.landmarks = "auto", faces: OPTION.faces = "all", ref_threshold: OPTION.ref_threshold = None,
    min_face: OPTION.min_face = 0, offline: OPTION.offline = False, device: OPTION.device = "auto",
) -> int:
    """Detect every face and write its FFHQ-aging aligned crop.

    Examples:

      agetool align group.jpg --out crops/

      agetool align photos/ --out crops/ --faces ref:me.jpg

      agetool align me.jpg --out crops/ --size 1024 --landmarks-json me_landmarks.json
    """
    from agetool.errors import AgetoolError, UsageError
    from agetool.images import find_images, unique_stems, write_image

    paths = find_images(inputs)
    if not paths:
        raise UsageError("no images found in the given folders")
    if landmarks_json is not None and len(paths) > 1:
        raise UsageError("--landmarks-json describes one face of one photo: give a single INPUT")
    given = _read_landmarks(landmarks_json) if landmarks_json is not None else None
    from agetool.cli.options import faces_argument

    faces = faces_argument(faces, ref_threshold)
    stems = unique_stems(paths)
    import re

    from agetool.images import outputs_clear

    written = "|".join(re.escape(stem) for stem in stems)  # <stem>_face<i>.png: i known only during the work
    outputs_clear("out", out, rf"({written})_face(0|[1-9][0-9]*)\.png", paths)
    from agetool.pipeline import AgingPipeline

    pipeline = AgingPipeline.from_pretrained(landmarks=landmarks, offline=offline, device=device, report=report)
    failed = 0
    for path, stem in zip(paths, stems):
        try:
            crops = pipeline.align(path, size=size, landmarks=given, faces=faces, min_face=min_face)
            written = [write_image(out / f"{stem}_face{i}.png", c.image) for i, c in enumerate(crops)]
            console.info(f"{path} -> {', '.join(str(w) for w in written)}")
        except AgetoolError as e:
            if len(paths) == 1 or e.exit_code != 1:
                raise
            console.error(console.message(e))
            failed += 1
    if len(paths) > 1:
        console.info(f"done: {len(paths) - failed} aligned, {failed} failed")
    return 1 if failed else 0
