"""Models load in background threads while the photo is read and its faces found."""

from __future__ import annotations

import threading

import pytest

from agetool.errors import CheckpointError
from agetool.models import Models, Timer
from tests.helpers import FakeClock


def _slow_parser(monkeypatch, calls: list, clock: FakeClock, fail: bool = False, release=None):
    """A parser whose load takes 0.3 s of ``clock`` (and, with ``release``, waits until it is set)."""
    from agetool.face import parse

    def load(path, **kw):
        calls.append(threading.current_thread().name)
        if release is not None:
            assert release.wait(60), "the load was never released"
        clock.sleep(0.3)
        if fail:
            raise CheckpointError(f"{path}: not a parser")
        return "the parser"

    monkeypatch.setattr(parse.FaceParser, "load", staticmethod(load))


def test_preload_loads_once_in_the_background(tmp_path, monkeypatch):
    calls: list = []
    clock, release = FakeClock(), threading.Event()
    _slow_parser(monkeypatch, calls, clock, release=release)
    models = Models(parser_weights=tmp_path / "parser.pth", timer=Timer(clock=clock))
    models.preload(parser=True)  # returns while the load is held: it runs in a thread of its own
    models.preload(parser=True)  # a second call starts nothing
    release.set()
    assert models.parser == "the parser"  # waits for the background load
    assert models.parser == "the parser"
    assert len(calls) == 1 and calls[0].startswith("agetool-load")
    assert models.timer.seconds["load parser (background)"] == pytest.approx(0.3)
    assert "load parser" not in models.timer.seconds


def test_a_failed_background_load_raises_where_the_model_is_needed(tmp_path, monkeypatch):
    calls: list = []
    clock = FakeClock()
    _slow_parser(monkeypatch, calls, clock, fail=True)
    models = Models(parser_weights=tmp_path / "parser.pth", timer=Timer(clock=clock))
    models.preload(parser=True)
    with pytest.raises(CheckpointError, match="not a parser"):
        models.parser
    assert len(calls) == 2 and not calls[1].startswith("agetool-load")
    assert models.timer.seconds["load parser"] == pytest.approx(0.3)  # the load that raised, where it was needed


def test_nothing_preloads_that_might_download(monkeypatch):
    calls: list = []
    _slow_parser(monkeypatch, calls, FakeClock())
    models = Models()  # registry parser, not cached here
    models.preload(parser=True, model="male")
    assert not models._background
    assert models.close(timeout=60)  # any load that was started has ended
    assert calls == []


def test_a_generator_file_loads_in_the_background_under_its_name(weights, monkeypatch):
    """model=PATH: the file's generator starts loading while the faces are found, keyed by the file's name."""
    import numpy as np

    from agetool.nn import checkpoint
    from agetool.pipeline import AgingPipeline

    loads: list = []
    real = checkpoint.load_generator
    monkeypatch.setattr(checkpoint, "load_generator", lambda path, **kw: loads.append(path) or real(path, **kw))
    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu")
    face = pipe(np.full((256, 256, 3), 120, np.uint8), aligned=True, mask=False).faces[0]
    assert list(pipe.models._background) == ["engine:tiny.safetensors"] and face.model == "tiny.safetensors"
    assert loads == [weights]
