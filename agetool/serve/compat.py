"""The part of ``agetool.AgingPipeline`` the web app uses, on top of ``agetool.pipeline.Pipeline``.

Used only where ``agetool.AgingPipeline`` is not available; the app calls the same methods with the
same arguments either way (``encode``, ``render``, ``paste_back``, ``video``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agetool.ages import AGE_CLASSES, DEFAULT_NOISE
from agetool.errors import UsageError, arg

#: anchor age (years) of each class: the midpoint of its range
ANCHORS = (1.0, 4.5, 8.0, 17.0, 34.5, 59.5)


@dataclass
class EncodedFace:
    index: int
    model: str
    aligned: np.ndarray
    box: tuple | None = None
    landmarks: np.ndarray | None = None
    estimate: object | None = None
    features: object = None  # identity features [256, 64, 64] (float32 tensor)
    crop: object = None  # agetool.pipeline.FaceCrop, for paste-back


@dataclass
class EncodedPhoto:
    image: np.ndarray
    name: str = "image"
    faces: list[EncodedFace] = field(default_factory=list)


class CompatPipeline:
    def __init__(self, models, *, model: str = "auto", age_anchors=None, max_pixels: int | None = None):
        self.models = models  # an agetool.pipeline.Pipeline: its loaded models are shared
        self.model = model
        self.age_anchors = age_anchors
        self.max_pixels = max_pixels
        self._pipeline = models
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(cls, model="auto", weights=None, parser_weights=None, landmarks="auto", device="auto",
                        dtype="float32", offline=False, *, max_pixels=None, report=None, progress=None, **_):
        from agetool.device import pick_device, pick_dtype
        from agetool.pipeline import Options, Pipeline

        dev = pick_device(device)
        options = Options(model=model, weights=Path(weights) if weights else None,
                          parser_weights=Path(parser_weights) if parser_weights else None,
                          landmarks=landmarks, offline=offline)
        pipeline = Pipeline(options, device=dev, dtype=pick_dtype(dtype, dev), report=report, progress=progress)
        return cls(pipeline, model="custom" if weights else model, max_pixels=max_pixels)

    def encode(self, image, *, aligned: bool = False, mask: bool = True, faces: str = "all",
               min_face: int = 0, paste_back: bool = False, **_) -> EncodedPhoto:
        from agetool.face.align import align_face
        from agetool.images import resize, to_tensor
        from agetool.pipeline import GEN_SIZE, Photo

        with self._lock:
            p = self._pipeline
            saved = p.opts
            if isinstance(image, EncodedPhoto):
                return image
            p.opts = replace(saved, aligned=aligned, mask=mask, paste_back=paste_back, faces=faces,
                             min_face=min_face, model=self.model if self.model != "custom" else saved.model)
            try:
                photo = Photo(Path("photo"), image)
                if aligned:
                    crop = image if image.shape[:2] == (GEN_SIZE, GEN_SIZE) else resize(image, GEN_SIZE)
                    photo.faces = [p._finish_face(0, crop, None, None)]
                else:
                    for i, det in enumerate(p.find_faces(image, photo.path)):
                        alignment = align_face(image, det.landmarks, size=GEN_SIZE)
                        photo.faces.append(p._finish_face(i, alignment.image, det, alignment))
                out = EncodedPhoto(image)
                for face in photo.faces:
                    chosen = p.choose_model(photo, face)
                    feats = p.engine(chosen).encode(to_tensor(face.network_input))[0]
                    det = face.detection
                    out.faces.append(EncodedFace(face.index, chosen, face.aligned,
                                                 box=getattr(det, "box", None),
                                                 landmarks=getattr(det, "landmarks", None),
                                                 features=feats, crop=face))
                return out
            finally:
                p.opts = saved

    def render(self, face: EncodedFace, ages, seed: int = 0, noise: float = DEFAULT_NOISE) -> np.ndarray:
        import torch

        from agetool.images import to_uint8

        with self._lock:
            p = self._pipeline
            engine = p.engine(face.model)
            anchors = engine.anchor_latents(noise, seed)
            w = torch.stack([_latent(anchors, a) for a in ages])
            return to_uint8(engine.decode(face.features, w))

    def paste_back(self, encoded: EncodedPhoto, tiles) -> np.ndarray:
        from agetool.face.paste import paste_back

        canvas = encoded.image
        for face, tile in zip(encoded.faces, tiles):
            canvas = paste_back(canvas, tile, face.crop.alignment, face.crop.labels)
        return canvas

    def video(self, image, out, fps: float = 30.0, steps: int = 20, *, paste_back: bool = False,
              mask: bool = True, seed: int = 0, noise: float = DEFAULT_NOISE) -> Path:
        from agetool.images import even_size
        from agetool.video import VideoWriter

        encoded = self.encode(image, mask=mask, paste_back=paste_back)
        with self._lock:
            p = self._pipeline
            streams = []
            for face in encoded.faces:
                engine = p.engine(face.model)
                lat = engine.traversal(engine.anchor_latents(noise, seed), steps)
                streams.append(_frames(engine, face.features, lat))
            with VideoWriter(out, fps=fps) as writer:
                for tiles in zip(*streams):
                    if paste_back:
                        frame = self.paste_back(encoded, tiles)
                    else:
                        frame = np.concatenate(tiles, axis=1)
                    writer.write(even_size(frame))
        return Path(out)


def _frames(engine, features, latents):
    from agetool.images import to_uint8

    for chunk in engine.decode_stream(features, latents):
        yield from to_uint8(chunk)


def _latent(anchors, age):
    """The latent of ``age``: a class label's anchor, or the blend of the two anchors around a year."""
    if isinstance(age, str) and age in AGE_CLASSES:
        return anchors[AGE_CLASSES.index(age)]
    try:
        years = float(age)
    except (TypeError, ValueError):
        raise UsageError(f"{arg('ages', age)}: not a number of years or an age class") from None
    if not np.isfinite(years) or years < 0:
        raise UsageError(f"{arg('ages', age)}: ages are years from 0")
    if years <= ANCHORS[0]:
        return anchors[0]
    if years >= ANCHORS[-1]:
        return anchors[-1]
    k = int(np.searchsorted(ANCHORS, years, side="right")) - 1
    alpha = 1.0 - (years - ANCHORS[k]) / (ANCHORS[k + 1] - ANCHORS[k])
    return alpha * anchors[k] + (1 - alpha) * anchors[k + 1]
