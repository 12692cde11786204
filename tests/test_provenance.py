"""Every output says what it is: the IPTC digital source type and the run record (XMP), read back
with readers this project did not write (exiftool, Pillow, PyAV, c2pa-python); ``agetool inspect``;
``--commercial-safe``; ``--sign`` (C2PA Content Credentials) and ``--label``.

The generator is the tiny seeded one; photos are aligned crops or the astronaut (--no-mask)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT, astronaut_clip, cli, common, face_like

URL = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED, COMPOSITE = URL + "trainedAlgorithmicMedia", URL + "compositeWithTrainedAlgorithmicMedia"
FAST = ["--no-mask", "--device", "cpu", "--landmarks", "dlib"]
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is not installed "
                                    "(Debian: libimage-exiftool-perl)")


def exif(path: Path, *tags: str) -> dict:
    """``exiftool -j`` of ``path`` (group names kept: ``XMP-iptcExt:DigitalSourceType``)."""
    out = subprocess.run(["exiftool", "-j", "-G1", "-struct", *tags, str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)[0]


def pillow_xmp(path: Path) -> dict:
    with Image.open(path) as im:
        return im.getxmp()["xmpmeta"]["RDF"]["Description"]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture()
def photo(tmp_path) -> Path:
    p = tmp_path / "in" / "me.png"
    p.parent.mkdir()
    Image.fromarray(face_like(seed=7)).save(p)
    return p


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prov") / "astronaut256.png"
    Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256), Image.LANCZOS).save(p)
    return p


# ---------------------------------------------------------------- marking and record
@needs_exiftool
def test_age_grid_and_tiles_say_what_they_are(tmp_path, photo, weights, capsys):
    pytest.importorskip("defusedxml", reason="Pillow reads XMP with defusedxml")
    code, _, err = cli(["age", photo, "--out", tmp_path / "g.jpg", "--tiles", tmp_path / "t", "--ages", "20,45",
                        "--seed", "3", "--noise", "0.1", *common(weights)], capsys)
    assert code == 0, err
    grid, tiles = tmp_path / "g.jpg", tmp_path / "t" / "me"
    # exiftool: the grid shows the input beside generated faces, an age tile is wholly generated,
    # the input tile holds the user's pixels only (no source type), all three carry the record
    assert exif(grid)["XMP-iptcExt:DigitalSourceType"] == COMPOSITE
    assert exif(tiles / "face0_20.png")["XMP-iptcExt:DigitalSourceType"] == GENERATED
    assert "XMP-iptcExt:DigitalSourceType" not in exif(tiles / "face0_input.png")
    tags = exif(tiles / "face0_45.png")
    assert tags["XMP-agetool:Seed"] == 3 and tags["XMP-agetool:Noise"] == 0.1
    assert tags["XMP-agetool:SourceSHA256"] == sha256(photo)
    assert tags["XMP-agetool:Models"][0]["Sha256"] == sha256(weights)
    assert "own generator" in tags["XMP-xmpRights:UsageTerms"]
    # Pillow reads the same from the PNG and the JPEG
    for path in (grid, tiles / "face0_45.png"):
        desc = pillow_xmp(path)
        assert desc["Seed"] == "3" and desc["AgesAsked"]["Seq"]["li"] == ["20", "45"]
        assert desc["SourceSHA256"] == sha256(photo)
    assert pillow_xmp(grid)["DigitalSourceType"] == COMPOSITE
    # the record names the photo by its content only: none of the user's folders
    for path in (grid, *tiles.iterdir()):
        assert str(photo.parent).encode() not in path.read_bytes() and b"/in/" not in path.read_bytes()
    # the marking changes no pixel: the tiles are what the API renders
    from agetool.pipeline import AgingPipeline

    want = AgingPipeline.from_pretrained(model=weights, device="cpu")(photo, ages=[20, 45], aligned=True,
                                                                       mask=False, seed=3, noise=0.1)
    np.testing.assert_array_equal(np.asarray(Image.open(tiles / "face0_45.png")), want.faces[0].images[1])


def test_two_unsigned_runs_give_the_same_bytes(tmp_path, photo, weights):
    """The same command in two processes: the same grid, tiles and zip members, byte for byte."""
    outs = []
    for run in ("a", "b"):
        args = [sys.executable, "-m", "agetool", "age", str(photo), "--out", str(tmp_path / run / "g.png"),
                "--tiles", str(tmp_path / run / "t"), "--ages", "30,60", *map(str, common(weights))]
        done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append({p.relative_to(tmp_path / run).as_posix(): p.read_bytes()
                     for p in sorted((tmp_path / run).rglob("*")) if p.is_file()})
    assert len(outs[0]) == 4 and outs[0] == outs[1]
    # the web app's archive: deterministic members (no clock in the zip either)
    from agetool.pipeline import AgingPipeline

    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu")
    zips = [pipe(photo, ages=[30], aligned=True, mask=False).write_zip(tmp_path / f"{k}.zip").read_bytes()
            for k in "xy"]
    assert zips[0] == zips[1]
    import zipfile

    with zipfile.ZipFile(tmp_path / "x.zip") as z:
        member = z.read("face0_30.png")
    assert b"trainedAlgorithmicMedia" in member and b"iTXt" in member


def test_marking_keeps_pixels_and_decoders_happy():
    """PNG and JPEG with the XMP inserted decode to the very same pixels as without it."""
    from agetool.images import encode_image
    from agetool.provenance import GENERATED as KIND, Marking, read_xmp

    image = face_like(96, seed=2)
    for name in ("x.png", "x.jpg", "x.webp"):
        plain = np.asarray(Image.open(io.BytesIO(encode_image(image, name))).convert("RGB"))
        marked_bytes = encode_image(image, name, Marking(KIND))
        marked = np.asarray(Image.open(io.BytesIO(marked_bytes)).convert("RGB"))
        np.testing.assert_array_equal(plain, marked)
        assert b"trainedAlgorithmicMedia" in marked_bytes
    assert read_xmp is not None


@needs_exiftool
def test_paste_back_photo_with_a_visible_label(tmp_path, astronaut, weights, seeded_parser_file, capsys):
    out = tmp_path / "p.png"
    parser = ["--parser-weights", seeded_parser_file]
    code, _, err = cli(["age", astronaut, "--out", out, "--tiles", tmp_path / "t", "--ages", "60", "--paste-back",
                        "--label", "--weights", weights, *parser, *FAST], capsys)
    assert code == 0, err
    pasted = tmp_path / "t" / "astronaut256" / "face0_60.png"
    assert exif(out)["XMP-iptcExt:DigitalSourceType"] == COMPOSITE
    assert exif(pasted)["XMP-iptcExt:DigitalSourceType"] == COMPOSITE
    # every model that shaped the photo: the generator, the landmarks (alignment), the parser (blend mask)
    assert [m["Name"] for m in exif(pasted)["XMP-agetool:Models"]] == ["own generator", "dlib-landmarks68",
                                                                      "own face parser"]
    assert "dlib-landmarks68 (iBUG 300-W terms, non-commercial use only)" in exif(pasted)["XMP-xmpRights:UsageTerms"]
    # the mark: a dark box with light text in the bottom-right corner, the rest as without --label
    code, _, err = cli(["age", astronaut, "--tiles", tmp_path / "plain", "--out", tmp_path / "q.png", "--ages", "60",
                        "--paste-back", "--weights", weights, *parser, *FAST], capsys)
    assert code == 0, err
    a = np.asarray(Image.open(pasted)).astype(int)
    b = np.asarray(Image.open(tmp_path / "plain" / "astronaut256" / "face0_60.png")).astype(int)
    differs = np.abs(a - b).sum(axis=2) > 0
    ys, xs = np.nonzero(differs)
    assert differs.any() and ys.min() > 256 * 0.8 and xs.min() > 256 * 0.6  # only the corner
    corner = a[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert (corner.mean(axis=2) > 200).mean() > 0.05 and (corner.mean(axis=2) < 80).mean() > 0.3
    np.testing.assert_array_equal(a[:200], b[:200])


@needs_exiftool
def test_video_and_clip_mp4s_are_marked_and_still_play(tmp_path, photo, weights, capsys):
    import av

    mp4 = tmp_path / "v.mp4"
    code, _, err = cli(["video", photo, "--out", mp4, "--steps", "1", "--frames", tmp_path / "f", *common(weights)],
                       capsys)
    assert code == 0, err
    tags = exif(mp4)
    assert tags["XMP-iptcExt:DigitalSourceType"] == GENERATED and tags["XMP-agetool:Medium"] == "video"
    assert exif(tmp_path / "f" / "frame_00000.png")["XMP-iptcExt:DigitalSourceType"] == GENERATED
    with av.open(str(mp4)) as box:
        assert sum(1 for _ in box.decode(video=0)) == 6

    clip = astronaut_clip(tmp_path, 6)
    code, _, err = cli(["age", clip, "--ages", "60", "--out", tmp_path / "aged.mp4", "--label", "--weights", weights,
                        *FAST], capsys)
    assert code == 0, err
    tags = exif(tmp_path / "aged.mp4")
    assert tags["XMP-iptcExt:DigitalSourceType"] == COMPOSITE
    assert tags["XMP-agetool:Medium"] == "clip" and tags["XMP-agetool:SourceSHA256"] == sha256(clip)
    assert tags["XMP-agetool:AgesAsked"] == [60]
    from agetool.clip.media import probe

    info = probe(tmp_path / "aged.mp4")
    assert info.frames == 6 and info.audio == ["aac"]  # plays: every frame, the audio kept
    # --label: every frame has the mark in its bottom-right corner; the far corner is as it was
    from agetool.clip.media import read_frames

    for (aged, _), (source, _) in zip(read_frames(info), read_frames(probe(clip))):
        diff = np.abs(aged.astype(int) - source.astype(int)).mean(axis=2)
        assert diff[-22:, -55:].mean() > 25 and diff[:20, :30].mean() < 8
    from agetool.provenance import describe

    assert describe(tmp_path / "aged.mp4")["record"]["ages"] == ["60"]
    # Matroska has no XMP box: the same marking as tags, read by exiftool and inspect
    code, _, err = cli(["age", clip, "--ages", "60", "--out", tmp_path / "aged.mkv", "--weights", weights, *FAST],
                       capsys)
    assert code == 0, err
    assert exif(tmp_path / "aged.mkv")["Matroska:DigitalSourceType"] == COMPOSITE
    found = describe(tmp_path / "aged.mkv")
    assert found["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"
    assert found["record"]["source_sha256"] == sha256(clip)


def test_inspect_an_untouched_photo_and_a_marked_one(tmp_path, photo, weights, capsys):
    code, out, err = cli(["inspect", photo], capsys)
    assert code == 0, err
    assert "AI marking: none" in out and "no agetool run record" in out
    code, out, _ = cli(["inspect", photo, "--json"], capsys)
    assert code == 0 and json.loads(out)["marked"] is False and json.loads(out)["record"] is None
    assert cli(["age", photo, "--out", tmp_path / "g.png", "--ages", "30", *common(weights)], capsys)[0] == 0
    code, out, _ = cli(["inspect", tmp_path / "g.png", "--json"], capsys)
    found = json.loads(out)
    assert code == 0 and found["marked"] and found["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"
    assert found["record"]["faces"][0]["ages"] == [{"asked": "30", "years": 30.0}]
    code, out, _ = cli(["inspect", tmp_path / "g.png"], capsys)
    assert "compositeWithTrainedAlgorithmicMedia" in out and f"sha256: {sha256(weights)}" in out
    code, _, err = cli(["inspect", tmp_path / "missing.png"], capsys)
    assert code == 1 and err.strip().startswith("error:") and "no such file" in err


# ---------------------------------------------------------------- licences
def test_commercial_safe_refuses_the_lats_models_before_any_work(tmp_path, photo):
    def run(*args, env=None):
        return subprocess.run([sys.executable, "-m", "agetool", *map(str, args)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})

    done = run("age", photo, "--out", tmp_path / "g.png", "--model", "male", "--commercial-safe", "--offline")
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()
    assert len(line) == 1 and "lats-male (CC BY-NC-SA 4.0)" in line[0] and "deeplab-parser (CC BY-NC-SA 4.0)" in line[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "g.png").exists()
    # the same from the config file, with the models of the choice auto both named
    config = tmp_path / "config.toml"
    config.write_text("commercial-safe = true\n")
    done = run("video", photo, "--out", tmp_path / "v.mp4", "--aligned", "--no-mask", env={"AGETOOL_CONFIG": str(config)})
    assert done.returncode == 2 and "lats-male (CC BY-NC-SA 4.0)" in done.stderr and "lats-female" in done.stderr
    assert "genderage (insightface models: non-commercial research only)" in done.stderr
    assert not (tmp_path / "v.mp4").exists()


def test_usage_terms_name_every_licence(tmp_path, photo, weights):
    from agetool.provenance import ModelUse, Record

    record = Record("0", (ModelUse("lats-male", None, "CC BY-NC-SA 4.0", True), ModelUse("s3fd", None, "BSD-3-Clause")))
    assert "lats-male (CC BY-NC-SA 4.0)" in record.usage_terms and "s3fd (BSD-3-Clause)" in record.usage_terms
    assert "Non-commercial" in record.usage_terms


# ---------------------------------------------------------------- Content Credentials
def _certificates(folder: Path, *, days: int = 3650, start_days_ago: int = 1):
    """A test CA and an end-entity ES256 certificate it signed: (chain.pem, key.pem, other_key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=start_days_ago)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agetool test CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agetool tests")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agetool test signer"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "agetool tests")])
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(key.public_key())
            .serial_number(2).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain = folder / "chain.pem"
    chain.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    keys = []
    for k, file in ((key, "key.pem"), (ec.generate_private_key(ec.SECP256R1()), "other.pem")):
        (folder / file).write_bytes(k.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
        keys.append(folder / file)
    return chain, keys[0], keys[1]


def _reader(path: Path):
    import c2pa

    from agetool.credentials import MIME

    with open(path, "rb") as f:
        reader = c2pa.Reader(MIME[path.suffix.lower()], f)
        return reader.get_active_manifest(), reader.get_validation_results()


def _actions(manifest: dict) -> list[dict]:
    return [a for x in manifest["assertions"] if x["label"].startswith("c2pa.actions") for a in x["data"]["actions"]]


def test_signed_outputs_carry_content_credentials(tmp_path, astronaut, weights, seeded_parser_file, capsys):
    pytest.importorskip("c2pa", reason='signing needs the c2pa extra: pip install "agetool[c2pa]"')
    chain, key, _ = _certificates(tmp_path)
    sign = ["--sign", chain, "--sign-key", key]
    code, _, err = cli(["age", astronaut, "--out", tmp_path / "p.jpg", "--tiles", tmp_path / "t", "--ages", "70",
                        "--paste-back", *sign, "--weights", weights, "--parser-weights", seeded_parser_file, *FAST],
                       capsys)
    assert code == 0, err
    code, _, err = cli(["age", astronaut, "--out", tmp_path / "g.png", "--tiles", tmp_path / "faces", "--ages", "70",
                        *sign, "--weights", weights, *FAST], capsys)
    assert code == 0, err
    for path, first, kind in ((tmp_path / "p.jpg", "c2pa.opened", COMPOSITE),
                              (tmp_path / "t" / "astronaut256" / "face0_70.png", "c2pa.opened", COMPOSITE),
                              (tmp_path / "faces" / "astronaut256" / "face0_70.png", "c2pa.created", GENERATED)):
        manifest, results = _reader(path)
        actions = _actions(manifest)
        assert actions[0]["action"] == first and actions[-1]["digitalSourceType"] == kind, actions
        if first == "c2pa.opened":
            assert actions[-1]["action"] == "c2pa.edited"
            assert [i["relationship"] for i in manifest["ingredients"]] == ["parentOf"]
        assert manifest["ingredients"][0]["title"] == "astronaut256.png"
        run = next(x["data"] for x in manifest["assertions"] if x["label"] == "org.agetool.run")
        assert run["source_sha256"] == sha256(astronaut) and run["ages"] == ["70"]
        active = results["activeManifest"]
        assert "assertion.dataHash.match" in {s["code"] for s in active["success"]}
        assert [f["code"] for f in active["failure"]] == ["signingCredential.untrusted"]  # our own test CA
        # the XMP marking is still there beside the manifest
        assert pillow_xmp(path)["DigitalSourceType"] == kind
    # one pixel changed after signing: reported as not matching
    from agetool.images import encode_image

    signed = (tmp_path / "faces" / "astronaut256" / "face0_70.png").read_bytes()
    pixels = np.asarray(Image.open(io.BytesIO(signed))).copy()
    pixels[5, 5, 0] ^= 1
    changed = _swap_idat(signed, encode_image(pixels, "x.png"))
    (tmp_path / "changed.png").write_bytes(changed)
    _, results = _reader(tmp_path / "changed.png")
    assert "assertion.dataHash.mismatch" in {f["code"] for f in results["activeManifest"]["failure"]}
    code, out, _ = cli(["inspect", tmp_path / "changed.png"], capsys)
    assert code == 0 and "assertion.dataHash.mismatch" in out

    # a signed clip: an edit of the opened clip, the data hash valid
    clip = astronaut_clip(tmp_path, 4)
    code, _, err = cli(["age", clip, "--ages", "60", "--out", tmp_path / "aged.mp4", *sign, "--weights", weights,
                        *FAST], capsys)
    assert code == 0, err
    manifest, results = _reader(tmp_path / "aged.mp4")
    assert [a["action"] for a in _actions(manifest)] == ["c2pa.opened", "c2pa.edited"]
    assert [f["code"] for f in results["activeManifest"]["failure"]] == ["signingCredential.untrusted"]
    if shutil.which("exiftool"):
        assert exif(tmp_path / "aged.mp4")["XMP-iptcExt:DigitalSourceType"] == COMPOSITE


def _swap_idat(signed: bytes, other: bytes) -> bytes:
    """``signed`` with its image data chunks replaced by ``other``'s (every other chunk kept)."""
    import struct

    def chunks(data):
        pos, out = 8, []
        while pos < len(data):
            n = struct.unpack(">I", data[pos:pos + 4])[0]
            out.append((data[pos + 4:pos + 8], data[pos:pos + 12 + n]))
            pos += 12 + n
        return out

    new_idat = b"".join(c for k, c in chunks(other) if k == b"IDAT")
    out, done = [signed[:8]], False
    for kind, chunk in chunks(signed):
        if kind == b"IDAT":
            if not done:
                out.append(new_idat)
                done = True
            continue
        out.append(chunk)
    return b"".join(out)


@pytest.mark.parametrize("case, expected", [
    ("missing", "--sign-key"), ("other", "is not the one of the certificate"),
    ("expired", "the certificate expired"), ("garbage", "not a PEM certificate chain"), ("alone", "go together")])
def test_bad_certificate_or_key_is_one_line_before_any_work(tmp_path, photo, weights, case, expected):
    pytest.importorskip("c2pa", reason='signing needs the c2pa extra: pip install "agetool[c2pa]"')
    chain, key, other = _certificates(tmp_path, days=1 if case == "expired" else 3650,
                                      start_days_ago=5 if case == "expired" else 1)
    if case == "garbage":
        chain.write_text("not a certificate\n")
    args = {"missing": ["--sign", chain, "--sign-key", tmp_path / "nope.pem"], "other": ["--sign", chain, "--sign-key", other],
            "expired": ["--sign", chain, "--sign-key", key], "garbage": ["--sign", chain, "--sign-key", key],
            "alone": ["--sign", chain]}[case]
    done = subprocess.run([sys.executable, "-m", "agetool", "age", str(photo), "--out", str(tmp_path / "g.png"),
                           *map(str, args), *map(str, common(weights))], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------- the web app
@needs_exiftool
def test_web_app_grid_and_clip_are_marked(served, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from tests.serving import EXAMPLE

    client = gradio_client.Client(served.url, verbose=False)
    grid = Path(client.predict(gradio_client.handle_file(EXAMPLE), "5,45", api_name="/age"))
    tags = exif(grid)
    assert tags["XMP-iptcExt:DigitalSourceType"] == COMPOSITE and tags["XMP-agetool:AgesAsked"] == [5, 45]
    clip = Path(client.predict(gradio_client.handle_file(astronaut_clip(tmp_path)), 60, api_name="/clip"))
    tags = exif(clip)
    assert tags["XMP-iptcExt:DigitalSourceType"] == COMPOSITE and tags["XMP-agetool:Medium"] == "clip"
