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

from agetool.errors import InputError, UsageError, arg

PARTS = ".parts"


@dataclass
class _Generator:
    label: str
    pipeline: object  # agetool.AgingPipeline
    info: dict


def evaluate(photos: Sequence[str | os.PathLike] | str | os.PathLike, pipeline, request=None, options=None, *,
             dist=None) -> dict:
    """Measure how old the outputs look and whether they keep the person's identity.

    Example::

        from agetool.options import EvalOptions, request

        pipe = agetool.AgingPipeline.from_pretrained(model="female")
        report = agetool.evaluate("photos/", pipe, request("5,20,45"), EvalOptions.of(identity="dlib", out="eval/"))

    Every face of ``photos`` (files, or folders searched recursively) is rendered by ``pipeline``
    (an ``AgingPipeline``; a sequence of them compares their generators in one report, each named
    by its checkpoint file or ``lats-MODEL``) as ``request`` asks (``agetool.options.request``:
    the ages, default the six classes; faces, alignment, mask, seed, noise and ``upscale``), and each output gets ``estimated_age`` (``options.age_model``, default the
    registry's ``genderage``), ``skin_tone`` (the CIELAB chroma distance of input and output over
    the input's skin, ``agetool.faithful``; None with ``mask=False``, where faces are not parsed)
    and ``identity``, the identity model's score of input and output: the cosine similarity of
    ArcFace-type embeddings (``"auraface"``, ``"arcface-w600k"``, or an ``.onnx``
    ``identity_model`` file) or the Euclidean distance of dlib's face descriptors (``"dlib"``: no
    download). ``identity="auto"`` (default) takes auraface where it is cached, else dlib, and says
    so through the pipeline's ``report``; ``report["models"]["identity"]`` names the model, its
    file, sha256, ``metric`` (``"cosine"`` or ``"distance"``) and ``threshold``. Models are fetched
    as the (first) pipeline fetches its own: ``offline``, ``report`` and ``progress`` are its.

    ``options`` (``agetool.options.EvalOptions``): ``calibrate=True`` also renders a traversal of
    each face (``calibrate_steps`` frames per class transition) and fits the class anchor ages that
    make the estimated age follow the requested age (``report["calibration"]["anchors"]``, written
    to ``out/anchors.json``, usable as ``age_anchors``); ``estimate_age=False`` measures identity
    only, without the age model (every ``estimated_age`` is None); None (default) does so, saying
    it, when the age model is not at hand and network access is off. With ``out``, writes
    ``report.json``, ``report.md``, ``report.png`` there. ``request.render.upscale`` 2 or 4 also
    measures every output after super-resolution (the pipeline's ``upscale_weights``): each output
    gets ``upscaled: {estimated_age, identity}`` next to the 256 px numbers, and the summary
    ``upscaled_*`` means. Returns the report (what ``report.json`` holds; see ``agetool.eval.report``).
    """
    from agetool.device import env_dist
    from agetool.eval.measure import Measurer
    from agetool.images import find_images
    from agetool.options import AgeRequest, EvalOptions, request as build_request

    request = build_request() if request is None else request
    options = EvalOptions() if options is None else options
    if not isinstance(request, AgeRequest):
        raise UsageError(f"{arg('request', request)}: expected an AgeRequest (agetool.options.request(...))")
    if not isinstance(options, EvalOptions):
        raise UsageError(f"{arg('options', options)}: expected EvalOptions (agetool.options.EvalOptions.of(...))")
    face_options, render = request.face, request.render
    if face_options.paste_back or render.candidates > 1:
        name = "paste_back" if face_options.paste_back else "candidates"
        raise UsageError(f"{arg(name, getattr(face_options, name, render.candidates))}: eval measures the aged faces "
                         "of the run's seed", hint=f"drop {arg(name)}")
    generators = _generators(pipeline)
    if options.calibrate and len(generators) > 1:
        raise UsageError(f"{arg('calibrate')} fits the anchors of one generator", hint=f"drop {arg('compare')}")
    dist = dist or env_dist()
    out = options.out
    if out is None and dist.world > 1:
        raise UsageError(f"a multi-process run needs {arg('out')}, where the results of each photo are kept")
    if out is not None:
        from agetool.eval.plot import require_matplotlib

        require_matplotlib()
    paths = find_images([photos] if isinstance(photos, (str, os.PathLike)) else list(photos))
    if not paths:
        raise InputError(f"{arg('photos', photos)}: no images found")
    if out is not None:  # the report set never replaces a photo being measured
        from agetool.images import outputs_clear

        outputs_clear("out", out, r"report\.(json|md|png)|anchors\.json", paths)
    first = generators[0].pipeline
    loading = first.models.loading  # how every model file is had: offline, progress, report
    chooses = any(g.pipeline.model == "auto" for g in generators)  # genderage is needed anyway
    measure_ages = _measures_ages(options, loading, chooses=chooses)
    if dist.world > 1:
        from agetool.shards import join

        join(dist)  # every rank running, before any work (a bounded wait)
    first.core.warn_old(render.targets)
    _require_models(generators, age_model=options.age_model if measure_ages else "",
                    identity_model=options.identity_model, identity=options.identity, face=face_options,
                    upscale=render.upscale > 1)
    measurer = Measurer.load(age_model=options.age_model, identity_model=options.identity_model,
                             identity=options.identity, device=first.device, loading=loading, ages=measure_ages)
    used = {"generator": [g.info for g in generators], **measurer.models}
    calibrate_steps = options.calibrate_steps if options.calibrate else 0
    settings = {"targets": render.labels, "anchors": dict(first.age_anchors), "seed": render.seed,
                "noise": render.noise, "aligned": face_options.aligned, "mask": face_options.mask,
                "faces": face_options.faces, "min_face": face_options.min_face,
                "calibrate_steps": calibrate_steps or None}
    if render.upscale > 1:
        settings["upscale"] = render.upscale
    key = hashlib.sha256(json.dumps([settings, used], sort_keys=True, default=str).encode()).hexdigest()
    run = _Run(generators, measurer, render, face_options, calibrate_steps)
    parts_dir = Path(out) / PARTS if out is not None else None
    mine = dist.shard(list(enumerate(paths)))
    results: dict[int, dict] = {}
    advance = loading.advance("evaluating", len(mine))
    try:
        for index, path in mine:
            part = _load_part(parts_dir, index, path, key) if options.skip_existing else None
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
    used["generator"] = [info for g in generators for info in _used_info(g)]  # files fetched meanwhile
    return _finish(results, paths, used, settings, first, out if dist.main else None, say=loading.say)


