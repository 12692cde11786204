"""Options shared by several commands, declared once.

``@pipeline_options`` adds the model options (``--model``, ``--weights`` ...) to a command and hands
the command a ready ``build(bar)`` that makes the ``AgingPipeline``; ``@face_options`` adds the
per-photo options (``--aligned``, ``--seed`` ...) and hands them over as the keyword arguments of
``AgingPipeline.__call__`` / ``frames``.
"""

from __future__ import annotations

import functools
import inspect
import typing
from types import SimpleNamespace
from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.options import DEFAULT_CANDIDATES, DEFAULT_NOISE, MAX_CANDIDATES

MODEL_PANEL = "Model options"
FACE_PANEL = "Face options"


def _opt(name: str, annotation, default, flag: str, help: str, panel: str, **extra):
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[
        annotation, typer.Option(flag, help=help, rich_help_panel=panel, show_default=default not in (None, False),
                                 **extra)])


PIPELINE = [
    _opt("model", str, "auto", "--model", "Generator: auto (chosen per face by a gender classifier), male or female.",
         MODEL_PANEL, metavar="auto|male|female"),
    _opt("weights", Optional[Path], None, "--weights", "Generator checkpoint: the released latest_net_g_running.pth, "
         "males_model.zip / females_model.zip, or an agetool .safetensors. Overrides --model.", MODEL_PANEL,
         dir_okay=False, metavar="FILE"),
    _opt("parser_weights", Optional[Path], None, "--parser-weights", "Face-parser checkpoint (released "
         "deeplab_model.pth or agetool .safetensors).", MODEL_PANEL, dir_okay=False, metavar="FILE"),
    _opt("age_model", Optional[Path], None, "--age-model", "Gender / age classifier (genderage.onnx) for --model "
         "auto and age estimates; default: the registry's.", MODEL_PANEL, dir_okay=False, metavar="FILE"),
    _opt("landmarks", str, "auto", "--landmarks", "Landmark backend: auto (fan if its weights are present, else "
         "dlib), fan or dlib.", MODEL_PANEL, metavar="auto|fan|dlib"),
    _opt("offline", bool, False, "--offline", "Never use the network; fail if a model file is not cached.",
         MODEL_PANEL),
    _opt("device", str, "auto", "--device", "auto, cpu, cuda, cuda:N or mps.", MODEL_PANEL, metavar="DEVICE"),
    _opt("dtype", str, "float32", "--dtype", "Generator precision: float32 (matches the original to 1e-4), "
         "bfloat16 (about 2x faster where the hardware has native bfloat16; ~56 dB PSNR against float32), "
         "float16 (GPU only), or auto (bfloat16 on CUDA and on CPUs with AVX512-BF16 or AMX, else float32).",
         MODEL_PANEL, metavar="DTYPE"),
    _opt("age_anchors", Optional[Path], None, "--age-anchors", "JSON file mapping each class label to its age in "
         "years (default: the middle of each class).", MODEL_PANEL, dir_okay=False, metavar="FILE"),
    _opt("batch_size", Optional[int], None, "--batch-size", "Frames decoded at once (default: chosen from the "
         "device's memory).", MODEL_PANEL, metavar="N"),
    _opt("max_pixels", int, 40_000_000, "--max-pixels", "Refuse images with more pixels than this.", MODEL_PANEL,
         metavar="N"),
    _opt("upscale_weights", Optional[str], None, "--upscale-weights", "Super-resolution model for --upscale: a "
         "file (Real-ESRGAN .pth; other architectures with the agetool\\[upscale] extra) or a registered name "
         "(realesr-general-x4v3, the default; realesrgan-x4plus; realesrgan-x2plus).", MODEL_PANEL,
         metavar="FILE"),
]

FACES = [
    _opt("aligned", bool, False, "--aligned", "Input is already an aligned face crop: no detection or alignment.",
         FACE_PANEL),
    _opt("no_mask", bool, False, "--no-mask", "Don't paint the background gray before the generator.", FACE_PANEL),
    _opt("paste_back", bool, False, "--paste-back", "Show the whole photo with the aged faces blended back in.",
         FACE_PANEL),
    _opt("faces", str, "all", "--faces", "all faces, only the largest, or ref:PHOTO: only the faces of the person "
         "in PHOTO (dlib's face descriptor, offline).", FACE_PANEL, metavar="all|largest|ref:PHOTO"),
    _opt("ref_threshold", Optional[float], None, "--ref-threshold", "With --faces ref:PHOTO: the largest face "
         "descriptor distance still counted as the same person (default 0.6; raise it to accept more).",
         FACE_PANEL, metavar="D"),
    _opt("min_face", int, 0, "--min-face", "Skip faces smaller than this many pixels (with a warning).", FACE_PANEL,
         metavar="PX"),
    _opt("seed", int, 0, "--seed", "Seed of the class-code noise: the same seed gives the same output.", FACE_PANEL,
         metavar="N"),
    _opt("noise", float, DEFAULT_NOISE, "--noise", "Sigma of the class-code noise (0 = clean codes).", FACE_PANEL,
         metavar="SIGMA"),
    _opt("candidates", int, DEFAULT_CANDIDATES, "--candidates", f"Noise draws per face, 1 to {MAX_CANDIDATES} (seeds "
         "--seed ... --seed + N - 1): each is scored against the input (dlib identity distance, skin chroma, gender) "
         "and the most faithful kept. Costs N decodes per age.", FACE_PANEL, metavar="N"),
    _opt("upscale", Optional[int], None, "--upscale", "Upscale the aged faces 2x or 4x (512 / 1024 px tiles) with "
         "a super-resolution network without a face prior (Real-ESRGAN); pasted back at the face's own size.",
         FACE_PANEL, metavar="2|4"),
]


