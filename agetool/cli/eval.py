"""`agetool eval`: how old do the outputs look, and are they still the same person?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.cli.options import OPTION
from agetool.options import DEFAULT_CALIBRATE_STEPS, DEFAULT_NOISE, DEFAULT_SEED

EVAL_PANEL = "Evaluation options"


def eval_command(
    photos: Annotated[list[Path], typer.Argument(help="Photos or folders (searched recursively).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for report.json, report.md and report.png.",
                                      file_okay=False)],
    ages: Annotated[Optional[str], typer.Option(
        "--ages", help="Targets: comma-separated years and/or class labels (default: the six classes).",
        metavar="LIST", rich_help_panel=EVAL_PANEL)] = None,
    identity: Annotated[str, typer.Option(
        "--identity", help="Identity model: auto (auraface where it is downloaded, else dlib), dlib (dlib's face "
        "descriptor: no download, Euclidean distance), auraface (Apache-2.0) or arcface-w600k (insightface, "
        "non-commercial): cosine similarity.", metavar="NAME", rich_help_panel=EVAL_PANEL)] = "auto",
    identity_model: Annotated[Optional[Path], typer.Option(
        "--identity-model", help="Identity model instead of --identity: dlib, auraface, arcface-w600k, a local "
        "ArcFace-type .onnx file or a dlib .dat descriptor.", dir_okay=False,
        metavar="NAME|FILE", rich_help_panel=EVAL_PANEL)] = None,
    compare: Annotated[Optional[tuple[Path, Path]], typer.Option(
        "--compare", help="Two generator checkpoints measured side by side in one report.", metavar="A B",
        rich_help_panel=EVAL_PANEL)] = None,
    calibrate: Annotated[bool, typer.Option(
        "--calibrate", help="Also fit the class anchor ages that make the estimated age follow the requested "
        "age; writes anchors.json for --age-anchors.", rich_help_panel=EVAL_PANEL)] = False,
    calibrate_steps: Annotated[int, typer.Option(
        "--calibrate-steps", help="Traversal frames per class transition for --calibrate.", metavar="N",
        rich_help_panel=EVAL_PANEL)] = DEFAULT_CALIBRATE_STEPS,
    no_age: Annotated[bool, typer.Option(
        "--no-age", help="Measure identity only, without the age model (genderage); also chosen, with a "
        "warning, when that model is not at hand and --offline is set.", rich_help_panel=EVAL_PANEL)] = False,
    skip_existing: Annotated[bool, typer.Option(
        "--skip-existing", help="Reuse the results kept in --out of photos already measured (a restarted "
        "run continues).", rich_help_panel=EVAL_PANEL)] = False,
    model: OPTION.model = "auto", weights: OPTION.weights = None,
    parser_weights: OPTION.parser_weights = None, age_model: OPTION.age_model = None,
    landmarks: OPTION.landmarks = "auto", offline: OPTION.offline = False, device: OPTION.device = "auto",
    dtype: OPTION.dtype = "float32", age_anchors: OPTION.age_anchors = None,
    aligned: OPTION.aligned = False, no_mask: OPTION.no_mask = False, faces: OPTION.faces = "all",
    ref_threshold: OPTION.ref_threshold = None,
    min_face: OPTION.min_face = 0, seed: OPTION.seed = DEFAULT_SEED, noise: OPTION.noise = DEFAULT_NOISE,
    upscale: OPTION.upscale = None, upscale_weights: OPTION.upscale_weights = None,
) -> int:
    """Measure the outputs: how old they look, and whether they are still the same person.

    Every face is rendered at each target; each output gets its estimated age (the genderage classifier) and its identity score against the input: the cosine similarity of ArcFace-type embeddings, or with dlib (used when no ArcFace-type model is downloaded) the Euclidean distance of dlib's face descriptors.

    Writes OUT/report.json (every face and target, and the summary), OUT/report.md (the summary table with the models used) and OUT/report.png (estimated against target age, identity per target), and prints the summary. Folder runs split across processes under torchrun.

    Examples:

      agetool eval photos/ --out eval/

      agetool eval photos/ --out eval/ --identity-model dlib --offline

      agetool eval photos/ --out eval/ --model female --identity-model dlib --no-age

      agetool eval photos/ --out eval/ --compare runs/a/generator.safetensors runs/b/generator.safetensors

      agetool eval photos/ --out eval/ --calibrate && agetool age me.jpg --ages 5,20,45 --age-anchors eval/anchors.json

      agetool eval photos/ --out eval/ --upscale 4

      torchrun --nproc_per_node 4 -m agetool eval photos/ --out eval/ --skip-existing
    """
    from agetool import validate
    from agetool.cli.options import faces_argument, report
    from agetool.cli.weights import progress_factory
    from agetool.device import env_dist
    from agetool.errors import UsageError
    from agetool.eval.run import evaluate
    from agetool.models import MODELS
    from agetool.options import EvalOptions, request
    from agetool.pipeline import AgingPipeline

    if compare and calibrate:  # --compare is two pipelines: flags the library has no argument for
        raise UsageError("--calibrate fits the anchors of one generator", hint="drop --compare")
    if compare and weights is not None:
        raise UsageError("--compare takes the two generator checkpoints", hint="drop --weights")
    asked = request(ages, aligned=aligned, mask=not no_mask, faces=faces_argument(faces, ref_threshold),
                    min_face=min_face, seed=seed, noise=noise, upscale=upscale)  # checked once, before any work
    options = EvalOptions.of(identity=identity, identity_model=identity_model, age_model=age_model,
                             estimate_age=False if no_age else None, calibrate=calibrate,
                             calibrate_steps=calibrate_steps, out=out, skip_existing=skip_existing)
    validate.choice("model", model, MODELS)  # --model auto|male|female, also beside --weights / --compare
    dist = env_dist()
    with console.progress() as bar:
        feedback = dict(report=report if dist.main else None, progress=progress_factory(bar))  # notices from rank 0 only
        pipelines = [AgingPipeline.from_pretrained(model if w is None else w, parser_weights=parser_weights,
                                                   landmarks=landmarks, device=device, dtype=dtype, offline=offline,
                                                   classifier_weights=age_model, age_anchors=age_anchors,
                                                   upscale_weights=upscale_weights, **feedback)
                     for w in (compare or [weights])]
        result = evaluate(photos, pipelines, asked, options, dist=dist)
    if not dist.main:
        return 0
    print_summary(result)
    for failure in result["failed"]:
        console.error(f"{failure['photo']}: {failure['error']}")
    names = ["report.json", "report.md", "report.png"] + (["anchors.json"] if "calibration" in result else [])
    console.info(f"wrote {', '.join(str(out / n) for n in names)}")
    if result["failed"]:
        console.info(f"done: {len(result['failed'])} photo(s) failed")
        return 1
    return 0


def print_summary(result: dict) -> None:
    """The summary as a table on stdout (every cell plain text, never markup)."""
    from rich.table import Table
    from rich.text import Text

    from agetool.eval.report import generators, table_rows

    header, rows = table_rows(result)
    text_columns = 2 if len(generators(result)) > 1 else 1  # generator and target; the rest are numbers
    table = Table(title="evaluation", show_edge=False, box=None, pad_edge=False, title_justify="left")  # 80 columns: no rules
    need = 2 * (len(header) - 1)  # the padding between columns
    for i, name in enumerate(header):
        if i < text_columns:  # names stay whole; the number columns wrap their headers
            widest = max(len(r[i]) for r in [header, *rows])
            table.add_column(name, no_wrap=True, min_width=widest)
        else:
            widest = max([*map(len, name.split()), *(len(r[i]) for r in rows)])  # header words and numbers whole
            table.add_column(name, justify="right", min_width=widest)
        need += widest
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    console.out.print(table, soft_wrap=need > console.out.width)  # fitted where it can be; numbers never cut
    cal = result.get("calibration")
    if cal:
        anchors = ", ".join(f"{k}: {v:g}" for k, v in cal["anchors"].items())
        console.out.print(Text(f"calibrated anchors: {anchors} (mean age error {cal['error_before']:.1f} -> "
                               f"{cal['error_after']:.1f} years)"))
