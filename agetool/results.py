"""What the Python API returns: plain dataclasses of numpy arrays, with a grid view.

Images are RGB uint8 arrays [H, W, 3]; tiles are [256, 256, 3], stacks [N, 256, 256, 3].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass(eq=False)
class Face:
    """One face, from detection to result: one record that each stage fills in.

    - the face stages (``agetool.faces``): ``index`` (left to right in the photo), ``detection``
      (box and 68 landmarks in photo pixels), ``alignment`` (the crop's transform, for paste-back),
      ``aligned`` (the crop), ``parsing`` (face-parsing classes) and ``network_input`` (the crop with
      its background painted gray, or the crop itself without masking);
    - a clip's runner: ``track`` (the person across frames, ``agetool.clip.tracks.Track``);
    - the render core (``agetool.render``): ``estimate`` (age and gender), ``model`` (the generator
      that renders it), ``features`` (the generator's identity features: each further age costs one
      decode), ``blend`` (the paste-back weights, held), ``images`` at the requested ``labels`` /
      ``ages`` (``input_tile``: the input column when it is not ``aligned``, upscaled), and with
      paste-back ``pasted``; with several noise draws ``candidates`` (each draw's scores, the chosen
      one, and with ``keep_candidates`` their images);
    - identity: ``embedding``, computed once by the stage that first needs it.
    """

    index: int  # faces are numbered left to right in the photo
    aligned: np.ndarray  # [S, S, 3] uint8: the aligned crop (256 px for the generator)
    network_input: np.ndarray | None = None  # [256, 256, 3] uint8: what the generator sees
    parsing: np.ndarray | None = None  # [S, S] uint8 face-parsing classes, when parsed
    detection: Any = None  # agetool.face.detect.DetectedFace, in photo pixels; None for an aligned input
    alignment: Any = None  # agetool.face.align.AlignedFace, for paste-back
    estimate: AgeEstimate | None = None
    model: str | None = None  # the generator: "male", "female", or its file's name (males.safetensors)
    features: Any = field(default=None, repr=False)  # torch.Tensor [256, 64, 64]
    embedding: Any = field(default=None, repr=False)  # agetool.identity.Embedding
    images: np.ndarray | None = None  # [N, S, S, 3] uint8: the face at each requested age
    labels: list[str] = field(default_factory=list)  # class labels or the ages as requested
    ages: list[float] = field(default_factory=list)  # each column's age in years (a class: its anchor age)
    pasted: list[np.ndarray] | None = None  # with paste_back: the photo with this face aged, per column
    input_tile: np.ndarray | None = None  # the grid's input column when not ``aligned`` (upscaled outputs)
    blend: np.ndarray | None = field(default=None, repr=False)  # [256, 256] float32 paste-back weights
    track: Any = field(default=None, repr=False)  # a clip's person (agetool.clip.tracks.Track)
    candidates: Any = None  # agetool.faithful.Candidates: every noise draw's scores (candidates > 1)

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """(x0, y0, x1, y1) in photo pixels; None for an aligned input."""
        return None if self.detection is None else tuple(float(v) for v in self.detection.box)

    @property
    def landmarks(self) -> np.ndarray | None:
        """[68, 2] in photo pixels."""
        return None if self.detection is None else np.asarray(self.detection.landmarks, np.float64)

    @property
    def crop_landmarks(self) -> np.ndarray | None:
        """[68, 2] in the aligned crop's pixels."""
        if self.detection is None or self.alignment is None:
            return None
        return self.alignment.photo_to_crop(self.detection.landmarks, self.aligned.shape[0])

    @property
    def shown(self) -> np.ndarray:
        """The grid's input column."""
        return self.aligned if self.input_tile is None else self.input_tile


@dataclass
class EncodedPhoto:
    image: np.ndarray  # [H, W, 3] uint8, EXIF orientation applied
    name: str  # file name, or "image" for arrays
    faces: list[Face]
    source_sha256: str | None = None  # the photo file's sha256 (of the pixels for arrays): never its path


def column_label(label: str, years: float | None) -> str:
    """A grid caption: the age as requested, and for a relative age (``+20``) the age it became
    (``62 (+20)``)."""
    if years is None or not label[:1] in ("+", "-"):
        return label
    return f"{years:.0f} ({label})"


@dataclass
class AgingResult:
    """Every face of one photo at the requested ages.

    ``pasted`` (with ``paste_back=True``) holds one whole photo per column with every face aged.
    """

    image: np.ndarray
    name: str
    faces: list[Face]
    labels: list[str]
    pasted: list[np.ndarray] | None = None
    record: Any = None  # agetool.provenance.Record: how this result was made (written into every file)
    source: str | None = field(default=None, repr=False)  # the input file: the parent of signed outputs
    signing: Any = field(default=None, repr=False)  # agetool.credentials.Signing: sign every file written
    label: bool = False  # a visible "AI-aged" mark in the corner of the pasted photos written

    def marking(self, source_type: str | None):
        """The ``agetool.provenance.Marking`` of a file of this result holding ``source_type`` pixels."""
        from agetool.provenance import Marking

        return Marking(source_type, self.record, self.signing, self.source)

    def _shown_pasted(self, photos: list[np.ndarray]) -> list[np.ndarray]:
        if not self.label:
            return list(photos)
        from agetool.images import disclose

        return [disclose(p) for p in photos]

    def input_label(self, face: Face) -> str:
        return "input" if face.estimate is None else f"input, ~{face.estimate.age:.0f}"

    def rows(self) -> list[list[np.ndarray]]:
        """Grid rows without captions: per face [aligned, *images]; with paste-back one row of
        whole photos [photo, *pasted], scaled to a readable size."""
        if self.pasted is not None:
            from agetool.images import fit

            return [[fit(t, PASTE_GRID_SIDE) for t in (self.image, *self._shown_pasted(self.pasted))]]
        return [[f.shown, *f.images] for f in self.faces]

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

    def encode_grid(self, name: str, labels: bool = True) -> bytes:
        """The grid as the bytes of an image file named ``name`` (format from its suffix), marked as
        generated faces beside the input, with the run record."""
        from agetool.images import encode_image
        from agetool.provenance import COMPOSITE

        return encode_image(self.grid_array(labels), name, self.marking(COMPOSITE))

    def write_grid(self, path, labels: bool = True) -> Path:
        """The grid written to ``path`` atomically: the file ``agetool age`` writes."""
        from agetool.files import write_bytes

        return write_bytes(path, self.encode_grid(str(path), labels))

    def tile_files(self) -> list[tuple[str, bytes]]:
        """(file name, PNG bytes) of every tile of ``tiles()``, each marked: the input as the user's
        pixels, aged faces as generated, pasted photos as a composite."""
        from agetool.images import encode_image
        from agetool.provenance import COMPOSITE, GENERATED

        kind = GENERATED if self.pasted is None else COMPOSITE
        return [(name, encode_image(tile, name, self.marking(None if name.endswith("_input.png") else kind)))
                for name, tile in self.tiles()]

    def tiles(self) -> list[tuple[str, np.ndarray]]:
        """(file name, tile) of every tile: ``face<i>_input.png`` and ``face<i>_<label>.png`` per face
        (with paste-back, whole photos); a repeated label's tiles are ``face<i>_<label>_2.png`` ...
        ``write_tiles`` and the web app's archive are made from this list."""
        out = []
        for face in self.faces:
            first = face.shown if self.pasted is None else self.image
            shown = face.images if self.pasted is None else self._shown_pasted(face.pasted)
            names = unique_labels(["input", *face.labels])
            out += [(f"face{face.index}_{name}.png", tile) for name, tile in zip(names, [first, *shown])]
        return out

    def write_tiles(self, folder) -> list:
        """Every tile of ``tiles()`` as a PNG in ``folder``: the files ``agetool age --tiles`` writes;
        returns their paths."""
        from agetool.files import write_bytes

        return [write_bytes(Path(folder) / name, data) for name, data in self.tile_files()]

    def candidate_tiles(self) -> list[tuple[str, np.ndarray]]:
        """(file name, tile) of every noise draw of every face whose draws were kept
        (``keep_candidates``): ``face<i>_draw<k>_<label>.png``, k counting draws from 0."""
        out = []
        for face in self.faces:
            if face.candidates is None or face.candidates.images is None:
                continue
            names = unique_labels(list(face.labels))
            for k, images in enumerate(face.candidates.images):
                out += [(f"face{face.index}_draw{k}_{name}.png", tile) for name, tile in zip(names, images)]
        return out

    def scores(self) -> list[dict]:
        """Each face's draws and their scores (``agetool.faithful``): ``{"face", "model", "chosen",
        "seed", "draws": [{"draw", "seed", "identity", "skin", "gender", "score"}, ...]}``; a face
        rendered with one draw has ``chosen`` 0 and no scored ``draws``."""
        out = []
        for face in self.faces:
            draws = {"chosen": 0, "seed": None, "draws": []} if face.candidates is None else face.candidates.as_dict()
            out.append({"face": face.index, "model": face.model, **draws})
        return out

    def write_candidates(self, folder) -> list:
        """Every kept draw's tiles (``candidate_tiles``) and ``scores.json`` (``scores``) in ``folder``:
        what ``agetool age --keep-candidates`` writes; returns their paths."""
        import json

        from agetool.files import write_text
        from agetool.images import write_image

        folder = Path(folder)
        from agetool.provenance import GENERATED

        paths = [write_image(folder / name, tile, self.marking(GENERATED)) for name, tile in self.candidate_tiles()]
        scores = {"photo": self.name, "labels": list(self.labels), "faces": self.scores()}
        write_text(folder / "scores.json", json.dumps(scores, indent=1) + "\n")
        return [*paths, folder / "scores.json"]

    def write_zip(self, path) -> Path:
        """Every tile of ``tiles()`` as a PNG member of the ZIP archive ``path`` (written atomically)."""
        import zipfile

        from agetool.files import replacing

        with replacing(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in self.tile_files():
                member = zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))  # no clock: the same run, the same bytes
                member.external_attr = 0o644 << 16
                z.writestr(member, data, zipfile.ZIP_DEFLATED)
        return Path(path)

    def grid(self, labels: bool = True) -> Image:
        """The grid ``agetool age`` writes, as a ``PIL.Image``: one row per face (left to right),
        columns = input, then one per age; with paste-back one row of whole photos."""
        from PIL import Image as PILImage

        return PILImage.fromarray(self.grid_array(labels))


def model_words(faces) -> str:
    """The generators that rendered ``faces``, in words: ``male model``, ``female, male model``, a
    generator file by its name (``males.safetensors``)."""
    names = sorted({f.model for f in faces if f.model})
    chosen = [n for n in names if n in ("male", "female")]
    return ", ".join(([f"{', '.join(chosen)} model"] if chosen else []) + [n for n in names if n not in chosen])


def unique_labels(labels: list[str]) -> list[str]:
    """``labels`` with repeats told apart: the second ``5`` becomes ``5_2`` (never another label)."""
    taken, out = set(labels), []
    for label in labels:
        name, k = label, 1
        while name in out or (k > 1 and name in taken):
            k += 1
            name = f"{label}_{k}"
        out.append(name)
    return out
