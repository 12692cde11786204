"""The two measurements of an aged face: its estimated age and its identity similarity to the input.

``Measurer`` holds one age model (insightface's ``genderage`` classifier) and one identity embedder
(an ArcFace-type model), both loaded once and reused across every face of a run. Outputs of the
generator share the geometry of the aligned input crop, so the face box (for the age model) and the
five points (for the embedder) found on the input serve every output of that face.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Identity models in the registry; the first is the default (Apache-2.0, usable commercially).
IDENTITY_MODELS = ("auraface", "arcface-w600k")
AGE_MODEL = "genderage"


@dataclass
class FaceMeasures:
    """What ``Measurer.measure`` finds for one face: the input's numbers, then one pair per output."""

    input_age: float
    input_identity: float  # the input with itself: 1 up to rounding
    ages: list[float]
    identities: list[float]


class Measurer:
    def __init__(self, age_model, identity_model):
        self.age_model = age_model  # agetool.face.gender.GenderClassifier
        self.identity_model = identity_model  # agetool.face.identity.IdentityEmbedder
        self.models: dict[str, dict] = {}  # what the report says about each model file

    @classmethod
    def load(cls, *, age_model: str | os.PathLike | None = None, identity_model: str | os.PathLike | None = None,
             identity: str = IDENTITY_MODELS[0], device=None, offline: bool = False,
             report: Callable[[str], None] | None = None, progress=None) -> "Measurer":
        """The registry's ``genderage`` and ``identity`` models, or local ONNX files in their place."""
        from agetool.errors import UsageError, arg
        from agetool.face.gender import GenderClassifier
        from agetool.face.identity import IdentityEmbedder

        if identity not in IDENTITY_MODELS:
            raise UsageError(f"{arg('identity', identity)}: expected {' or '.join(IDENTITY_MODELS)}")
        ages = GenderClassifier.open(age_model, device=device, offline=offline, report=report, progress=progress,
                                     argument="age_model")
        ident = IdentityEmbedder.open(identity, identity_model, device=device, offline=offline, report=report,
                                      progress=progress, argument="identity_model")
        measurer = cls(ages, ident)
        measurer.models = {
            "age": file_info(None if age_model is not None else AGE_MODEL, ages.path),
            "identity": file_info(None if identity_model is not None else identity, ident.path),
        }
        return measurer

    def measure(self, crop: np.ndarray, outputs: Sequence[np.ndarray], landmarks: np.ndarray | None = None) -> FaceMeasures:
        """Age and identity of the aligned input ``crop`` [S, S, 3] and of each generated ``outputs`` tile.

        ``landmarks`` [68, 2] are the face's landmarks in the crop's pixels (None: where a frontal face
        lies in an FFHQ-aging crop).
        """
        images = [np.asarray(crop), *(np.asarray(o) for o in outputs)]
        boxes, points = [], []
        for image in images:
            box, five = self._geometry(image.shape[0], crop.shape[0], landmarks)
            boxes.append(box)
            points.append(five)
        ages = [self.age_model.estimate_at(image, box)[2] for image, box in zip(images, boxes)]
        emb = self.identity_model.embed(images, points)
        from agetool.face.identity import cosine

        sims = cosine(emb[0], emb)
        return FaceMeasures(ages[0], float(sims[0]), ages[1:], [float(s) for s in sims[1:]])

    def ages(self, crop: np.ndarray, outputs: Sequence[np.ndarray], landmarks: np.ndarray | None = None) -> list[float]:
        """The estimated age of each of ``outputs`` (tiles of the face in ``crop``), without identities."""
        out = []
        for image in outputs:
            box, _ = self._geometry(image.shape[0], crop.shape[0], landmarks)
            out.append(self.age_model.estimate_at(np.asarray(image), box)[2])
        return out

    @staticmethod
    def _geometry(side: int, crop_side: int, landmarks):
        from agetool.face.gender import aligned_box, face_box
        from agetool.face.identity import aligned_five_points, five_points

        if landmarks is None:
            return aligned_box(side), aligned_five_points(side)
        lm = (np.asarray(landmarks, dtype=np.float64).reshape(68, 2) + 0.5) * (side / crop_side) - 0.5
        return face_box(lm), five_points(lm)


def file_info(name: str | None, path: Path | None) -> dict:
    """What a report says about a model: registry name (or "local"), file name, sha256, Hub revision."""
    info = {"name": name or "local", "file": path.name if path is not None else None, "sha256": None,
            "revision": None}
    if name is not None:
        try:
            from agetool import weights

            status = weights.status(name)
            info["sha256"], info["revision"] = status.record.get("sha256"), status.record.get("revision")
            info["license"] = status.artifact.license
            if path is None and status.path is not None:
                info["file"] = status.path.name
        except Exception:  # noqa: BLE001 - the description is informative only
            pass
    if info["sha256"] is None and path is not None:
        from agetool.weights.store import hash_file

        info["sha256"] = hash_file(Path(path)).sha256
    return info
