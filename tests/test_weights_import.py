"""`weights import` of the forms users hold: the released zip, the unzipped generator `.pth`, the
parser `.pth`, agetool `.safetensors`, or a folder of them; then offline use by name."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agetool import weights
from agetool.cli import console, run
from agetool.errors import ChecksumError
from agetool.loading import Loading
from agetool.nn.generator import Generator, GeneratorConfig
from tests.seeding import seeded_state_dict
from tests.test_weights import entry, env, payload, server, use_registry  # noqa: F401
from tests.helpers import face_like, tiny_generator_file


def _tiny_state(seed: int = 2) -> dict:
    return seeded_state_dict(Generator(GeneratorConfig(ngf=8)), seed, "generator")


def _pth(path: Path, sd: dict) -> Path:
    torch.save(sd, path)
    return path


def _zip(path: Path, member: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("males_model/latest_net_g_running.pth", member)
    return path


def _generator_entry(blob: bytes | None, **extra) -> dict:
    zip_name = extra.get("filename", "males_model.zip")
    e = entry(None, [{"url": f"http://nosuch.invalid/{zip_name}"}], kind="generator",
              member="latest_net_g_running.pth", **extra)
    if blob is not None:
        e.update(size=len(blob), md5=hashlib.md5(blob).hexdigest())
    return e


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setattr(console.err, "width", 1000)
    monkeypatch.setattr(console.out, "width", 1000)


def test_unzipped_generator_then_offline_by_name(env, monkeypatch, capsys, wide, seeded_parser_file):
    """The released layouts: full-size seeded generator as `latest_net_g_running.pth`, the bundled
    registry; then `age CROP --aligned --model male --offline --parser-weights P`."""
    monkeypatch.delenv("AGETOOL_REGISTRY", raising=False)
    pth = _pth(env / "latest_net_g_running.pth", seeded_state_dict(Generator(), 1, "generator"))

    assert run(["weights", "import", str(pth), "--as", "lats-male"]) == 0
    out, err = capsys.readouterr()
    dest = env / "cache" / "files" / "lats-male" / "latest_net_g_running.pth"
    assert out.strip() == f"lats-male: {dest}" and dest.read_bytes() == pth.read_bytes()
    notes = [line for line in err.splitlines() if "published checksum" in line]
    assert len(notes) == 1 and hashlib.sha256(pth.read_bytes()).hexdigest() in notes[0]
    assert not (env / "cache" / "files" / "lats-male" / "males_model.zip").exists()

    assert run(["weights", "list"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.lstrip().startswith("lats-male"))
    assert " yes " in row and "CC BY-NC-SA 4.0 [non-commercial]" in row  # the marker is text, not markup
    assert f"lats-male: {dest}" in out

    from PIL import Image

    crop = env / "crop.png"
    Image.fromarray(face_like(256)).save(crop)
    grid = env / "grid.png"
    code = run(["age", str(crop), "--aligned", "--model", "male", "--offline", "--parser-weights",
                str(seeded_parser_file), "--out", str(grid), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert np.asarray(Image.open(grid)).shape[1] >= 256 * 6
    assert (env / "cache" / "converted" / "lats-male.safetensors").is_file()


def test_released_zip_and_member_and_safetensors_forms(env, monkeypatch, capsys, wide):
    sd = _tiny_state()
    raw = io.BytesIO()
    torch.save(sd, raw)
    blob = _zip(env / "males_model.zip", raw.getvalue()).read_bytes()
    use_registry(env, monkeypatch, {"lats-tiny": _generator_entry(blob)})

    # the zip: verified by its published checksum
    assert run(["weights", "import", str(env / "males_model.zip"), "--as", "lats-tiny"]) == 0
    assert "published checksum" not in capsys.readouterr().err
    g = weights.generator_path("lats-tiny", loading=Loading(offline=True))
    from agetool.nn.checkpoint import load_generator

    assert all(torch.equal(load_generator(g).state_dict()[k], v) for k, v in sd.items())

    # the member: checked by loading; replaces the zip as the cached form
    member = _pth(env / "latest_net_g_running.pth", _tiny_state(seed=5))
    assert run(["weights", "import", str(member), "--as", "lats-tiny"]) == 0
    g = weights.generator_path("lats-tiny", loading=Loading(offline=True))
    assert torch.equal(load_generator(g).state_dict()["id_encoder.encoder.1.conv.weight_orig"],
                       _tiny_state(seed=5)["id_encoder.encoder.1.conv.weight_orig"])
    assert weights.verify(["lats-tiny"])[0].ok  # re-hashed against the sha256 recorded at import

    # an agetool safetensors file: used as it is
    st = tiny_generator_file(env / "mine.safetensors", seed=7)
    assert run(["weights", "import", str(st), "--as", "lats-tiny"]) == 0
    used = weights.generator_path("lats-tiny", loading=Loading(offline=True))
    assert used.suffix == ".safetensors" and used.read_bytes() == st.read_bytes()


def test_member_of_a_registry_entry_without_checksum(env, monkeypatch, capsys):
    """Trust-on-first-use entries: the .pth is stored under its own name and converts."""
    use_registry(env, monkeypatch, {"lats-tofu": _generator_entry(None)})
    pth = _pth(env / "latest_net_g_running.pth", _tiny_state())
    path = weights.import_file(pth, "lats-tofu")
    assert path.name == "latest_net_g_running.pth"
    out = weights.generator_path("lats-tofu", loading=Loading(offline=True))
    assert out.name == "lats-tofu.safetensors"


def test_a_file_that_does_not_load_is_refused(env, monkeypatch, capsys, wide):
    use_registry(env, monkeypatch, {"lats-tiny": _generator_entry(b"zip")})
    bad = _pth(env / "latest_net_g_running.pth", {"some.weight": torch.zeros(3)})
    assert run(["weights", "import", str(bad), "--as", "lats-tiny"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not lats-tiny" in err and "--weights FILE" in err
    assert not any((env / "cache" / "files").rglob("*.pth"))
    assert not any((env / "cache").rglob("*.tmp*"))


def test_parser_pth_checked_against_its_checksum(env, monkeypatch, capsys, wide):
    good = payload(4000, seed=1)
    use_registry(env, monkeypatch, {"parser-x": entry(good, [{"url": "http://nosuch.invalid/deeplab_model.pth"}],
                                                      kind="parser")})
    mine = env / "deeplab_model.pth"
    mine.write_bytes(payload(4000, seed=2))
    with pytest.raises(ChecksumError, match="parser_weights='FILE'"):
        weights.import_file(mine, "parser-x")
    mine.write_bytes(good)
    assert weights.import_file(mine, "parser-x").read_bytes() == good
    assert weights.fetch("parser-x", offline=True).read_bytes() == good


def folder_registry(env, monkeypatch) -> tuple[bytes, bytes]:
    """A registry of the two generators, the parser and the classifier; returns the parser's and
    the classifier's bytes."""
    parser = payload(3000, seed=4)
    onnx = payload(2000, seed=5)
    use_registry(env, monkeypatch, {
        "lats-male": _generator_entry(b"the zip", filename="males_model.zip"),
        "lats-female": _generator_entry(b"another zip", filename="females_model.zip"),
        "deeplab-parser": entry(parser, [{"url": "http://nosuch.invalid/deeplab_model.pth"}], kind="parser"),
        "genderage": entry(onnx, [{"hub": "a/b", "filename": "models/genderage.onnx"}]),
    })
    return parser, onnx


