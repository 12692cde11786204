"""What the Python API returns: plain dataclasses of numpy arrays, with a grid view.

Images are RGB uint8 arrays [H, W, 3]; tiles are [256, 256, 3], stacks [N, 256, 256, 3].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL.Image import Image

#: Long side of the whole-photo tiles in a paste-back grid.
PASTE_GRID_SIDE = 512


@dataclass
class AgeEstimate:
    """The classifier's view of a face: age in years, gender and the probability of that gender."""

    age: float
    gender: str  # "female" | "male"
    gender_probability: float


@dataclass
class FaceEstimate:
    """One face of a photo as ``AgingPipeline.estimate`` reports it."""

    index: int
    box: tuple[float, float, float, float] | None  # (x0, y0, x1, y1) in photo pixels
    age: float
    gender: str
    gender_probability: float


@dataclass
class EncodedFace:
    """A face ready to render at any age: aligned, masked and encoded once.

    ``features`` are the generator's identity features; ``render`` reuses them, so each further
    age costs one decode.
    """

    index: int  # faces are numbered left to right in the photo
    aligned: np.ndarray  # [256, 256, 3] uint8: the aligned input crop
    box: tuple[float, float, float, float] | None  # photo pixels; None for an aligned input
    landmarks: np.ndarray | None  # [68, 2] photo pixels
    crop_landmarks: np.ndarray | None  # [68, 2] in the aligned crop's pixels
    model: str  # "male" | "female" | "custom"
    estimate: AgeEstimate | None
    features: Any = field(default=None, repr=False)  # torch.Tensor [256, 64, 64]
    crop: Any = field(default=None, repr=False)  # agetool.faces.FaceCrop (mask, labels, alignment)


@dataclass
class EncodedPhoto:
    image: np.ndarray  # [H, W, 3] uint8, EXIF orientation applied
    name: str  # file name, or "image" for arrays
    faces: list[EncodedFace]


def column_label(label: str, years: float | None) -> str:
    """A grid caption: the age as requested, and for a relative age (``+20``) the age it became
    (``62 (+20)``)."""
    if years is None or not label[:1] in ("+", "-"):
        return label
    return f"{years:.0f} ({label})"


@dataclass
class AgedFace:
    """One face at the requested ages (``images[k]`` has the label ``labels[k]``)."""

    index: int
    images: np.ndarray  # [N, 256, 256, 3] uint8
    labels: list[str]  # class labels or the ages as requested
    ages: list[float]  # each column's age in years (a class gives its anchor age)
    box: tuple[float, float, float, float] | None
    landmarks: np.ndarray | None
    crop_landmarks: np.ndarray | None
    model: str
    aligned: np.ndarray  # [256, 256, 3] uint8
    estimate: AgeEstimate | None = None
    pasted: list[np.ndarray] | None = None  # with paste_back: the photo with this face aged, per column


@dataclass
class AgingResult:
    """Every face of one photo at the requested ages.

    ``pasted`` (with ``paste_back=True``) holds one whole photo per column with every face aged.
    """

    image: np.ndarray
    name: str
    faces: list[AgedFace]
    labels: list[str]
    pasted: list[np.ndarray] | None = None

    def input_label(self, face: AgedFace) -> str:
        return "input" if face.estimate is None else f"input, ~{face.estimate.age:.0f}"

    def rows(self) -> list[list[np.ndarray]]:
        """Grid rows without captions: per face [aligned, *images]; with paste-back one row of
        whole photos [photo, *pasted], scaled to a readable size."""
        if self.pasted is not None:
            from agetool.images import fit

            return [[fit(t, PASTE_GRID_SIDE) for t in (self.image, *self.pasted)]]
        return [[f.aligned, *f.images] for f in self.faces]

    def grid_array(self, labels: bool = True) -> np.ndarray:
        """The grid ``agetool age`` writes, as an array [H, W, 3] uint8."""
        from agetool.images import caption, grid

        rows = self.rows()
        if not labels:
            return grid(rows)
        if self.pasted is not None:
            # relative ages differ from face to face: the age they became is shown for one face only
            years = self.faces[0].ages if len(self.faces) == 1 else [None] * len(self.labels)
            heads = [["input", *(column_label(k, y) for k, y in zip(self.labels, years))]]
        else:
            heads = [[self.input_label(f), *(column_label(k, y) for k, y in zip(f.labels, f.ages))]
                     for f in self.faces]
        return grid([[caption(t, h) for t, h in zip(row, head)] for row, head in zip(rows, heads)])

    def write_tiles(self, folder) -> list:
        """Every tile as a PNG in ``folder``: ``face<i>_input.png`` and ``face<i>_<label>.png`` per face
        (with paste-back, whole photos). These are the files ``agetool age --tiles`` writes; returns their paths."""
        from pathlib import Path

        from agetool.images import write_image

        folder, written = Path(folder), []
        for face in self.faces:
            first = face.aligned if self.pasted is None else self.image
            shown = face.images if self.pasted is None else face.pasted
            written.append(write_image(folder / f"face{face.index}_input.png", first))
            for label, tile in zip(face.labels, shown):
                written.append(write_image(folder / f"face{face.index}_{label}.png", tile))
        return written

    def grid(self, labels: bool = True) -> Image:
        """The grid ``agetool age`` writes, as a ``PIL.Image``: one row per face (left to right),
        columns = input, then one per age; with paste-back one row of whole photos."""
        from PIL import Image as PILImage

        return PILImage.fromarray(self.grid_array(labels))
