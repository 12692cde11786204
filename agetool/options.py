"""Requests as values: what a caller asks of ``AgingPipeline``, validated once, then passed on.

A public method of the pipeline takes loose keyword arguments, builds these frozen values once
(every check and every error naming an argument happens here), and hands them to the internal
calls, which trust them. The command line, the web app, eval and Ray build them the same way, and
read their defaults from this module, the one home of every rendering default.

- ``FaceOptions``: which faces, and how they are prepared (detection or an aligned crop, masking,
  paste-back).
- ``RenderOptions``: the parsed age targets, the seed and noise of the class codes, upscaling, and
  how many noise draws of each face are scored (``candidates``).
- ``VideoOptions``: frame rate, frames per class transition, ages in years, length, holds, encoder.
- ``EvalOptions``: what ``agetool.evaluate`` measures with (age and identity models), calibration,
  and where the report and each photo's kept results go.
"""

from __future__ import annotations

from dataclasses import dataclass

from agetool import validate
from agetool.errors import UsageError, arg

#: sigma of the Gaussian noise added to the class codes at test time (as the reference does)
DEFAULT_NOISE = 0.2
MAX_NOISE = 10.0
DEFAULT_SEED = 0
#: frames per class transition: the reference's interp_step of 0.05
DEFAULT_STEPS = 20
DEFAULT_FPS = 30.0
#: H.264 constant rate factor (visually lossless for most content)
DEFAULT_CRF = 18
MAX_CRF = 51
#: long side of paste-back video frames
DEFAULT_MAX_SIZE = 1080

#: limits of a video run: beyond them a run is a mistake (hours of frames), refused up front
MIN_FPS = 0.01  # below about 1e-3 ffmpeg's MP4 muxer fails
MAX_FPS = 240.0
MAX_STEPS = 10_000
MAX_HOLD = 600.0  # seconds
MAX_FRAMES = 200_000  # about 1 h 50 min at 30 fps
#: noise draws rendered per face, the most faithful kept (agetool.faithful); 1: the run's seed alone
DEFAULT_CANDIDATES = 1
MAX_CANDIDATES = 16

#: the largest clip frame aged (4096x2160, "4K"): the H.264 encoder's look-ahead holds about 180 bytes
#: a pixel (1.5 GB at 3840x2160, over 2 GB at 7680x4320 with the shortest look-ahead), so ``--max-pixels``
#: lowers a clip's limit but does not raise it past this
MAX_CLIP_PIXELS = 4096 * 2160
#: pixels of the encoders open at once for a clip's ages: four ages at 1920x1080 (one at 4K) share a pass
#: over the clip; more ages take further passes (the same frames, the same results), so memory stays
#: bounded whatever the number of ages
CLIP_PASS_PIXELS = 4 * 1920 * 1080


def frame_total(steps: int, fps: float, hold: float = 0.0, transitions: int = 5) -> int:
    """Frames in the MP4 of a traversal with ``steps`` frames per transition and ``hold`` seconds
    on its first and last frame (each value already checked, as ``VideoOptions.of`` does). Refuses (``UsageError``) values that add up to more than ``MAX_FRAMES`` frames, stating
    the estimate."""
    total = steps * transitions + 1 + 2 * int(round(hold * fps))
    if total > MAX_FRAMES:
        minutes = total / fps / 60
        raise UsageError(f"{arg('steps', steps)}, {arg('fps', fps)} and {arg('hold', hold)} make {total:,} frames "
                         f"({minutes:,.0f} min of video); the limit is {MAX_FRAMES:,} frames")
    return total


#: ``faces``: every face or the largest; any other value is a reference to one person's faces
FACES = ("all", "largest")
#: upscaling factors (1: none)
UPSCALE_FACTORS = (1, 2, 4)


def check_faces(faces):
    """``faces`` checked by its form, kept as given: ``"all"``, ``"largest"``, ``"ref:PHOTO"`` (an
    existing file), or a reference (a photo path, RGB array or PIL image, an ``agetool.identity``
    ``Embedding`` or ``FaceReference``); ``agetool.faces.reference`` makes the reference that matches faces."""
    import os

    if isinstance(faces, str):
        if faces.startswith("ref:"):
            from agetool.errors import InputError

            if not os.path.isfile(os.path.expanduser(faces[4:])):
                raise InputError(f"{arg('faces', faces)}: no such file", hint="the reference is a photo of the person to keep")
            return faces
        if faces not in FACES:
            raise UsageError(f"{arg('faces', faces)}: expected {', '.join(FACES)} or ref:PHOTO")
        return faces
    kind = type(faces)
    if isinstance(faces, os.PathLike) or kind.__module__.startswith(("PIL.", "numpy")) \
            or kind.__name__ in ("Embedding", "FaceReference"):
        return faces
    raise UsageError(f"{arg('faces', faces)}: expected all, largest, ref:PHOTO, a photo or an Embedding")


