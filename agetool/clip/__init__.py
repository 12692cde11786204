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

__all__ = ["CLIP_SUFFIXES", "ClipFrame", "ClipInfo", "age_clip", "age_groups", "clip_frames", "clip_limit", "clip_outputs",
           "clip_source", "is_clip", "plan", "probe"]


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


def clip_limit(pipe) -> int:
    """Pixels a clip's frame may have: the pipeline's ``max_pixels``, at most ``MAX_CLIP_PIXELS``."""
    from agetool.options import MAX_CLIP_PIXELS

    return min(pipe.max_pixels, MAX_CLIP_PIXELS)


def clip_source(src, argument: str = "src") -> Path:
    """``src`` as the path of a video clip, else a typed error naming ``argument``."""
    from agetool.errors import InputError, UsageError, arg

    if not isinstance(src, (str, os.PathLike)):
        raise UsageError(f"{arg(argument)}: a clip is given as a file path, not {type(src).__name__}",
                         hint="photos and arrays are aged with age() / render()")
    path = Path(src)
    if not path.is_file():
        raise InputError(f"{path}: no such file", hint="check the path")
    if not is_clip(path):
        raise InputError(f"{path}: not a video clip (MP4, MOV, MKV, WebM or AVI)",
                         hint="photos are aged with age(), or `agetool age PHOTO` on the command line")
    return path


def clip_frames(pipe, src: str | os.PathLike, ages=None, *, from_age: float | None = None,
                to_age: float | None = None, parse: bool | None = None, detect_every: int = 5,
                info: ClipInfo | None = None, **options) -> Iterator[ClipFrame]:
    """The aged frames of ``src``, one ``ClipFrame`` at a time (``.image``; ``.images`` per age).
    ``options``: ``mask``, ``faces``, ``min_face``, ``seed``, ``noise``, ``upscale`` 2 or 4 (each
    aged face rendered at 512 / 1024 px by the super-resolution model and pasted at its own size in
    the frame), and ``candidates`` N (each person's most faithful of N noise draws, scored on their
    first frames and held for the whole clip); ``ages`` may be an ``AgeRequest`` instead. Frames over
    the pipeline's ``max_pixels`` (at most ``MAX_CLIP_PIXELS``) are refused; the first that breaks it
    stops the run."""
    src = clip_source(src)
    request, specs = plan(pipe, ages, from_age=from_age, to_age=to_age, **options)
    return _frames(pipe, src, request, specs, parse=parse, detect_every=detect_every, info=info)


def _frames(pipe, src, request: AgeRequest, specs: list, *, parse: bool | None = None, detect_every: int = 5,
            info: ClipInfo | None = None) -> Iterator[ClipFrame]:
    from agetool import validate

    detect_every = validate.integer("detect_every", detect_every, low=1, high=1000)
    scored = request.render.candidates > 1  # draws are scored over the face's skin: the parser is needed
    if request.render.upscale > 1 or scored:  # every missing file in one error, before any work
        pipe.check_models(mask=request.face.mask or scored, upscale=request.render.upscale > 1)
    info = info or probe(src, clip_limit(pipe))
    mask = request.face.mask
    return iter(ClipRunner(pipe.core, info, request, specs, parse=mask if parse is None else parse,
                           detect_every=detect_every, batch=pipe.models.batch))


