"""What the web app does, without the web: one model set, photos in, images and videos out.

``Studio`` owns the pipeline and a private working folder; every file it writes lies inside that
folder. The page and the named endpoints both call these methods, so the page shows exactly what
a program gets.
"""

from __future__ import annotations

import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agetool.errors import InputError, NoFaceError, UsageError, arg
from agetool.images import DEFAULT_MAX_PIXELS, read_image, resize
from agetool.options import DEFAULT_FPS, DEFAULT_NOISE, DEFAULT_SEED, DEFAULT_STEPS, VideoOptions
from agetool.results import model_words

DEFAULT_MAX_BYTES = 20 * 2**20
MODELS = ("auto", "male", "female")
#: the slider's range in years (the anchors of the youngest and oldest class lie inside it)
MIN_AGE, MAX_AGE = 0, 69
#: long side of photos as the app works on them (pasted-back results and videos)
WHOLE_PHOTO_SIDE = 1280
#: side of each face's thumbnail under "Faces found"
THUMB = 128
#: seconds a request's results stay on disk (the page links to them meanwhile)
KEEP_S = 3600
#: most ages one request renders (the page and programs alike)
MAX_REQUEST_AGES = 16
#: seconds of decoding one request may take; it stops between two decodes after that
REQUEST_BUDGET_S = 120.0
#: bytes of uploads kept at once; the oldest go first
UPLOAD_QUOTA = 1 << 30
#: what a clip for the page may be: seconds, frames, pixels per frame (bytes: the upload limit)
MAX_CLIP_SECONDS, MAX_CLIP_FRAMES, MAX_CLIP_PIXELS = 10.0, 300, 1920 * 1080
#: the most noise draws ("looks") of each face a grid request may score
MAX_LOOKS = 8
#: seconds one clip may take to age; it stops between two frames after that (no file is left)
CLIP_BUDGET_S = 600.0


@dataclass
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def __post_init__(self):
        if self.max_pixels < 64:
            raise UsageError(f"{arg('max_pixels', self.max_pixels)}: must be at least 64")
        if self.max_bytes < 1024:
            raise UsageError(f"{arg('max_bytes', self.max_bytes)}: must be at least 1024")


@dataclass
class Session:
    """One user's encoded photo: what the slider re-renders from."""

    encoded: object  # agetool.EncodedPhoto
    model_choice: str
    mask: bool
    name: str = "photo"
    rendered: dict = field(default_factory=dict)
    source: str | None = None  # the uploaded file: the parent of signed files, while it is kept


def load_pipeline(**options):
    """``agetool.AgingPipeline.from_pretrained(**options)``: the model set the server shares (the
    server's process is its own: torch's process-wide settings are tuned for it)."""
    from agetool.device import tune_process
    from agetool.pipeline import AgingPipeline

    pipe = AgingPipeline.from_pretrained(**options)
    tune_process(pipe.device, pipe.dtype)
    return pipe


def count_ages(ages) -> None:
    """A request's ages bounded before they are parsed: at most ``MAX_REQUEST_AGES``."""
    entries = [t for t in ages.split(",") if t.strip()] if isinstance(ages, str) else list(ages or ())
    if len(entries) > MAX_REQUEST_AGES:
        raise UsageError(f"{arg('ages', ages)}: {len(entries)} ages; at most {MAX_REQUEST_AGES} a request")


