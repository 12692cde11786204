"""Background masking: the parts of an aligned crop that the generator should not see."""

from __future__ import annotations

import numpy as np

#: Face-parsing labels painted gray before the generator: background, hat, earring, necklace, clothes.
MASKED_LABELS: tuple[int, ...] = (0, 14, 15, 16, 18)
MASK_GRAY = 128


def mask_background(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Paint every pixel whose label is in ``MASKED_LABELS`` gray (128 on all channels).

    image: uint8 [H, W, 3]; labels: uint8 [H, W] class ids. Returns a new uint8 [H, W, 3] array.
    """
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape[:2]} differ in size")
    out = np.array(image, dtype=np.uint8, copy=True)
    out[np.isin(labels, MASKED_LABELS)] = MASK_GRAY
    return out
