"""`agetool compare`: is it the same person? Every face of one photo against every face of another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.cli.options import OPTION


def compare(
    a: Annotated[Path, typer.Argument(help="A photo.", show_default=False, dir_okay=False)],
    b: Annotated[Path, typer.Argument(help="Another photo (or the same one: its faces against each other).",
                                      show_default=False, dir_okay=False)],
    model: Annotated[str, typer.Option("--model", metavar="dlib|auraface|arcface-w600k|FILE", help="Identity model: "
                                       "dlib (offline, Euclidean distance), an ArcFace-type model from the registry "
                                       "or a local .onnx file (cosine similarity).")] = "dlib",
    threshold: Annotated[Optional[float], typer.Option("--threshold", metavar="T", help="Decision threshold in the "
                                                       "model's metric (default: the model's own: distance 0.6 for "
                                                       "dlib, cosine 0.28 for ArcFace-type models).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    offline: OPTION.offline = False, device: OPTION.device = "auto",
) -> int:
    """Every face of A against every face of B: their similarity and whether they are the same person.

    Faces are numbered left to right from 0. dlib's face descriptor needs no download; its score is a Euclidean distance (lower is more alike; same person at 0.6 or less).

    Examples:

      agetool compare me.jpg group.jpg

      agetool compare old.jpg young.jpg --json

      agetool compare a.jpg b.jpg --model auraface
    """
    import json

    from agetool import validate
    from agetool.cli.options import report
    from agetool.device import pick_device
    from agetool.errors import NoFaceError
    from agetool.identity import FaceIdentity

    console.MODEL_FILE_FLAG = None  # model=FILE is this command's --model FILE
    if threshold is not None:  # a number first; its range is the model's metric's (checked once it is known)
        threshold = validate.finite("threshold", threshold)
    dev = pick_device(device) if model not in ("dlib",) and not model.endswith(".dat") else None
    identity = FaceIdentity.from_pretrained(model, device=dev, offline=offline, report=report,
                                            file_argument="model")  # compare's --model takes a file too
    if threshold is not None:
        threshold = identity.check_threshold("threshold", threshold)
    same = _same_file(a, b)  # one photo under two spellings: its faces against each other, as for A A
    faces = {a: identity.embed(a)}
    faces[b] = faces[a] if same else identity.embed(b)
    for path in (a, b):
        if not faces[path]:
            raise NoFaceError(f"no face found in {path}", hint="try a larger, frontal photo")
    limit = identity.threshold if threshold is None else threshold
    pairs = []
    for i, ea in enumerate(faces[a]):
        for j, eb in enumerate(faces[b]):
            if same and j <= i:
                continue
            value = identity.similarity(ea, eb)
            # the value is named for what it is (distance or cosine); "similarity" is its old name
            pairs.append({"a_face": i, "a_box": _box(ea.box), "b_face": j, "b_box": _box(eb.box),
                          identity.metric: round(value, 4), "similarity": round(value, 4),
                          "same_person": identity.is_match(value, limit)})
    if json_out:
        doc = {"a": str(a), "b": str(b), "model": identity.name, "file": identity.path.name,
               "metric": identity.metric, "threshold": limit, "pairs": pairs,
               "deprecated": {"similarity": f"the same value as \"{identity.metric}\", the metric's name; "
                                            "\"similarity\" goes in the next release"}}
        console.out.print(json.dumps(doc), markup=False, highlight=False, soft_wrap=True)
        return 0
    console.info(f"model: {identity.name} ({identity.metric}; same person at {identity.metric} "
                 f"{'<=' if identity.metric == 'distance' else '>='} {limit:g})")
    if not pairs:
        console.out.print(f"{a}: one face, nothing to compare it with", markup=False, highlight=False)
    for p in pairs:
        verdict = "same person" if p["same_person"] else "different people"
        console.out.print(f"{a} face {p['a_face']}  {b} face {p['b_face']}: {identity.metric} "
                          f"{p[identity.metric]:.3f}  {verdict}", markup=False, highlight=False)
    return 0


def _same_file(a: Path, b: Path) -> bool:
    import os

    try:
        return a == b or os.path.samefile(a, b)
    except OSError:
        return False


def _box(box) -> list[float] | None:
    return None if box is None else [round(float(v), 1) for v in box]
