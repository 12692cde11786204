"""Face detection and 68-point landmarks (iBUG order) behind one interface.

Backends:

- ``dlib``: the frontal HOG detector (one upsampling, as LATS) and the 68-point shape predictor
  LATS uses. The predictor ships inside the ``face-recognition-models`` package, or comes from the
  weights cache (``dlib-landmarks68``). Works offline.
- ``fan``: the face-alignment package (S3FD detector, 2D-FAN-4 landmarks), uncompiled. Its files
  must already be in ``$TORCH_HOME/hub/checkpoints``: agetool places them from its registry and
  never lets the package download on its own.
- ``auto``: ``fan`` where its files are present, else ``dlib``.

Faces come back largest first; equal areas keep the detector's order (LATS keeps the first of the
largest boxes). dlib boxes scoring under ``DLIB_MIN_SCORE`` are dropped when a stronger one exists.
"""

from __future__ import annotations

import importlib.util
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agetool.loading import LOADING, Loading
from agetool.errors import CheckpointError, OfflineError, UsageError, arg, detail
from agetool.weights.places import fan_checkpoint_dir, fan_file_names, fan_files_present  # noqa: F401

DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
DLIB_UPSAMPLE = 1
#: dlib detections scoring below this are dropped unless nothing scores higher (LATS keeps the largest
#: box whatever its score; weak extra boxes are mostly false positives such as badges and prints).
DLIB_MIN_SCORE = 0.2


@dataclass(eq=False)
class DetectedFace:
    score: float
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1), photo pixels
    landmarks: np.ndarray  # [68, 2] float32, photo pixels
    embedding: object | None = None  # agetool.identity.Embedding, once a stage has computed it

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1])


def largest_first(faces: list[DetectedFace]) -> list[DetectedFace]:
    """Sort by box area, descending; ties keep their order."""
    return sorted(faces, key=lambda f: -f.area)


class LandmarkDetector:
    """Base class: ``detect(image)`` -> faces, largest first. ``timings`` sums seconds per stage."""

    name = "landmarks"

    def __init__(self):
        self.timings: dict[str, float] = defaultdict(float)

    @staticmethod
    def create(backend: str = "auto", *, device=None, loading: Loading = LOADING) -> "LandmarkDetector":
        if backend == "auto":
            backend = "fan" if fan_files_present() else "dlib"
        if backend == "dlib":
            return DlibDetector(loading=loading)
        if backend == "fan":
            return FanDetector(device=device, loading=loading)
        raise UsageError(f"{arg('landmarks', backend)}: expected auto, fan or dlib")

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        raise NotImplementedError

    def landmarks_in(self, image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
        """[68, 2] float32 landmarks of the face in ``box`` (a box of ``detect``'s kind), without
        detecting: how clips follow a face between detections."""
        raise NotImplementedError

    def _timed(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[stage] += time.perf_counter() - t0


def _rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    return np.ascontiguousarray(image)


# ---------------------------------------------------------------------------- dlib
def bundled_dlib_predictor(name: str = DLIB_PREDICTOR) -> Path | None:
    """The dlib model file ``name`` (default: the 68-point predictor) inside the installed
    face-recognition-models package, which is found but not imported (it needs pkg_resources)."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    return None


def dlib_predictor_path(loading: Loading = LOADING) -> Path:
    """The 68-point predictor: a copy imported into the cache (a file of one's own too) first, else
    the one face-recognition-models ships, else the registry's download."""
    from agetool import weights

    if weights.status("dlib-landmarks68").path is not None:
        return Path(weights.fetch("dlib-landmarks68", loading=replace(loading, offline=True)))
    path = bundled_dlib_predictor()
    if path is not None:
        return path
    return Path(weights.fetch("dlib-landmarks68", loading=loading))


def confident_boxes(rects, scores, min_score: float = DLIB_MIN_SCORE) -> list:
    """dlib HOG detections as (rect, score), those under ``min_score`` dropped when a stronger one
    exists; with nothing confident, the largest box alone (the reference's choice)."""
    boxes = list(zip(rects, scores))
    if any(score >= min_score for _, score in boxes):
        return [(r, score) for r, score in boxes if score >= min_score]
    return sorted(boxes, key=lambda b: -(b[0].right() - b[0].left()) * (b[0].bottom() - b[0].top()))[:1]


class DlibDetector(LandmarkDetector):
    name = "dlib (HOG + 68-point shape predictor)"

    def __init__(self, *, predictor: str | Path | None = None, upsample: int = DLIB_UPSAMPLE,
                 min_score: float = DLIB_MIN_SCORE, loading: Loading = LOADING):
        super().__init__()
        import dlib

        path = Path(predictor) if predictor else dlib_predictor_path(loading)
        self.upsample = upsample
        self.min_score = min_score
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as e:
            raise CheckpointError(f"{path}: not a dlib shape predictor ({detail(e, 120)})",
                                  hint="agetool weights download dlib-landmarks68") from None

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = _rgb(image)
        rects, scores, _ = self._timed("detect", self._detector.run, image, self.upsample, 0.0)
        boxes = confident_boxes(rects, scores, self.min_score)
        faces = []
        t0 = time.perf_counter()
        for rect, score in boxes:
            shape = self._predictor(image, rect)
            pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float32)
            box = (float(rect.left()), float(rect.top()), float(rect.right()), float(rect.bottom()))
            faces.append(DetectedFace(float(score), box, pts))
        self.timings["landmarks"] += time.perf_counter() - t0
        return largest_first(faces)

    def landmarks_in(self, image: np.ndarray, box) -> np.ndarray:
        import dlib

        rect = dlib.rectangle(*(int(round(v)) for v in box))
        shape = self._timed("landmarks", self._predictor, _rgb(image), rect)
        return np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], dtype=np.float32)


