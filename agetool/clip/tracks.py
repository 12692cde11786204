"""People across frames: a ``Track`` per face, linked from frame to frame by box overlap.

Between detections a track follows its face with the landmark model alone, in a box moved and
scaled with the face's last landmarks; a thumbnail of the aligned crop, compared with the one of the
last detection, tells when the face was lost (a cut, the person left). A track that a detection
misses keeps going on its landmarks for a few detections (``GAP``) before it ends. A face of the
same person (identity embeddings, dlib's descriptor or the ``faces=ref:...`` model) found within
``REID_SECONDS`` of the end takes the ended track back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agetool.clip.filters import Ema, OneEuro

#: detections a track may miss in a row and go on (following its face with the landmark model)
GAP = 2
#: least box overlap (intersection over union) that links a detection to a track
MIN_IOU = 0.3
#: least correlation of the aligned crop's thumbnail with the last detection's: below it the face is lost
MIN_MATCH = 0.6
THUMB = 24
#: side in pixels of the blocks whose mean colours tell whether a crop changed (``change``)
BLOCK = 16
#: seconds after its end during which a track is picked up again by a face of the same person
#: (identity embeddings): the person keeps their model, age estimate and track number
REID_SECONDS = 4.0


def landmark_box(points: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) around landmarks [68, 2]."""
    p = np.asarray(points, dtype=np.float64)
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()])


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def frame_of(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and scale (RMS distance from the centre) of landmarks."""
    p = np.asarray(points, dtype=np.float64)
    c = p.mean(axis=0)
    return c, float(np.sqrt(((p - c) ** 2).sum(axis=1).mean())) or 1.0


def thumbnail(crop: np.ndarray) -> np.ndarray:
    """A small, zero-mean, unit-norm gray version of an aligned crop, for ``match``."""
    import cv2

    g = cv2.resize(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    g = g.astype(np.float64) - g.mean()
    return g / (np.linalg.norm(g) or 1.0)


def blocks(crop: np.ndarray) -> np.ndarray:
    """The mean colour of each ``BLOCK`` x ``BLOCK`` px block of a crop (float32 [S/B, S/B, 3]), for ``change``."""
    import cv2

    side = max(1, crop.shape[0] // BLOCK)
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)


def change(a: np.ndarray, b: np.ndarray) -> float:
    """How far two crops' ``blocks`` differ: the largest change of one block's mean colour, in 0-255
    levels. Resampling a crop a fraction of a pixel over moves a block's mean by a level or two at its
    sharpest edges; an eye that closes or a mouth that opens moves the blocks it covers by tens."""
    return float(np.abs(a - b).max())


def match(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two thumbnails (1 = same picture)."""
    return float((a * b).sum())


@dataclass(eq=False)
class Track:
    """One person through the clip: where the face is, and what is held for it."""

    id: int
    landmarks: np.ndarray  # [68, 2] last measured landmarks (photo pixels)
    box_offset: np.ndarray  # the detector's box relative to the landmarks' centre, in landmark scales
    reference: np.ndarray | None = None  # thumbnail of the crop at the last detection
    missed: int = 0  # detections missed in a row
    smooth: OneEuro = field(default_factory=OneEuro)
    mask: Ema = field(default_factory=lambda: Ema(0.35))
    labels: np.ndarray | None = None  # parsing labels, held between parses
    parsed: np.ndarray | None = None  # thumbnail of the crop at the last parse
    parsed_at: int = -1
    parsed_crop: tuple | None = None  # (crop, its AlignedFace, labels, measured landmarks) of the last parse
    target_mask: np.ndarray | None = None  # paste-back weights of the held labels (``mask`` eases to them)
    model: str | None = None  # decided once, over the track's first frames
    estimates: list = field(default_factory=list)  # (gender, p, age) per classified frame
    estimate: object | None = None  # agetool.results.AgeEstimate, once decided
    latents: object | None = None  # w [K, 256] at the ages asked for, once its model is decided
    seed: int | None = None  # the noise seed of the person's draw, chosen once (``candidates``) and held
    patch: tuple | None = None  # (image region, detection in it) of the last detection, to embed if lost
    embedding: object | None = None  # identity embedding of ``patch``, made only once the track ends
    ended: float | None = None  # clip time of its end

    @classmethod
    def start(cls, id: int, detection) -> "Track":
        return cls(id, np.asarray(detection.landmarks, np.float64), box_offset(detection.box, detection.landmarks))

    def predicted_box(self) -> tuple[float, float, float, float]:
        """The detector-style box of the face, placed by the last landmarks."""
        c, s = frame_of(self.landmarks)
        off = self.box_offset
        return (c[0] + off[0] * s, c[1] + off[1] * s, c[0] + off[2] * s, c[1] + off[3] * s)

    def box(self) -> np.ndarray:
        return landmark_box(self.landmarks)


    def keep_patch(self, image: np.ndarray, detection) -> None:
        """Keep the region around a detection (twice the box), to embed the face if the track ends."""
        from agetool.face.detect import DetectedFace

        x0, y0, x1, y1 = detection.box
        w, h = x1 - x0, y1 - y0
        left, top = int(max(0, x0 - w / 2)), int(max(0, y0 - h / 2))
        right, bottom = int(min(image.shape[1], x1 + w / 2)), int(min(image.shape[0], y1 + h / 2))
        shifted = DetectedFace(detection.score, (x0 - left, y0 - top, x1 - left, y1 - top),
                               np.asarray(detection.landmarks, np.float32) - np.float32([left, top]))
        self.patch = (np.ascontiguousarray(image[top:bottom, left:right]), shifted)
        self.embedding = None

    def carry_labels(self, crop: np.ndarray, alignment, look: np.ndarray, least: float) -> bool:
        """Where the face only moved since its last parse (the camera moved, the smoothed landmarks lag
        a moving face by a few pixels, the crop's square shifts or scales), the parsed crop and its
        labels are moved with it: the face's motion is the similarity between its measured landmarks
        then and now, and the crops' own squares add theirs. If the moved crop's thumbnail matches
        ``look`` (the crop's) at least ``least``, the held labels become the moved ones (and
        ``target_mask`` their weights): True. False where the face itself changed: it is parsed again."""
        import cv2

        from agetool.face.paste import paste_mask

        if self.parsed_crop is None:
            return False
        old, old_alignment, labels, old_landmarks = self.parsed_crop
        size = crop.shape[0]
        face = similarity(old_landmarks, self.landmarks)  # photo then -> photo now, following the face
        m = (alignment.photo_to_crop_matrix(size) @ face @ old_alignment.crop_to_photo_matrix(size))[:2]
        moved = cv2.warpAffine(old, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        if match(thumbnail(moved), look) < least:
            return False
        self.labels = cv2.warpAffine(labels, m, (size, size), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        self.parsed = look
        self.target_mask = paste_mask(self.labels, size)
        return True

    def restart(self, detection) -> None:
        """Pick the person up again after a gap: what was held for them stays, the place starts afresh."""
        self.landmarks = np.asarray(detection.landmarks, np.float64)
        self.box_offset = box_offset(detection.box, detection.landmarks)
        self.smooth, self.mask = OneEuro(), Ema(0.35)
        self.labels = self.parsed = self.target_mask = self.parsed_crop = None
        self.parsed_at, self.missed, self.ended = -1, 0, None


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """[3, 3] rotation, uniform scale and shift taking points ``src`` [N, 2] closest to ``dst``
    (least squares)."""
    a, b = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ca, cb = a.mean(0), b.mean(0)
    z, w = (a - ca) @ [1, 1j], (b - cb) @ [1, 1j]
    c = (np.conj(z) * w).sum() / max((np.abs(z) ** 2).sum(), 1e-12)
    t = cb - [c.real * ca[0] - c.imag * ca[1], c.imag * ca[0] + c.real * ca[1]]
    return np.array([[c.real, -c.imag, t[0]], [c.imag, c.real, t[1]], [0.0, 0.0, 1.0]])


def box_offset(box, landmarks) -> np.ndarray:
    c, s = frame_of(landmarks)
    return np.array([(box[0] - c[0]) / s, (box[1] - c[1]) / s, (box[2] - c[0]) / s, (box[3] - c[1]) / s])


def link(tracks: list[Track], detections: list) -> tuple[list[tuple[Track, object]], list[Track], list]:
    """Pair detections with tracks, greedily by box overlap (highest first, at least ``MIN_IOU``).
    Returns (pairs, tracks left over, detections left over)."""
    scored = sorted(((iou(t.box(), landmark_box(d.landmarks)), i, j) for i, t in enumerate(tracks)
                     for j, d in enumerate(detections)), key=lambda x: (-x[0], x[1], x[2]))
    used_t, used_d, pairs = set(), set(), []
    for score, i, j in scored:
        if score < MIN_IOU:
            break
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        pairs.append((tracks[i], detections[j]))
    return (pairs, [t for i, t in enumerate(tracks) if i not in used_t],
            [d for j, d in enumerate(detections) if j not in used_d])


def fast_align(image: np.ndarray, landmarks: np.ndarray, size: int = 256):
    """The aligned crop of ``agetool.face.align`` from an OpenCV warp: the same square (``face_square``)
    sampled with area averaging where it shrinks, reflected borders instead of the blurred padding.
    Returns an ``AlignedFace`` (paste-back maps through its ``quad``)."""
    import cv2

    from agetool.face.align import AlignedFace, face_square

    quad, side, _ = face_square(np.asarray(landmarks, np.float32))
    h, w = image.shape[:2]
    face = AlignedFace(np.zeros((size, size, 3), np.uint8), quad.astype(np.float64), (w, h))
    k = int(min(4, max(1, np.floor(side / size))))  # warp at up to 4x, then average down: no aliasing
    m = face.photo_to_crop_matrix(size * k)
    big = cv2.warpAffine(image, m[:2], (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    face.image = big if k == 1 else cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
    return face
