"""Super-resolution of aged faces: the Real-ESRGAN architectures read from their state dicts, tiled
inference, tile sizes, where the upscaled face lands in the photo, memory, offline errors, eval."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from agetool.errors import CheckpointError, OfflineError, UsageError
from agetool.loading import Loading
from agetool.nn.realesrgan import RRDBNet, SRVGGNetCompact, recognise
from agetool.upscale import Upscaler, fit_face, load_upscaler, native_side
from tests.helpers import ROOT, cli, face_like


def _save(path, net, wrapper="params"):
    torch.save({wrapper: net.state_dict()}, path)
    return path


def _nearest_net(scale: int = 4) -> SRVGGNetCompact:
    """The real compact architecture (small) whose last convolution is zero: the nearest upsampling."""
    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=4, num_conv=1, upscale=scale)
    with torch.no_grad():
        net.body[-1].weight.zero_()
        net.body[-1].bias.zero_()
    return net


@pytest.fixture(scope="module")
def small_sr(tmp_path_factory):
    torch.manual_seed(1)
    return _save(tmp_path_factory.mktemp("sr") / "small_x4.pth", SRVGGNetCompact(num_feat=8, num_conv=2))


@pytest.mark.parametrize("arch, kwargs, wrapper, side", [
    ("SRVGGNetCompact", dict(num_feat=64, num_conv=32, upscale=4), "params", 4),  # realesr-general-x4v3
    ("RRDBNet", dict(scale=4, num_feat=64, num_block=23, num_grow_ch=32), "params_ema", 4),  # RealESRGAN_x4plus
    ("RRDBNet", dict(scale=2, num_feat=64, num_block=23, num_grow_ch=32), "params_ema", 2),  # RealESRGAN_x2plus
])
def test_released_architectures_are_recognised_from_their_tensors(tmp_path, arch, kwargs, wrapper, side):
    torch.manual_seed(0)
    net = {"SRVGGNetCompact": SRVGGNetCompact, "RRDBNet": RRDBNet}[arch](**kwargs).eval()
    sd = net.state_dict()
    if arch == "RRDBNet":  # the key layout of the released files
        assert {"conv_first.weight", "body.22.rdb3.conv5.bias", "conv_up2.weight", "conv_hr.weight"} <= set(sd)
        assert sum(v.numel() for v in sd.values()) == (16_697_987 if side == 4 else 16_703_171)
    else:
        assert "body.66.weight" in sd and sd["body.1.weight"].shape == (64,)  # 34 convolutions, PReLU between
        assert sum(v.numel() for v in sd.values()) == 1_213_296
    assert recognise(sd) == (arch, {"num_in_ch": 3, "num_out_ch": 3, **kwargs})
    if arch == "RRDBNet":  # the same layout, smaller, for the forward pass (23 full-size blocks: ~10 s)
        torch.manual_seed(0)
        net = RRDBNet(scale=side, num_feat=16, num_block=2, num_grow_ch=8).eval()
    reports = []
    up = load_upscaler(_save(tmp_path / "net.pth", net, wrapper), loading=Loading(report=reports.append))
    assert (up.architecture, up.scale) == (arch, side)
    assert reports == [f"upscale: net.pth ({arch}, x{side})"]
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(up.network(x), net(x))  # every tensor in its place
    image = (np.random.default_rng(0).random((24, 20, 3)) * 255).astype(np.uint8)
    assert up.upscale(image).shape == (24 * side, 20 * side, 3)
    if side == 4:
        assert up.upscale(image, 2).shape == (48, 40, 3)  # x4 network, then area averaging
    else:
        with pytest.raises(UsageError, match="enlarges only x2"):
            up.upscale(image, 4)


def test_tiles_give_the_same_image_as_one_pass(small_sr):
    up = load_upscaler(small_sr)
    image = face_like(160, seed=3)[:150]
    whole = up.upscale(image)
    up.tile, up.tile_pad = 48, 8  # wider context than the network's 4 px receptive field
    seen = []
    hook = up.network.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[2:])))
    tiled = up.upscale(image)
    hook.remove()
    assert tiled.shape == whole.shape == (600, 640, 3)
    assert np.abs(tiled.astype(int) - whole).max() <= 1  # float rounding of another convolution size
    assert len(seen) == 16 and max(max(s) for s in seen) <= 48 + 2 * 8


@pytest.mark.parametrize("factor", [2, 4])
def test_age_writes_512_and_1024_px_tiles(tmp_path, crop, weights, small_sr, capsys, factor):
    code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--weights", weights, "--device", "cpu",
                        "--ages", "5,60", "--upscale", factor, "--upscale-weights", small_sr,
                        "--tiles", tmp_path / "tiles", "--out", tmp_path / "grid.png"], capsys)
    assert code == 0, err
    assert "upscale: small_x4.pth (SRVGGNetCompact, x4)" in err
    side = 256 * factor
    for name in ("face0_input", "face0_5", "face0_60"):
        assert Image.open(tmp_path / "tiles" / "crop" / f"{name}.png").size == (side, side)
    assert Image.open(tmp_path / "grid.png").size == (3 * side, side)


def test_without_upscale_nothing_changes(tmp_path, crop, weights, small_sr):
    from agetool import AgingPipeline

    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu", upscale_weights=small_sr)
    plain = pipe(crop, ages=[30], aligned=True, mask=False)
    same = pipe(crop, ages=[30], aligned=True, mask=False, upscale=1)
    assert plain.faces[0].images.shape == (1, 256, 256, 3) and "upscaler" not in pipe.models._loaded
    up = pipe(crop, ages=[30], aligned=True, mask=False, upscale=2)
    assert np.array_equal(plain.faces[0].images, same.faces[0].images)
    assert up.faces[0].images.shape == (1, 512, 512, 3)
    # the upscaled face is the 256 px one, sharper: shrunk back it is close to it
    back = np.asarray(Image.fromarray(up.faces[0].images[0]).resize((256, 256), Image.BOX)).astype(int)
    assert np.abs(back - plain.faces[0].images[0]).mean() < 12
    with pytest.raises(UsageError, match="expected 2 or 4"):
        pipe(crop, aligned=True, mask=False, upscale=3)


def test_video_frames_are_upscaled(crop, weights, small_sr):
    from agetool import AgingPipeline

    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu", upscale_weights=small_sr)
    frames = list(pipe.frames(crop, steps=1, aligned=True, mask=False, upscale=2))
    assert len(frames) == 6 and all(f.shape == (512, 512, 3) for f in frames)


# ------------------------------------------------------------------------ paste-back geometry

def _blob(size: int = 256, centre=(150.3, 97.6), sigma: float = 6.0, height: float = 160) -> np.ndarray:
    """A mid-gray tile with a bright Gaussian spot at ``centre`` (x, y in crop pixel indices)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    spot = height * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2)) / 160
    return np.repeat(np.clip(np.rint(90 + 160 * spot), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def _centroid(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    gain = np.clip(after.astype(np.float64).mean(2) - before.astype(np.float64).mean(2), 0, None)
    gain[gain < 0.25 * gain.max()] = 0  # the spot, not the gray around it
    yy, xx = np.mgrid[:gain.shape[0], :gain.shape[1]]
    return np.array([(xx * gain).sum(), (yy * gain).sum()]) / gain.sum()


@pytest.mark.parametrize("zoom", [1, 4])  # the face 174 px in the photo (below 256), then 695 px
def test_the_upscaled_face_lands_where_the_256_px_one_did(reference_dir, zoom):
    from agetool.face.align import align_face
    from agetool.face.detect import DetectedFace
    from agetool.models import Models
    from agetool.pipeline import AgingPipeline
    from agetool.results import EncodedPhoto, Face

    photo = Image.open(reference_dir / "align_case0_input.png").convert("RGB")
    landmarks = np.asarray(json.loads((reference_dir / "align_case0_landmarks.json").read_text())["landmarks"])
    photo = np.asarray(photo.resize((photo.width * zoom, photo.height * zoom), Image.BICUBIC))
    landmarks = (landmarks + 0.5) * zoom - 0.5
    al = align_face(photo, landmarks)
    box = (*landmarks.min(0), *landmarks.max(0))
    face = Face(0, al.image, al.image, parsing=np.ones((256, 256), np.uint8), alignment=al, model="male",
                detection=DetectedFace(1.0, box, landmarks.astype(np.float32)))
    enc = EncodedPhoto(photo, "photo", [face])
    pipe = AgingPipeline(Models())
    tile, gray = _blob(), _blob(height=0)
    upscaler = Upscaler(_nearest_net(), 4, "nearest", "SRVGGNetCompact")
    up, up_gray = upscaler.upscale(tile), upscaler.upscale(gray)
    assert up.shape == (1024, 1024, 3)
    native = native_side(al)
    assert fit_face(up, al).shape[0] == max(256, int(np.ceil(native)))
    # the spot's centre in the photo: where pasting the tile with the spot differs from the plain one
    at_256 = _centroid(pipe.paste_back(enc, [gray]), pipe.paste_back(enc, [tile]))
    at_1024 = _centroid(pipe.paste_back(enc, [up_gray]), pipe.paste_back(enc, [up]))
    expected = al.crop_to_photo(np.array([[150.3, 97.6]]), 256)[0]
    assert np.linalg.norm(at_256 - expected) < 1.0
    assert np.linalg.norm(at_1024 - at_256) < 1.0
    # frame by frame (clips): the tile and its held blend mask, both at the pasted size
    from agetool.face.paste import paste_back, paste_mask
    from agetool.upscale import fit_paste

    held = paste_mask(face.parsing, 256)
    tile_p, mask_p = fit_paste(up, al, held)
    gray_p, _ = fit_paste(up_gray, al, held)
    assert tile_p.shape[:2] == mask_p.shape == (max(256, int(np.ceil(native))),) * 2
    at_clip = _centroid(paste_back(photo, gray_p, al, mask=mask_p), paste_back(photo, tile_p, al, mask=mask_p))
    assert np.linalg.norm(at_clip - at_256) < 1.0


# ------------------------------------------------------------------------ memory

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from agetool.nn.realesrgan import SRVGGNetCompact
    from agetool.upscale import Upscaler
    torch.set_num_threads(1)

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    net = SRVGGNetCompact(num_feat=16, num_conv=2).eval()
    image = (np.random.default_rng(0).random((1536, 1536, 3)) * 255).astype(np.uint8)
    up = Upscaler(net, 4, "small", "SRVGGNetCompact", tile=int(sys.argv[1]), tile_pad=8)
    up.upscale(image[:64, :64])  # allocator warm-up
    before = rss("VmRSS:")
    out = up.upscale(image)
    print(json.dumps({"extra": rss("VmHWM:") - before, "output": out.nbytes, "shape": list(out.shape)}))
""")


def test_x4_on_a_large_photo_stays_in_a_fixed_memory_budget():
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, "128"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["shape"] == [6144, 6144, 3]
    # the 113 MB output plus one tile's activations (~10 MB); one untiled pass would hold the 1536 px
    # input's 48-channel output layer alone (450 MB), and a float copy of the output (450 MB)
    assert got["extra"] < got["output"] + 80e6, got


# ------------------------------------------------------------------------ weights and errors

def test_registry_lists_the_released_real_esrgan_files():
    from agetool import weights
    from agetool.weights.core import ways_out

    names = {"realesr-general-x4v3": "realesr-general-x4v3.pth", "realesrgan-x4plus": "RealESRGAN_x4plus.pth",
             "realesrgan-x2plus": "RealESRGAN_x2plus.pth"}
    for name, filename in names.items():
        art = weights.get(name)
        assert art.kind == "upscaler" and art.license == "BSD-3-Clause" and not art.has_checksum  # pinned on first use
        assert art.filename == filename and art.sources[0].url.startswith("https://github.com/xinntao/Real-ESRGAN/")
        assert "upscale_weights" in ways_out(art)


def test_offline_without_the_file_names_weights_import_and_the_flag(crop, weights, capsys):
    code, _, err = cli(["age", crop, "--aligned", "--no-mask", "--weights", weights, "--device", "cpu",
                        "--upscale", "4", "--offline"], capsys)
    assert code == 1
    line = err.strip().splitlines()[-1]  # before any work: every missing file in one line
    assert "realesr-general-x4v3 (super-resolution model, or --upscale-weights FILE; from https://" in line
    assert "agetool weights import FILE --as NAME" in line and "Traceback" not in err
    from agetool.weights import fetch

    with pytest.raises(OfflineError) as e:  # the library's own call names the same ways out
        fetch("realesr-general-x4v3", offline=True)
    assert "agetool weights import FILE --as realesr-general-x4v3" in str(e.value)
    assert "upscale_weights='FILE'" in str(e.value)


def test_unknown_architectures_need_spandrel(tmp_path, monkeypatch):
    path = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(3, 3, 3, 3)}, path)
    monkeypatch.setitem(sys.modules, "spandrel", None)  # not installed
    with pytest.raises(CheckpointError, match=r'pip install "agetool\[upscale\]"'):
        load_upscaler(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_upscaler(tmp_path / "missing.pth")


def test_spandrel_models_are_taken_through_its_descriptor(tmp_path, monkeypatch):
    import types

    calls = []

    class Descriptor:  # what spandrel's loader returns: the module and what it knows of it
        def __init__(self, sd):
            calls.append(sorted(sd))
            self.model, self.scale = _nearest_net(2), 2
            self.input_channels = self.output_channels = 3
            self.size_requirements = types.SimpleNamespace(multiple_of=4)
            self.architecture = types.SimpleNamespace(name="SomeNet")

    fake = types.SimpleNamespace(ModelLoader=lambda: types.SimpleNamespace(load_from_state_dict=Descriptor))
    monkeypatch.setitem(sys.modules, "spandrel", fake)
    path = tmp_path / "other.pth"
    torch.save({"head.weight": torch.zeros(3, 3, 3, 3)}, path)
    up = load_upscaler(path)
    assert calls == [["head.weight"]] and (up.architecture, up.scale, up.multiple) == ("SomeNet", 2, 4)
    image = face_like(30, seed=1)  # 30 px: padded to 32 for the network, cropped back
    assert np.array_equal(up.upscale(image), image.repeat(2, 0).repeat(2, 1))


# ------------------------------------------------------------------------ eval

def test_eval_reports_the_upscaled_outputs_next_to_the_256_px_ones(tmp_path, weights, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("matplotlib")
    from tests.seeding import arcface_standin, onnx_linear_model

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(face_like(256, seed=0)).save(photos / "p0.png")
    age_weight = np.zeros((3, 3))
    age_weight[:, 2] = 0.5 / 3  # input (pixel - 127.5) / 128: estimated age = 50 + 50 x mean brightness in [-1, 1]
    age = onnx_linear_model(tmp_path / "age.onnx", 96, age_weight, [0.0, 1.0, 0.5])
    ident = arcface_standin(tmp_path / "arcface.onnx", constant=True)
    darker = _nearest_net()
    with torch.no_grad():
        darker.body[-1].bias.fill_(-0.2)  # the upscaled outputs come out 51 levels darker
    sr = _save(tmp_path / "darker.pth", darker)
    code, out, err = cli(["eval", photos, "--out", tmp_path / "eval", "--aligned", "--no-mask", "--device", "cpu",
                          "--weights", weights, "--age-model", age, "--identity-model", ident, "--ages", "30,60",
                          "--upscale", "4", "--upscale-weights", sr], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["settings"]["upscale"] == 4
    for o in report["faces"][0]["outputs"]:
        assert o["upscaled"]["identity"] == pytest.approx(1.0, abs=1e-6)
        assert o["estimated_age"] - o["upscaled"]["estimated_age"] > 10  # measured on the upscaled tiles
    for row in report["summary"]:
        assert row["upscaled_estimated_age_mean"] < row["estimated_age_mean"] - 10
    assert "estimated age x4" in (tmp_path / "eval" / "report.md").read_text()
    assert all(f"{row['upscaled_estimated_age_mean']:.1f}" in out for row in report["summary"])  # printed too


# ------------------------------------------------------------------------ web app

def test_the_web_app_upscales_grids_and_tile_archives(tmp_path, crop, weights, small_sr):
    import zipfile

    from agetool import AgingPipeline
    from agetool.serve.studio import Session, Studio

    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu", upscale_weights=small_sr)
    session = Session(pipe.encode(crop, aligned=True, mask=False), pipe.model, False, name="crop")
    studio = Studio(pipe, tmp_path / "work", upscale=2)
    png, archive = studio.grid(session, ages=[30])
    assert Image.open(png).size == (2 * 512, 512)
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["face0_30.png", "face0_input.png"]
        for name in z.namelist():
            assert Image.open(z.open(name)).size == (512, 512)
    assert studio.at_age(session, 0, 30.0).shape == (256, 256, 3)  # the slider stays at 256 px
    with pytest.raises(UsageError):
        Studio(pipe, tmp_path / "work", upscale=3)


def test_eval_offline_names_the_missing_upscaler_before_any_work(tmp_path, weights, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(face_like(256, seed=0)).save(photos / "p0.png")
    code, _, err = cli(["eval", photos, "--out", tmp_path / "eval", "--aligned", "--no-mask", "--device", "cpu",
                        "--weights", weights, "--identity-model", "dlib", "--upscale", "4", "--offline"], capsys)
    assert code == 1
    line = err.strip().splitlines()[-1]
    assert "realesr-general-x4v3 (super-resolution model, or --upscale-weights FILE; from https://" in line
    # the age model is not at hand either: an eval with its generator given measures identity only, and says so
    assert "genderage" not in line and "measuring identity only" in err
    assert not (tmp_path / "eval" / "report.json").exists()
