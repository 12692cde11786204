"""Clips on the command line: `agetool age CLIP --ages 60` and `agetool video CLIP --from A --to B`."""

from __future__ import annotations

from pathlib import Path

from agetool.cli import console
from agetool.cli.outputs import is_folder


def clip_inputs(inputs: list[Path]) -> list[Path]:
    """The inputs that are video clips (by their bytes); a mix with photos is refused."""
    from agetool.clip import is_clip
    from agetool.errors import UsageError

    clips = [p for p in inputs if p.is_file() and is_clip(p)]
    if clips and len(clips) != len(inputs):
        raise UsageError("give clips and photos in separate runs")
    return clips


def given(*flags: str) -> list[str]:
    """Those of ``flags`` typed on the command line (``--fps 30`` counts, even at its default)."""
    return [f for f in flags if any(t == f or t.startswith(f + "=") for t in console.TYPED)]


def refuse(flags: list[str], why: str) -> None:
    """A usage error naming the ``flags`` given that a clip run would ignore."""
    from agetool.errors import UsageError

    if flags:
        raise UsageError(f"{', '.join(flags)}: {why}", hint="drop " + ("it" if len(flags) == 1 else "them"))


def _check_request(request) -> None:
    """The face options that apply to clips (every clip frame is pasted back)."""
    from agetool.errors import UsageError, arg

    if request.face.aligned:
        raise UsageError(f"{arg('aligned')} takes aligned photos; a clip's faces are found in every frame")
    refuse(given("--paste-back"), "a clip's frames are always whole, with the aged faces pasted back")


def _bar_progress(bar):
    """``progress(description, total) -> advance(n, faces=None)`` with the faces of the last frame and
    frames per second shown (``console.rate_column``)."""
    def progress(description: str, total: int | None):
        task = bar.add_task(description, total=total, unit="frames")

        def advance(n: int, faces: int | None = None) -> None:
            bar.update(task, advance=n, **({} if faces is None else {"faces": faces}))

        return advance

    return progress


def _run(clips: list[Path], out, request, crf: int, build, *, from_age=None, to_age=None,
         profile: bool = False, marks=None, truncated: str = "fail") -> int:
    from agetool.cli.options import print_profile
    from agetool.clip import clip_outputs, probe
    from agetool.images import distinct_outputs
    from agetool.options import MAX_CLIP_PIXELS

    _check_request(request)
    several = len(clips) > 1
    limit = min(getattr(build, "options", {}).get("max_pixels", MAX_CLIP_PIXELS), MAX_CLIP_PIXELS)
    infos = [probe(clip, limit) for clip in clips]  # an unreadable or oversized clip fails before models load
    with console.progress() as bar:
        pipe = build(bar)
        entries = request.render.labels if from_age is None and to_age is None else ["progressive"]
        plans = []
        for clip, info in zip(clips, infos):
            if from_age is not None or to_age is not None:
                name = f"{clip.stem}_aging.mp4"
                target = Path(name) if out is None else Path(out) / name if is_folder(out) or several else Path(out)
                targets = [target]
            else:
                folder = Path(out) if out is not None and (several or is_folder(out)) else None
                targets = clip_outputs(clip, None if folder is not None else out, entries, folder)
            plans.append((clip, info, targets))
        distinct_outputs([("out", t) for _, _, ts in plans for t in ts], clips)
        for clip, info, targets in plans:
            written = pipe.age_clip(clip, targets, request, from_age=from_age, to_age=to_age, crf=crf,
                                    progress=_bar_progress(bar), label=getattr(marks, "label", False),
                                    signing=getattr(marks, "signing", None), truncated=truncated)
            for path in written:
                console.info(f"{clip} -> {path}  ({info.frames} frames, {info.size[0]}x{info.size[1]}"
                             f"{', audio copied' if info.audio else ''})")
    if profile:
        print_profile(pipe)
    return 0


def age_clips(clips: list[Path], out, ages, request, crf: int, build, profile: bool = False, marks=None,
              truncated: str = "fail") -> int:
    """`agetool age CLIP... --ages LIST`: one clip per input and age (``request``: the run's, with
    ``ages`` parsed once)."""
    from agetool.errors import UsageError, arg

    refuse(given("--tiles", "--no-labels", "--skip-existing"), "only for photos; a clip gives one clip per age")
    if ages is None:
        raise UsageError(f"a clip needs {arg('ages')}", hint="e.g. --ages 60, or `agetool video CLIP --from 20 --to 70`")
    return _run(clips, out, request, crf, build, profile=profile, marks=marks, truncated=truncated)


def video_clip(clip: Path, out, from_age, to_age, crf: int, build, request, profile: bool = False,
               marks=None, truncated: str = "fail") -> int:
    """`agetool video CLIP --from A --to B`: the people aged progressively over the clip."""
    from agetool.errors import UsageError, arg

    refuse(given("--fps", "--steps", "--seconds", "--hold", "--frames", "--caption", "--max-size"),
           "only for a photo's video; a clip keeps its own frames, timing and size")

    if from_age is None and to_age is None:
        raise UsageError(f"a clip is aged progressively from {arg('from_age')} to {arg('to_age')} (years)",
                         hint="e.g. --from 20 --to 70")
    return _run([clip], out, request, crf, build, from_age=from_age, to_age=to_age, profile=profile, marks=marks,
                truncated=truncated)
