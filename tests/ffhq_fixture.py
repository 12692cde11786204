"""Pieces of a small FFHQ for tests and benchmarks: real photos with dlib's landmarks, entries in the
layout of FFHQ's metadata JSON (``ffhq-dataset-v2.json``), sizes and MD5s computed. The photos are
those of tests/fixtures and matplotlib's sample data (see tests/fixtures/PROVENANCE.md)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
from PIL import Image

LABEL_HEADER = ["image_number", "age_group", "age_group_confidence", "gender", "gender_confidence", "head_pitch",
                "head_roll", "head_yaw", "left_eye_occluded", "right_eye_occluded", "glasses"]


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def photos() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (photo, 68 dlib landmarks): the astronaut (crop), a tight crop of it (reflect padding), Grace
    Hopper, and the tight crop at 6x (the shrink branch at 256 px; landmarks by the shape predictor in the
    detector's box scaled with the photo)."""
    import matplotlib.cbook

    from agetool.face.detect import DlibDetector, bundled_dlib_predictor
    from agetool.images import read_image
    from tests import reference

    dlib = DlibDetector(predictor=bundled_dlib_predictor())
    astronaut = read_image(reference.path("align_case0_input.png"))
    tight = read_image(reference.path("align_case1_input.png"))
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = np.asarray(im.convert("RGB"))
    out = {}
    for name, photo in (("astronaut", astronaut), ("tight", tight), ("hopper", hopper)):
        (face,) = dlib.detect(photo)
        out[name] = (photo, face.landmarks.astype(np.float64))
    big = np.asarray(Image.fromarray(tight).resize((tight.shape[1] * 6, tight.shape[0] * 6), Image.LANCZOS))
    box = dlib.detect(tight)[0].box
    out["big"] = (big, dlib.landmarks_in(big, tuple(6 * v for v in box)).astype(np.float64))
    return out


def wild_path(n: int) -> str:
    return f"in-the-wild-images/{n - n % 1000:05d}/{n:05d}.png"


def entry(n: int, png: bytes | None, landmarks, author: str) -> dict:
    pixels = np.asarray(Image.open(io.BytesIO(png))) if png else np.zeros((1, 1, 3), np.uint8)
    wild = {"file_url": f"https://drive.google.com/uc?id=wild{n}", "file_path": wild_path(n),
            "file_size": len(png or b"x"), "file_md5": hashlib.md5(png or b"x").hexdigest(),
            "pixel_size": [pixels.shape[1], pixels.shape[0]], "pixel_md5": hashlib.md5(pixels.tobytes()).hexdigest(),
            "face_rect": [0, 0, 10, 10], "face_quad": [[0.0, 0.0]] * 4}
    if landmarks is not None:
        wild["face_landmarks"] = [[float(x), float(y)] for x, y in landmarks]
    return {"category": "training" if n < 60000 else "validation",
            "metadata": {"photo_url": f"https://example.org/photos/{n}", "photo_title": f"photo {n}", "author": author,
                         "country": "", "license": "Public Domain Mark", "license_url":
                         "https://creativecommons.org/publicdomain/mark/1.0/", "date_uploaded": "2010-01-01",
                         "date_crawled": "2018-10-10"},
            "image": {"file_url": "https://drive.google.com/uc?id=x", "file_path": f"images1024x1024/{n:05d}.png",
                      "file_size": 1, "file_md5": "0" * 32, "pixel_size": [1024, 1024], "pixel_md5": "0" * 32,
                      "face_landmarks": []},
            "thumbnail": {"file_url": "https://drive.google.com/uc?id=y", "file_path": f"thumbnails128x128/{n:05d}.png",
                          "file_size": 1, "file_md5": "0" * 32, "pixel_size": [128, 128], "pixel_md5": "0" * 32},
            "in_the_wild": wild}
