"""`agetool dataset ffhq-aging` and the folder's care (attributions, takedown, stats) on a small FFHQ of
real photos: FFHQ's metadata JSON layout and the FFHQ-Aging labels CSV written here for the photos of
tests/fixtures and matplotlib's sample (see tests/fixtures/PROVENANCE.md), landmarks from dlib's
68-point model, sizes and MD5s computed, the photos served from 127.0.0.1."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agetool.errors import DatasetError, UsageError
from agetool.train.ffhq_meta import iter_entries, parse_ids
from tests.ffhq_fixture import LABEL_HEADER, entry as _entry, photos as _photos, png as _png, wild_path as _wild_path

# ----------------------------------------------------------------------------------------------
# the small FFHQ


# image number -> (photo, gender, age group, glasses, what happens)
PLAN = {
    3: ("astronaut", "female", "30-39", "None", "built"),
    17: ("tight", "female", "50-69", "Normal", "built"),
    1500: ("hopper", "female", "70-120", "None", "built"),
    42: ("hopper", "female", "50-69", "None", "corrupted"),   # served with one byte changed: md5 mismatch
    43: ("astronaut", "male", "3-6", "None", "missing"),       # not on the server
    44: ("astronaut", "male", "7-9", "None", "no landmarks"),  # its JSON entry has none
    45: ("astronaut", "male", "0-2", "Dark", "dropped"),       # the labels remove it: never fetched
    69001: ("big", "male", "20-29", "None", "built"),          # test split
}
BUILT = sorted(n for n, p in PLAN.items() if p[4] == "built")


class SmallFFHQ:
    def __init__(self, root: Path):
        from tests.weights_server import Server

        self.root = root
        photos = _photos()
        self.photos = photos
        self.wilds = root / "src"
        entries = {}
        self.server = Server()
        for n, (name, gender, group, glasses, fate) in PLAN.items():
            photo, lm = photos[name]
            png = _png(photo)
            entries[str(n)] = _entry(n, png, None if fate == "no landmarks" else lm, f"Author {n}")
            served = bytearray(png)
            if fate == "corrupted":
                served[len(served) // 2] ^= 0xFF
            if fate != "missing":
                path = self.wilds / _wild_path(n)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(bytes(served))
                self.server.state.files[f"/ffhq/{_wild_path(n)}"] = bytes(served)
        entries["46"] = _entry(46, _png(photos["hopper"][0]), photos["hopper"][1], "No Labels")  # no label row
        self.json = root / "ffhq-dataset-v2.json"
        self.json.write_text(json.dumps(dict(sorted(entries.items(), key=lambda kv: int(kv[0]))), indent=2))
        self.labels = root / "ffhq_aging_labels.csv"
        with open(self.labels, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(LABEL_HEADER)
            for n, (_, gender, group, glasses, _) in sorted(PLAN.items()):
                w.writerow([n, group, 0.95, gender, 0.99, 3.0, 1.0, -5.0, 10.0, 12.0, glasses])
        self.url = self.server.base + "/ffhq"

    def landmarks(self, n: int):
        return self.photos[PLAN[n][0]][1]

    def png(self, n: int) -> bytes:
        return (self.wilds / _wild_path(n)).read_bytes()


@pytest.fixture(scope="module")
def ffhq(tmp_path_factory):
    pytest.importorskip("dlib")
    small = SmallFFHQ(tmp_path_factory.mktemp("ffhq"))
    yield small
    small.server.close()


@pytest.fixture(scope="module")
def built(ffhq, tmp_path_factory):
    """A whole build from the mirror (three threads): (folder, result)."""
    out = tmp_path_factory.mktemp("built") / "out"
    return out, _build(ffhq, out, workers=3)


def tiny_parser():
    """A FaceParser with a seeded 1x1 convolution: the real preprocessing and label path, fast."""
    import torch

    from agetool.face.parse import FaceParser

    torch.manual_seed(5)
    net = torch.nn.Conv2d(3, 19, 1).eval()
    return FaceParser(net, torch.device("cpu"))


def _build(ffhq: SmallFFHQ, out: Path, **kwargs):
    from agetool.train.ffhq import build_ffhq_aging

    kwargs.setdefault("parser", tiny_parser())
    kwargs.setdefault("wilds", ffhq.url)
    return build_ffhq_aging(ffhq.json, ffhq.labels, kwargs.pop("wilds"), out, **kwargs)


def _layout(n: int) -> str:
    _, gender, group, _, _ = PLAN[n]
    phase = "train" if n < 69000 else "test"
    return f"{gender}s/{phase}{group}/{n:05d}.png"


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


# ----------------------------------------------------------------------------------------------
# the published alignment, reimplemented here from its arithmetic


def published_crop(png: bytes, landmarks, size: int) -> np.ndarray:
    """The FFHQ-Aging builder's crop as its steps read: an oriented square from float64 landmarks
    (half side max(2 |eye-eye|, 2.2 |eye-mouth|), centre eyes + 0.1 eye-mouth), the whole photo shrunk
    by an integer factor when the square is over twice the output, cropped with a border of a tenth,
    reflect-padded (padding blurred with sigma 0.02 side and faded to the median), sampled bilinearly
    at 4096 px, and a Lanczos resize."""
    from scipy.ndimage import gaussian_filter

    img = Image.open(io.BytesIO(png)).convert("RGB")
    p = np.array(landmarks, dtype=np.float64)
    left, right = p[36:42].mean(axis=0), p[42:48].mean(axis=0)
    eyes = (left + right) / 2
    across = right - left
    down = (p[48] + p[54]) / 2 - eyes
    ax = np.array([across[0] + down[1], across[1] - down[0]])
    ax = ax / np.hypot(ax[0], ax[1]) * max(2.0 * np.hypot(*across), 2.2 * np.hypot(*down))
    ay = np.array([-ax[1], ax[0]])
    centre = eyes + 0.1 * down
    quad = np.array([centre - ax - ay, centre - ax + ay, centre + ax + ay, centre + ax - ay])
    side = 2 * np.hypot(ax[0], ax[1])
    factor = int(np.floor(side / size / 2))
    if factor > 1:
        img = img.resize((int(np.rint(img.width / factor)), int(np.rint(img.height / factor))), Image.LANCZOS)
        quad, side = quad / factor, side / factor
    margin = max(int(np.rint(side / 10)), 3)

    def bounds():
        return (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
                int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))

    x0, y0, x1, y1 = bounds()
    box = (max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, img.width), min(y1 + margin, img.height))
    if box[2] - box[0] < img.width or box[3] - box[1] < img.height:
        img = img.crop(box)
        quad = quad - box[:2]
    x0, y0, x1, y1 = bounds()
    pads = [max(margin - x0, 0), max(margin - y0, 0), max(x1 - img.width + margin, 0), max(y1 - img.height + margin, 0)]
    if max(pads) > margin - 4:
        pl, pt, pr, pb = np.maximum(pads, int(np.rint(side * 0.3)))
        a = np.pad(np.asarray(img, dtype=np.float32), ((pt, pb), (pl, pr), (0, 0)), mode="reflect")
        h, w = a.shape[:2]
        ys, xs = np.arange(h, dtype=np.float32)[:, None, None], np.arange(w, dtype=np.float32)[None, :, None]
        outside = np.maximum(1 - np.minimum(xs / pl, (w - 1 - xs) / pr), 1 - np.minimum(ys / pt, (h - 1 - ys) / pb))
        sigma = side * 0.02
        a = a + (gaussian_filter(a, [sigma, sigma, 0]) - a) * np.clip(3 * outside + 1, 0, 1)
        a = a + (np.median(a, axis=(0, 1)) - a) * np.clip(outside, 0, 1)
        img = Image.fromarray(np.uint8(np.clip(np.rint(a), 0, 255)))
        quad = quad + [pl, pt]
    img = img.transform((4096, 4096), Image.QUAD, (quad + 0.5).flatten(), Image.BILINEAR)
    return np.asarray(img.resize((size, size), Image.LANCZOS))


# ----------------------------------------------------------------------------------------------
# tests


def test_metadata_is_read_as_a_stream(ffhq, monkeypatch):
    from agetool.train import ffhq_meta

    whole = json.loads(ffhq.json.read_text())
    monkeypatch.setattr(ffhq_meta, "CHUNK_CHARS", 7)  # every token split across chunks
    got = list(iter_entries(ffhq.json))
    assert [str(n) for n, _ in got] == list(whole) and all(e == whole[str(n)] for n, e in got)
    assert [n for n, _ in iter_entries(ffhq.json, parse_ids("17,44-1500"))] == [17, 44, 45, 46, 1500]


@pytest.mark.parametrize("text,where", [("[1, 2]", "expected '{'"), ('{"1": {"a": 1} "2": {}}', "expected ','"),
                                        ('{"x": {}}', "is not a number"), ('{"1": 5}', "not an object"),
                                        ('{"1": {"a": [1, 2}', "at character")])
def test_metadata_that_is_not_ffhqs(tmp_path, text, where):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    with pytest.raises(DatasetError, match=where):
        list(iter_entries(bad))


def test_id_lists():
    ids = parse_ids("0-999, 1500\n2000-2001 # two more")
    assert 0 in ids and 999 in ids and 1000 not in ids and 1500 in ids and 2001 in ids and len(ids) == 1003
    for bad in ("5-2", "x", "", "1-2-3"):
        with pytest.raises(UsageError):
            parse_ids(bad)


def test_build_from_a_mirror(ffhq, built):
    out, result = built
    failed = dict(result.failed)
    assert set(failed) == {42, 43, 44}
    assert "md5 mismatch" in failed[42] and "HTTP 404" in failed[43]
    assert "no landmarks" in failed[44]
    assert result.built == len(BUILT) and result.n_kept == len(BUILT)
    assert result.dropped["dark_glasses"] == 1
    assert not ffhq.server.state.requests("GET", f"/ffhq/{_wild_path(45)}")  # removed by its labels: not fetched
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == sorted([_layout(n) for n in BUILT] + [_layout(n).replace(f"/{n:05d}", f"/parsings/{n:05d}")
                                                            for n in BUILT])
    for n in BUILT:
        crop = np.asarray(Image.open(out / _layout(n)))
        want = published_crop(ffhq.png(n), ffhq.landmarks(n), 256).astype(int)
        assert crop.shape == (256, 256, 3) and np.abs(crop.astype(int) - want).max() <= 1, n
        labels = np.asarray(Image.open(out / _layout(n).replace(f"/{n:05d}", f"/parsings/{n:05d}")))
        assert labels.shape == (256, 256) and labels.dtype == np.uint8 and labels.max() < 19
        assert len(np.unique(labels)) > 1
    assert not (out / "in-the-wild-images").exists() and not (out / ".downloads").exists()
    rows = list(csv.DictReader(open(out / "ATTRIBUTION.csv")))
    assert [r["image_number"] for r in rows] == [f"{n:05d}" for n in BUILT]
    assert rows[0]["author"] == "Author 3" and rows[0]["license"] == "Public Domain Mark"
    record = json.loads((out / "BUILD.json").read_text())
    assert record["resolution"] == 256 and record["dropped"] == {"dark_glasses": 1} and record["failed"] == 3


def test_padding_and_shrink_branches_are_covered(ffhq):
    from agetool.face.align import align_face

    branches = {n: align_face(ffhq.photos[PLAN[n][0]][0], ffhq.landmarks(n), 256, transform_size=256,
                              variant="ffhq-aging").branches for n in BUILT}
    assert branches[17]["padding_applied"] and branches[69001]["shrink"] > 1
    assert not branches[3]["padding_applied"] and branches[3]["crop_applied"]


def test_an_interrupted_build_resumes_to_the_same_bytes(ffhq, built, tmp_path):
    part = tmp_path / "part"
    ids = parse_ids("3,17,1500")

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(ffhq, part, ids=ids, progress=stop_after_two, workers=1)
    assert len(list(part.rglob("parsings/*.png"))) == 2
    (part / _layout(3).replace("/00003", "/parsings/00003")).unlink()  # killed between the image and its labels
    again = _build(ffhq, part, ids=ids)
    assert again.finished_before == 1 and again.built == 2
    assert _files(part) == {k: v for k, v in _files(built[0]).items() if int(Path(k).stem) in ids}
    last = _build(ffhq, part, ids=ids)
    assert last.built == 0 and last.finished_before == 3


def test_folder_and_uri_sources_and_kept_wilds(ffhq, built, tmp_path):
    kept = tmp_path / "kept"
    _build(ffhq, kept, ids=parse_ids("3"), keep_wilds=True)
    assert (kept / _wild_path(3)).read_bytes() == ffhq.png(3)  # kept in the JSON's layout
    want = {k: v for k, v in _files(built[0]).items() if Path(k).stem == "00003"}
    assert {k: v for k, v in _files(kept).items() if "in-the-wild" not in k} == want
    for name, src in (("folder", ffhq.wilds), ("inner", ffhq.wilds / "in-the-wild-images"),
                      ("uri", ffhq.wilds.as_uri())):
        out = tmp_path / name
        result = _build(ffhq, out, ids=parse_ids("3"), wilds=src, keep_wilds=True)
        assert not result.failed, result.failed
        got = _files(out)
        if name == "uri":  # a URI is fetched and kept like a mirror; a folder is read where it is
            assert got.pop(_wild_path(3)) == ffhq.png(3)
        assert got == want, name
    assert sorted(p.name for p in ffhq.wilds.rglob("*.png")) == sorted(f"{n:05d}.png" for n in PLAN if PLAN[n][4] != "missing")


def test_takedown_attributions_and_stats(ffhq, built, tmp_path, capsys):
    import shutil

    from agetool.cli import run
    from agetool.train.data import scan
    from agetool.train.prepare import prepare_ffhq_aging

    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    (out / _wild_path(17)).parent.mkdir(parents=True)
    (out / _wild_path(17)).write_bytes(ffhq.png(17))  # as --keep-wilds leaves it
    copy = tmp_path / "copy"  # the images as they were, for prepare below
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("in-the-wild-images"))
    request = tmp_path / "removals.txt"
    request.write_text("# asked by the author\n17\n")
    assert run(["dataset", "takedown", str(out), "--ids", str(request)]) == 0
    assert "images: 1, parsings: 1, in-the-wild photos: 1, attribution rows: 1" in capsys.readouterr().err
    assert not (out / _layout(17)).exists() and not (out / _wild_path(17)).exists()
    assert "00017" in (out / "TAKEDOWN.txt").read_text()
    assert [r["image_number"] for r in csv.DictReader(open(out / "ATTRIBUTION.csv"))] == ["00003", "01500", "69001"]
    again = _build(ffhq, out, ids=parse_ids("0-2000"))
    assert again.built == 0 and again.dropped["taken_down"] == 1 and not (out / _layout(17)).exists()
    # prepare into the same folder from a copy that still holds the image: not copied back in
    report = prepare_ffhq_aging(copy, ffhq.labels, out)
    assert report.dropped["taken_down"] == 1 and not (out / _layout(17)).exists()
    # training: a copy of the image put back by hand is not trained on
    put_back = out / _layout(17)
    put_back.parent.mkdir(parents=True, exist_ok=True)
    (put_back.parent / "parsings").mkdir(exist_ok=True)
    other = out / "females" / "train0-2" / "00099.png"  # training needs two classes
    for target in (put_back, other):
        (target.parent / "parsings").mkdir(parents=True, exist_ok=True)
        target.write_bytes((out / _layout(3)).read_bytes())
        (target.parent / "parsings" / target.name).write_bytes(
            (out / _layout(3).replace("/00003", "/parsings/00003")).read_bytes())
    folders = scan(out / "females")
    assert [f.name for f in folders] == ["0-2", "30-39"] and all(put_back not in f.images for f in folders)
    other.unlink()
    put_back.unlink()

    assert run(["dataset", "stats", str(out)]) == 0  # removals from BUILD.json
    err = " ".join(re.sub(r"[\u2500-\u257f]", " ", capsys.readouterr().err).split())
    assert "all 1 2 3" in err and "dark glasses 1" in err and "BUILD.json" in err
    (out / "ATTRIBUTION.csv").unlink()
    assert run(["dataset", "attributions", str(out)]) == 0  # the JSON named in BUILD.json
    assert [r["image_number"] for r in csv.DictReader(open(out / "ATTRIBUTION.csv"))] == ["00003", "01500", "69001"]

    png = tmp_path / "stats.png"
    assert run(["dataset", "stats", str(out), "--out", str(png), "--labels", str(ffhq.labels)]) == 0
    err = " ".join(re.sub(r"[\u2500-\u257f]", " ", capsys.readouterr().err).split())  # table rules out
    assert "30-39 0 1 1" in err and "70-120 0 1 1" in err and "20-29 1 0 1" in err and "all 1 2 3" in err
    assert "dark glasses 1" in err and "taken down (listed in TAKEDOWN.txt) 1" in err
    with Image.open(png) as im:
        chart = np.asarray(im.convert("RGB"))
    from agetool.train.stats import FEMALE, MALE

    female, male = (chart == FEMALE).all(axis=2), (chart == MALE).all(axis=2)
    assert female.sum() > 1.5 * male.sum() and male.sum() > 2000  # two full-height bars against one


@pytest.mark.slow
def test_cli_builds_with_the_released_parser_layout(ffhq, tmp_path, seeded_parser_file, capsys):
    """The command as users run it, with a full-size parser file: failures listed, exit 1."""
    from agetool.cli import run

    out = tmp_path / "cli"
    code = run(["dataset", "ffhq-aging", "--json", str(ffhq.json), "--labels", str(ffhq.labels), "--wilds", ffhq.url,
                "--out", str(out), "--ids", "3,42", "--parser-weights", str(seeded_parser_file), "--device", "cpu",
                "--workers", "1"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "00042: md5 mismatch" in err and "1 image(s) failed" in err
    assert (out / _layout(3)).exists() and (out / _layout(3).replace("/00003", "/parsings/00003")).exists()
    assert not list(out.rglob("00042.png"))
    from agetool.face.parse import FaceParser

    crop = np.asarray(Image.open(out / _layout(3)))
    want = FaceParser.load(seeded_parser_file).parse(crop)
    assert (np.asarray(Image.open(out / _layout(3).replace("/00003", "/parsings/00003"))) == want).all()
    assert run(["dataset", "ffhq-aging", "--json", str(ffhq.json), "--labels", str(ffhq.labels), "--wilds", ffhq.url,
                "--out", str(out), "--resolution", "300"]) == 2


def test_training_carries_the_credits_and_honours_takedowns(tmp_path, capsys):
    from agetool.cli import run
    from tests.test_train import make_dataset

    root = tmp_path / "ffhq-aging"
    make_dataset(root / "males", per_class=2, size=64)
    (root / "ATTRIBUTION.csv").write_text("image_number,author,photo_url,license,license_url\n00000,A,u,l,lu\n")
    (root / "TAKEDOWN.txt").write_text("00001\n")
    out = tmp_path / "run"
    assert run(["train", "--data", str(root / "males"), "--out", str(out), "--workers", "0", "--device", "cpu",
                "--sample-every", "0", "--no-tensorboard", "--size", "64", "--ngf", "8", "--batch-size", "2",
                "--max-steps", "1"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert (out / "ATTRIBUTION.csv").read_bytes() == (root / "ATTRIBUTION.csv").read_bytes()
    assert "CC BY-NC-SA 4.0" in err and str(out / "ATTRIBUTION.csv") in err
    assert "images per class: 0-2: 1, 3-6: 1" in err  # 00001 of each class taken down


STOPPABLE = """
import os, sys, time
from agetool.face import parse
from tests.test_ffhq import tiny_parser