def check_factor(factor, name: str = "upscale") -> int:
    """An upscaling ``factor`` (None, 1, 2 or 4) as an int; 1 means no upscaling."""
    if factor is None:
        return 1
    n = validate.integer(name, factor)
    if n not in UPSCALE_FACTORS:
        raise UsageError(f"{arg(name, factor)}: expected 2 or 4 (or 1 for none)")
    return n


@dataclass(frozen=True)
class FaceOptions:
    """Which faces of a photo, and how each is prepared for the generator."""

    aligned: bool = False  # the photo is an aligned crop: no detection, no alignment
    mask: bool = True  # paint background, hat, earrings, necklace and clothes gray
    faces: object = "all"  # "all", "largest", or a reference (see ``check_faces``)
    min_face: int = 0  # skip faces whose box is smaller than this (pixels)
    paste_back: bool = False  # show aged faces in the whole photo

    @classmethod
    def of(cls, *, aligned: bool = False, mask: bool = True, faces="all", min_face: int = 0,
           paste_back: bool = False) -> "FaceOptions":
        aligned = validate.flag("aligned", aligned)
        paste_back = validate.flag("paste_back", paste_back)
        if paste_back and aligned:
            raise UsageError(f"{arg('paste_back')} needs the original photo", hint=f"drop {arg('aligned')}")
        return cls(aligned=aligned, mask=validate.flag("mask", mask), faces=check_faces(faces),
                   min_face=validate.integer("min_face", min_face, low=0), paste_back=paste_back)

    @property
    def parse(self) -> bool:
        """Whether faces are parsed: for the mask, and for paste-back's blend."""
        return self.mask or self.paste_back


@dataclass(frozen=True)
class RenderOptions:
    """The ages to render (parsed), the class codes' seed and noise, the upscaling factor, and the
    noise draws per face (``candidates``: seeds ``seed`` ... ``seed + candidates - 1``, the most
    faithful kept)."""

    targets: tuple = ()  # agetool.ages.AgeTarget, in the order asked; () = the six classes
    seed: int = DEFAULT_SEED
    noise: float = DEFAULT_NOISE
    upscale: int = 1  # 1 (none), 2 or 4
    candidates: int = DEFAULT_CANDIDATES
    keep_candidates: bool = False  # keep every draw's images on the result (Face.candidates.images)

    @classmethod
    def of(cls, ages=None, *, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE,
           upscale: int | None = None, candidates: int = DEFAULT_CANDIDATES,
           keep_candidates: bool = False) -> "RenderOptions":
        from agetool import ages as age_rules

        targets = age_rules.parse_ages(ages) or age_rules.class_targets()
        seed = validate.seed(seed)
        candidates = check_candidates(candidates)
        if seed + candidates - 1 > validate.SEED_MAX:  # every draw's seed fits in 64 bits too
            raise UsageError(f"{arg('seed', seed)} with {arg('candidates', candidates)}: the last draw's seed "
                             f"{seed + candidates - 1} does not fit in 64 bits", hint=f"lower {arg('seed')}")
        return cls(targets=tuple(targets), seed=seed, noise=validate.finite("noise", noise, low=0, high=MAX_NOISE),
                   upscale=check_factor(upscale), candidates=candidates,
                   keep_candidates=validate.flag("keep_candidates", keep_candidates))

    @property
    def seeds(self) -> list[int]:
        """The noise seed of each draw: the run's seed and the ``candidates - 1`` that follow."""
        return [self.seed + k for k in range(self.candidates)]

    @property
    def labels(self) -> list[str]:
        return [t.entry for t in self.targets]

    @property
    def relative(self) -> bool:
        """Whether an age is relative to the face's estimated age (``+20``)."""
        return any(t.kind == "relative" for t in self.targets)


def check_candidates(candidates) -> int:
    """``candidates`` checked: a whole number of draws from 1 to ``MAX_CANDIDATES``."""
    return validate.integer("candidates", candidates, low=1, high=MAX_CANDIDATES)


@dataclass(frozen=True)
class AgeRequest:
    """One call's worth of options: which faces and how they are prepared, and what is rendered."""

    face: FaceOptions = FaceOptions()
    render: RenderOptions = RenderOptions()


def request(ages=None, *, aligned: bool = False, mask: bool = True, faces="all", min_face: int = 0,
            paste_back: bool = False, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE,
            upscale: int | None = None, candidates: int = DEFAULT_CANDIDATES,
            keep_candidates: bool = False) -> AgeRequest:
    """The options of one aging call as one value, every argument checked here, once."""
    return AgeRequest(FaceOptions.of(aligned=aligned, mask=mask, faces=faces, min_face=min_face, paste_back=paste_back),
                      RenderOptions.of(ages, seed=seed, noise=noise, upscale=upscale, candidates=candidates,
                                       keep_candidates=keep_candidates))


#: traversal frames per class transition when eval fits the class anchors (``calibrate``)
DEFAULT_CALIBRATE_STEPS = 10
MAX_CALIBRATE_STEPS = 100


