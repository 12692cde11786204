"""`agetool parse`: the face-parsing labels of a face, as a label map."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.cli.options import OPTION, report


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

    from agetool.pipeline import AgingPipeline

    pipeline = AgingPipeline.from_pretrained(landmarks=landmarks, offline=offline, parser_weights=parser_weights,
                                             device=device, report=report)
    crop = read_image(input) if aligned else pipeline.align(input, faces="largest")[0].image
    labels = pipeline.parse(crop)
    write_image(out, labels)
    if overlay is not None:
        write_image(overlay, draw_overlay(crop, labels))
    found = sorted(int(c) for c in set(labels.ravel().tolist()))
    console.info(f"{input} -> {out}  ({len(found)} classes present)")
    return 0
