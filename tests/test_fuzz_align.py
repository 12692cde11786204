"""Any finite landmark set gives a valid aligned crop or a clear AlignmentError; NaN / inf are refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from agetool.errors import AlignmentError
from agetool.face.align import align_face

PHOTO = (np.indices((96, 128)).sum(0) % 256).astype(np.uint8)[..., None].repeat(3, 2)


def _check(landmarks: np.ndarray) -> None:
    try:
        face = align_face(PHOTO, landmarks, size=32, transform_size=64)
    except AlignmentError as e:
        assert str(e)
        return
    assert face.image.shape == (32, 32, 3) and face.image.dtype == np.uint8
    assert np.isfinite(face.quad).all()


coords = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=120, deadline=None)
@given(arrays(np.float32, (68, 2), elements=coords))
def test_any_finite_landmarks(landmarks):
    _check(landmarks)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, (68, 2), elements=st.floats(min_value=0, max_value=128, width=32)),
       st.floats(min_value=0.01, max_value=50), st.floats(min_value=-np.pi, max_value=np.pi))
def test_plausible_faces_of_any_size_and_tilt(base, scale, angle):
    rng = np.random.default_rng(0)
    lm = rng.normal(size=(68, 2)).astype(np.float32) * 3
    lm[36:42] += (-10, 0)
    lm[42:48] += (10, 0)
    lm[48:68] += (0, 15)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    _check((lm @ rot.T * scale + base[0]).astype(np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_landmarks_are_refused(bad):
    lm = np.zeros((68, 2), np.float32) + 50
    lm[40, 1] = bad
    with pytest.raises(AlignmentError, match="finite"):
        align_face(PHOTO, lm, size=32)


def test_wrong_shape_is_refused():
    with pytest.raises(AlignmentError, match="68"):
        align_face(PHOTO, np.zeros((5, 2), np.float32), size=32)
