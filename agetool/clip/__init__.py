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
from agetool.options import DEFAULT_CRF, DEFAULT_NOISE, DEFAULT_SEED

__all__ = ["CLIP_SUFFIXES", "ClipFrame", "ClipInfo", "age_clip", "clip_frames", "clip_outputs", "is_clip", "probe"]


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


def _specs(pipe, ages, from_age, to_age) -> list:
    from agetool import validate

    if from_age is not None or to_age is not None:
        if ages is not None:
            from agetool.errors import UsageError, arg

            raise UsageError(f"{arg('ages')} and {arg('from_age')} / {arg('to_age')} exclude each other")
        start = pipe.anchor_ages[0] if from_age is None else validate.finite("from_age", from_age, low=0, high=150)
        stop = pipe.anchor_ages[-1] if to_age is None else validate.finite("to_age", to_age, low=0, high=150)
        pipe.frame_ages(2, from_age=start, to_age=stop, frames=2)  # warns once for ages the model can't show
        return [Progressive(start, stop, f"{start:g}-{stop:g}")]
    if ages is None:
        from agetool.errors import UsageError, arg

        raise UsageError(f"a clip needs {arg('ages')} (or {arg('from_age')} / {arg('to_age')})",
                         hint="e.g. --ages 60")
    return pipe.targets(ages)


def clip_frames(pipe, src: str | os.PathLike, ages=None, *, from_age: float | None = None,
                to_age: float | None = None, mask: bool = True, parse: bool | None = None, faces: str = "all",
                min_face: int = 0, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE, detect_every: int = 5,
                upscale: int | None = None, info: ClipInfo | None = None) -> Iterator[ClipFrame]:
    """The aged frames of ``src``, one ``ClipFrame`` at a time (``.image``; ``.images`` per age).
    ``upscale`` 2 or 4: each aged face is rendered at 512 / 1024 px by the super-resolution model
    and pasted at its own size in the frame."""
    from agetool import validate
    from agetool.faces import check_faces
    from agetool.upscale import check_factor

    faces = check_faces(faces)  # a reference person: only the tracks of that person's faces
    validate.integer("min_face", min_face, low=0)
    seed = validate.seed(seed)
    noise = validate.finite("noise", noise, low=0, high=10)
    detect_every = validate.integer("detect_every", detect_every, low=1, high=1000)
    factor = check_factor(upscale)
    specs = _specs(pipe, ages, from_age, to_age)
    if factor > 1:  # every missing file in one error, before any work
        pipe.check_models(mask=mask, upscale=True)
    info = info or probe(src)
    return iter(ClipRunner(pipe, info, specs, mask=mask, parse=mask if parse is None else parse, faces=faces,
                           min_face=min_face, seed=seed, noise=noise, detect_every=detect_every,
                           batch=pipe.models.batch, upscale=factor))


def age_clip(pipe, src: str | os.PathLike, out=None, ages=60, *, from_age: float | None = None,
             to_age: float | None = None, crf: int = DEFAULT_CRF, progress=None, **options) -> list[Path]:
    """Write ``src`` with its people aged: one clip per age (``out``: a file for one age, a folder,
    or a list of files); returns the paths written. ``options`` are those of ``clip_frames``;
    ``progress(description, total) -> advance(n)`` replaces the pipeline's progress callback."""
    from contextlib import ExitStack

    from agetool import validate
    from agetool.clip.media import ClipWriter
    from agetool.images import distinct_outputs

    src = Path(src)
    if not src.is_file():
        from agetool.errors import InputError

        raise InputError(f"{src}: no such file", hint="check the path")
    if from_age is not None or to_age is not None:
        ages = None
    crf = validate.integer("crf", crf, 0, 51)
    specs = _specs(pipe, ages, from_age, to_age)
    targets = clip_outputs(src, out, [s.entry for s in specs])
    distinct_outputs([("out", t) for t in targets], [src])
    info = probe(src)
    frames = clip_frames(pipe, src, ages, from_age=from_age, to_age=to_age, info=info, **options)
    advance = (progress or pipe._progress)(f"ageing {src.name}", info.frames)
    with ExitStack() as stack:
        writers = [stack.enter_context(ClipWriter(t, info, crf)) for t in targets]
        for frame in frames:
            for writer, image in zip(writers, frame.images):
                writer.write(image, frame.pts)
            advance(1)
    return [w.path for w in writers]
