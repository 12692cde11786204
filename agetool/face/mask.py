"""Background masking: the parts of an aligned crop that the generator should not see.

Which face-parsing classes are painted, and with which gray, is part of what the LATS generators
expect of their input: the ``preprocess`` table of their registry entries (``weights.toml``).
"""

from __future__ import annotations

import numpy as np

#: the registry entry whose ``preprocess`` table gives ``masked_labels`` and ``mask_gray``
ENTRY = "lats-male"


def masking() -> tuple[tuple[int, ...], int]:
    """(the face-parsing classes painted gray, the gray level): background, hat, earrings, necklace
    and clothes, 128, for the released generators."""
    from agetool.weights.registry import preprocessing

    p = preprocessing(ENTRY)
    return tuple(int(k) for k in p["masked_labels"]), int(p["mask_gray"])


def mask_background(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Paint every pixel whose label is one of ``masking()``'s classes its gray (on all channels).

    image: uint8 [H, W, 3]; labels: uint8 [H, W] class ids. Returns a new uint8 [H, W, 3] array.
    """
    if image.shape[:2] != labels.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape[:2]} differ in size")
    masked, gray = masking()
    out = np.array(image, dtype=np.uint8, copy=True)
    out[np.isin(labels, masked)] = gray
    return out
