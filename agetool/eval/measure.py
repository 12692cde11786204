"""The two measurements of an aged face: its estimated age and its identity similarity to the input.

``Measurer`` holds one age model (insightface's ``genderage`` classifier) and one identity model
(``agetool.identity.FaceIdentity``: an ArcFace-type model, cosine similarity, or dlib's face
descriptor, Euclidean distance), both loaded once and reused across every face of a run. Outputs of the
generator share the geometry of the aligned input crop, so the face box (for the age model) and the
five points (for the embedder) found on the input serve every output of that face.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agetool.loading import LOADING, Loading

#: Identity models in the registry; the first is the default (Apache-2.0, usable commercially).
IDENTITY_MODELS = ("auraface", "arcface-w600k")
#: what ``identity="auto"`` falls back to when the default is not cached: no download needed
OFFLINE_IDENTITY = "dlib"
AGE_MODEL = "genderage"


@dataclass
class FaceMeasures:
    """What ``Measurer.measure`` finds for one face: the input's numbers, then one pair per output."""

    input_age: float | None  # None: identity only (no age model)
    input_identity: float  # the input with itself: 1 (cosine) or 0 (distance) up to rounding
    ages: list[float | None]
    identities: list[float]


class Measurer:
    def __init__(self, age_model, identity_model):
        self.age_model = age_model  # agetool.face.gender.GenderClassifier
        self.identity_model = identity_model  # agetool.identity.FaceIdentity
        self.models: dict[str, dict] = {}  # what the report says about each model file

    @classmethod
    def load(cls, *, age_model: str | os.PathLike | None = None, identity_model: str | os.PathLike | None = None,
             identity: str = "auto", device=None, loading: Loading = LOADING, ages: bool = True) -> "Measurer":
        """The registry's ``genderage`` (or the local ONNX file ``age_model``) and the identity model:
        ``identity_model`` (a name or a file, see ``FaceIdentity.from_pretrained``), else ``identity``
        (``"auto"``: the ArcFace-type default where it is cached, else dlib's descriptor, said through
        ``loading.report``; ``"dlib"``, ``"auraface"``, ``"arcface-w600k"``). ``ages=False``: no age model;
        identity only (every estimated age is None)."""
        from agetool.errors import UsageError, arg
        from agetool.face.gender import GenderClassifier
        from agetool.identity import MODELS, FaceIdentity

        if identity not in ("auto", *MODELS):
            raise UsageError(f"{arg('identity', identity)}: expected auto, {', '.join(MODELS)}")
        estimator = None if not ages else GenderClassifier.open(age_model, device=device, loading=loading,
                                                                argument="age_model")
        choice = identity_model if identity_model is not None else identity
        if choice == "auto":
            choice = default_identity(loading.report)
        ident = FaceIdentity.from_pretrained(choice, device=device, loading=loading,
                                             argument="identity_model" if identity_model is not None else "identity")
        measurer = cls(estimator, ident)
        measurer.models = {
            "age": None if estimator is None else file_info(None if age_model is not None else AGE_MODEL, estimator.path),
            "identity": identity_info(ident),
        }
        return measurer

    def measure(self, crop: np.ndarray, outputs: Sequence[np.ndarray], landmarks: np.ndarray | None = None) -> FaceMeasures:
        """Age and identity of the aligned input ``crop`` [S, S, 3] and of each generated ``outputs`` tile.

        ``landmarks`` [68, 2] are the face's landmarks in the crop's pixels (None: where a frontal face
        lies in an FFHQ-aging crop).
        """
        from agetool.identity import FaceSpec

        images = [np.asarray(crop), *(np.asarray(o) for o in outputs)]
        boxes, specs = [], []
        for image in images:
            box, five = self._geometry(image.shape[0], crop.shape[0], landmarks)
            boxes.append(box)
            specs.append(FaceSpec(box=box, five=five))  # one geometry: outputs share the input's
        if self.age_model is None:  # identity only
            ages = [None] * len(images)
        else:
            ages = [self.age_model.estimate_at(image, box)[2] for image, box in zip(images, boxes)]
            self._check("age", ages)
        emb = self.identity_model.embed_images(images, specs)  # the input's embedding serves every output
        self._check_embeddings(emb)
        sims = [self.identity_model.similarity(emb[0], e) for e in emb]
        self._check("identity", sims)
        return FaceMeasures(ages[0], float(sims[0]), ages[1:], [float(s) for s in sims[1:]])

    def _name(self, which: str) -> str:
        info = self.models.get(which) or {}
        model = self.age_model if which == "age" else self.identity_model
        path = info.get("file") or getattr(model, "path", None) or getattr(model, "name", None)
        return f"the {which} model {Path(str(path)).name}" if path else f"the {which} model"

    def _check(self, which: str, values: Sequence[float]) -> None:
        """Refuse (``CheckpointError`` naming the model) outputs that are not finite numbers."""
        from agetool.errors import CheckpointError

        bad = [v for v in values if not np.isfinite(v)]
        if bad:
            raise CheckpointError(f"{self._name(which)} gave {bad[0]} for {len(bad)} of {len(values)} images; "
                                  "its outputs must be finite numbers", hint="is it the right model file?")

    def _check_embeddings(self, embeddings) -> None:
        from agetool.errors import CheckpointError

        shapes = {np.shape(e.vector) for e in embeddings}
        if len(shapes) != 1 or not all(len(s) == 1 and s[0] > 0 for s in shapes):
            raise CheckpointError(f"{self._name('identity')} gave embeddings of shapes "
                                  f"{', '.join(str(list(s)) for s in sorted(shapes))}; expected one vector per face",
                                  hint="is it the right model file?")
        if not all(np.isfinite(e.vector).all() for e in embeddings):
            raise CheckpointError(f"{self._name('identity')} gave embeddings that are not finite",
                                  hint="is it the right model file?")

    def ages(self, crop: np.ndarray, outputs: Sequence[np.ndarray], landmarks: np.ndarray | None = None) -> list[float]:
        """The estimated age of each of ``outputs`` (tiles of the face in ``crop``), without identities."""
        out = []
        for image in outputs:
            box, _ = self._geometry(image.shape[0], crop.shape[0], landmarks)
            out.append(self.age_model.estimate_at(np.asarray(image), box)[2])
        self._check("age", out)
        return out

    @staticmethod
    def _geometry(side: int, crop_side: int, landmarks):
        from agetool.face.gender import aligned_box, face_box
        from agetool.face.identity import aligned_five_points, five_points

        if landmarks is None:
            return aligned_box(side), aligned_five_points(side)
        lm = (np.asarray(landmarks, dtype=np.float64).reshape(68, 2) + 0.5) * (side / crop_side) - 0.5
        return face_box(lm), five_points(lm)