class Studio:
    """The model set shared by every request, plus the folder results are written to."""

    def __init__(self, pipeline, workdir: str | os.PathLike, limits: Limits | None = None,
                 fixed_model: str | None = None, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE, upscale: int | None = None,
                 budget_s: float = REQUEST_BUDGET_S, uploads: str | os.PathLike | None = None,
                 upload_quota: int = UPLOAD_QUOTA, signing=None, label: bool = False):
        from agetool.options import check_factor

        self.pipe = pipeline
        self.model = pipeline.model  # the choice the server started with
        self.workdir = Path(workdir)
        self.limits = limits or Limits()
        own = pipeline.model if isinstance(getattr(pipeline, "model", None), Path) else None
        #: the name of the generator file the server renders with (its pipeline's, or as given): no model choice
        self.fixed_model = fixed_model or (own.name if own is not None else None)
        self.seed, self.noise = seed, noise
        self.upscale = check_factor(upscale)  # grids, tile archives and videos; the slider stays 256 px
        self._lock = threading.RLock()
        self._pipes = {self.model: pipeline}
        self.budget_s = budget_s  # per request, checked between decodes
        self.uploads = None if uploads is None else Path(uploads)  # Gradio's upload folder, kept in quota
        self.upload_quota = upload_quota
        # the files the page hands out (grids, tile archives, videos, clips): signed with ``signing`` (an
        # agetool.credentials.Signing), pasted photos with the visible "AI-aged" mark (``label``)
        self.signing, self.label = signing, bool(label)
        self._identity = None  # dlib's face descriptor, for "only faces like this one"

    # ------------------------------------------------------------------ inputs
    def read(self, path: str | os.PathLike | None) -> np.ndarray:
        """The uploaded photo as RGB, refused if over the byte or pixel limit, scaled to at most
        ``WHOLE_PHOTO_SIDE`` on its long side (faces stay larger than the 256 px crops)."""
        if path is None:
            raise InputError("no photo given", hint="drop a photo or pick the example")
        path = Path(path)
        size = path.stat().st_size if path.is_file() else 0
        if size > self.limits.max_bytes:
            raise InputError(f"the photo is {size / 2**20:.1f} MB, over the limit of "
                             f"{self.limits.max_bytes / 2**20:.1f} MB")
        if self.uploads is not None:
            evict_oldest(self.uploads, self.upload_quota, keep=path)
        return fit(read_image(path, max_pixels=self.limits.max_pixels))

    def pipe_for(self, model: str):
        """The pipeline rendering with ``model``: siblings of the server's, sharing its loaded models."""
        if self.fixed_model:
            return self.pipe
        if model not in MODELS:
            raise UsageError(f"{arg('model', model)}: expected one of {', '.join(MODELS)}")
        if model not in self._pipes:
            p = self.pipe
            self._pipes[model] = type(p).from_pipe(p, model=model)
        return self._pipes[model]

    def encode(self, path, model: str | None = None, mask: bool = True, like=None) -> Session:
        """The photo at ``path``, encoded; ``like`` (an ``Embedding`` from ``like``) keeps only the
        faces of that person."""
        session = self.encode_image(self.read(path), model, mask, name=Path(path).stem, like=like)
        session.source = str(path)
        return session

    def encode_image(self, image: np.ndarray, model: str | None = None, mask: bool = True,
                     name: str = "photo", like=None) -> Session:
        model = model or self.model
        with self._lock:
            encoded = self.pipe_for(model).encode(image, mask=mask, paste_back=True,
                                                  faces="all" if like is None else like)
        return Session(encoded, model, mask, name=name)

    def like(self, session: Session, face: int):
        """The identity (``agetool.identity.Embedding``, dlib's face descriptor) of face ``face`` of
        the session's photo: ``encode(..., like=it)`` then keeps only the faces of that person."""
        faces = session.encoded.faces
        if not 0 <= face < len(faces):
            raise UsageError(f"{arg('face', face)}: the photo has {len(faces)} face(s)")
        chosen = faces[face]
        with self._lock:
            if self._identity is None:
                from agetool.identity import FaceIdentity

                self._identity = FaceIdentity.from_pretrained("dlib")
            known = getattr(chosen, "embedding", None)
            if known is not None and known.model == self._identity.name:
                return known  # embedded already (faces chosen by a reference)
            where = chosen.landmarks if chosen.landmarks is not None else chosen.box
            return self._identity.embed(session.encoded.image, face=where)

    def warm_up(self, example: Path | None) -> None:
        """Load every model the server may need now, not on the first request."""
        if example is not None:  # the server's own file, scaled to the pixel limit if need be
            image = fit(read_image(example))
            h, w = image.shape[:2]
            if h * w > self.pipe.max_pixels:
                image = fit(image, int(max(h, w) * (self.pipe.max_pixels / (h * w)) ** 0.5))
            try:
                self.encode_image(image)
            except NoFaceError:  # too small to find the face: the face models are loaded all the same
                pass
        models = getattr(self.pipe, "models", None)
        if not self.fixed_model and models is not None:
            for model in ("male", "female") if self.model == "auto" else (self.model,):
                models.engine(model)

    # ------------------------------------------------------------------ outputs
    def thumbnails(self, session: Session) -> np.ndarray:
        """The aligned face crops side by side, ``THUMB`` px each, numbered."""
        from agetool.images import caption

        tiles = [caption(resize(f.aligned, (THUMB, THUMB)), f"face {f.index}") for f in session.encoded.faces]
        return np.concatenate(tiles, axis=1)

    def options(self, ages=None, looks: int = 1):
        """A request's ages ("5, 45, 30-39", a list, or empty for the six classes) as the
        ``agetool.options.RenderOptions`` of this server's seed, noise and upscaling: parsed here,
        once per request, and at most ``MAX_REQUEST_AGES`` of them. ``looks``: noise draws of each
        face, the most faithful kept (``candidates``, at most ``MAX_LOOKS``)."""
        from agetool import validate
        from agetool.options import RenderOptions

        if isinstance(ages, RenderOptions):
            return ages
        count_ages(ages)
        looks = validate.integer("looks", 1 if looks is None else looks, low=1, high=MAX_LOOKS)
        return RenderOptions.of(ages, seed=self.seed, noise=self.noise, upscale=self.upscale, candidates=looks)

    @staticmethod
    def choices(result) -> list[str]:
        """What the page says about a grid's draws: per face, the one kept and every draw's score."""
        from agetool.faithful import describe_choice

        return [describe_choice(f"face {f.index}", f.candidates) for f in result.faces if f.candidates is not None]

    @staticmethod
    def warnings(render) -> list[str]:
        """What the page says about a request's ages (``options()``) besides the images: ages past
        the oldest class."""
        from agetool.ages import old_age_warning

        warning = old_age_warning(render.targets)
        return [warning] if warning else []

    def describe(self, session: Session) -> list[str]:
        """One line per face: which model renders it and the estimated input age."""
        lines = []
        for face in session.encoded.faces:
            if self.fixed_model:
                how = "the server's own generator file"
            else:
                how = "chosen automatically" if session.model_choice == "auto" else "chosen"
            text = f"face {face.index}: {model_words([face])} ({how})"
            estimate = getattr(face, "estimate", None)
            if estimate is not None:
                text += f", estimated age ~{estimate.age:.0f} ({estimate.gender})"
            lines.append(text)
        return lines

    def render(self, session: Session, face, ages: list) -> np.ndarray:
        return self.pipe.render(face, ages=ages, seed=self.seed, noise=self.noise)

    def at_age(self, session: Session, face: int, age: float, paste_back: bool = False) -> np.ndarray:
        """The selected face at ``age`` years (a 256 px tile), or the whole photo with every face aged."""
        faces = session.encoded.faces
        if not 0 <= face < len(faces):
            raise UsageError(f"{arg('face', face)}: the photo has {len(faces)} face(s)")
        ages = [float(age)]
        with self._lock:
            if not paste_back:
                return self.render(session, faces[face], ages)[0]
            tiles = [self.render(session, f, ages)[0] for f in faces]
            return self.pipe.paste_back(session.encoded, tiles)

    def checker(self, stop=None):
        """A check to call between decodes: a ``ResourceError`` once the request has used its
        ``budget_s`` seconds, a ``UsageError`` once ``stop()`` (a cancelled job) returns true."""
        import time

        from agetool.errors import ResourceError

        end = time.monotonic() + self.budget_s

        def check() -> None:
            if stop is not None and stop():
                raise UsageError("the request was cancelled")
            if time.monotonic() > end:
                raise ResourceError(f"the request took more than {self.budget_s:g} s", hint="ask for fewer ages")

        return check

    def grid(self, session: Session, ages=None, paste_back: bool = False, stop=None,
             choices: list | None = None) -> tuple[Path, Path]:
        """(grid PNG, ZIP of every tile as face<i>_<label>.png), both in a fresh folder of the workdir:
        the ``AgingResult`` the command line makes, upscaled when the server upscales, every age
        decoded once for both. ``ages``: as ``options()`` takes them. A repeated age's tiles are
        ``face<i>_<label>_2.png`` ...; the request stops between two decodes once ``stop()`` returns
        true (a cancelled job) or after ``budget_s`` seconds."""
        render = self.options(ages)
        with self._lock:
            result = self.pipe.core.result(session.encoded, render, paste_back=paste_back, check=self.checker(stop))
        result.signing, result.label, result.source = self.signing, self.label, session.source
        folder = self.new_folder()
        png = result.write_grid(folder / f"{session.name}_ages.png")
        if choices is not None:  # with several looks: the lines that say which draw each face kept
            choices += self.choices(result)
        return png, result.write_zip(folder / f"{session.name}_tiles.zip")

    def video(self, session: Session, paste_back: bool = False, fps: float = DEFAULT_FPS,
              steps: int = DEFAULT_STEPS) -> Path:
        """The aging MP4 of an encoded photo: faces side by side, or the whole photo with paste-back."""
        out = self.new_folder() / f"{session.name}_aging.mp4"
        with self._lock:
            pipe = self.pipe_for(session.model_choice)
            # the encoded photo holds its faces as found and masked: only rendering options go with it
            request = pipe.request(None, paste_back=paste_back, seed=self.seed, noise=self.noise, upscale=self.upscale)
            return Path(pipe.write_video(session.encoded, out, request, VideoOptions.of(fps=fps, steps=steps),
                                         label=self.label, signing=self.signing))

    def clip(self, path, age: float = 60.0, model: str | None = None, mask: bool = True, stop=None,
             frame=None) -> Path:
        """A short clip (``MAX_CLIP_SECONDS``, ``MAX_CLIP_FRAMES``, ``MAX_CLIP_PIXELS``) with every face
        aged to ``age`` years, its audio kept: an MP4 in a fresh folder of the workdir. The work stops
        between two frames once ``stop()`` returns true (no file is left) or after ``CLIP_BUDGET_S``
        seconds; ``frame(done, total)`` is told of each frame aged."""
        import time

        from agetool.clip import is_clip, probe
        from agetool.errors import ResourceError

        if path is None:
            raise InputError("no clip given", hint="drop a video clip (MP4, MOV, MKV, WebM or AVI)")
        path = Path(path)
        size, limit = (path.stat().st_size if path.is_file() else 0), self.limits.max_bytes
        if size > limit or not is_clip(path):
            raise InputError(f"{path.name}: not a video clip" if size <= limit else
                             f"{path.name}: {size / 2**20:.1f} MB, over the limit of {limit / 2**20:.1f} MB",
                             hint="MP4, MOV, MKV, WebM or AVI; the command line takes longer clips")
        if self.uploads is not None:
            evict_oldest(self.uploads, self.upload_quota, keep=path)
        info = probe(path)
        seconds = info.end - info.start
        if info.frames > MAX_CLIP_FRAMES or seconds > MAX_CLIP_SECONDS or info.width * info.height > MAX_CLIP_PIXELS:
            raise InputError(f"{path.name}: {info.frames} frames, {seconds:.1f} s, {info.width}x{info.height}; "
                             f"the page takes up to {MAX_CLIP_FRAMES} frames, {MAX_CLIP_SECONDS:g} s and 1920x1080",
                             hint="trim it, or run agetool age CLIP --ages N on the command line")
        age = float(age)
        if not MIN_AGE <= age <= MAX_AGE:
            raise UsageError(f"{arg('age', age)}: expected {MIN_AGE} to {MAX_AGE} years")

        def progress(description, total):  # called when the work starts (the slot is ours): the budget starts then
            end = time.monotonic() + CLIP_BUDGET_S
            done = 0
            if stop is not None and stop():
                raise UsageError("the request was cancelled")

            def advance(n: int) -> None:
                nonlocal done
                done += n
                if frame is not None:
                    frame(done, total)
                if stop is not None and stop():
                    raise UsageError(f"the request was cancelled after {done} of {total} frames")
                if time.monotonic() > end:
                    raise ResourceError(f"the clip took more than {CLIP_BUDGET_S:g} s", hint="try a shorter clip")
            return advance

        out = self.new_folder() / f"{path.stem}_age{age:g}.mp4"
        with self._lock:
            pipe = self.pipe_for(model or self.model)
            return Path(pipe.age_clip(path, out, ages=[age], mask=mask, seed=self.seed, noise=self.noise,
                                      upscale=self.upscale, progress=progress, label=self.label,
                                      signing=self.signing)[0])

    def new_folder(self) -> Path:
        """A fresh folder for one request's results; those of earlier requests go after ``KEEP_S``."""
        import shutil
        import time

        self.workdir.mkdir(parents=True, exist_ok=True)
        cutoff = time.time() - KEEP_S
        for old in self.workdir.glob("out-*"):
            try:
                if old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        return Path(tempfile.mkdtemp(prefix="out-", dir=self.workdir))


def fit(image: np.ndarray, side: int = WHOLE_PHOTO_SIDE) -> np.ndarray:
    """``image`` scaled down so that its long side is at most ``side``, with even sides."""
    h, w = image.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0 and not (w % 2 or h % 2):
        return image
    return resize(image, (max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)))


def evict_oldest(folder: Path, quota: int, keep=None) -> None:
    """Remove the oldest files under ``folder`` until they hold at most ``quota`` bytes (``keep``,
    the upload being read, stays)."""
    keep = None if keep is None else os.path.abspath(keep)
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in files)
    for _, size, path in sorted(files):
        if total <= quota:
            break
        if os.path.abspath(path) == keep:
            continue
        try:
            os.unlink(path)
            total -= size
        except OSError:
            pass