parser, calls = tiny_parser(), []
plain = parser.parse


def parse_once_then_wait(crop):
    calls.append(1)
    if len(calls) == 2 and os.environ.get("STALL"):
        time.sleep(600)  # stopped here by the test's signal
    return plain(crop)


parser.parse = parse_once_then_wait
parse.FaceParser.load = classmethod(lambda cls, *a, **k: parser)
sys.argv[0] = "agetool"
from agetool.cli import main
main()
"""


def test_a_build_stopped_by_a_signal_leaves_no_partial_files_and_resumes(ffhq, built, tmp_path):
    """The command in a subprocess (the parser a fast stand-in), stopped by SIGINT after its first image."""
    import os
    import signal
    import subprocess
    import sys

    from tests.helpers import ROOT, partials, wait_for

    out = tmp_path / "out"
    script = tmp_path / "stoppable.py"
    script.write_text(STOPPABLE)
    argv = [sys.executable, str(script), "dataset", "ffhq-aging", "--json", str(ffhq.json), "--labels",
            str(ffhq.labels), "--wilds", ffhq.url, "--out", str(out), "--workers", "1", "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), STALL="1")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def finished():  # parsings in place (a temporary sibling is hidden: .00003.<pid>-<random>.part.png)
        return [p for p in out.rglob("parsings/*.png") if not p.name.startswith(".")]

    wait_for(finished, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert len(finished()) == 1 and not partials(out)
    env.pop("STALL")
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "3 image(s) failed" in " ".join(again.stderr.split())
    assert "1 image(s) were already built" in again.stderr
    assert _files(out) == _files(built[0])


def test_streaming_memory_does_not_grow_with_the_file(tmp_path):
    """A 12 MB metadata file is read with a few MB of Python memory: one chunk and one entry at a time."""
    import tracemalloc

    from tests.ffhq_fixture import entry

    one = entry(0, None, [[float(i), float(i)] for i in range(68)], "Author")
    big = tmp_path / "big.json"
    with open(big, "w") as f:
        f.write("{" + ",\n".join(f'"{n}": {json.dumps(one)}' for n in range(6000)) + "}")
    assert big.stat().st_size > 10e6
    tracemalloc.start()
    try:
        seen = sum(1 for _ in iter_entries(big, parse_ids("10,5999")))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == 2 and peak < 8e6, peak  # json.load: about 96 MB
