"""Weights registry, verified downloads, first-use conversion and offline use, against a local
HTTP server on 127.0.0.1 (plain URLs with Range, and Hub-style URLs through HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import pytest

from agetool import weights
from agetool.cli import run
from agetool.errors import ChecksumError, OfflineError, WeightsError
from agetool.loading import Loading
from agetool.weights import registry, store, transfer
from tests.weights_server import COMMIT, Server, write_registry


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


@pytest.fixture
def env(tmp_path, monkeypatch, server):
    """A private cache, Hub cache and torch home; network allowed, but only to the local server."""
    import huggingface_hub.constants

    monkeypatch.setenv("AGETOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_ENDPOINT", server.base)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    # as if HF_ENDPOINT had been set before huggingface_hub was imported: nothing leaves 127.0.0.1
    template = huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE
    monkeypatch.setattr(huggingface_hub.constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        template.replace(huggingface_hub.constants.ENDPOINT, server.base))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", server.base)
    monkeypatch.setattr(transfer, "BACKOFF_S", 0.01)
    registry._CACHE.clear()
    return tmp_path


def payload(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def entry(data: bytes | None, sources: list[dict], **extra) -> dict:
    e = {"kind": "classifier", "description": "test file", "license": "CC BY-NC-SA 4.0",
         "license_url": "https://creativecommons.org/licenses/by-nc-sa/4.0/", "non_commercial": True}
    if data is not None:
        e["size"] = len(data)
        e["sha256"] = hashlib.sha256(data).hexdigest()
    e.update(extra)
    e["sources"] = sources
    return e


def use_registry(env: Path, monkeypatch, models: dict[str, dict]) -> Path:
    path = write_registry(env / "weights.toml", models)
    monkeypatch.setenv("AGETOOL_REGISTRY", str(path))
    return path


def serve(env: Path, server, monkeypatch, name: str, data: bytes, **extra) -> str:
    """Serve ``data`` at /f/<name>.bin and register it as ``name`` with that one URL source."""
    path = f"/f/{name}.bin"
    server.state.files[path] = data
    use_registry(env, monkeypatch, {name: entry(data, [{"url": server.url(path)}], **extra)})
    return path


def cached_files(env: Path) -> list[Path]:
    root = env / "cache" / "files"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".lock") if root.exists() else []


def test_fresh_download_prints_license_and_is_cached(env, server, monkeypatch, capsys):
    data = payload(300_000)
    server.state.files["/f/model.bin"] = data
    use_registry(env, monkeypatch, {"tiny": entry(data, [{"url": server.url("/f/model.bin")}])})

    assert run(["weights", "download", "tiny"]) == 0
    out, err = capsys.readouterr()
    path = env / "cache" / "files" / "tiny" / "model.bin"
    assert path.read_bytes() == data
    assert str(path) in out
    assert "tiny: CC BY-NC-SA 4.0 (non-commercial) https://creativecommons.org" in err
    assert cached_files(env) == [path]  # no partial file left behind
    record = json.loads((env / "cache" / "records" / "tiny.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["pinned"] == "registry"

    gets = len(server.state.requests("GET"))
    assert run(["weights", "download", "tiny"]) == 0  # warm: no network, no license line again
    assert len(server.state.requests("GET")) == gets
    assert "non-commercial" not in capsys.readouterr().err
    assert run(["weights", "list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny" in listing and "yes" in listing


def test_resume_after_dropped_connection(env, server, monkeypatch):
    data = payload(500_000, seed=1)
    server.state.files["/f/big.bin"] = data
    server.state.drop_after["/f/big.bin"] = 123_456
    use_registry(env, monkeypatch, {"big": entry(data, [{"url": server.url("/f/big.bin")}])})

    assert run(["weights", "download", "big"]) == 0
    gets = server.state.requests("GET", "/f/big.bin")
    assert gets[0][2] is None and gets[1][2] == "bytes=123456-"  # resumed, not restarted
    assert len(gets) == 2
    assert (env / "cache" / "files" / "big" / "big.bin").read_bytes() == data


@pytest.mark.parametrize("good_prefix, ranges", [(True, ["bytes=70000-"]), (False, ["bytes=70000-", None])],
                         ids=["resumed", "bad-partial-discarded"])
def test_partial_file_from_an_earlier_run(env, server, monkeypatch, good_prefix, ranges):
    data = payload(200_000, seed=2)
    serve(env, server, monkeypatch, "p", data)
    part = env / "cache" / "files" / "p" / "p.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:70_000] if good_prefix else b"\0" * 70_000)

    path = weights.fetch("p")
    assert path.read_bytes() == data and not part.exists()
    assert [r[2] for r in server.state.requests("GET")] == ranges


def test_checksum_mismatch_exits_1_and_leaves_nothing(env, server, monkeypatch, capsys):
    data = payload(50_000, seed=4)
    tampered = bytearray(data)
    tampered[1000] ^= 0xFF
    server.state.files["/f/t.bin"] = bytes(tampered)
    use_registry(env, monkeypatch, {"t": entry(data, [{"url": server.url("/f/t.bin")}])})

    assert run(["weights", "download", "t"]) == 1
    err = capsys.readouterr().err
    assert "t is not cached and could not be downloaded" in err and "checksum mismatch" in err and "sha256" in err
    assert "agetool weights import FILE --as t" in err
    assert cached_files(env) == []
    assert not (env / "cache" / "records" / "t.json").exists()
    with pytest.raises(ChecksumError):
        weights.fetch("t")


def test_first_source_404_then_hub_space(env, server, monkeypatch, capsys):
    data = payload(80_000, seed=5)
    server.state.files["/spaces/acme/demo/resolve/main/models/w.bin"] = data
    use_registry(env, monkeypatch, {"two": entry(data, [
        {"url": server.url("/f/missing.bin")},
        {"hub": "acme/demo", "repo_type": "space", "filename": "models/w.bin"},
    ])})

    assert run(["weights", "download", "two"]) == 0
    out, err = capsys.readouterr()
    assert "404" in err and "trying the next source" in err
    assert len(server.state.requests("GET", "/f/missing.bin")) == 1  # a 404 is not retried
    assert server.state.requests("HEAD", "/spaces/acme/demo/resolve/main/models/w.bin")
    path = Path(out.strip().split(": ", 1)[1])
    assert path.read_bytes() == data
    assert str(env / "hf" / "hub") in str(path) and COMMIT in str(path)
    record = json.loads((env / "cache" / "records" / "two.json").read_text())
    assert record["revision"] == COMMIT and record["source"].startswith("hub:spaces/acme/demo")


def test_every_source_failing_names_each_one(env, server, monkeypatch, capsys):
    server.state.status["/f/down.bin"] = 503
    use_registry(env, monkeypatch, {"gone": entry(payload(10), [
        {"url": server.url("/f/nope.bin")}, {"url": server.url("/f/down.bin")},
    ])})

    assert run(["weights", "download", "gone"]) == 1
    err = capsys.readouterr().err.replace("\n", " ")
    assert server.url("/f/nope.bin") in err and "HTTP 404" in err
    assert server.url("/f/down.bin") in err and "HTTP 503" in err and "gave up after" in err
    assert len(server.state.requests("GET", "/f/down.bin")) == transfer.RETRIES  # retried with backoff
    assert "agetool weights import FILE --as gone" in err


def test_offline_without_cache_fails_with_one_line(env, server, monkeypatch, capsys):
    data = payload(1000)
    serve(env, server, monkeypatch, "o", data)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert run(["weights", "download", "o"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not in the cache" in err and "HF_HUB_OFFLINE=1" in err
    assert server.state.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(OfflineError, match="offline=True"):
        weights.fetch("o", offline=True)
    assert server.state.log == []


def test_offline_with_warm_cache_serves_without_server(env, server, monkeypatch, capsys):
    a, b = payload(40_000, seed=6), payload(30_000, seed=7)
    server.state.files["/f/a.bin"] = a
    server.state.files["/acme/models/resolve/main/b.onnx"] = b
    use_registry(env, monkeypatch, {
        "a": entry(a, [{"url": server.url("/f/a.bin")}]),
        "b": entry(b, [{"hub": "acme/models", "filename": "b.onnx"}]),
    })
    assert run(["weights", "download", "--all"]) == 0
    capsys.readouterr()
    server.close()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert weights.fetch("a").read_bytes() == a
    (env / "cache" / "records" / "b.json").unlink()  # found again in the Hub cache and re-verified
    assert weights.fetch("b").read_bytes() == b
    assert run(["weights", "path", "b"]) == 0
    assert capsys.readouterr().out.strip().endswith("b.onnx")


def test_verify_catches_a_corrupted_file(env, server, monkeypatch, capsys):
    data = payload(60_000, seed=8)
    serve(env, server, monkeypatch, "v", data)
    path = weights.fetch("v")
    assert run(["weights", "verify"]) == 0
    capsys.readouterr()

    with open(path, "r+b") as f:  # same size, one flipped byte
        f.seek(30_000)
        f.write(b"\xff" if data[30_000] != 0xFF else b"\x00")
    assert run(["weights", "verify"]) == 1
    out, err = capsys.readouterr()
    assert "v" in out and "sha256" in out and "deleted" in err
    assert not path.exists()


def test_cached_file_changed_on_disk_is_rehashed_before_use(env, server, monkeypatch):
    data = payload(20_000, seed=9)
    serve(env, server, monkeypatch, "c", data)
    path = weights.fetch("c")
    path.write_bytes(b"x" * len(data))
    messages = []
    assert weights.fetch("c", report=messages.append).read_bytes() == data  # deleted, fetched again
    assert any("deleted" in m for m in messages)
    assert len(server.state.requests("GET")) == 2


def test_import_verifies_and_places(env, server, monkeypatch, capsys):
    data = payload(25_000, seed=10)
    use_registry(env, monkeypatch, {"imp": entry(data, [{"url": server.url("/f/never.bin")}])})
    wrong = env / "wrong.bin"
    wrong.write_bytes(data[:-1] + b"!")
    assert run(["weights", "import", str(wrong), "--as", "imp"]) == 1
    assert "nothing was placed" in capsys.readouterr().err
    assert cached_files(env) == []

    good = env / "good.bin"
    good.write_bytes(data)
    assert run(["weights", "import", str(good), "--as", "imp"]) == 0
    capsys.readouterr()
    assert run(["weights", "path", "imp"]) == 0
    placed = Path(capsys.readouterr().out.strip())
    assert placed.read_bytes() == data and placed.parent == env / "cache" / "files" / "imp"
    assert server.state.log == []


def test_import_rejects_a_name_that_escapes_the_cache(env, monkeypatch, capsys):
    use_registry(env, monkeypatch, {"ok": entry(b"x", [])})
    src = env / "x.bin"
    src.write_bytes(b"x")
    assert run(["weights", "import", str(src), "--as", "../../evil"]) == 2  # a usage error
    assert "invalid artifact name" in capsys.readouterr().err
    assert not (env / "evil").exists() and cached_files(env) == []


def test_registry_validation(tmp_path):
    bad_name = b'[models."../x"]\nkind = "parser"\nsources = []\n'
    with pytest.raises(WeightsError, match="invalid artifact name"):
        registry.parse_registry(bad_name)
    bad_file = b'[models.a]\nkind = "parser"\nfilename = "../a.bin"\nsources = []\n'
    with pytest.raises(WeightsError, match="not a plain file name"):
        registry.parse_registry(bad_file)
    bad_hub = b'[models.a]\nkind = "parser"\nsources = [{ hub = "o/r", filename = "../../a" }]\n'
    with pytest.raises(WeightsError, match="relative filename"):
        registry.parse_registry(bad_hub)
    # the shipped registry parses and keeps the stable names
    names = set(registry.load_registry(registry.DEFAULT_REGISTRY))
    assert {"lats-male", "lats-female", "deeplab-parser", "dlib-landmarks68", "fan-2d", "s3fd",
            "genderage"} <= names


def test_trust_on_first_use(env, server, monkeypatch, capsys):
    data = payload(15_000, seed=11)
    server.state.files["/f/u.bin"] = data
    use_registry(env, monkeypatch, {"u": entry(None, [{"url": server.url("/f/u.bin")}])})
    assert run(["weights", "download", "u"]) == 0
    assert "trust on first use" in capsys.readouterr().err
    record = json.loads((env / "cache" / "records" / "u.json").read_text())
    assert record["pinned"] == "first-use" and record["sha256"] == hashlib.sha256(data).hexdigest()

    (env / "cache" / "files" / "u" / "u.bin").unlink()
    server.state.files["/f/u.bin"] = payload(15_000, seed=12)  # the server now hands out other bytes
    assert run(["weights", "download", "u"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err
    assert cached_files(env) == []


def _tiny_generator_zip():
    import torch

    from agetool.nn.generator import Generator, GeneratorConfig

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(ngf=8))
    raw = io.BytesIO()
    torch.save(g.state_dict(), raw)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("males_model/latest_net_g_running.pth", raw.getvalue())
        zf.writestr("males_model/latest_net_D.pth", b"not used")
    return g, buf.getvalue()


def test_zip_member_conversion_once(env, server, monkeypatch):
    import torch

    from agetool.nn.checkpoint import load_generator

    g, blob = _tiny_generator_zip()
    server.state.files["/m/males_model.zip"] = blob
    e = entry(None, [{"url": server.url("/m/males_model.zip")}], kind="generator",
              member="latest_net_g_running.pth", size=len(blob), md5=hashlib.md5(blob).hexdigest())
    use_registry(env, monkeypatch, {"lats-tiny": e})

    path = weights.generator_path("lats-tiny")
    assert path == env / "cache" / "converted" / "lats-tiny.safetensors"
    loaded = load_generator(path)
    assert loaded.cfg.ngf == 8
    for k, v in g.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert json.loads(path.with_name(path.name + ".json").read_text())["generator"]["ngf"] == 8

    mtime, gets = path.stat().st_mtime_ns, len(server.state.requests("GET"))
    (env / "cache" / "files" / "lats-tiny" / "males_model.zip").unlink()  # the zip is no longer needed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from agetool.nn import checkpoint

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(checkpoint, "convert_generator", no_conversion)
    assert weights.generator_path("lats-tiny") == path  # the converted file is used as it is
    assert path.stat().st_mtime_ns == mtime and len(server.state.requests("GET")) == gets


def test_conversion_refuses_a_zip_without_the_member(env, server, monkeypatch):
    from agetool.errors import CheckpointError

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../../evil.pth", b"x")
    blob = buf.getvalue()
    server.state.files["/m/bad.zip"] = blob
    use_registry(env, monkeypatch, {"lats-bad": entry(None, [{"url": server.url("/m/bad.zip")}], kind="generator",
                                                      member="latest_net_g_running.pth", size=len(blob))})
    with pytest.raises(CheckpointError, match="no latest_net_g_running.pth"):
        weights.generator_path("lats-bad")
    assert not (env / "evil.pth").exists() and not (env / "cache" / "converted").exists()


def test_face_alignment_files_are_placed_where_it_looks(env, server, monkeypatch):
    import torch

    from agetool.face.detect import fan_file_names

    names = fan_file_names()
    fan, sfd = payload(9000, seed=13), payload(7000, seed=14)
    server.state.files[f"/fa/{names['fan-2d']}"] = fan
    server.state.files[f"/fa/{names['s3fd']}"] = sfd
    use_registry(env, monkeypatch, {
        "fan-2d": entry(fan, [{"url": server.url(f"/fa/{names['fan-2d']}")}], kind="landmarks"),
        "s3fd": entry(sfd, [{"url": server.url(f"/fa/{names['s3fd']}")}], kind="detector"),
    })
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    weights.place_face_alignment_files()
    target = env / "torch" / "hub" / "checkpoints"
    assert (target / names["fan-2d"]).read_bytes() == fan
    assert (target / names["s3fd"]).read_bytes() == sfd
    gets = len(server.state.requests("GET"))
    weights.place_face_alignment_files(loading=Loading(offline=True))  # already in place: nothing fetched
    assert len(server.state.requests("GET")) == gets


def test_info_lists_cached_files_with_licenses(env, server, monkeypatch, capsys):
    data = payload(5000, seed=15)
    server.state.files["/f/i.bin"] = data
    use_registry(env, monkeypatch, {"inf": entry(data, [{"url": server.url("/f/i.bin")}])})
    weights.fetch("inf")
    assert run(["info"]) == 0
    out = capsys.readouterr().out
    assert "agetool" in out and "torch" in out and "devices: cpu" in out
    assert "inf" in out and "CC BY-NC-SA 4.0" in out


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("AGETOOL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert store.cache_dir() == tmp_path / "xdg" / "agetool"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert store.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "agetool"


def test_a_record_pointing_outside_the_cache_is_ignored(env, server, monkeypatch):
    data = payload(4000, seed=16)
    serve(env, server, monkeypatch, "r", data)
    outside = env / "precious.txt"
    outside.write_bytes(b"keep me")
    store.write_record("r", {"path": str(outside), "sha256": "0" * 64, "stamp": store.stamp(outside)})

    assert weights.fetch("r").read_bytes() == data
    assert outside.read_bytes() == b"keep me"


def test_hub_download_survives_a_dropped_connection(env, server, monkeypatch, capsys):
    data = payload(400_000, seed=17)
    path = "/acme/models/resolve/main/big.onnx"
    server.state.files[path] = data
    server.state.drop_after[path] = 150_000
    use_registry(env, monkeypatch, {"hubbig": entry(data, [{"hub": "acme/models", "filename": "big.onnx"}])})

    assert run(["weights", "download", "hubbig"]) == 0
    out, err = capsys.readouterr()
    assert Path(out.strip().split(": ", 1)[1]).read_bytes() == data
    assert len(server.state.requests("GET", path)) >= 2
    assert "Trying to resume" not in err  # the Hub client's own log lines stay quiet
