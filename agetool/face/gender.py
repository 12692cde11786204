"""Automatic choice of the male or female generator: insightface's ``genderage.onnx`` (buffalo_l).

Input preparation follows insightface's attribute model: a square of 1.5 x the face box's longer
side, centred on the box, scaled to the network's input (96 x 96) with a bilinear affine warp,
RGB, ``(pixel - mean) / std`` where mean / std are 0 / 1 when the graph normalizes by itself (its
first nodes subtract and multiply) and 127.5 / 128 otherwise. Output: three numbers, the first two
gender scores (0 = female, 1 = male) and the age / 100.

The face box is taken from the 68 landmarks (jaw and brows, raised by a third of the brow-to-chin
height for the forehead), so it does not depend on which detector ran; an aligned crop without
landmarks uses the face's place in the FFHQ-aging crop.
"""

from __future__ import annotations

import os

import numpy as np

from agetool.errors import AgetoolError, ModelChoiceError, arg
from agetool.loading import LOADING, Loading

GENDERS = ("female", "male")
#: the registry entry whose ``preprocess`` table gives ``box_scale`` (the crop around the face box)
#: and ``aligned_box`` (the face box in an aligned crop, as fractions of its side: x0, y0, x1, y1)
ENTRY = "genderage"
_HINT = (f"pass {arg('model', 'male')} or {arg('model', 'female')}, or the classifier as "
         f"{arg('classifier_weights', 'FILE')}")


def face_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """A detector-like face box (x0, y0, x1, y1) from 68 landmarks: jaw width, forehead to chin."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(68, 2)
    x0, x1 = lm[:, 0].min(), lm[:, 0].max()
    brow, chin = lm[17:27, 1].min(), lm[:, 1].max()
    return float(x0), float(brow - (chin - brow) / 3.0), float(x1), float(chin)


def aligned_box(side: int) -> tuple[float, float, float, float]:
    """The face box in an aligned crop of ``side`` pixels, where no landmarks are known."""
    from agetool.weights.registry import preprocessing

    return tuple(v * side for v in preprocessing(ENTRY)["aligned_box"])


def input_normalization(path: str | os.PathLike) -> tuple[float, float]:
    """(mean, std) for the model at ``path``, by insightface's rule on the graph's first nodes."""
    from agetool.nn.onnxrt import graph_normalizes

    return (0.0, 1.0) if graph_normalizes(path) else (127.5, 128.0)


class GenderClassifier:
    def __init__(self, session, mean: float, std: float):
        inp = session.get_inputs()[0]
        self.session = session
        self.input_name = inp.name
        self.input_size = int(inp.shape[2]) if isinstance(inp.shape[2], int) else 96
        self.mean, self.std = mean, std
        self.path = None  # the model file, when loaded from one
        from agetool.weights.registry import preprocessing

        self.box_scale = float(preprocessing(ENTRY)["box_scale"])

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, *, loading: Loading = LOADING) -> "GenderClassifier":
        """From ``path``, or the registry's ``genderage``; ``ModelChoiceError`` when it can't be had."""
        try:
            return cls.open(path, loading=loading)
        except AgetoolError as e:
            error = ModelChoiceError(f"can't choose the male or female model automatically: {e.message}", hint=_HINT)
            error.reason = e.message  # why the classifier can't be had, for callers that need it otherwise
            raise error from None

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, device=None, loading: Loading = LOADING,
             argument: str = "classifier_weights") -> "GenderClassifier":
        """From ``path``, or the registry's ``genderage``, on ``device``'s onnxruntime provider; the
        errors name ``argument`` (the file is missing or no model) or come from the registry."""
        from agetool import weights
        from agetool.nn import onnxrt

        path = weights.resolve("genderage", path, argument=argument, loading=loading)
        session = onnxrt.session(path, argument=argument, device=device)
        mean, std = input_normalization(path)
        classifier = cls(session, mean, std)
        classifier.path = path
        return classifier

    def prepare(self, image: np.ndarray, box) -> np.ndarray:
        """The network input [1, 3, S, S] float32 for the face in ``box`` of RGB ``image``."""
        import cv2

        s = self.input_size
        x0, y0, x1, y1 = box
        scale = s / (max(x1 - x0, y1 - y0) * self.box_scale)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        m = np.array([[scale, 0.0, s / 2 - cx * scale], [0.0, scale, s / 2 - cy * scale]])
        crop = cv2.warpAffine(np.ascontiguousarray(image), m, (s, s), borderValue=0.0)  # [S, S, 3] RGB
        blob = (crop.astype(np.float32) - np.float32(self.mean)) * np.float32(1.0 / self.std)
        return np.ascontiguousarray(blob.transpose(2, 0, 1)[None])

    def estimate_at(self, image: np.ndarray, box) -> tuple[str, float, float]:
        """(gender, probability of that gender, age in years) for the face in ``box`` of RGB ``image``."""
        out = self.scores(self.prepare(image, box))
        logits = out[:2]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        k = int(np.argmax(logits))
        return GENDERS[k], float(p[k]), float(max(0.0, out[2] * 100.0))

    def scores(self, blob: np.ndarray) -> np.ndarray:
        """The model's raw output for one face: two gender logits and the age / 100 (a
        ``CheckpointError`` naming the model for any other shape, or values that are not finite)."""
        out = np.asarray(self.session.run(None, {self.input_name: blob})[0], dtype=np.float64).reshape(-1)
        if out.shape != (3,) or not np.isfinite(out).all():
            from agetool.errors import CheckpointError

            name = os.path.basename(str(self.path)) if self.path is not None else "the age and gender classifier"
            found = f"{out.size} values" if out.shape != (3,) else "values that are not finite numbers"
            raise CheckpointError(f"{name}: the age and gender classifier gave {found} (expected 3 finite numbers: "
                                  "two gender scores and the age)", hint="is it insightface's genderage.onnx?")
        return out

    def estimate(self, photo_image: np.ndarray, face) -> tuple[str, float, float]:
        """(gender, probability of that gender, age in years) for ``face`` (an ``agetool.results.Face``) of the photo.

        The photo and the face's landmarks are used where known; an aligned crop without landmarks
        uses the face's place in the crop.
        """
        detection = getattr(face, "detection", None)
        if detection is not None:
            image, box = photo_image, face_box(detection.landmarks)
        else:
            image = face.aligned
            box = aligned_box(image.shape[0])
        return self.estimate_at(image, box)

    def predict(self, photo_image: np.ndarray, face) -> tuple[str, float]:
        """('male' | 'female', probability of that answer) for ``face`` (an ``agetool.results.Face``) of the photo."""
        gender, p, _ = self.estimate(photo_image, face)
        return gender, p


def classifier_available(path: str | os.PathLike | None = None) -> bool:
    """True when the classifier can be loaded without a download: ``path`` exists, or the
    registry's ``genderage`` is cached, and onnxruntime is installed."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return False
    if path is not None:
        return os.path.isfile(path)
    from agetool import weights

    try:
        return weights.status("genderage").path is not None
    except AgetoolError:
        return False
