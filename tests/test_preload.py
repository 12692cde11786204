"""Models load in background threads while the photo is read and its faces found."""

from __future__ import annotations

import threading
import time

import pytest

from agetool.errors import CheckpointError
from agetool.models import Models


def _slow_parser(monkeypatch, calls: list, fail: bool = False):
    from agetool.face import parse

    def load(path, **kw):
        calls.append(threading.current_thread().name)
        time.sleep(0.3)
        if fail:
            raise CheckpointError(f"{path}: not a parser")
        return "the parser"

    monkeypatch.setattr(parse.FaceParser, "load", staticmethod(load))


def test_preload_loads_once_in_the_background(tmp_path, monkeypatch):
    calls: list = []
    _slow_parser(monkeypatch, calls)
    models = Models(parser_weights=tmp_path / "parser.pth")
    t0 = time.perf_counter()
    models.preload(parser=True)
    assert time.perf_counter() - t0 < 0.2  # returns at once
    models.preload(parser=True)  # a second call starts nothing
    assert models.parser == "the parser"  # waits for the background load
    assert models.parser == "the parser"
    assert len(calls) == 1 and calls[0].startswith("agetool-load")
    assert models.timer.seconds["load parser (background)"] >= 0.25
    assert "load parser" not in models.timer.seconds


def test_a_failed_background_load_raises_where_the_model_is_needed(tmp_path, monkeypatch):
    calls: list = []
    _slow_parser(monkeypatch, calls, fail=True)
    models = Models(parser_weights=tmp_path / "parser.pth")
    models.preload(parser=True)
    with pytest.raises(CheckpointError, match="not a parser"):
        models.parser
    assert len(calls) == 2 and not calls[1].startswith("agetool-load")


def test_nothing_preloads_that_might_download(monkeypatch):
    calls: list = []
    _slow_parser(monkeypatch, calls)
    models = Models()  # registry parser, not cached here
    models.preload(parser=True, model="male")
    time.sleep(0.05)
    assert calls == [] and not models._background
