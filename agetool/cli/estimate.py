"""`agetool estimate`: the estimated age and gender of each face."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agetool.cli import console
from agetool.cli.options import ESTIMATE_OPTIONS, OPTION, pipeline_options


@pipeline_options(only=ESTIMATE_OPTIONS)
def estimate(
    inputs: Annotated[list[Path], typer.Argument(help="Photos or folders (searched recursively).", show_default=False)],
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per face on stdout.")] = False,
    aligned: Annotated[bool, typer.Option("--aligned", help="Inputs are aligned face crops.", show_default=False)] = False,
    faces: OPTION.faces = "all", ref_threshold: OPTION.ref_threshold = None,
    min_face: Annotated[int, typer.Option("--min-face", metavar="PX", help="Skip faces smaller than this many pixels.", show_default=False)] = 0,
    *, build,
) -> int:
    """Estimated age and gender of each face (insightface's genderage classifier).

    Examples:

      agetool estimate me.jpg

      agetool estimate group.jpg --faces ref:me.jpg

      agetool estimate photos/ --json > ages.jsonl
    """
    import json

    from agetool.ages import years_text
    from agetool.cli.options import faces_argument
    from agetool.errors import AgetoolError, MissingModelsError, UsageError
    from agetool.images import find_images

    faces = faces_argument(faces, ref_threshold)
    paths = find_images(inputs)
    if not paths:
        raise UsageError("no images found in the given folders")
    failed = 0
    pipe = build()
    for path in paths:
        try:
            found = pipe.estimate(path, aligned=aligned, faces=faces, min_face=min_face)
        except AgetoolError as e:
            if len(paths) == 1 or e.exit_code != 1 or isinstance(e, MissingModelsError):
                raise
            console.error(console.message(e))
            failed += 1
            continue
        for f in found:
            box = None if f.box is None else [round(v, 1) for v in f.box]
            if json_lines:
                console.out.print(json.dumps({"file": str(path), "face": f.index, "box": box, "age": round(f.age, 1),
                                              "gender": f.gender, "gender_probability": round(f.gender_probability, 3)}),
                                  markup=False, highlight=False)
            else:
                where = "whole crop" if box is None else f"box {box}"
                console.out.print(f"{path} face {f.index}: ~{years_text(f.age)}, {f.gender} "
                                  f"(p = {f.gender_probability:.2f}), {where}", markup=False, highlight=False)
    return 1 if failed else 0
