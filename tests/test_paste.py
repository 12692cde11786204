"""Paste-back: the inverse warp and the feathered blend."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from agetool.face.align import align_face
from agetool.face.paste import PASTE_LABELS, paste_back, paste_mask


@pytest.fixture(scope="module")
def photo(reference_dir) -> np.ndarray:
    return np.asarray(Image.open(reference_dir / "align_case0_input.png").convert("RGB"))


@pytest.fixture(scope="module")
def aligned(reference_dir, photo):
    meta = json.loads((reference_dir / "align_case0_landmarks.json").read_text())
    return align_face(photo, np.asarray(meta["landmarks"], np.float32), size=256)


def _labels(size: int = 256) -> np.ndarray:
    """A plausible parsing map: skin ellipse, hair cap, clothes at the bottom, background elsewhere."""
    yy, xx = np.mgrid[:size, :size] / size
    labels = np.zeros((size, size), np.uint8)
    labels[((xx - 0.5) / 0.33) ** 2 + ((yy - 0.5) / 0.42) ** 2 <= 1] = 1
    labels[(yy < 0.3) & (((xx - 0.5) / 0.4) ** 2 + ((yy - 0.3) / 0.3) ** 2 <= 1)] = 13
    labels[yy > 0.9] = 18
    return labels


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    err = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if err == 0 else 10 * np.log10(255**2 / err)


@pytest.mark.parametrize("with_labels", [False, True])
def test_pasting_the_unmodified_crop_reproduces_the_photo(photo, aligned, with_labels):
    labels = _labels() if with_labels else None
    out = paste_back(photo, aligned.image, aligned, labels)
    assert out.shape == photo.shape and out.dtype == np.uint8
    face = aligned.warp_to_photo(paste_mask(labels, 256)) > 0.05  # where the blend does anything
    assert face.sum() > 5000
    assert _psnr(out[face], photo[face]) >= 35


def test_only_the_face_changes(photo, aligned):
    generated = np.zeros((256, 256, 3), np.uint8)  # black: every blended pixel darkens
    labels = _labels()
    out = paste_back(photo, generated, aligned, labels)
    changed = np.any(out != photo, axis=2)
    # photo pixels whose crop label is background or clothes (and away from the face) never change
    weight = aligned.warp_to_photo(paste_mask(labels, 256))
    assert changed.sum() > 5000 and not changed[weight == 0].any()
    keep = cv2.erode((~np.isin(labels, PASTE_LABELS)).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    outside = aligned.warp_to_photo(keep.astype(np.uint8) * 255, interpolation="nearest") == 255
    inside = aligned.warp_to_photo(np.full((256, 256), 255, np.uint8), interpolation="nearest") == 255
    assert not changed[outside & inside].any()
    # the blend is feathered: no hard step from photo to face
    ys, xs = np.nonzero(changed)
    assert np.unique(np.round(weight[ys, xs], 2)).size > 20


def test_generated_size_may_differ_from_the_alignment(photo, aligned):
    big = np.asarray(Image.fromarray(aligned.image).resize((512, 512), Image.LANCZOS))
    a = paste_back(photo, aligned.image, aligned, None)
    b = paste_back(photo, big, aligned, None)
    assert _psnr(a, b) > 38


def test_face_outside_the_photo_is_clipped(aligned):
    """A crop that reaches past the border (padding branch) pastes without error; the photo keeps its size."""
    photo = np.full((120, 200, 3), 90, np.uint8)
    out = paste_back(photo, np.full((256, 256, 3), 200, np.uint8), aligned, None)
    assert out.shape == photo.shape