# ---------------------------------------------------------------------------- face-alignment (FAN)
class FanDetector(LandmarkDetector):
    name = "fan (face-alignment: S3FD + 2D-FAN-4)"

    def __init__(self, *, device=None, loading: Loading = LOADING):
        super().__init__()
        if not fan_files_present():
            self._place_files(loading)
        import face_alignment

        folder = fan_checkpoint_dir()
        dev = str(device) if device is not None else "cpu"
        try:
            self._fa = face_alignment.FaceAlignment(
                face_alignment.LandmarksType.TWO_D, device=dev, flip_input=True, face_detector="sfd",
                face_detector_kwargs={"path_to_detector": str(folder / fan_file_names()["s3fd"])}, compile=False)
        except (RuntimeError, OSError, KeyError) as e:
            raise CheckpointError(f"face-alignment could not load its networks from {folder} "
                                  f"({detail(e, 120)})",
                                  hint=f"agetool weights download fan-2d s3fd, or use {arg('landmarks', 'dlib')}") from None

    @staticmethod
    def _place_files(loading: Loading) -> None:
        missing = ", ".join(f for f in fan_file_names().values() if not (fan_checkpoint_dir() / f).is_file())
        hint = (f"place the files you have with `agetool weights import FILE --as fan-2d` and "
                f"`agetool weights import FILE --as s3fd`, run `agetool weights download fan-2d s3fd` once online, "
                f"or use {arg('landmarks', 'dlib')}")
        if loading.offline:
            raise OfflineError(f"the fan landmark backend needs {missing} in {fan_checkpoint_dir()}", hint=hint)
        from agetool import weights

        weights.place_face_alignment_files(loading=loading)

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        image = _rgb(image)
        boxes = self._timed("detect", self._fa.face_detector.detect_from_image, image.copy())
        if len(boxes) == 0:
            return []
        landmarks = self._timed("landmarks", self._fa.get_landmarks_from_image, image, detected_faces=boxes)
        faces = [DetectedFace(float(b[4]), tuple(float(v) for v in b[:4]), np.asarray(lm[:, :2], dtype=np.float32))
                 for b, lm in zip(boxes, landmarks or [])]
        return largest_first(faces)

    def landmarks_in(self, image: np.ndarray, box) -> np.ndarray:
        found = self._timed("landmarks", self._fa.get_landmarks_from_image, _rgb(image),
                            detected_faces=[np.array([*box, 1.0], dtype=np.float32)])
        return np.asarray(found[0][:, :2], dtype=np.float32)