@dataclass(frozen=True)
class EvalOptions:
    """What an evaluation measures with and where it keeps its results; the generators and the
    request (ages, faces, seed, noise, upscaling) are given beside it."""

    identity: str = "auto"  # "auto" (auraface where cached, else dlib), "dlib", "auraface", "arcface-w600k"
    identity_model: object = None  # a name or a file instead of ``identity``
    age_model: object = None  # the age model's ONNX file (None: the registry's genderage)
    estimate_age: bool | None = None  # False: identity only; None: so when the age model is not at hand offline
    calibrate: bool = False  # also fit the class anchor ages (one generator)
    calibrate_steps: int = DEFAULT_CALIBRATE_STEPS
    out: object = None  # the folder of report.json, report.md, report.png (and the kept results)
    skip_existing: bool = False  # reuse the results kept in ``out``

    @classmethod
    def of(cls, *, identity: str = "auto", identity_model=None, age_model=None, estimate_age: bool | None = None,
           calibrate: bool = False, calibrate_steps: int = DEFAULT_CALIBRATE_STEPS, out=None,
           skip_existing: bool = False) -> "EvalOptions":
        calibrate = validate.flag("calibrate", calibrate)
        skip_existing = validate.flag("skip_existing", skip_existing)
        if estimate_age is not None:
            estimate_age = validate.flag("estimate_age", estimate_age)
        if calibrate and estimate_age is False:
            raise UsageError(f"{arg('calibrate')} fits the anchors to estimated ages",
                             hint=f"drop {arg('estimate_age', False)}")
        if isinstance(calibrate_steps, bool) or not isinstance(calibrate_steps, int) \
                or not 1 <= calibrate_steps <= MAX_CALIBRATE_STEPS:
            raise UsageError(f"{arg('calibrate_steps', calibrate_steps)}: expected a whole number from 1 to "
                             f"{MAX_CALIBRATE_STEPS}")
        if skip_existing and out is None:
            raise UsageError(f"{arg('skip_existing')} needs {arg('out')}, where the results of each photo are kept")
        return cls(identity=identity, identity_model=identity_model, age_model=age_model, estimate_age=estimate_age,
                   calibrate=calibrate, calibrate_steps=calibrate_steps, out=out, skip_existing=skip_existing)


@dataclass(frozen=True)
class VideoOptions:
    """The numbers of a video, all checked before any frame is rendered."""

    fps: float = DEFAULT_FPS
    steps: int = DEFAULT_STEPS
    from_age: float | None = None
    to_age: float | None = None
    seconds: float | None = None
    hold: float = 0.0
    crf: int = DEFAULT_CRF
    caption: bool = False
    max_size: int | None = DEFAULT_MAX_SIZE  # paste-back frames' long side; None: no cap
    frames: int | None = None  # frames of an age schedule in years (instead of ``seconds``)

    @classmethod
    def of(cls, *, fps: float = DEFAULT_FPS, steps: int = DEFAULT_STEPS, from_age: float | None = None,
           to_age: float | None = None, seconds: float | None = None, hold: float = 0.0, crf: int = DEFAULT_CRF,
           caption: bool = False, max_size: int | None = DEFAULT_MAX_SIZE, frames: int | None = None) -> "VideoOptions":
        from agetool.ages import MAX_AGE

        steps = validate.integer("steps", steps, low=1, high=MAX_STEPS)
        fps = validate.finite("fps", fps, low=MIN_FPS, high=MAX_FPS) + 0.0
        hold = validate.finite("hold", hold, low=0, high=MAX_HOLD) + 0.0
        frame_total(steps, fps, hold)  # the traversal and its holds within the frame limit
        ends = [None if v is None else validate.finite(name, v, low=0, high=MAX_AGE)
                for name, v in (("from_age", from_age), ("to_age", to_age))]
        if seconds is not None:
            seconds = validate.finite("seconds", seconds, low=0, high=MAX_FRAMES / MAX_FPS, low_open=True)
        if frames is not None:
            frames = validate.integer("frames", frames, low=2, high=MAX_FRAMES)
        if max_size is not None:
            max_size = validate.integer("max_size", max_size, low=16, high=16384)
        return cls(fps=fps, steps=steps, from_age=ends[0], to_age=ends[1], seconds=seconds, hold=hold,
                   crf=validate.integer("crf", crf, low=0, high=MAX_CRF), caption=validate.flag("caption", caption),
                   max_size=max_size, frames=frames)

    @property
    def in_years(self) -> bool:
        """Ages spaced in years (``from_age`` / ``to_age`` / a length) rather than the class traversal."""
        return any(v is not None for v in (self.from_age, self.to_age, self.seconds, self.frames))

    @property
    def frame_count(self) -> int | None:
        """Frames of the age schedule in years when its length is given (None: the traversal's density)."""
        if self.frames is not None:
            return self.frames
        return None if self.seconds is None else max(2, round(self.seconds * self.fps))

    @property
    def hold_frames(self) -> int:
        return int(round(self.hold * self.fps))
