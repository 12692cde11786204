"""What the web app does, without the web: one model set, photos in, images and videos out.

``Studio`` owns the pipeline and a private working folder; every file it writes lies inside that
folder. The page and the named endpoints both call these methods, so the page shows exactly what
a program gets.
"""

from __future__ import annotations

import os
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agetool.ages import AGE_CLASSES
from agetool.errors import InputError, UsageError, arg
from agetool.images import DEFAULT_MAX_PIXELS, read_image, resize, write_image

DEFAULT_MAX_BYTES = 20 * 2**20
MODELS = ("auto", "male", "female")
#: the slider's range in years (the anchors of the youngest and oldest class lie inside it)
MIN_AGE, MAX_AGE = 0, 69
#: long side of whole photos in grids and videos (pasted-back results)
WHOLE_PHOTO_SIDE = 1024
#: seconds a request's results stay on disk (the page links to them meanwhile)
KEEP_S = 3600


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


def load_pipeline(**options):
    """``agetool.AgingPipeline.from_pretrained(**options)`` (its stand-in where the API is absent)."""
    import agetool

    cls = getattr(agetool, "AgingPipeline", None)
    if cls is None:
        from agetool.serve.compat import CompatPipeline as cls
    return cls.from_pretrained(**options)


def parse_ages(text: str | None) -> list | None:
    """``"5, 45, 30-39"`` -> ``[5.0, 45.0, "30-39"]``; empty -> None (the six classes)."""
    entries = [t.strip() for t in (text or "").split(",")]
    if not any(entries):
        return None
    if not all(entries):
        raise UsageError(f"{arg('ages', text)}: an empty entry between commas")
    out: list = []
    for entry in entries:
        try:
            out.append(float(entry))
        except ValueError:
            out.append(entry)
    return out


def entry_label(entry) -> str:
    if isinstance(entry, float):
        return f"{entry:g}"
    return str(entry)


class Studio:
    """The model set shared by every request, plus the folder results are written to."""

    def __init__(self, pipeline, workdir: str | os.PathLike, limits: Limits | None = None,
                 model: str = "auto", fixed_model: str | None = None, seed: int = 0, noise: float = 0.2):
        self.pipe = pipeline
        self.workdir = Path(workdir)
        self.limits = limits or Limits()
        self.model = model  # the pipeline's own choice (``model=`` of from_pretrained)
        self.fixed_model = fixed_model  # 'custom' with a --weights checkpoint: no model choice
        self.seed, self.noise = seed, noise
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ inputs
    def read(self, path: str | os.PathLike | None) -> np.ndarray:
        """The uploaded photo as RGB, refused if over the byte or pixel limit."""
        if path is None:
            raise InputError("no photo given", hint="drop a photo or pick the example")
        path = Path(path)
        size = path.stat().st_size if path.is_file() else 0
        if size > self.limits.max_bytes:
            raise InputError(f"the photo is {size / 2**20:.1f} MB, over the limit of "
                             f"{self.limits.max_bytes / 2**20:.1f} MB")
        return read_image(path, max_pixels=self.limits.max_pixels)

    def _model_option(self, method, model: str) -> dict:
        """``{"model": model}`` for a per-request choice where ``method`` takes one, else nothing."""
        import inspect

        if self.fixed_model:
            return {}
        if "model" in inspect.signature(method).parameters:
            return {"model": model}
        if model != self.model:
            raise UsageError(f"{arg('model', model)}: this server renders with the model chosen at start")
        return {"model": model}

    def encode(self, path, model: str = "auto", mask: bool = True) -> Session:
        if model not in MODELS:
            raise UsageError(f"{arg('model', model)}: expected one of {', '.join(MODELS)}")
        image = self.read(path)
        with self._lock:
            encoded = self.pipe.encode(image, mask=mask, **self._model_option(self.pipe.encode, model))
        return Session(encoded, model, mask, name=Path(path).stem)

    # ------------------------------------------------------------------ outputs
    def describe(self, session: Session) -> list[str]:
        """One line per face: where it is, which model renders it and the estimated input age."""
        lines = []
        for face in session.encoded.faces:
            how = "auto" if session.model_choice == "auto" and not self.fixed_model else "chosen"
            text = f"face {face.index}: {face.model} model ({how})"
            estimate = getattr(face, "estimate", None)
            if estimate is not None:
                text += f", estimated age ~{estimate.age:.0f} ({estimate.gender})"
            lines.append(text)
        return lines

    def at_age(self, session: Session, face: int, age: float, paste_back: bool = False) -> np.ndarray:
        """The selected face at ``age`` years (a 256 px tile), or the whole photo with every face aged."""
        faces = session.encoded.faces
        if not 0 <= face < len(faces):
            raise UsageError(f"{arg('face', face)}: the photo has {len(faces)} face(s)")
        age = float(age)
        with self._lock:
            if not paste_back:
                return self.pipe.render(faces[face], ages=[age], seed=self.seed, noise=self.noise)[0]
            tiles = [self.pipe.render(f, ages=[age], seed=self.seed, noise=self.noise)[0] for f in faces]
            return fit(self.pipe.paste_back(session.encoded, tiles))

    def rows(self, session: Session, ages: list | None, paste_back: bool = False) -> tuple[list, list[str]]:
        """Grid rows (one per face: input, then one tile per age) and the column labels."""
        entries = list(AGE_CLASSES) if ages is None else ages
        labels = ["input", *(entry_label(e) for e in entries)]
        faces = session.encoded.faces
        with self._lock:
            tiles = [self.pipe.render(f, ages=entries, seed=self.seed, noise=self.noise) for f in faces]
            if paste_back:
                whole = [fit(self.pipe.paste_back(session.encoded, [t[k] for t in tiles]))
                         for k in range(len(entries))]
                return [[fit(session.encoded.image), *whole]], labels
        rows = []
        for f, t in zip(faces, tiles):
            first = f.aligned if f.aligned.shape[:2] == t.shape[1:3] else resize(f.aligned, t.shape[1])
            rows.append([first, *t])
        return rows, labels

    def grid(self, session: Session, ages: list | None = None, paste_back: bool = False) -> tuple[Path, Path]:
        """(grid PNG, ZIP of every tile as face<i>_<label>.png), both in a fresh folder of the workdir."""
        from agetool.images import grid

        rows, labels = self.rows(session, ages, paste_back)
        folder = self.new_folder()
        png = write_image(folder / f"{session.name}_ages.png", grid(rows, labels))
        archive = folder / f"{session.name}_tiles.zip"
        tmp = folder / ".tiles.zip.part"
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            names = [f"face{f.index}" for f in session.encoded.faces] if not paste_back else ["photo"]
            for name, row in zip(names, rows):
                for label, tile in zip(labels, row):
                    z.writestr(f"{name}_{label}.png", png_bytes(tile))
        os.replace(tmp, archive)
        return png, archive

    def video(self, path, model: str = "auto", mask: bool = True, paste_back: bool = False,
              fps: float = 30.0, steps: int = 20) -> Path:
        image = self.read(path)
        if paste_back and max(image.shape[:2]) > WHOLE_PHOTO_SIDE:
            image = fit(image)
        folder = self.new_folder()
        out = folder / f"{Path(path).stem}_aging.mp4"
        with self._lock:
            return Path(self.pipe.video(image, out, fps=fps, steps=steps, paste_back=paste_back, mask=mask,
                                        seed=self.seed, noise=self.noise,
                                        **self._model_option(self.pipe.video, model)))

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


def png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
