"""Paste a generated face crop back into the photo it was aligned from.

The crop is warped through the inverse of the alignment and blended with a feathered mask: the
parsed face, hair, ears and neck (never background, hat, jewellery or clothes), or a soft ellipse
when there is no parsing map. The mask is eroded before it is blurred and fades out towards the
crop's edges, so the blend stays inside the person and no seam shows.
"""

from __future__ import annotations

import numpy as np

#: Parsing classes blended back: skin, nose, glasses, eyes, brows, ears, mouth, lips, hair, neck.
PASTE_LABELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17)
FEATHER = 0.02  # blur sigma as a fraction of the crop size
EDGE_FADE = 0.04  # the mask falls to 0 over this fraction of the crop at its border


def paste_mask(labels: np.ndarray | None, size: int) -> np.ndarray:
    """Feathered blend weights [size, size] float32 in [0, 1], in crop space."""
    import cv2

    if labels is None:
        yy, xx = np.mgrid[:size, :size].astype(np.float32) + 0.5
        # the face of an aligned crop: centred, about 0.6 x 0.8 of the side
        r = ((xx - 0.5 * size) / (0.30 * size)) ** 2 + ((yy - 0.52 * size) / (0.40 * size)) ** 2
        hard = (r <= 1.0).astype(np.float32)
        sigma = 2.5 * FEATHER * size
    else:
        if labels.shape != (size, size):
            labels = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
        hard = np.isin(labels, PASTE_LABELS).astype(np.float32)
        sigma = FEATHER * size
    # erode by 2.5 sigma, then blur: the blend reaches ~0.6% at the region's edge, and exactly 0 outside it
    radius = max(1, int(np.ceil(2.5 * sigma)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    soft = cv2.GaussianBlur(cv2.erode(hard, kernel), (0, 0), sigma) * hard
    ramp = np.clip(np.minimum(np.arange(size) + 0.5, size - np.arange(size) - 0.5) / (EDGE_FADE * size), 0, 1)
    soft *= np.minimum(ramp[:, None], ramp[None, :]).astype(np.float32)
    return np.clip(soft, 0.0, 1.0)


def paste_back(photo: np.ndarray, generated: np.ndarray, alignment, labels: np.ndarray | None = None, *,
               mask: np.ndarray | None = None) -> np.ndarray:
    """``photo`` [H, W, 3] uint8 with ``generated`` [G, G, 3] uint8 (a crop of ``alignment``) blended in.

    ``labels`` [S, S] uint8 is the parsing map of the aligned crop (any square size), or None;
    ``mask`` [G, G] float32 gives the blend weights instead (``paste_mask``'s, e.g. held over frames).
    Returns a new [H, W, 3] uint8 array; only the pixels under the face change.
    """
    import cv2

    if alignment is None:
        raise ValueError("paste-back needs the alignment of the face (not available for aligned inputs)")
    h, w = photo.shape[:2]
    g = generated.shape[0]
    # photo-space region covered by the crop
    corners = alignment.crop_to_photo(np.array([[-0.5, -0.5], [-0.5, g - 0.5], [g - 0.5, g - 0.5], [g - 0.5, -0.5]]),
                                      size=g)
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, (w, h))
    out = np.array(photo, copy=True)
    if x1 <= x0 or y1 <= y0:
        return out
    m = alignment.photo_to_crop_matrix(g)
    m = m @ np.array([[1.0, 0, x0], [0, 1.0, y0], [0, 0, 1.0]])  # ROI pixel -> crop pixel
    size = (int(x1 - x0), int(y1 - y0))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    face = cv2.warpAffine(generated, m[:2], size, flags=flags, borderMode=cv2.BORDER_REPLICATE)
    weight = cv2.warpAffine(paste_mask(labels, g) if mask is None else mask, m[:2], size, flags=flags, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0.0)[..., None]  # [h, w, 1]
    roi = out[y0:y1, x0:x1].astype(np.float32)
    blended = roi + (face.astype(np.float32) - roi) * weight
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out