def test_import_a_folder(env, monkeypatch, capsys, wide):
    parser, onnx = folder_registry(env, monkeypatch)
    folder = env / "downloads"
    (folder / "males_model").mkdir(parents=True)
    _pth(folder / "males_model" / "latest_net_g_running.pth", _tiny_state())
    (folder / "deeplab_model.pth").write_bytes(parser)
    (folder / "genderage.onnx").write_bytes(onnx)
    (folder / "notes.txt").write_text("not weights")

    assert run(["weights", "import", str(folder)]) == 0
    out = capsys.readouterr().out
    assert {line.split(":")[0] for line in out.splitlines()} == {"lats-male", "deeplab-parser", "genderage"}
    for name in ("lats-male", "deeplab-parser", "genderage"):
        assert weights.status(name).verified, name
    assert weights.status("lats-female").path is None

    empty = env / "empty"
    empty.mkdir()
    assert run(["weights", "import", str(empty)]) == 1
    assert "nothing imported" in capsys.readouterr().err


def test_size_is_checked_before_copying(env, monkeypatch, capsys):
    from agetool.weights import registry, store

    use_registry(env, monkeypatch, {"sized": entry(payload(100), [{"url": "http://nosuch.invalid/x"}]),
                                    "unsized": entry(None, [{"url": "http://nosuch.invalid/y"}])})
    monkeypatch.setattr(store, "hash_file", lambda *a, **k: pytest.fail("read the file"))
    wrong = env / "x"
    wrong.write_bytes(b"12345")
    with pytest.raises(ChecksumError, match="5 bytes, expected 100"):
        weights.import_file(wrong, "sized")
    huge = env / "y"
    with open(huge, "wb") as f:
        f.truncate(registry.max_bytes("classifier") + 1)  # sparse: costs nothing on disk
    with pytest.raises(ChecksumError, match="more than a classifier may have"):
        weights.import_file(huge, "unsized")
    assert not (env / "cache" / "files").exists() or not any((env / "cache" / "files").rglob("*"))


def test_records_say_what_was_imported(env, monkeypatch):
    use_registry(env, monkeypatch, {"lats-tiny": _generator_entry(b"zip")})
    weights.import_file(_pth(env / "latest_net_g_running.pth", _tiny_state()), "lats-tiny")
    record = json.loads((env / "cache" / "records" / "lats-tiny.json").read_text())
    assert record["form"] == "member" and record["pinned"] == "loaded"
    assert record["source"] == f"import {env / 'latest_net_g_running.pth'}"
