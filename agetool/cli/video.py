"""`agetool video`: continuous aging of one photo as an MP4, or a clip's people aged over its length."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from agetool.cli import console
from agetool.cli.marking import marking_options
from agetool.cli.options import face_options, pipeline_options, print_profile
from agetool.cli.outputs import is_folder
from agetool.options import DEFAULT_CRF, DEFAULT_FPS, DEFAULT_STEPS


@pipeline_options
@face_options
@marking_options
def video(
    input: Annotated[Path, typer.Argument(help="A photo (or an aligned crop with --aligned), or a video clip: its people aged from --from to --to over its length.", show_default=False)],
    out: Annotated[Optional[str], typer.Option("--out", "-o", metavar="FILE.mp4", help="MP4 file, or a folder (existing, or ending in /) for <stem>_aging.mp4. Default: here.")] = None,
    fps: Annotated[float, typer.Option("--fps", metavar="N", help="Frames per second.")] = DEFAULT_FPS,
    steps: Annotated[int, typer.Option("--steps", metavar="N", help="Frames per transition between age classes: 5 x N + 1 frames (with --from/--to: the same density in years).")] = DEFAULT_STEPS,
    from_age: Annotated[Optional[float], typer.Option("--from", metavar="YEARS", help="First age in years (default: the youngest class, 1). With --from or --to, frames are spaced uniformly in years.")] = None,
    to_age: Annotated[Optional[float], typer.Option("--to", metavar="YEARS", help="Last age in years (default: the oldest class, 59.5).")] = None,
    seconds: Annotated[Optional[float], typer.Option("--seconds", metavar="S", help="Length of the video (instead of --steps): seconds x fps frames, spaced in years.")] = None,
    hold: Annotated[float, typer.Option("--hold", metavar="S", help="Seconds to hold the first and last frame in the MP4.")] = 0.0,
    crf: Annotated[int, typer.Option("--crf", metavar="Q", help="H.264 quality: 0 lossless ... 51 worst; 18 is visually lossless.")] = DEFAULT_CRF,
    truncated: Annotated[str, typer.Option("--truncated", metavar="fail|keep", help="Clips: a clip cut short (fewer frames than its index lists) fails, or with keep gives the frames it has, with a warning.")] = "fail",
    frames_dir: Annotated[Optional[Path], typer.Option("--frames", metavar="DIR", help="Also write every frame as DIR/frame_00000.png ...", file_okay=False)] = None,
    caption: Annotated[bool, typer.Option("--caption", help="Write the age in years on each frame of the MP4.")] = False,
    max_size: Annotated[int, typer.Option("--max-size", metavar="PX", help="With --paste-back, scale frames down to this long side.")] = 1080,
    profile: Annotated[bool, typer.Option("--profile", help="Print the time spent in each stage.")] = False,
    *, build, face_kwargs, marks,
) -> int:
    """Continuous aging as an H.264 MP4, youngest to oldest (faces side by side, or the whole photo
    with --paste-back).

    Examples:

      agetool video me.jpg --fps 30

      agetool video me.jpg --from 2 --to 65 --seconds 6 --caption

      agetool video me.jpg --paste-back --out me.mp4

      agetool video group.jpg --faces ref:me.jpg --paste-back

      agetool video clip.mp4 --from 20 --to 70

      agetool video crop.png --aligned --steps 5 --frames frames/
    """
    from agetool.errors import UsageError, arg
    from agetool.images import distinct_outputs
    from agetool.options import VideoOptions, request as build_request

    if input.is_dir():
        raise UsageError(f"{input}: is a folder; one photo is expected here")
    from agetool.cli.clips import clip_inputs, video_clip

    if clip_inputs([input]):  # a clip: its people aged progressively over its length
        marks.check_models(build, face_kwargs, clip=True)
        return video_clip(input, out, from_age, to_age, crf, build, build_request(None, **face_kwargs), profile,
                          marks=marks, truncated=truncated)
    name = input.stem + "_aging.mp4"
    target = Path(name) if out is None else Path(out) / name if is_folder(out) else Path(out)
    if target.suffix.lower() != ".mp4":
        raise UsageError(f"{arg('out', str(target))}: the video must end in .mp4")
    distinct_outputs({"out": target}, [input])
    from agetool.images import outputs_clear

    outputs_clear("frames_dir", frames_dir, r"frame_[0-9]{5,6}\.png", [input])
    # every number and option checked once, before any work
    video_options = VideoOptions.of(fps=fps, steps=steps, from_age=from_age, to_age=to_age, seconds=seconds,
                                    hold=hold, crf=crf, caption=caption, max_size=max_size)
    request = build_request(None, **face_kwargs)
    marks.check_models(build, face_kwargs)
    with console.progress() as bar:
        pipe = build(bar)
        written = pipe.write_video(input, target, request, video_options, frames_dir=frames_dir, label=marks.label,
                                   signing=marks.signing)
    from agetool.video import read_video_frames

    n, _ = read_video_frames(written, decode=False)
    console.info(f"{input} -> {written}  ({n} frames, {n / fps:.1f} s at {fps:g} fps)")
    if profile:
        print_profile(pipe)
    return 0
