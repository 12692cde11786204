"""Faithful draws: score each noise draw of a face against the input, and keep the most faithful.

LATS draws Gaussian noise onto the class codes; another draw is another rendering of the same
person, some closer to them than others. ``candidates=N`` renders N draws of each face (the run's
seed and the N - 1 that follow) and keeps the one with the lowest ``score``. Every number is
defined so that it can be recomputed from the images alone:

- ``identity``: the Euclidean distance between dlib's face descriptor of the aligned input crop
  and of the draw's render, mean over the rendered ages (dlib's 5-point predictor on the face box,
  ``get_face_chip`` of 150 px with padding 0.25, ``dlib_face_recognition_resnet_model_v1``; the box
  is the input's face box, from its landmarks in the crop, or the FFHQ-aging face box of an aligned
  crop: renders share the crop's geometry). dlib calls two faces the same person at 0.6 or less.
- ``skin``: the distance of mean skin chroma. The skin region is the input's parsing labels 1 (skin)
  and 2 (nose), eroded by ``SKIN_ERODE`` pixels (a square of side 2 x SKIN_ERODE + 1; pixels outside
  the crop count as skin). Over it the mean CIELAB a* and b* (sRGB, D65, lightness left out, so
  wrinkles and age spots cost nothing) of the input and of the render; the Euclidean distance
  between the two (a*, b*) means, mean over the ages. None when the region has fewer than
  ``MIN_SKIN_PIXELS`` pixels.
- ``gender``: where the input has a gender estimate, 1 - the probability the gender classifier
  (insightface's genderage) gives the input's estimated gender on the render, mean over the ages.
  None without an estimate.
- ``score`` = identity + SKIN_WEIGHT x skin + GENDER_WEIGHT x gender (a missing term counts 0):
  lower is more faithful; ties go to the earlier draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: parsing labels (CelebAMask-HQ order) of the skin region: skin and nose
SKIN_LABELS = (1, 2)
#: pixels taken off the skin region's edge (hair, brows, background bleed into it)
SKIN_ERODE = 4
#: fewer skin pixels than this after erosion: no skin score
MIN_SKIN_PIXELS = 64
#: weights of the combined score: 5 CIELAB units of chroma drift weigh as 0.1 of identity distance,
#: a render the classifier reads as the other gender for sure as 0.5 (most of dlib's 0.6 threshold)
IDENTITY_WEIGHT = 1.0
SKIN_WEIGHT = 0.02
GENDER_WEIGHT = 0.5

# sRGB (D65) -> XYZ, and the D65 white point (CIE 1931 2-degree observer)
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]])
_WHITE = np.array([0.95047, 1.0, 1.08883])


def srgb_to_lab(image: np.ndarray) -> np.ndarray:
    """RGB uint8 [..., 3] -> CIELAB [..., 3] (L*, a*, b*), float64: sRGB gamma, D65 white."""
    c = np.asarray(image, dtype=np.float64) / 255.0
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    xyz = linear @ _XYZ_FROM_RGB.T / _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack([116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], -1)


def skin_region(parsing: np.ndarray, erode: int = SKIN_ERODE) -> np.ndarray:
    """The boolean skin region [S, S] of a face's parsing labels: ``SKIN_LABELS``, eroded by ``erode``
    pixels (a square structuring element; outside the crop counts as skin)."""
    skin = np.isin(np.asarray(parsing), SKIN_LABELS)
    if erode <= 0:
        return skin
    import cv2

    kernel = np.ones((2 * erode + 1, 2 * erode + 1), np.uint8)
    eroded = cv2.erode(skin.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1)
    return eroded.astype(bool)


def mean_chroma(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Mean CIELAB (a*, b*) of ``image`` [S, S, 3] over the boolean ``region`` [S, S]."""
    lab = srgb_to_lab(np.asarray(image)[region])
    return lab[:, 1:].mean(axis=0)


