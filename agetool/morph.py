"""Continuous aging of a photo: the age of each frame, the latents between the class anchors, the
frames (streamed, never all in memory) and the MP4.

``AgingPipeline.frames`` / ``video`` take loose arguments, build the request values once and call
these functions with them, the render core (``agetool.render.Renderer``) and ``encode()``, which
encodes the photo when the first frame is asked for; the values are trusted here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agetool.ages import (AGE_CLASSES, OLDEST_MODELLED, transition_alphas, traversal_ages, traversal_latents,
                          year_frame_count, year_schedule)
from agetool.errors import UsageError, arg
from agetool.options import MAX_FRAMES, AgeRequest, VideoOptions


def frame_ages(core, video: VideoOptions) -> list[float]:
    """The age in years of each frame: the class traversal (``steps`` frames per transition, 5 x
    steps + 1 frames) or, with ages in years, ages spaced uniformly from ``from_age`` to ``to_age``
    (``frame_count`` of them, default at the traversal's density)."""
    anchors = core.anchor_ages
    if not video.in_years:
        return traversal_ages(video.steps, anchors)
    start = anchors[0] if video.from_age is None else video.from_age
    stop = anchors[-1] if video.to_age is None else video.to_age
    count = video.frame_count or year_frame_count(start, stop, video.steps, anchors)
    if count > MAX_FRAMES:
        raise UsageError(f"{count:,} frames is over the limit of {MAX_FRAMES:,}",
                         hint=f"lower {arg('steps')} or {arg('seconds')}")
    if max(start, stop) > OLDEST_MODELLED:
        core.warn_once(f"warning: ages over {OLDEST_MODELLED:g} render the oldest class ({AGE_CLASSES[-1]}): "
                        "the model knows no older faces")
    return year_schedule(start, stop, count)


def frame_latents(core, face, video: VideoOptions, years: list[float] | None, noise: float, seed: int):
    """Latents of ``face``'s frames: the traversal between consecutive class anchors, or one per age in years."""
    if years is None:
        w6 = core.anchors(face, noise, seed)
        return traversal_latents(w6, transition_alphas(video.steps).to(w6.device))
    return core.year_latents(face, years, noise, seed)


def frames(core, encode, request: AgeRequest, video: VideoOptions) -> Iterator[np.ndarray]:
    """The frames of the photo's aging (``encode()``: its ``EncodedPhoto``), youngest first: the faces
    side by side, or with paste-back the whole photo (long side capped at ``video.max_size``), both
    sides even."""
    from agetool.images import even_size, fit

    render = request.render
    years = frame_ages(core, video) if video.in_years else None
    with core.lock:
        enc = encode()
        streams = [core.stream(face, frame_latents(core, face, video, years, render.noise,
                                                   _chosen_seed(core, enc.name, face, render, video)))
                   for face in enc.faces]
        capped = False
        for tiles in zip(*streams):
            if render.upscale > 1:
                tiles = [core.upscale(t, render.upscale) for t in tiles]
            if request.face.paste_back:
                frame = core.paste(enc.image, enc.faces, list(tiles))
                if video.max_size is not None and max(frame.shape[:2]) > video.max_size:
                    if not capped:
                        h, w = frame.shape[:2]
                        core.report(f"{enc.name}: frames scaled from {w}x{h} to a long side of {video.max_size} px "
                                    f"(raise {arg('max_size')} for more)")
                        capped = True
                    frame = fit(frame, video.max_size)
            else:
                frame = np.concatenate(tiles, axis=1) if len(tiles) > 1 else tiles[0]
            yield even_size(frame)


def _chosen_seed(core, name: str, face, render, video: VideoOptions) -> int:
    """The noise seed of ``face``'s video: the run's seed, or with ``candidates`` the most faithful
    draw's, scored at the video's first and last age and the class anchors between (held for every frame)."""
    if render.candidates == 1:
        return render.seed
    from dataclasses import replace

    from agetool.ages import span_targets

    anchors = core.anchor_ages
    start = anchors[0] if video.from_age is None else video.from_age
    stop = anchors[-1] if video.to_age is None else video.to_age
    scoring = replace(render, targets=tuple(span_targets(start, stop, anchors)))
    return core.draw_seed(f"{name} face {face.index}", [face], scoring)


def write_video(core, encode, out: str | os.PathLike, request: AgeRequest, video: VideoOptions, *,
                frames_dir: str | os.PathLike | None = None, label: bool = False, signing=None,
                source: str | None = None) -> Path:
    """The aging video of the photo (``encode()``) as an H.264 yuv420p MP4 at ``out`` (temporary name, then
    rename), with ``frames_dir`` also every frame as ``frame_00000.png`` ...; returns the path.
    The video and the frames say they hold generated faces (with paste-back: in the user's photo)
    and carry the run record; ``label`` writes a visible "AI-aged" mark on paste-back frames;
    ``signing`` (``agetool.credentials.Signing``) signs the video's Content Credentials, with the
    photo file ``source`` as its parent."""
    from agetool.ages import age_caption
    from agetool.images import caption as draw_caption, write_image
    from agetool.video import VideoWriter

    ages = frame_ages(core, video)
    hold = video.hold_frames
    total = len(ages) + 2 * hold
    if total > MAX_FRAMES:
        raise UsageError(f"{total:,} frames ({total / video.fps / 60:,.0f} min of video) is over the limit of "
                         f"{MAX_FRAMES:,}", hint=f"lower {arg('steps')}, {arg('seconds')} or {arg('hold')}")
    frames_dir = None if frames_dir is None else Path(frames_dir)
    advance = core.progress(f"rendering {len(ages)} frames", len(ages))
    encoded = []

    def encode_once():
        encoded.append(encode())
        return encoded[-1]

    label = label and request.face.paste_back
    if label:
        from agetool.images import disclose
    with VideoWriter(out, fps=video.fps, crf=video.crf) as writer:
        shown = None
        for i, (frame, age) in enumerate(zip(frames(core, encode_once, request, video), ages)):
            if writer.marking is None:  # the photo and its models are known once the first frame is made
                writer.marking = video_marking(core, encoded[-1], request, ages, signing, source)
            frame = disclose(frame) if label else frame
            if frames_dir is not None:
                write_image(frames_dir / f"frame_{i:05d}.png", frame, writer.marking)
            shown = draw_caption(frame, age_caption(age)) if video.caption else frame
            for _ in range(1 + (hold if i == 0 else 0)):
                writer.write(shown)
            advance(1)
        for _ in range(hold):
            writer.write(shown)
    return writer.path


def video_marking(core, photo, request: AgeRequest, ages: list[float], signing=None, source: str | None = None):
    """The ``agetool.provenance.Marking`` of the aging video of ``photo`` (an ``EncodedPhoto``): the
    ages of its first and last frames stand for the ages asked."""
    from agetool.provenance import COMPOSITE, GENERATED, Marking

    record = core.record(photo, request.render, photo.faces, medium="video",
                         ages=(f"{ages[0]:g}", f"{ages[-1]:g}"))
    return Marking(COMPOSITE if request.face.paste_back else GENERATED, record, signing, source)