def age_groups(specs: list, info: ClipInfo) -> list[list]:
    """The ages of each pass over a clip: as many as ``CLIP_PASS_PIXELS`` allows encoders for at once."""
    from agetool.options import CLIP_PASS_PIXELS

    size = max(1, CLIP_PASS_PIXELS // max(1, info.width * info.height))
    return [specs[i:i + size] for i in range(0, len(specs), size)]


def age_clip(pipe, src: str | os.PathLike, out=None, ages=60, *, from_age: float | None = None,
             to_age: float | None = None, crf: int = DEFAULT_CRF, progress=None, parse: bool | None = None,
             detect_every: int = 5, label: bool = False, signing=None, truncated: str = "fail",
             **options) -> list[Path]:
    """Write ``src`` with its people aged: one clip per age (``out``: a file for one age, a folder,
    or a list of files); returns the paths written. ``ages`` and ``options`` are those of
    ``clip_frames``; ``progress(description, total) -> advance(n)`` replaces the pipeline's progress
    callback (an ``advance`` that takes a ``faces`` keyword is also told the faces of each frame). Each clip says it is a composite with generated faces and carries its run record;
    ``label`` also writes a visible "AI-aged" mark in a corner of every frame; ``signing`` (an
    ``agetool.credentials.Signing``) signs each clip's Content Credentials.

    Memory is bounded whatever the number of ages: ages whose encoders would hold more than
    ``CLIP_PASS_PIXELS`` at once take further passes over the clip (the same frames, the same
    results). A clip that ends before the frames its index lists (a cut file) raises ``InputError``
    and leaves no file; ``truncated="keep"`` writes the frames it has and reports a warning instead."""
    from contextlib import ExitStack, closing

    from agetool import validate
    from agetool.clip.media import ClipWriter
    from agetool.clip.overlap import Behind, queue_size
    from agetool.errors import UsageError, arg
    from agetool.images import distinct_outputs

    src = clip_source(src)
    if progress is not None and not callable(progress):
        raise UsageError(f"{arg('progress')}: expected a function (description, total) -> advance(n), "
                         f"got {type(progress).__name__}")
    if truncated not in ("fail", "keep"):
        raise UsageError(f"{arg('truncated', truncated)}: expected 'fail' or 'keep'")
    if (from_age is not None or to_age is not None) and not isinstance(ages, AgeRequest):
        ages = None
    crf = validate.integer("crf", crf, 0, 51)
    request, specs = plan(pipe, ages, from_age=from_age, to_age=to_age, **options)
    targets = clip_outputs(src, out, [s.entry for s in specs])
    distinct_outputs([("out", t) for t in targets], [src])
    info = probe(src, clip_limit(pipe))
    groups = age_groups(specs, info)
    advance = _counting_faces((progress or pipe.core.progress)(f"ageing {src.name}", info.frames * len(groups)))
    with ExitStack() as stack:
        writers = [stack.enter_context(ClipWriter(t, info, crf)) for t in targets]
        from agetool.images import disclose
        from agetool.provenance import source_sha256

        def write(writer: ClipWriter, image, pts: int) -> None:
            writer.write(disclose(image) if label else image, pts)

        digest = source_sha256(src)
        first = 0
        for group in groups:
            mine, kinds = writers[first:first + len(group)], specs[first:first + len(group)]
            first += len(group)
            info.repaired, info.broken = 0, None
            frames = _frames(pipe, src, request, group, parse=parse, detect_every=detect_every, info=info)
            # H.264 (libx264) and the audio copied alongside, in a thread while the next frames are aged
            size = queue_size(info.width * info.height * 3 * len(group), pipe.models.batch or 8)
            with closing(frames), Behind(write, size, "agetool-write", pipe.models.timer, "write") as behind:
                for frame in frames:
                    for writer, spec, image in zip(mine, kinds, frame.images):
                        if writer.marking is None:  # the models of the first frame (a Matroska header's tags)
                            writer.marking = clip_marking(pipe, src, spec.entry, request, digest, signing)
                        behind.put(writer, image, frame.pts)
                    advance(1, frame.faces)
                behind.finish()
            _check_complete(pipe, info, mine[0].frames, truncated)
            for writer, spec in zip(mine, kinds):
                with pipe.models.timer("write"):
                    writer.finish()  # the encoders of this pass are freed before the next pass opens its own
                writer.marking = clip_marking(pipe, src, spec.entry, request, digest, signing)  # every model used
    return [w.path for w in writers]


def _counting_faces(advance):
    """``advance(n, faces)`` from a progress callback's ``advance``: the faces are passed on where it
    takes a ``faces`` keyword (or any keyword), dropped where it takes ``n`` alone."""
    import inspect

    try:
        params = inspect.signature(advance).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        params = ()
    if any(p.name == "faces" or p.kind is p.VAR_KEYWORD for p in params):
        return lambda n, faces: advance(n, faces=faces)
    return lambda n, faces: advance(n)


def _check_complete(pipe, info: ClipInfo, frames: int, truncated: str) -> None:
    """A clip whose frames ended well before its index said: an error (or a warning with ``"keep"``)."""
    from agetool.errors import InputError, arg

    if info.repaired:
        pipe.core.warn_once(f"{info.path}: {info.repaired} frame(s) had a timestamp that repeated or went back; "
                            "each was given the next one after its predecessor's")
    expected = max(info.frames, info.listed)
    if info.broken is None and expected - frames <= max(2, expected // 100):  # a decoder may drop a few leading frames
        return
    why = "the file is cut short" if info.broken is None else \
        f"cut short or damaged there, or a frame over {info.max_pixels or 0:,} pixels: {info.broken}"
    message = f"{info.path}: only {frames} of its {expected} frames could be read ({why})"
    if truncated == "keep":
        pipe.core.warn_once(message + "; the aged clip has those frames")
        return
    raise InputError(message, hint=f"check the file, or keep what it has with {arg('truncated', 'keep')}")


def clip_marking(pipe, src: Path, entry: str, request: AgeRequest, digest: str | None, signing=None):
    """The ``agetool.provenance.Marking`` of a clip of ``src`` (sha256 ``digest``) aged to ``entry``."""
    from agetool import __version__
    from agetool.provenance import COMPOSITE, Marking, Record

    render = request.render
    record = Record(__version__, pipe.models.used(None), render.seed, render.noise, (str(entry),), (), digest, "clip")
    return Marking(COMPOSITE, record, signing, str(src))