def default_identity(report: Callable[[str], None] | None = None) -> str:
    """The identity model for ``identity="auto"``: the ArcFace-type default when it is cached and
    verified, else dlib's descriptor (no download), said through ``report``."""
    try:
        from agetool import weights

        if weights.status(IDENTITY_MODELS[0]).verified:
            return IDENTITY_MODELS[0]
    except Exception:  # noqa: BLE001 - an unreadable cache record: not at hand
        pass
    if report is not None:
        report(f"identity: {IDENTITY_MODELS[0]} is not downloaded; measuring identity with dlib's face descriptor "
               f"(Euclidean distance, same person at 0.6 or less; `agetool weights download {IDENTITY_MODELS[0]}` "
               "for the ArcFace-type model)")
    return OFFLINE_IDENTITY


def identity_info(identity) -> dict:
    """What a report says about a ``FaceIdentity``: registry name (or dlib, or "local"), file, sha256,
    revision, license, and the metric and threshold its numbers are in."""
    from agetool.identity import ARCFACE_MODELS

    if identity.name in ARCFACE_MODELS:
        info = file_info(identity.name, identity.path)
    elif identity.name == OFFLINE_IDENTITY:
        info = {"name": identity.name, "file": identity.path.name, "sha256": identity.sha256, "revision": None,
                "license": "public domain (dlib-models)"}
    else:
        info = file_info(None, identity.path)
    return {**info, "metric": identity.metric, "threshold": identity.threshold}


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