class _Run:
    """One evaluation's models and settings; ``photo(path)`` measures every face of one photo."""

    def __init__(self, generators, measurer, render, face, calibrate_steps: int):
        self.generators, self.measurer, self.render, self.face = generators, measurer, render, face
        self.calibrate_steps = calibrate_steps

    def photo(self, path: Path, key: str) -> dict:
        from agetool.eval.report import add_skin_tones, add_upscaled, face_record
        from agetool.faithful import skin_tones

        render, face_options = self.render, self.face
        part = {"photo": str(path), "key": key, "faces": [], "frames": [], "failed": None}
        try:
            for g in self.generators:
                core = g.pipeline.core
                enc = g.pipeline.encode(path, aligned=face_options.aligned, mask=face_options.mask,
                                        faces=face_options.faces, min_face=face_options.min_face,
                                        estimate=True if render.relative else "auto")
                for face, (tiles, _) in zip(enc.faces, core.draws(enc.faces, render)):  # the run's seed
                    years = core.years(face, render.targets)
                    measures = self.measurer.measure(face.aligned, tiles, face.crop_landmarks)
                    record = face_record(str(path), face.index, g.label, face.model,
                                         list(zip(render.labels, years)), measures)
                    if face.parsing is not None:  # parsed for the mask: the skin is known
                        add_skin_tones(record, skin_tones(face.aligned, tiles, face.parsing))
                    if render.upscale > 1:  # the same outputs after super-resolution, measured the same way
                        up = self.measurer.measure(face.aligned, core.upscale(tiles, render.upscale),
                                                   face.crop_landmarks)
                        add_upscaled(record, up)
                    part["faces"].append(record)
                    if self.calibrate_steps:
                        part["frames"].append(self._traversal(core, face))
        except InputError as e:  # this photo can't be used (unreadable, no face): keep going
            part["faces"], part["frames"], part["failed"] = [], [], str(e)
        return part

    def _traversal(self, core, face) -> dict:
        from agetool.ages import AgeTarget, traversal_ages

        steps = self.calibrate_steps
        years = traversal_ages(steps, core.anchor_ages)
        targets = [AgeTarget(f"{y:g}", "years", float(y)) for y in years]
        tiles = core.decode([(face, core.latents(face, targets, self.render.noise, self.render.seed))])[0]
        estimated = self.measurer.ages(face.aligned, tiles, face.crop_landmarks)
        return {"positions": [i / steps for i in range(len(years))], "estimated": estimated}


