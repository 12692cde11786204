"""Python API arguments of the wrong type: a UsageError naming the argument, never a bare TypeError or
OverflowError, and never a silently wrong reading (bytes read as ages 53, 44, 54)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from agetool import validate
from agetool.ages import MAX_AGES, parse_ages
from agetool.errors import UsageError
from tests.helpers import face_like


@pytest.fixture(scope="module")
def pipe(weights):
    from agetool import AgingPipeline

    return AgingPipeline.from_pretrained(model=weights, device="cpu")


@pytest.mark.parametrize("ages", [b"5,6", bytearray(b"5"), True, np.bool_(True), {"30": 1}, {5}, 5 + 0j,
                                  [True], [b"5"], [np.bool_(False)], [None]])
def test_ages_of_the_wrong_type_name_the_argument(ages):
    with pytest.raises(UsageError, match=r"^ages\b"):
        parse_ages(ages)


@pytest.mark.parametrize("ages", [10 ** 400, [10 ** 400], [5, -(10 ** 400)]])
def test_ages_too_large_for_a_float_are_out_of_range(ages):
    with pytest.raises(UsageError, match=r"^ages=.*(over 150 years|negative)"):
        parse_ages(ages)


def test_numpy_numbers_and_iterables_are_ages():
    assert [t.entry for t in parse_ages([np.float64(20.5), np.int64(4), "30-39"])] == ["20.5", "4", "30-39"]
    assert [t.entry for t in parse_ages(iter([3, 7]))] == ["3", "7"]
    assert [t.entry for t in parse_ages(np.int32(12))] == ["12"]


def test_ages_are_bounded_in_number():
    assert len(parse_ages(list(range(MAX_AGES)))) == MAX_AGES
    with pytest.raises(UsageError, match=f"more than {MAX_AGES} ages"):
        parse_ages(",".join(["5"] * (MAX_AGES + 1)))
    with pytest.raises(UsageError, match=f"more than {MAX_AGES} ages"):
        parse_ages(itertools.count())  # an endless iterator stops at the limit


def test_pipeline_refuses_wrong_types_naming_the_argument(pipe):
    crop = face_like()
    with pytest.raises(UsageError, match=r"^ages\b"):
        pipe(crop, ages=b"5,6", aligned=True, mask=False)
    for name in ("aligned", "mask", "paste_back"):
        kwargs = {"aligned": True, "mask": False, name: "no"}
        with pytest.raises(UsageError, match=rf"^{name}='no': expected True or False"):
            pipe(crop, **kwargs)
    with pytest.raises(UsageError, match=r"^noise=True: not a number"):
        pipe(crop, aligned=True, mask=False, noise=True)
    result = pipe(crop, ages=[20], aligned=np.bool_(True), mask=False)  # numpy's booleans are booleans
    assert result.faces[0].images.shape == (1, 256, 256, 3)


def test_pipeline_options_of_the_wrong_type(weights, tmp_path):
    from agetool import AgingPipeline
    from agetool.eval.run import evaluate
    from agetool.options import EvalOptions

    with pytest.raises(UsageError, match=r"^offline='no'"):
        AgingPipeline.from_pretrained(model=weights, device="cpu", offline="no")
    with pytest.raises(UsageError, match=r"^calibrate='yes'"):
        EvalOptions.of(calibrate="yes")
    with pytest.raises(UsageError, match=r"^options=.*: expected EvalOptions"):
        evaluate([tmp_path], AgingPipeline.from_pretrained(model=weights, device="cpu"), None, {"calibrate": True})


@pytest.mark.parametrize("image", [b"\x89PNG", 5, None, np.zeros((64, 64, 3), np.float32), np.zeros(64, np.uint8), ""])
def test_images_of_the_wrong_type_name_the_argument(pipe, image):
    with pytest.raises(UsageError, match=r"^image\b"):
        pipe(image, aligned=True, mask=False)


def test_a_closed_pil_image_is_a_usage_error(pipe, tmp_path):
    Image.fromarray(face_like()).save(tmp_path / "c.png")
    im = Image.open(tmp_path / "c.png")
    im.close()
    with pytest.raises(UsageError, match=r"^image: can't use this PIL image"):
        pipe(im, aligned=True, mask=False)


@pytest.mark.parametrize("value,message", [(True, "not a number"), (b"1", "not a number"),
                                           (10 ** 400, "must be between"), ("1e309", "finite")])
def test_numbers_of_the_wrong_type(value, message):
    with pytest.raises(UsageError, match=message):
        validate.finite("fps", value, 0.01, 240)