#: each shared option's annotation, for commands that take only some of them
OPTION = SimpleNamespace(**{p.name: p.annotation for p in (*PIPELINE, *FACES)})


def report(message: str) -> None:
    """Library notices to the terminal: ``warning: ...`` as a warning, the rest as information;
    arguments named in them read as their flags."""
    from agetool.errors import render

    message = render(message, console.flag_style)
    if message.startswith("warning: "):
        console.warn(message[len("warning: "):])
    else:
        console.info(message)


def _with_params(fn, params: list[inspect.Parameter], name: str, convert):
    """``fn`` with ``params`` added to its signature (for Typer); on a call, their values are taken
    out of the keyword arguments and passed as the single argument ``name = convert(values)``."""
    sig = inspect.signature(fn)
    hints = typing.get_type_hints(fn, include_extras=True)  # a set __signature__ is not evaluated for Typer
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values() if p.name != name]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        chosen = {p.name: kwargs.pop(p.name) for p in params if p.name in kwargs}
        return fn(*args, **{name: convert(chosen)}, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=[*own, *params])
    return wrapper


def _builder(chosen: dict):
    from agetool.cli.defaults import from_config, given

    if chosen["weights"] is not None and from_config("weights") and given("model"):
        chosen = {**chosen, "weights": None}  # --model on the command line wins over a configured generator

    options = dict(
        model=chosen["model"] if chosen["weights"] is None else chosen["weights"],  # --weights: model=PATH
        parser_weights=chosen["parser_weights"],
        landmarks=chosen["landmarks"], device=chosen["device"], dtype=chosen["dtype"],
        offline=chosen["offline"], classifier_weights=chosen["age_model"], age_anchors=chosen["age_anchors"],
        batch=chosen["batch_size"], max_pixels=chosen["max_pixels"],
        upscale_weights=chosen["upscale_weights"])

    def build(bar=None):
        from PIL import Image

        from agetool import validate
        from agetool.models import MODELS

        validate.choice("model", chosen["model"], MODELS)  # --model auto|male|female, also beside --weights

        from agetool.cli.weights import progress_factory
        from agetool.pipeline import AgingPipeline

        # the image decoder's own (process-wide) limit, set by the program: --max-pixels decides here
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, options["max_pixels"])

        from agetool.device import tune_process

        pipe = AgingPipeline.from_pretrained(**options, report=report,
                                             progress=None if bar is None else progress_factory(bar))
        tune_process(pipe.device, pipe.dtype)  # this process is the command's own
        return pipe

    build.options = options  # from_pretrained's arguments, for pipelines made elsewhere (Ray's workers)
    return build


def _face_kwargs(chosen: dict) -> dict:
    upscale = {} if chosen["upscale"] is None else {"upscale": chosen["upscale"]}  # unset: the plain 256 px call
    return {**upscale, "aligned": chosen["aligned"], "mask": not chosen["no_mask"], "paste_back": chosen["paste_back"],
            "faces": faces_argument(chosen["faces"], chosen["ref_threshold"]), "min_face": chosen["min_face"],
            "seed": chosen["seed"], "noise": chosen["noise"], "candidates": chosen["candidates"]}


def faces_argument(faces: str, ref_threshold: float | None):
    """``--faces`` and ``--ref-threshold`` as the library's ``faces`` argument: ``ref:PHOTO`` becomes
    one ``FaceReference``, so the reference photo is read and embedded once for every input."""
    if not faces.startswith("ref:"):
        if ref_threshold is not None:
            from agetool.errors import UsageError

            raise UsageError("--ref-threshold applies to --faces ref:PHOTO")
        return faces
    from agetool.identity import FaceReference

    return FaceReference(faces, ref_threshold=ref_threshold)


def pipeline_options(fn=None, *, only: tuple[str, ...] | None = None):
    """Adds the model options (``only``: just these, the others at their defaults); the command gets
    ``build``: ``build(bar=None) -> AgingPipeline``."""
    if fn is None:
        return functools.partial(pipeline_options, only=only)
    params = PIPELINE if only is None else [p for p in PIPELINE if p.name in only]
    defaults = {p.name: p.default for p in PIPELINE if p not in params}
    return _with_params(fn, params, "build", lambda chosen: _builder({**defaults, **chosen}))


#: the model options of commands that estimate ages and genders (no generator, no parser)
ESTIMATE_OPTIONS = ("age_model", "landmarks", "offline", "device", "max_pixels")


def face_options(fn):
    """Adds the face options; the command gets ``face_kwargs`` for ``AgingPipeline.__call__`` / ``frames``."""
    return _with_params(fn, FACES, "face_kwargs", _face_kwargs)


def print_profile(pipeline) -> None:
    """The time spent in each stage (each counted once), its share and the total, as a table on
    stderr. Shares are of the stages run in the caller's thread; a "(background)" stage ran beside
    them (model loads, a clip's reading and writing) and its share says how much it would have added."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title="stage times", show_edge=False)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    table.add_column("share", justify="right")
    timings = pipeline.timings
    total = sum(v for k, v in timings.items() if not k.endswith("(background)"))
    for stage, secs in timings.items():
        table.add_row(Text(stage), f"{secs:.3f}", f"{100 * secs / total:.0f}%" if total > 0 else "-")
    table.add_row("total", f"{total:.3f}", "100%" if total > 0 else "-", style="bold")  # the caller's stages
    console.err.print(table)