def _measures_ages(options, loading, *, chooses: bool) -> bool:
    """Whether the run estimates ages: as asked, else unless the age model is not at hand offline
    (then identity only, said through ``loading``); ``chooses``: a generator is chosen per face by
    the same model, which is then needed anyway."""
    from agetool.weights import is_offline

    if options.estimate_age is False:
        return False
    if options.estimate_age or options.calibrate or chooses or options.age_model is not None \
            or not is_offline(loading.offline):
        return True
    from agetool.needs import at_hand

    if at_hand("genderage"):
        return True
    loading.say(f"warning: the age model genderage is not at hand and network access is off: measuring identity "
           f"only (every estimated age is null; {arg('estimate_age', False)} says it is meant)")
    return False


def _require_models(generators, *, age_model, identity_model, identity, face, upscale: bool) -> None:
    """Every model file the evaluation needs and does not have, in one error, before any loads."""
    from agetool import weights
    from agetool.errors import UnknownWeightsError
    from agetool.needs import pipeline_files, require

    groups = [group for g in generators for group in pipeline_files(g.pipeline.models, g.pipeline.model,
                                                                     landmarks=not face.aligned, parser=face.mask,
                                                                     upscale=upscale)]
    if age_model is None:  # "": identity only
        groups.append(["genderage"])
    if identity_model is None:
        try:
            groups.append([weights.get(identity).name])
        except UnknownWeightsError:  # not a registry name: the embedder says what it is
            pass
    require([list(g) for g in dict.fromkeys(tuple(g) for g in groups)], generators[0].pipeline.models.loading)


def _generators(pipeline) -> list[_Generator]:
    """The generators compared: one pipeline, or each of a sequence, named by its checkpoint file
    (its full path where two files share a name) or ``lats-MODEL``."""
    from agetool.eval.measure import file_info

    pipelines = list(pipeline) if isinstance(pipeline, (list, tuple)) else [pipeline]
    if not pipelines or not all(hasattr(p, "core") and hasattr(p, "encode") for p in pipelines):
        raise UsageError(f"{arg('pipeline', pipeline)}: expected an AgingPipeline or a list of them")
    files = [p.model if isinstance(p.model, Path) else None for p in pipelines]
    labels = [Path(f).name if f is not None else f"lats-{p.model}" for p, f in zip(pipelines, files)]
    if len(set(labels)) < len(labels):
        labels = [str(f) if f is not None else label for f, label in zip(files, labels)]
    if len(set(labels)) < len(labels):
        raise UsageError(f"{arg('pipeline')}: two pipelines with the same generator", hint="compare different ones")
    return [_Generator(label, p, {**file_info(None, Path(f)), "name": label} if f is not None
                       else _generator_info(p.model, None)) for p, f, label in zip(pipelines, files, labels)]


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
            out: str | os.PathLike | None, say: Callable[[str], None]) -> dict:
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
    if missing:
        say(f"warning: {missing} value(s) of the report are not numbers (too few faces to measure?); "
               "they read as null")
    if out is not None:
        rep.write(result, Path(out))
    return result
