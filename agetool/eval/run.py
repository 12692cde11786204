"""``agetool.evaluate``: render every face of every photo at the targets, measure each output, report.

With ``out``, each photo's results are kept in ``out/.parts/<n>.json`` as soon as they are made:
``skip_existing=True`` reuses them (a restarted job continues where it stopped), and in a
``torchrun`` job each rank takes every world-size-th photo and rank 0 merges every part into the
report once all ranks are done.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agetool.options import DEFAULT_NOISE
from agetool.errors import InputError, UsageError, arg

PARTS = ".parts"
DEFAULT_CALIBRATE_STEPS = 10


@dataclass
class _Generator:
    label: str
    pipeline: object  # agetool.AgingPipeline
    info: dict


def evaluate(photos: Sequence[str | os.PathLike] | str | os.PathLike, *, pipeline=None, model: str = "auto",
             weights: str | os.PathLike | None = None, compare: Sequence[str | os.PathLike] | None = None,
             parser_weights: str | os.PathLike | None = None, landmarks: str = "auto", device: str = "auto",
             dtype: str = "float32", offline: bool = False, age_anchors=None, ages=None,
             age_model: str | os.PathLike | None = None, identity_model: str | os.PathLike | None = None,
             identity: str = "auto", aligned: bool = False, mask: bool = True, seed: int = 0,
             noise: float = DEFAULT_NOISE, faces: str = "all", min_face: int = 0, calibrate: bool = False,
             calibrate_steps: int = DEFAULT_CALIBRATE_STEPS, out: str | os.PathLike | None = None,
             skip_existing: bool = False, dist=None, report: Callable[[str], None] | None = None,
             progress=None, upscale: int | None = None, upscale_weights: str | os.PathLike | None = None,
             estimate_age: bool | None = None) -> dict:
    """Measure how old the outputs look and whether they keep the person's identity.

    Every face of ``photos`` (files, or folders searched recursively) is rendered at ``ages``
    (default: the six classes) and each output gets ``estimated_age`` (the ``age_model``, default
    the registry's ``genderage``), ``skin_tone`` (the CIELAB chroma distance of input and output
    over the input's skin, ``agetool.faithful``; None with ``mask=False``, where faces are not parsed) and ``identity``, the identity model's score of input and output:
    the cosine similarity of ArcFace-type embeddings (``"auraface"``, ``"arcface-w600k"``, or an
    ``.onnx`` ``identity_model`` file) or the Euclidean distance of dlib's face descriptors
    (``"dlib"``: no download). ``identity="auto"`` (default) takes auraface where it is cached, else
    dlib, and says so through ``report``; ``report["models"]["identity"]`` names the model, its file,
    sha256, ``metric`` (``"cosine"`` or ``"distance"``) and ``threshold``. ``faces`` is as in
    ``AgingPipeline`` (``"ref:PHOTO"``: the reference is embedded once for the whole run). Returns the report (what ``report.json`` holds; see
    ``agetool.eval.report``); with ``out`` also writes ``report.json``, ``report.md``,
    ``report.png`` there.

    The generator: ``pipeline`` (an ``AgingPipeline``), or one built from ``model``, ``weights``,
    ``parser_weights``, ``landmarks``, ``device``, ``dtype``, ``offline`` and ``age_anchors``;
    ``compare=[A, B]`` evaluates two generator checkpoints in one report. ``calibrate=True`` also
    renders a traversal of each face (``calibrate_steps`` frames per class transition) and fits the
    class anchor ages that make the estimated age follow the requested age (``report["calibration"]
    ["anchors"]``, written to ``out/anchors.json``, usable as ``age_anchors``).

    ``estimate_age=False`` measures identity only, without the age model (every ``estimated_age`` is
    None); None (default) does so, saying it through ``report``, when the age model is not at hand
    and network access is off.

    ``upscale`` 2 or 4 also measures every output after super-resolution (``upscale_weights``, as in
    ``AgingPipeline.from_pretrained``): each output gets ``upscaled: {estimated_age, identity}``
    next to the 256 px numbers, and the summary ``upscaled_*`` means.
    """
    from agetool.device import env_dist, pick_device
    from agetool.eval.measure import Measurer
    from agetool.images import find_images
    from agetool.options import check_factor

    factor = check_factor(upscale)
    dist = dist or env_dist()
    from agetool import validate

    for name, value in (("aligned", aligned), ("mask", mask), ("calibrate", calibrate), ("skip_existing", skip_existing),
                        ("offline", offline)):
        validate.flag(name, value)
    if out is None and (skip_existing or dist.world > 1):
        raise UsageError(f"{arg('skip_existing') if skip_existing else 'a multi-process run'} needs {arg('out')}, "
                         "where the results of each photo are kept")
    if out is not None:
        from agetool.eval.plot import require_matplotlib

        require_matplotlib()
    if estimate_age is not None:
        validate.flag("estimate_age", estimate_age)
    chooses = pipeline is None and model == "auto" and weights is None and not compare  # needs genderage anyway
    if calibrate and compare:
        raise UsageError(f"{arg('calibrate')} fits the anchors of one generator", hint=f"drop {arg('compare')}")
    if isinstance(calibrate_steps, bool) or not isinstance(calibrate_steps, int) or not 1 <= calibrate_steps <= 100:
        raise UsageError(f"{arg('calibrate_steps', calibrate_steps)}: expected a whole number from 1 to 100")
    paths = find_images([photos] if isinstance(photos, (str, os.PathLike)) else list(photos))
    if not paths:
        raise InputError(f"{arg('photos', photos)}: no images found")
    from agetool.faces import check_faces

    faces = check_faces(faces)
    if out is not None:  # the report set never replaces a photo being measured
        from agetool.images import outputs_clear

        outputs_clear("out", out, r"report\.(json|md|png)|anchors\.json", paths)
    measure_ages = _measures_ages(estimate_age, age_model, offline=offline, calibrate=calibrate, chooses=chooses,
                                  report=report)
    if dist.world > 1:
        from agetool.shards import join

        join(dist)  # every rank running, before any work (a bounded wait)
    dev = pick_device(device, dist=dist) if pipeline is None else pipeline.device
    generators = _generators(pipeline, model=model, weights=weights, compare=compare, parser_weights=parser_weights,
                             landmarks=landmarks, device=dev, dtype=dtype, offline=offline, age_anchors=age_anchors,
                             classifier_weights=age_model, report=report, progress=progress,
                             upscale_weights=upscale_weights)
    first = generators[0].pipeline
    targets = first.targets(ages)
    _require_models(generators, age_model=age_model if measure_ages else "", identity_model=identity_model,
                    identity=identity, aligned=aligned, mask=mask, offline=offline, upscale=factor > 1, report=report,
                    progress=progress)
    measurer = Measurer.load(age_model=age_model, identity_model=identity_model, identity=identity, device=dev,
                             offline=offline, report=report, progress=progress, ages=measure_ages)
    models = {"generator": [g.info for g in generators], **measurer.models}
    settings = {"targets": [t.entry for t in targets], "anchors": dict(first.age_anchors), "seed": seed,
                "noise": noise, "aligned": aligned, "mask": mask, "faces": faces, "min_face": min_face,
                "calibrate_steps": calibrate_steps if calibrate else None}
    if factor > 1:
        settings["upscale"] = factor
    key = hashlib.sha256(json.dumps([settings, models], sort_keys=True, default=str).encode()).hexdigest()
    run = _Run(generators, measurer, targets, dict(seed=seed, noise=noise), calibrate_steps if calibrate else 0,
               dict(aligned=aligned, mask=mask, faces=faces, min_face=min_face), factor)
    parts_dir = Path(out) / PARTS if out is not None else None
    mine = dist.shard(list(enumerate(paths)))
    results: dict[int, dict] = {}
    advance = progress("evaluating", len(mine)) if progress is not None else (lambda n: None)
    try:
        for index, path in mine:
            part = _load_part(parts_dir, index, path, key) if skip_existing else None
            if part is None:
                part = run.photo(path, key)
                if parts_dir is not None:
                    _save_part(parts_dir, index, part)
            results[index] = part
            advance(1)
    finally:
        getattr(advance, "close", lambda: None)()
    if dist.world > 1:
        from agetool.shards import barrier

        barrier(dist)
        results = {i: _load_part(parts_dir, i, p, key) or _missing(p, key) for i, p in enumerate(paths)}
    models["generator"] = [info for g in generators for info in _used_info(g)]  # files fetched meanwhile
    return _finish(results, paths, models, settings, first, out if dist.main else None, report=report)


class _Run:
    """One evaluation's models and settings; ``photo(path)`` measures every face of one photo."""

    def __init__(self, generators, measurer, targets, render: dict, calibrate_steps: int, encode: dict,
                 upscale: int = 1):
        self.generators, self.measurer, self.targets = generators, measurer, targets
        self.render, self.calibrate_steps, self.encode = render, calibrate_steps, encode
        self.upscale = upscale

    def photo(self, path: Path, key: str) -> dict:
        from agetool.eval.report import add_skin_tones, add_upscaled, face_record
        from agetool.faithful import skin_tones

        part = {"photo": str(path), "key": key, "faces": [], "frames": [], "failed": None}
        try:
            for g in self.generators:
                enc = g.pipeline.encode(path, **self.encode)
                for face in enc.faces:
                    tiles = g.pipeline.render(face, targets=self.targets, **self.render)
                    years = g.pipeline.target_years(self.targets, face)
                    measures = self.measurer.measure(face.aligned, tiles, face.crop_landmarks)
                    record = face_record(str(path), face.index, g.label, face.model,
                                         [(t.entry, y) for t, y in zip(self.targets, years)], measures)
                    if face.parsing is not None:  # parsed for the mask: the skin is known
                        add_skin_tones(record, skin_tones(face.aligned, tiles, face.parsing))
                    if self.upscale > 1:  # the same outputs after super-resolution, measured the same way
                        up = self.measurer.measure(face.aligned, g.pipeline.upscale(tiles, self.upscale),
                                                   face.crop_landmarks)
                        add_upscaled(record, up)
                    part["faces"].append(record)
                    if self.calibrate_steps:
                        part["frames"].append(self._traversal(g.pipeline, face))
        except InputError as e:  # this photo can't be used (unreadable, no face): keep going
            part["faces"], part["frames"], part["failed"] = [], [], str(e)
        return part

    def _traversal(self, pipeline, face) -> dict:
        from agetool.ages import AgeTarget, traversal_ages

        steps = self.calibrate_steps
        years = traversal_ages(steps, pipeline.anchor_ages)
        tiles = pipeline.render(face, targets=[AgeTarget(f"{y:g}", "years", float(y)) for y in years], **self.render)
        estimated = self.measurer.ages(face.aligned, tiles, face.crop_landmarks)
        return {"positions": [i / steps for i in range(len(years))], "estimated": estimated}


def _measures_ages(estimate_age: bool | None, age_model, *, offline: bool, calibrate: bool, chooses: bool,
                   report) -> bool:
    """Whether the run estimates ages: as asked, else unless the age model is not at hand offline
    (then identity only, said through ``report``); ``chooses``: the generator is chosen per face by
    the same model, which is then needed anyway."""
    from agetool.weights import is_offline

    if estimate_age is False:
        if calibrate:
            raise UsageError(f"{arg('calibrate')} fits the anchors to estimated ages",
                             hint=f"drop {arg('estimate_age', False)}")
        return False
    if estimate_age or calibrate or chooses or age_model is not None or not is_offline(offline):
        return True
    from agetool.needs import at_hand

    if at_hand("genderage"):
        return True
    if report is not None:
        report(f"warning: the age model genderage is not at hand and network access is off: measuring identity "
               f"only (every estimated age is null; {arg('estimate_age', False)} says it is meant)")
    return False


def _require_models(generators, *, age_model, identity_model, identity, aligned: bool, mask: bool,
                    offline: bool, upscale: bool = False, report=None, progress=None) -> None:
    """Every model file the evaluation needs and does not have, in one error, before any loads."""
    from agetool import weights
    from agetool.errors import UnknownWeightsError
    from agetool.needs import pipeline_files, require

    groups = [group for g in generators for group in pipeline_files(g.pipeline.models, g.pipeline.model,
                                                                     landmarks=not aligned, parser=mask,
                                                                     upscale=upscale)]
    if age_model is None:  # "": identity only
        groups.append(["genderage"])
    if identity_model is None:
        try:
            groups.append([weights.get(identity).name])
        except UnknownWeightsError:  # not a registry name: the embedder says what it is
            pass
    require([list(g) for g in dict.fromkeys(tuple(g) for g in groups)], offline=offline, report=report,
            progress=progress)


def _generators(pipeline, *, model, weights, compare, report, progress, **common) -> list[_Generator]:
    from agetool import AgingPipeline
    from agetool.eval.measure import file_info

    if pipeline is not None:
        if weights is not None or compare:
            raise UsageError(f"give {arg('pipeline')} or {arg('weights')} / {arg('compare')}, not both")
        return [_Generator(_label(pipeline.model, None), pipeline, _generator_info(pipeline.model, None))]
    if compare:
        compare = list(compare)
        if len(compare) != 2 or weights is not None:
            raise UsageError(f"{arg('compare')}: expected two generator checkpoints (and no {arg('weights')})")
        names = [Path(c).name for c in compare]
        labels = names if names[0] != names[1] else [str(c) for c in compare]
        out = []
        for label, path in zip(labels, compare):
            pipe = AgingPipeline.from_pretrained(model, weights=path, report=report, progress=progress, **common)
            out.append(_Generator(label, pipe, {**file_info(None, Path(path)), "name": label}))
        return out
    pipe = AgingPipeline.from_pretrained(model, weights=weights, report=report, progress=progress, **common)
    label = _label(model, weights)
    info = {**file_info(None, Path(weights)), "name": label} if weights is not None else _generator_info(model, None)
    return [_Generator(label, pipe, info)]


def _label(model: str, weights) -> str:
    return Path(weights).name if weights is not None else f"lats-{model}"


def _generator_info(model: str, path) -> dict:
    from agetool.eval.measure import file_info

    if model in ("male", "female"):
        return file_info(f"lats-{model}", path)
    return {"name": f"lats-{model}", "file": None, "sha256": None, "revision": None}


def _used_info(g: _Generator) -> list[dict]:
    """The generator files a run used, each with its file name and sha256: a file given by path as
    it was, a registry generator as cached now (with ``auto``, each of the two that is at hand)."""
    from agetool.eval.measure import file_info
    from agetool.needs import at_hand

    model = g.pipeline.model
    if model not in ("male", "female", "auto") or g.info.get("sha256"):
        return [g.info]
    names = [f"lats-{model}"] if model != "auto" else [n for n in ("lats-male", "lats-female") if at_hand(n)]
    return [file_info(name, None) for name in names] or [g.info]


def _part_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"{index:06d}.json"


def _load_part(parts_dir: Path | None, index: int, path: Path, key: str) -> dict | None:
    """A part made for this photo with these settings and models, or None."""
    if parts_dir is None:
        return None
    try:
        part = json.loads(_part_path(parts_dir, index).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(part, dict) and part.get("photo") == str(path) and part.get("key") == key
    return part if ok else None


def _save_part(parts_dir: Path, index: int, part: dict) -> None:
    from agetool.files import write_text

    write_text(_part_path(parts_dir, index), json.dumps(part) + "\n")


def _missing(path: Path, key: str) -> dict:
    return {"photo": str(path), "key": key, "faces": [], "frames": [], "failed": "not evaluated (its process stopped)"}


def _finish(results: dict[int, dict], paths: list[Path], models: dict, settings: dict, pipeline,
            out: str | os.PathLike | None, report: Callable[[str], None] | None = None) -> dict:
    from agetool.eval import report as rep

    parts = [results[i] for i in sorted(results)]
    faces = [f for p in parts for f in p["faces"]]
    failed = [{"photo": p["photo"], "error": p["failed"]} for p in parts if p["failed"]]
    calibration = None
    frames = [fr for p in parts for fr in p["frames"]]
    if settings["calibrate_steps"] and frames:
        from agetool.ages import AGE_CLASSES
        from agetool.eval.calibrate import calibration as fit

        positions = [t for fr in frames for t in fr["positions"]]
        estimated = [e for fr in frames for e in fr["estimated"]]
        calibration = fit(positions, estimated, list(AGE_CLASSES), list(pipeline.anchor_ages))
    result = rep.build(faces, models=models, settings=settings, failed=failed, calibration=calibration)
    result, missing = rep.without_nan(result)
    if missing and report is not None:
        report(f"warning: {missing} value(s) of the report are not numbers (too few faces to measure?); "
               "they read as null")
    if out is not None:
        rep.write(result, Path(out))
    return result