def chroma_distance(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """The skin-tone distance of two images of one face over ``region`` (see the module's ``skin``)."""
    return float(np.linalg.norm(mean_chroma(a, region) - mean_chroma(b, region)))


def skin_tones(crop: np.ndarray, renders: Sequence[np.ndarray], parsing: np.ndarray) -> list[float] | None:
    """The skin-tone distance of each of ``renders`` to the input ``crop`` over the skin region of its
    ``parsing`` labels (see the module's ``skin``); None when the region is too small to measure."""
    region = skin_region(parsing)
    if int(region.sum()) < MIN_SKIN_PIXELS:
        return None
    reference = mean_chroma(crop, region)
    return [float(np.linalg.norm(mean_chroma(r, region) - reference)) for r in renders]


def combine(identity: float, skin: float | None, gender: float | None) -> float:
    """The combined score of a draw (lower is more faithful); a missing term counts 0."""
    return (IDENTITY_WEIGHT * identity + SKIN_WEIGHT * (skin or 0.0) + GENDER_WEIGHT * (gender or 0.0))


@dataclass(frozen=True)
class DrawScore:
    """One draw's scores (see the module): ``draw`` counts from 0, ``seed`` is its noise seed."""

    draw: int
    seed: int
    identity: float
    skin: float | None
    gender: float | None
    score: float

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """``draw 2 (seed 2): score 0.412, identity 0.380, skin 1.6, gender 0.00``."""
        parts = [f"identity {self.identity:.3f}"]
        if self.skin is not None:
            parts.append(f"skin {self.skin:.2f}")
        if self.gender is not None:
            parts.append(f"gender {self.gender:.2f}")
        return f"draw {self.draw} (seed {self.seed}): score {self.score:.3f}, {', '.join(parts)}"


def best(scores: Sequence[DrawScore]) -> int:
    """The index of the most faithful draw: the lowest score, the earliest draw on a tie."""
    if not scores:
        raise ValueError("no draws to choose from")
    return min(range(len(scores)), key=lambda i: (scores[i].score, scores[i].draw))


class Judge:
    """Scores the draws of one face against its input: the input's descriptor, skin region and
    chroma are computed once, each draw costs one descriptor (and one classification) per age.

    ``identity``: an ``agetool.identity.FaceIdentity`` with dlib's descriptor; ``classifier``: the
    ``GenderClassifier`` (None: no gender term); ``crop`` [S, S, 3] the aligned input, ``parsing``
    its labels (None: no skin term), ``landmarks`` [68, 2] in the crop's pixels (None: the
    FFHQ-aging face box), ``gender`` the input's estimated gender (None: no gender term).
    """

    def __init__(self, identity, crop: np.ndarray, *, parsing: np.ndarray | None = None,
                 landmarks: np.ndarray | None = None, classifier=None, gender: str | None = None):
        from agetool.face.gender import aligned_box, face_box
        from agetool.identity import FaceSpec

        self.identity = identity
        self.crop = np.asarray(crop)
        side = self.crop.shape[0]
        self.box = face_box(landmarks) if landmarks is not None else aligned_box(side)
        self.spec = FaceSpec(box=self.box)
        self.reference = identity.embed_images([self.crop], [self.spec])[0]
        self.region = None
        if parsing is not None:
            region = skin_region(parsing)
            if int(region.sum()) >= MIN_SKIN_PIXELS:
                self.region = region
                self.chroma = mean_chroma(self.crop, region)
        self.classifier = classifier if gender is not None else None
        self.gender = gender

    def score(self, renders: np.ndarray, draw: int, seed: int) -> DrawScore:
        """The scores of one draw: its renders [A, S, S, 3] uint8 at the requested ages."""
        renders = [np.asarray(r) for r in renders]
        embeddings = self.identity.embed_images(renders, [self.spec] * len(renders))
        identity = float(np.mean([self.identity.similarity(self.reference, e) for e in embeddings]))
        skin = None
        if self.region is not None:
            skin = float(np.mean([np.linalg.norm(mean_chroma(r, self.region) - self.chroma) for r in renders]))
        gender = None
        if self.classifier is not None:
            agree = []
            for r in renders:
                said, p, _ = self.classifier.estimate_at(r, self.box)
                agree.append(p if said == self.gender else 1.0 - p)
            gender = float(1.0 - np.mean(agree))
        return DrawScore(int(draw), int(seed), identity, skin, gender, combine(identity, skin, gender))


@dataclass
class Candidates:
    """The draws of one face: each one's ``scores``, the ``chosen`` one (its index), and with
    ``keep_candidates`` every draw's renders ``images`` [N, A, S, S, 3] uint8."""

    scores: list[DrawScore]
    chosen: int
    images: np.ndarray | None = None

    @property
    def best(self) -> DrawScore:
        return self.scores[self.chosen]

    def as_dict(self) -> dict:
        return {"chosen": self.chosen, "seed": self.best.seed, "draws": [s.as_dict() for s in self.scores]}


def judge(models, face) -> Judge:
    """A ``Judge`` of ``face`` (``agetool.results.Face``) with ``models``' dlib descriptor and, where
    the face has a gender estimate, its classifier; a face not parsed yet is parsed here, once."""
    parsing = face.parsing
    if parsing is None:
        parser = models.parser
        with models.timer("parse"):
            parsing = parser.parse(face.aligned)
    identity = models.identity
    gender = face.estimate.gender if face.estimate is not None else None
    classifier = models.classifier_if_available() if gender is not None else None
    with models.timer("score"):
        return Judge(identity, face.aligned, parsing=parsing, landmarks=face.crop_landmarks, classifier=classifier,
                     gender=gender)


def choose(models, face, renders: np.ndarray, seeds: Sequence[int], *, keep: bool = False
           ) -> tuple[np.ndarray, Candidates]:
    """The most faithful of ``face``'s draws: ``renders`` [N, A, S, S, 3] uint8 (draw k made with
    ``seeds[k]``) -> (the chosen draw's renders [A, S, S, 3], the ``Candidates``)."""
    referee = judge(models, face)
    with models.timer("score"):
        scores = [referee.score(r, k, s) for k, (r, s) in enumerate(zip(renders, seeds))]
    k = best(scores)
    return renders[k], Candidates(scores, k, renders if keep else None)


def pooled(seen: Sequence[Candidates]) -> Candidates:
    """One choice from the same draws scored on several crops of one person (a clip's first frames):
    each score the mean over the crops (a term missing on any crop is left out), the best kept."""
    def mean(values):
        return None if any(v is None for v in values) else float(np.mean(values))

    scores = []
    for k, first in enumerate(seen[0].scores):
        column = [c.scores[k] for c in seen]
        identity, skin, gender = (mean([getattr(s, name) for s in column]) for name in ("identity", "skin", "gender"))
        scores.append(DrawScore(first.draw, first.seed, identity, skin, gender, combine(identity, skin, gender)))
    return Candidates(scores, best(scores))


def describe_choice(who: str, candidates: Candidates) -> str:
    """The progress line of one choice: ``me.jpg face 0: draw 2 of 4 kept, seed 2: score ...``."""
    b = candidates.best
    others = ", ".join(f"{s.score:.3f}" for s in candidates.scores)
    return (f"{who}: draw {b.draw} of {len(candidates.scores)} kept, seed {b.seed}: "
            f"{b.describe().split(': ', 1)[1]} (scores {others})")
