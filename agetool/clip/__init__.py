"""Ageing the people in video clips: every frame's faces aged and pasted back, the clip's size,
frame count, timestamps, rotation and audio kept.

- ``media``: recognise, probe and read clips; write H.264 with the source's timing and audio (PyAV).
- ``tracks``: faces linked across frames, followed between detections, a fast alignment warp.
- ``filters``: One-Euro smoothing of landmarks, easing of the paste-back mask.
- ``runner``: the clip pipeline (models loaded once, frames streamed in batches).

``AgingPipeline.age_clip`` and ``AgingPipeline.clip_frames`` call ``age_clip`` / ``clip_frames`` here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from agetool.clip.media import CLIP_SUFFIXES, ClipInfo, is_clip, probe
from agetool.clip.runner import ClipFrame, ClipRunner, Progressive
from agetool.options import DEFAULT_CRF, DEFAULT_NOISE, DEFAULT_SEED, AgeRequest, request as build_request

__all__ = ["CLIP_SUFFIXES", "ClipFrame", "ClipInfo", "age_clip", "clip_frames", "clip_outputs", "is_clip", "plan", "probe"]


def clip_outputs(src: str | os.PathLike, out, entries: Sequence[str], folder: Path | None = None) -> list[Path]:
    """Where each age's clip goes: ``out`` itself for one age (a file name), else
    ``<stem>_age<entry>.mp4`` in ``out`` (a folder) or in ``folder`` (default: here)."""
    from agetool.clip.media import check_output
    from agetool.errors import UsageError, arg

    stem = Path(src).stem
    names = [f"{stem}_age{entry}.mp4" for entry in entries]
    if out is None:
        return [(folder or Path(".")) / n for n in names]
    if isinstance(out, (list, tuple)):
        if len(out) != len(entries):
            raise UsageError(f"{arg('out')}: {len(out)} paths for {len(entries)} ages")
        return [check_output(p) for p in out]
    text = str(out)
    if text.endswith(("/", os.sep)) or Path(out).is_dir():
        return [Path(out) / n for n in names]
    if len(entries) > 1:
        raise UsageError(f"{arg('out', text)}: several ages give one clip each; --out is then a folder")
    return [check_output(out)]


def plan(pipe, ages=None, *, from_age: float | None = None, to_age: float | None = None, mask: bool = True,
         faces="all", min_face: int = 0, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE,
         upscale: int | None = None, candidates: int = 1) -> tuple[AgeRequest, list]:
    """A clip's request and what each of its output clips shows: the request's targets, or one
    ``Progressive`` age from ``from_age`` to ``to_age``. ``ages`` may be an ``AgeRequest`` already
    built (its options are then used, and its ages parsed no more)."""
    from agetool import validate
    from agetool.errors import UsageError, arg

    progressive = from_age is not None or to_age is not None
    if isinstance(ages, AgeRequest):
        request = ages
    else:
        if progressive and ages is not None:
            raise UsageError(f"{arg('ages')} and {arg('from_age')} / {arg('to_age')} exclude each other")
        if not progressive and ages is None:
            raise UsageError(f"a clip needs {arg('ages')} (or {arg('from_age')} / {arg('to_age')})",
                             hint="e.g. --ages 60")
        request = build_request(ages, mask=mask, faces=faces, min_face=min_face, seed=seed, noise=noise,
                                upscale=upscale, candidates=candidates)
    if not progressive:
        pipe.core.warn_old(request.render.targets)
        return request, list(request.render.targets)
    start = pipe.anchor_ages[0] if from_age is None else validate.finite("from_age", from_age, low=0, high=150)
    stop = pipe.anchor_ages[-1] if to_age is None else validate.finite("to_age", to_age, low=0, high=150)
    pipe.frame_ages(2, from_age=start, to_age=stop, frames=2)  # warns once for ages the model can't show
    return request, [Progressive(start, stop, f"{start:g}-{stop:g}")]


def clip_frames(pipe, src: str | os.PathLike, ages=None, *, from_age: float | None = None,
                to_age: float | None = None, parse: bool | None = None, detect_every: int = 5,
                info: ClipInfo | None = None, **options) -> Iterator[ClipFrame]:
    """The aged frames of ``src``, one ``ClipFrame`` at a time (``.image``; ``.images`` per age).
    ``options``: ``mask``, ``faces``, ``min_face``, ``seed``, ``noise``, ``upscale`` 2 or 4 (each
    aged face rendered at 512 / 1024 px by the super-resolution model and pasted at its own size in
    the frame), and ``candidates`` N (each person's most faithful of N noise draws, scored on their
    first frames and held for the whole clip); ``ages`` may be an ``AgeRequest`` instead."""
    request, specs = plan(pipe, ages, from_age=from_age, to_age=to_age, **options)
    return _frames(pipe, src, request, specs, parse=parse, detect_every=detect_every, info=info)


def _frames(pipe, src, request: AgeRequest, specs: list, *, parse: bool | None = None, detect_every: int = 5,
            info: ClipInfo | None = None) -> Iterator[ClipFrame]:
    from agetool import validate

    detect_every = validate.integer("detect_every", detect_every, low=1, high=1000)
    scored = request.render.candidates > 1  # draws are scored over the face's skin: the parser is needed
    if request.render.upscale > 1 or scored:  # every missing file in one error, before any work
        pipe.check_models(mask=request.face.mask or scored, upscale=request.render.upscale > 1)
    info = info or probe(src)
    mask = request.face.mask
    return iter(ClipRunner(pipe.core, info, request, specs, parse=mask if parse is None else parse,
                           detect_every=detect_every, batch=pipe.models.batch))


def age_clip(pipe, src: str | os.PathLike, out=None, ages=60, *, from_age: float | None = None,
             to_age: float | None = None, crf: int = DEFAULT_CRF, progress=None, parse: bool | None = None,
             detect_every: int = 5, label: bool = False, signing=None, **options) -> list[Path]:
    """Write ``src`` with its people aged: one clip per age (``out``: a file for one age, a folder,
    or a list of files); returns the paths written. ``ages`` and ``options`` are those of
    ``clip_frames``; ``progress(description, total) -> advance(n)`` replaces the pipeline's progress
    callback. Each clip says it is a composite with generated faces and carries its run record;
    ``label`` also writes a visible "AI-aged" mark in a corner of every frame; ``signing`` (an
    ``agetool.credentials.Signing``) signs each clip's Content Credentials."""
    from contextlib import ExitStack

    from agetool import validate
    from agetool.clip.media import ClipWriter
    from agetool.images import distinct_outputs

    src = Path(src)
    if not src.is_file():
        from agetool.errors import InputError

        raise InputError(f"{src}: no such file", hint="check the path")
    if (from_age is not None or to_age is not None) and not isinstance(ages, AgeRequest):
        ages = None
    crf = validate.integer("crf", crf, 0, 51)
    request, specs = plan(pipe, ages, from_age=from_age, to_age=to_age, **options)
    targets = clip_outputs(src, out, [s.entry for s in specs])
    distinct_outputs([("out", t) for t in targets], [src])
    info = probe(src)
    frames = _frames(pipe, src, request, specs, parse=parse, detect_every=detect_every, info=info)
    advance = (progress or pipe.core.progress)(f"ageing {src.name}", info.frames)
    with ExitStack() as stack:
        writers = [stack.enter_context(ClipWriter(t, info, crf)) for t in targets]
        if label:
            from agetool.images import disclose
        from agetool.provenance import source_sha256

        digest = source_sha256(src)
        for frame in frames:
            for writer, spec, image in zip(writers, specs, frame.images):
                if writer.marking is None:  # the models of the first frame (a Matroska header's tags)
                    writer.marking = clip_marking(pipe, src, spec.entry, request, digest, signing)
                writer.write(disclose(image) if label else image, frame.pts)
            advance(1)
        for writer, spec in zip(writers, specs):  # every model the frames needed, now known
            writer.marking = clip_marking(pipe, src, spec.entry, request, digest, signing)
    return [w.path for w in writers]


def clip_marking(pipe, src: Path, entry: str, request: AgeRequest, digest: str | None, signing=None):
    """The ``agetool.provenance.Marking`` of a clip of ``src`` (sha256 ``digest``) aged to ``entry``."""
    from agetool import __version__
    from agetool.provenance import COMPOSITE, Marking, Record

    render = request.render
    record = Record(__version__, pipe.models.used(None), render.seed, render.noise, (str(entry),), (), digest, "clip")
    return Marking(COMPOSITE, record, signing, str(src))
