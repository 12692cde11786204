"""`agetool align` and `agetool parse`: the face stages on their own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import app
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


def _pipeline(**kwargs):
    from agetool.pipeline import AgingPipeline

    return AgingPipeline.from_pretrained(report=report, **kwargs)


@app.command(no_args_is_help=True)
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
    pipeline = _pipeline(landmarks=landmarks, offline=offline, device=device)
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


@app.command(no_args_is_help=True)
def parse(
    input: Annotated[Path, typer.Argument(help="A photo, or an aligned crop with --aligned.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Label map PNG: one uint8 class id per pixel (0 = background).", dir_okay=False)],
    aligned: Annotated[bool, typer.Option("--aligned", help="Input is already an aligned crop: parse it as it is.", show_default=False)] = False,
    overlay: Annotated[Optional[Path], typer.Option("--overlay", help="Also write the crop with the classes coloured in.", dir_okay=False)] = None,
    parser_weights: OPTION.parser_weights = None, landmarks: OPTION.landmarks = "auto",
    offline: OPTION.offline = False, device: OPTION.device = "auto",
) -> int:
    """Face-parsing labels (19 CelebAMask-HQ classes) of the largest face, or of an aligned crop.

    Without --aligned the largest face is first detected and aligned at 256 px.

    The label map has the crop's size; its values are class ids (0 = background, 1 = skin ... 18 = cloth).

    Examples:

      agetool parse crop.png --aligned --out labels.png --overlay overlay.png

      agetool parse me.jpg --out labels.png
    """
    from agetool.face.parse import overlay as draw_overlay
    from agetool.images import distinct_outputs, output_image, read_image, write_image

    out = output_image("out", out)
    overlay = output_image("overlay", overlay) if overlay is not None else None
    distinct_outputs({"out": out, "overlay": overlay}, [input])

    pipeline = _pipeline(landmarks=landmarks, offline=offline, parser_weights=parser_weights, device=device)
    crop = read_image(input) if aligned else pipeline.align(input, faces="largest")[0].image
    labels = pipeline.parse(crop)
    write_image(out, labels)
    if overlay is not None:
        write_image(overlay, draw_overlay(crop, labels))
    found = sorted(int(c) for c in set(labels.ravel().tolist()))
    console.info(f"{input} -> {out}  ({len(found)} classes present)")
    return 0
