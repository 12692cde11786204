"""FFHQ-style face alignment as LATS does it for in-the-wild photos, and its exact inverse.

From 68 landmarks (iBUG order) an oriented square is built around the eyes and the mouth:

- ``e`` = eye centre to eye centre, ``m`` = eye midpoint to mouth midpoint;
- the square's x axis is ``e`` turned towards ``m``'s normal, its half side
  ``max(2.0 |e|, 2.2 |m|)`` (FFHQ uses 1.8 for the mouth term), its centre ``eyes + 0.1 m``.

The photo is then shrunk (Lanczos) when the square is over twice the output size, cropped to the
square plus a border, reflect-padded where the square leaves the photo (the padding blurred and
blended towards the median colour), warped with a quad transform to ``transform_size`` and resized
to ``size`` with Lanczos. Float32 / float64 arithmetic follows the reference step by step, so on the
same Pillow the crop is identical, with two shortcuts:

- the shrink resamples only the cropped region (Pillow's ``box``): the pixels of shrinking the whole
  photo and then cropping, to a level where the box's float offsets round differently;
- the padding blur is OpenCV's separable Gaussian with SciPy's kernel radius and border rule (equal
  to SciPy's to 1e-4 before rounding; SciPy's import alone cost 0.2 s).

The 4096 px warp stays Pillow's: OpenCV's fixed-point bilinear, or a coarser warp, moves most
pixels by one level, and the masked network input must match the reference's pixel for pixel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRANSFORM_SIZE = 4096
MOUTH_SCALE = 2.2  # FFHQ: 1.8
EYE_SCALE = 2.0


@dataclass
class AlignedFace:
    """An aligned crop and the square it came from.

    ``quad`` [4, 2] float64 holds the corners of the crop's outer edge in photo pixel-index
    coordinates, in the order top-left, bottom-left, bottom-right, top-right (as seen in the crop).
    """

    image: np.ndarray  # [S, S, 3] uint8
    quad: np.ndarray  # [4, 2] float64, photo coordinates
    photo_size: tuple[int, int]  # (width, height) of the photo
    branches: dict = field(default_factory=dict)  # what the aligner did (shrink, crop, pad), for reports

    @property
    def size(self) -> int:
        return self.image.shape[0]

    def crop_to_photo_matrix(self, size: int | None = None) -> np.ndarray:
        """[3, 3] affine taking crop pixel indices (of a crop of ``size``, default this one) to photo pixels."""
        s = float(size or self.size)
        tl, bl, _, tr = self.quad
        ax = (tr - tl) / s  # photo step per crop pixel along x
        ay = (bl - tl) / s
        origin = tl + 0.5 * ax + 0.5 * ay  # centre of crop pixel (0, 0)
        return np.array([[ax[0], ay[0], origin[0]], [ax[1], ay[1], origin[1]], [0.0, 0.0, 1.0]])

    def photo_to_crop_matrix(self, size: int | None = None) -> np.ndarray:
        return np.linalg.inv(self.crop_to_photo_matrix(size))

    def crop_to_photo(self, points: np.ndarray, size: int | None = None) -> np.ndarray:
        """Points [N, 2] in crop pixels -> photo pixels."""
        return _apply(self.crop_to_photo_matrix(size), points)

    def photo_to_crop(self, points: np.ndarray, size: int | None = None) -> np.ndarray:
        """Points [N, 2] in photo pixels -> crop pixels."""
        return _apply(self.photo_to_crop_matrix(size), points)

    def warp_to_photo(self, crop: np.ndarray, *, border_value=0, interpolation: str = "linear") -> np.ndarray:
        """Warp a square crop (any size; [S, S] or [S, S, C]) into photo space; outside is ``border_value``."""
        import cv2

        flags = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}[interpolation]
        m = self.photo_to_crop_matrix(crop.shape[0])  # dst (photo) -> src (crop)
        w, h = self.photo_size
        return cv2.warpAffine(crop, m[:2], (w, h), flags=flags | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ matrix[:2, :2].T + matrix[:2, 2]


def face_square(landmarks: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, float, dict]:
    """The oriented square of the FFHQ-aging crop: corners [4, 2] (float64), side length and key points.
    ``dtype`` is the landmarks' precision: float32 as LATS's aligner, float64 as the dataset builder."""
    lm = np.asarray(landmarks, dtype=dtype).reshape(68, 2)
    eye_l = np.mean(lm[36:42], axis=0)  # float32, as the reference
    eye_r = np.mean(lm[42:48], axis=0)
    eyes = (eye_l + eye_r) * 0.5
    eye_to_eye = eye_r - eye_l
    mouth = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth - eyes
    # x axis: eye-to-eye turned towards the normal of eye-to-mouth (float64 from here on)
    normal = np.array([-eye_to_mouth[1], eye_to_mouth[0]], dtype=np.float64)
    ax = eye_to_eye - normal
    ax /= np.hypot(ax[0], ax[1])
    half = max(np.hypot(*eye_to_eye) * EYE_SCALE, np.hypot(*eye_to_mouth) * MOUTH_SCALE)  # float32
    ax *= half
    ay = np.array([-ax[1], ax[0]])
    centre = eyes + eye_to_mouth * 0.1  # float32
    quad = np.stack([centre - ax - ay, centre - ax + ay, centre + ax + ay, centre + ax - ay])
    side = np.hypot(ax[0], ax[1]) * 2
    return quad, side, {"eye_left": eye_l.tolist(), "eye_right": eye_r.tolist(), "mouth_avg": mouth.tolist()}


def check_landmarks(landmarks, photo_w: int, photo_h: int, dtype=np.float32) -> np.ndarray:
    """[68, 2] landmarks (``dtype``) that define a usable square, or an AlignmentError saying why."""
    from agetool.errors import AlignmentError

    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.size != 136:
        raise AlignmentError(f"expected 68 landmarks [x, y], got an array of shape {lm.shape}")
    lm = lm.reshape(68, 2)
    if not np.isfinite(lm).all():
        raise AlignmentError("landmarks must be finite numbers (found NaN or infinity)")
    if np.abs(lm).max() > 1e6:
        raise AlignmentError("landmarks lie more than a million pixels away from the photo")
    lm32 = lm.astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        quad, side, _ = face_square(lm32, dtype)
    if not (np.isfinite(side) and np.isfinite(quad).all()) or side < 2.0:
        raise AlignmentError("landmarks are degenerate: the eyes and mouth span less than a pixel")
    x0, y0, x1, y1 = _bbox(quad)
    overlap_w = min(x1, photo_w) - max(x0, 0)
    overlap_h = min(y1, photo_h) - max(y0, 0)
    if overlap_w <= 0 or overlap_h <= 0:
        raise AlignmentError("the face square given by the landmarks lies outside the photo")
    if side > 64 * max(photo_w, photo_h):
        raise AlignmentError("the face square given by the landmarks is far larger than the photo")
    return lm32


def _bbox(quad: np.ndarray) -> tuple[int, int, int, int]:
    return (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 256, transform_size: int = TRANSFORM_SIZE,
               enable_padding: bool = True, variant: str = "lats") -> AlignedFace:
    """Align the face given by ``landmarks`` [68, 2] (photo pixels) in ``image`` [H, W, 3] uint8.

    Returns the [size, size, 3] uint8 crop and the mapping back to the photo. ``variant`` "lats" is
    LATS's aligner of photos (float32 landmarks, the shortcuts above); "ffhq-aging" is the dataset
    builder's arithmetic (float64 landmarks, the whole photo shrunk, then cropped; SciPy's blur).
    """
    if variant not in ("lats", "ffhq-aging"):
        raise ValueError(f"variant={variant!r}: expected lats or ffhq-aging")
    builder = variant == "ffhq-aging"
    dtype = np.float64 if builder else np.float32
    from PIL import Image

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    photo_h, photo_w = image.shape[:2]
    landmarks = check_landmarks(landmarks, photo_w, photo_h, dtype)
    quad, qsize, info = face_square(landmarks, dtype)
    quad_photo = quad.copy()
    img = Image.fromarray(image)

    # Shrink: keep the square at most ~2x the output size before warping (sizes only, for now).
    shrink = int(np.floor(qsize / size * 0.5))
    scale = (1.0, 1.0)
    width, height = photo_w, photo_h
    if shrink > 1:
        width, height = int(np.rint(float(photo_w) / shrink)), int(np.rint(float(photo_h) / shrink))
        scale = (photo_w / width, photo_h / height)
        quad /= shrink
        qsize /= shrink

    # Crop to the square plus a border.
    border = max(int(np.rint(qsize * 0.1)), 3)
    x0, y0, x1, y1 = _bbox(quad)
    crop = (max(x0 - border, 0), max(y0 - border, 0), min(x1 + border, width), min(y1 + border, height))
    cropped = crop[2] - crop[0] < width or crop[3] - crop[1] < height
    if shrink > 1 and builder:
        img = img.resize((width, height), Image.LANCZOS)
        if cropped:
            img = img.crop(crop)
    elif shrink > 1:  # Lanczos over the cropped region only: the pixels of shrinking everything, then cropping
        box = (crop[0] * scale[0], crop[1] * scale[1], crop[2] * scale[0], crop[3] * scale[1])
        img = img.resize((crop[2] - crop[0], crop[3] - crop[1]), Image.LANCZOS, box=box)
    elif cropped:
        img = img.crop(crop)
    if cropped:
        quad -= crop[0:2]

    # Pad where the square leaves the photo: reflect, blur towards the edge, blend to the median.
    x0, y0, x1, y1 = _bbox(quad)
    pad = (max(-x0 + border, 0), max(-y0 + border, 0), max(x1 - img.size[0] + border, 0),
           max(y1 - img.size[1] + border, 0))
    padded = enable_padding and max(pad) > border - 4
    arr = np.asarray(img)
    if padded:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = _reflect_pad(arr, pad, qsize, scipy_blur=builder)
        quad += pad[:2]

    # Warp the square (bilinear), then Lanczos to the output size.
    img = _warp_quad(arr, quad, transform_size)
    if size != transform_size:
        img = img.resize((size, size), Image.LANCZOS)

    if shrink > 1:
        # pixel p of the shrunk image covers photo pixel (p + 0.5) * scale - 0.5
        quad_photo = (quad - (pad[:2] if padded else 0) + (crop[:2] if cropped else 0) + 0.5) * scale - 0.5
    branches = dict(info, qsize=float(qsize), shrink=shrink, border=border, crop=list(crop), crop_applied=cropped,
                    pad=[int(p) for p in pad], padding_applied=bool(padded))
    return AlignedFace(np.asarray(img, dtype=np.uint8), quad_photo, (photo_w, photo_h), branches)


def _warp_quad(a: np.ndarray, quad: np.ndarray, out: int):
    """The square ``quad`` (pixel-index corners TL, BL, BR, TR) of ``a`` [H, W, 3] uint8 sampled
    bilinearly at the centres of an out x out grid: Pillow's QUAD transform, as the reference.
    Returns the Pillow image (a 4096 px warp is not copied to numpy and back)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(a))
    return img.transform((out, out), Image.QUAD, (np.asarray(quad, dtype=np.float64) + 0.5).flatten(),
                         Image.BILINEAR)


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(img, [sigma, sigma, 0]) (truncate 4, 'reflect' borders) with OpenCV."""
    import cv2

    radius = int(4.0 * sigma + 0.5)
    if radius < 1:
        return img.copy()
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    return cv2.sepFilter2D(img, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def _reflect_pad(a: np.ndarray, pad, qsize: float, scipy_blur: bool = False) -> np.ndarray:
    """Reflect-pad [H, W, 3] by (left, top, right, bottom), blur and fade the padding."""
    img = np.pad(np.float32(a), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
    h, w, _ = img.shape
    yy, xx, _ = np.ogrid[:h, :w, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        # 0 inside the photo, rising to 1 at the outer edge of the padding
        edge = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
    sigma = qsize * 0.02
    if scipy_blur:
        from scipy.ndimage import gaussian_filter

        blurred = gaussian_filter(img, [sigma, sigma, 0])
    else:
        blurred = _gaussian_blur(img, sigma)
    img += (blurred - img) * np.clip(edge * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(edge, 0.0, 1.0)
    return np.uint8(np.clip(np.rint(img), 0, 255))
