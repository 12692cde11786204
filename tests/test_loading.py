"""One loading context (offline, progress, report): built once by the public entry points, which
keep their keywords, and handed on as one value down to the download."""

from __future__ import annotations

import pytest

from agetool.errors import OfflineError, UsageError
from agetool.loading import LOADING, Loading, given


def test_the_context_is_checked_when_built():
    assert Loading.of() == LOADING == Loading(False, None, None)
    with pytest.raises(UsageError, match=r"^offline='no': expected True or False"):
        Loading.of(offline="no")
    with pytest.raises(UsageError, match=r"^report=5: expected a function"):
        Loading.of(report=5)
    notes: list[str] = []
    Loading(report=notes.append).say("one")
    LOADING.say("nobody hears this")
    assert notes == ["one"]
    assert LOADING.advance("work", 3)(1) is None  # no progress callback: a no-op


def test_an_entry_point_takes_the_context_or_its_keywords_not_both():
    context = Loading(offline=True)
    assert given(context) is context
    assert given(offline=True) == context
    with pytest.raises(UsageError, match=r"^give loading or offline / progress / report, not both"):
        given(context, report=print)
    with pytest.raises(UsageError, match=r"^loading=\{'offline': True\}: expected agetool.loading.Loading"):
        given({"offline": True})


def test_offline_reaches_the_download_through_one_value(tmp_path, monkeypatch):
    """``weights.fetch`` and ``FaceIdentity.from_pretrained`` with the context or with the keywords:
    the same offline refusal, naming offline=True; both at once is a usage error."""
    from agetool import weights
    from agetool.identity import FaceIdentity

    monkeypatch.setenv("AGETOOL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network; the message says which switch was on
    for call in (lambda: weights.fetch("genderage", loading=Loading(offline=True)),
                 lambda: weights.fetch("genderage", offline=True),
                 lambda: FaceIdentity.from_pretrained("auraface", loading=Loading(offline=True)),
                 lambda: FaceIdentity.from_pretrained("auraface", offline=True)):
        with pytest.raises(OfflineError, match=r"is not in the cache and network access is off \(offline=True\)"):
            call()
    with pytest.raises(UsageError, match="not both"):
        weights.fetch("genderage", loading=Loading(offline=True), offline=True)


def test_a_pipeline_holds_the_context_its_loaders_use(weights, monkeypatch, tmp_path):
    """``from_pretrained(offline=..., report=...)`` builds the context once; the models it loads
    (here the registry's parser, not cached) are had through it."""
    import agetool

    monkeypatch.setenv("AGETOOL_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never the network; the message says which switch was on
    notes: list[str] = []
    pipe = agetool.AgingPipeline.from_pretrained(model=weights, device="cpu", offline=True, report=notes.append)
    assert pipe.models.loading == Loading(offline=True, report=notes.append)
    with pytest.raises(OfflineError, match=r"^deeplab-parser is not in the cache .*\(offline=True\)"):
        pipe.models.parser  # noqa: B018
    sibling = agetool.AgingPipeline.from_pipe(pipe, model="female")
    assert sibling.models.loading is pipe.models.loading


def test_the_face_stages_speak_through_the_pipelines_report(tmp_path):
    """A face skipped for its size is said through the report the pipeline was built with."""
    import numpy as np
    from PIL import Image

    import agetool
    from tests.helpers import ROOT

    photo = np.asarray(Image.open(ROOT / "examples" / "astronaut.png"))
    face = photo[40:330, 110:350]
    canvas = np.full((300, 460, 3), 235, np.uint8)
    canvas[5:208, 10:178] = np.asarray(Image.fromarray(face).resize((168, 203), Image.LANCZOS))
    canvas[5:295, 210:450] = face
    notes: list[str] = []
    pipe = agetool.AgingPipeline.from_pretrained(landmarks="dlib", offline=True, device="cpu", report=notes.append)
    kept = pipe.faces(canvas, min_face=80, mask=False)
    assert len(kept) == 1 and kept[0].box[0] > 200
    assert "warning: image: skipped 1 face(s) smaller than 80 px" in notes, notes
