"""Clips on the command line: `agetool age CLIP --ages 60` and `agetool video CLIP --from A --to B`."""

from __future__ import annotations

from pathlib import Path

from agetool.cli import console


def clip_inputs(inputs: list[Path]) -> list[Path]:
    """The inputs that are video clips (by their bytes); a mix with photos is refused."""
    from agetool.clip import is_clip
    from agetool.errors import UsageError

    clips = [p for p in inputs if p.is_file() and is_clip(p)]
    if clips and len(clips) != len(inputs):
        raise UsageError("give clips and photos in separate runs")
    return clips


def _check_request(request) -> None:
    """The face options that apply to clips (every clip frame is pasted back)."""
    from agetool.errors import UsageError, arg

    if request.face.aligned:
        raise UsageError(f"{arg('aligned')} takes aligned photos; a clip's faces are found in every frame")


def _bar_progress(bar):
    """``progress(description, total) -> advance`` with frames per second shown (``console.RateColumn``)."""
    def progress(description: str, total: int | None):
        task = bar.add_task(description, total=total, unit="frames")
        return lambda n: bar.advance(task, n)

    return progress


def _run(clips: list[Path], out, request, crf: int, build, *, from_age=None, to_age=None,
         profile: bool = False, marks=None) -> int:
    from agetool.cli.options import print_profile
    from agetool.clip import clip_outputs, probe
    from agetool.images import distinct_outputs

    _check_request(request)
    several = len(clips) > 1
    with console.progress() as bar:
        pipe = build(bar)
        entries = request.render.labels if from_age is None and to_age is None else ["progressive"]
        plans = []
        for clip in clips:
            info = probe(clip)  # an unreadable clip fails before any work
            if from_age is not None or to_age is not None:
                name = f"{clip.stem}_aging.mp4"
                target = Path(name) if out is None else Path(out) / name if _folder(out) or several else Path(out)
                targets = [target]
            else:
                folder = Path(out) if out is not None and (several or _folder(out)) else None
                targets = clip_outputs(clip, None if folder is not None else out, entries, folder)
            plans.append((clip, info, targets))
        distinct_outputs([("out", t) for _, _, ts in plans for t in ts], clips)
        for clip, info, targets in plans:
            written = pipe.age_clip(clip, targets, request, from_age=from_age, to_age=to_age, crf=crf,
                                    progress=_bar_progress(bar), label=getattr(marks, "label", False),
                                    signing=getattr(marks, "signing", None))
            for path in written:
                console.info(f"{clip} -> {path}  ({info.frames} frames, {info.size[0]}x{info.size[1]}"
                             f"{', audio copied' if info.audio else ''})")
    if profile:
        print_profile(pipe)
    return 0


def _folder(out: str) -> bool:
    import os

    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def age_clips(clips: list[Path], out, ages, request, crf: int, build, profile: bool = False, marks=None) -> int:
    """`agetool age CLIP... --ages LIST`: one clip per input and age (``request``: the run's, with
    ``ages`` parsed once)."""
    from agetool.errors import UsageError, arg

    if ages is None:
        raise UsageError(f"a clip needs {arg('ages')}", hint="e.g. --ages 60, or `agetool video CLIP --from 20 --to 70`")
    return _run(clips, out, request, crf, build, profile=profile, marks=marks)


def video_clip(clip: Path, out, from_age, to_age, crf: int, build, request, profile: bool = False,
               photo_only: list[str] = (), marks=None) -> int:
    """`agetool video CLIP --from A --to B`: the people aged progressively over the clip (``photo_only``:
    the flags given that only a photo's video takes)."""
    from agetool.errors import UsageError, arg

    if photo_only:
        raise UsageError(f"{', '.join(photo_only)}: only for a photo's video; a clip keeps its own frames and timing")

    if from_age is None and to_age is None:
        raise UsageError(f"a clip is aged progressively from {arg('from_age')} to {arg('to_age')} (years)",
                         hint="e.g. --from 20 --to 70")
    return _run([clip], out, request, crf, build, from_age=from_age, to_age=to_age, profile=profile, marks=marks)
