"""FFHQ-aging alignment: parity with the reference crops, the inverse mapping, `agetool align`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agetool.face.align import align_face
from tests.helpers import cli


def _case(reference_dir, case: int):
    image = np.asarray(Image.open(reference_dir / f"align_case{case}_input.png").convert("RGB"))
    meta = json.loads((reference_dir / f"align_case{case}_landmarks.json").read_text())
    return image, np.asarray(meta["landmarks"], dtype=np.float32)


_ALIGNED: dict = {}


def _aligned(reference_dir, case: int, size: int):
    """align_face on a reference case, computed once per module (each takes about a second)."""
    if (case, size) not in _ALIGNED:
        image, landmarks = _case(reference_dir, case)
        _ALIGNED[case, size] = align_face(image, landmarks, size=size)
    return _ALIGNED[case, size]


def _within(a: np.ndarray, b: np.ndarray, levels: int = 2) -> float:
    return float((np.abs(a.astype(np.int16) - b.astype(np.int16)) <= levels).mean())


@pytest.mark.parametrize("case", [0, 1])
@pytest.mark.parametrize("size", [256, 1024])
def test_alignment_matches_reference(reference_dir, case, size):
    aligned = _aligned(reference_dir, case, size)
    ref = np.asarray(Image.open(reference_dir / f"align_case{case}_out{size}.png").convert("RGB"))
    assert aligned.image.shape == (size, size, 3) and aligned.image.dtype == np.uint8
    assert _within(aligned.image, ref) >= 0.99


@pytest.mark.parametrize("case", [0, 1])
def test_alignment_branches_match_reference(reference_dir, case):
    observed = json.loads((reference_dir / "numerics_observed.json").read_text())["alignment"][f"align_case{case}"]
    expected = observed["outputs"][f"align_case{case}_out256.png"]["branches"]
    got = _aligned(reference_dir, case, 256).branches
    assert got["qsize"] == pytest.approx(expected["qsize_before_shrink"], rel=1e-6)
    for key in ("shrink", "border", "crop", "pad", "crop_applied", "padding_applied"):
        assert got[key] == expected[key], key


def _blobs(shape, centres, sigma: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    img = np.zeros((h, w), np.float64)
    for cx, cy in centres:
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
    return np.repeat((img.clip(0, 1) * 250).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(img: np.ndarray, around, radius: float) -> np.ndarray:
    a = img[..., 0].astype(np.float64)
    yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
    near = (xx - around[0]) ** 2 + (yy - around[1]) ** 2 <= radius**2
    wgt = a * near
    return np.array([(wgt * xx).sum(), (wgt * yy).sum()]) / wgt.sum()


@pytest.mark.parametrize("scale,size", [(1.0, 256), (1.0, 1024), (6.0, 256)])
def test_inverse_mapping_finds_photo_points(reference_dir, scale, size):
    """Bright dots in the photo land, in the crop, where ``photo_to_crop`` says (shrink branch: scale 6)."""
    _, landmarks = _case(reference_dir, 0)
    landmarks = landmarks * scale
    side = int(512 * scale)
    dots = np.array([landmarks[30], landmarks[36], landmarks[45], landmarks[8]], dtype=np.float64) + 0.3
    photo = _blobs((side, side), dots, sigma=2.5 * scale)
    aligned = align_face(photo, landmarks, size=size)
    assert (aligned.branches["shrink"] > 1) == (scale > 1)
    expected = aligned.photo_to_crop(dots)
    crop_sigma = 2.5 * scale * size / (aligned.branches["qsize"] * max(1, aligned.branches["shrink"]))
    for want in expected:
        got = _centroid(aligned.image, want, radius=4 * crop_sigma)
        assert np.abs(got - want).max() < 0.05 * max(1.0, crop_sigma), (got, want)


def test_inverse_mapping_round_trip(reference_dir):
    _, landmarks = _case(reference_dir, 1)
    aligned = _aligned(reference_dir, 1, 256)
    back = aligned.crop_to_photo(aligned.photo_to_crop(landmarks))
    np.testing.assert_allclose(back, landmarks, atol=1e-9)
    corners = aligned.crop_to_photo(np.array([[-0.5, -0.5], [-0.5, 255.5], [255.5, 255.5], [255.5, -0.5]]))
    np.testing.assert_allclose(corners, aligned.quad, atol=1e-9)
    # the same square seen from a 1024 crop maps to the same photo points
    np.testing.assert_allclose(aligned.crop_to_photo([[511.5, 511.5]], size=1024),
                               aligned.crop_to_photo([[127.5, 127.5]]), atol=1e-9)


def test_warp_to_photo_puts_the_crop_back(reference_dir):
    image, _ = _case(reference_dir, 0)
    aligned = _aligned(reference_dir, 0, 256)
    back = aligned.warp_to_photo(aligned.image)
    inside = aligned.warp_to_photo(np.full((256, 256), 255, np.uint8)) == 255
    err = back.astype(np.float64)[inside] - image.astype(np.float64)[inside]
    assert 10 * np.log10(255**2 / np.mean(err**2)) > 32


def test_align_command_with_landmarks_json(tmp_path, reference_dir, capsys):
    out = tmp_path / "crops"
    lm = tmp_path / "points.json"
    lm.write_text(json.dumps(json.loads((reference_dir / "align_case1_landmarks.json").read_text())["landmarks"]))
    code, _, err = cli(["align", reference_dir / "align_case1_input.png", "--out", out, "--size", "1024",
                        "--landmarks-json", lm], capsys)
    assert code == 0, err
    got = np.asarray(Image.open(out / "align_case1_input_face0.png"))
    ref = np.asarray(Image.open(reference_dir / "align_case1_out1024.png").convert("RGB"))
    assert _within(got, ref) >= 0.99


def test_align_command_rejects_bad_landmarks(tmp_path, reference_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1, 2]] * 5))
    code, _, err = cli(["align", reference_dir / "align_case0_input.png", "--out", tmp_path,
                        "--landmarks-json", bad], capsys)
    assert code == 1
    assert "68" in err and "Traceback" not in err


@pytest.mark.parametrize("case", [0, 1])
def test_crops_equal_the_reference_pixel_for_pixel(reference_dir, case):
    """Same Pillow warp and arithmetic as the reference (case 1 pads, so blurs with OpenCV)."""
    ref = np.asarray(Image.open(reference_dir / f"align_case{case}_out256.png").convert("RGB"))
    assert (_aligned(reference_dir, case, 256).image == ref).all(axis=2).mean() >= 0.999


@pytest.mark.parametrize("sigma", [0.3, 2.0, 7.5])
def test_padding_blur_is_scipys_gaussian(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    from agetool.face.align import _gaussian_blur

    img = np.random.default_rng(0).random((61, 83, 3), dtype=np.float32) * 255
    want = ndimage.gaussian_filter(img, [sigma, sigma, 0])
    np.testing.assert_allclose(_gaussian_blur(img, sigma), want, atol=1e-3)


def test_shrink_of_the_region_equals_shrink_then_crop():
    """The shrink branch resamples only the crop's box: the pixels of shrinking the whole photo."""
    rng = np.random.default_rng(1)
    photo = Image.fromarray(rng.integers(0, 256, (701, 1003, 3), dtype=np.uint8))
    shrink = 3
    rsize = (int(np.rint(1003 / shrink)), int(np.rint(701 / shrink)))
    scale = (1003 / rsize[0], 701 / rsize[1])
    crop = (40, 17, 250, 233)
    whole = np.asarray(photo.resize(rsize, Image.LANCZOS).crop(crop)).astype(np.int16)
    box = (crop[0] * scale[0], crop[1] * scale[1], crop[2] * scale[0], crop[3] * scale[1])
    region = np.asarray(photo.resize((crop[2] - crop[0], crop[3] - crop[1]), Image.LANCZOS, box=box))
    diff = np.abs(region.astype(np.int16) - whole)
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.99
