"""Hostile super-resolution files: loaded with the generator's limits and checked before any work,
each refused in one line naming the file, in bounded memory (the command in a process of its own)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.helpers import face_like, one_line_message, run_measured

GB = 1e9


def _deflated(src: Path, dst: Path) -> Path:
    """``src`` (a torch zip written under ``skip_data``: records declared, bytes left out) with every
    record deflated and each storage record filled with zeros: a small file that inflates to its full
    size, made without ever holding the storages in memory."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zout:
        for info in zin.infolist():
            with zout.open(info.filename, "w", force_zip64=True) as w:
                if "/data/" in info.filename:
                    left, zeros = info.file_size, bytes(1 << 24)
                    while left:
                        w.write(zeros[:min(left, len(zeros))])
                        left -= min(left, len(zeros))
                else:
                    w.write(zin.read(info))
    return dst


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A released-layout SRVGGNetCompact file ({"params": ...}) whose first convolution holds 1.5 GB
    of zeros, deflated to about 1.5 MB."""
    from torch.serialization import skip_data

    folder = tmp_path_factory.mktemp("bomb")
    plain = folder / "plain.pth"
    with skip_data():  # the layout only: the 1.5 GB tensor is never touched (its pages never allocated)
        torch.save({"params": {"body.0.weight": torch.empty(375_000_000), "body.1.weight": torch.empty(64)}}, plain)
    bomb = _deflated(plain, folder / "realesr-bomb.pth")
    plain.unlink()
    return bomb


def _srvgg(path: Path, feat: int, scale: int, convs: int = 2) -> Path:
    from agetool.nn.realesrgan import SRVGGNetCompact

    torch.manual_seed(0)
    torch.save({"params": SRVGGNetCompact(num_feat=feat, num_conv=convs, upscale=scale).state_dict()}, path)
    return path


def _run(tmp_path, sr: Path, weights, factor: str = "4"):
    crop = tmp_path / "crop.png"
    Image.fromarray(face_like()).save(crop)
    out = tmp_path / "grid.png"
    code, err, peak = run_measured(["age", crop, "--aligned", "--no-mask", "--upscale", factor, "--upscale-weights", sr,
                                    "--weights", weights, "--device", "cpu", "--out", out], tmp_path)
    return code, err, peak, out


def test_a_deflated_bomb_is_refused_without_inflating_it(tmp_path, bomb, released_generator_file):
    assert bomb.stat().st_size < 20_000_000
    code, err, peak, out = _run(tmp_path, bomb, released_generator_file)
    line = one_line_message(err)
    assert code == 1 and str(bomb) in line, err
    assert peak < 3 * GB, f"{peak / GB:.2f} GB"
    assert not out.exists()


def test_a_network_over_x4_is_refused_before_any_work(tmp_path, released_generator_file):
    sr = _srvgg(tmp_path / "x8.pth", 8, 8)
    code, err, peak, out = _run(tmp_path, sr, released_generator_file)
    line = one_line_message(err)
    assert code == 1 and "x8.pth" in line and "x8 network" in line, err
    assert peak < 3 * GB and not out.exists()


def test_a_network_larger_than_any_released_is_refused(tmp_path, weights):
    sr = _srvgg(tmp_path / "wide.pth", 512, 4, convs=1)
    code, err, _, out = _run(tmp_path, sr, weights)
    line = one_line_message(err)
    assert code == 1 and "wide.pth" in line and "num_feat 512" in line, err
    assert not out.exists()


def test_malformed_tensors_are_one_line_naming_the_file(tmp_path, weights):
    bad = tmp_path / "zero.pth"  # RRDBNet names, an empty last convolution (a division by its width)
    torch.save({"params_ema": {"conv_first.weight": torch.zeros(64, 3, 3, 3), "conv_last.weight": torch.zeros(0, 64, 3, 3),
                               "body.0.rdb1.conv1.weight": torch.zeros(32, 64, 3, 3)}}, bad)
    odd = tmp_path / "flat.pth"  # SRVGG names with one-dimensional convolutions (an index out of range)
    torch.save({"params": {"body.0.weight": torch.zeros(3), "body.1.weight": torch.zeros(3),
                           "body.2.weight": torch.zeros(3)}}, odd)
    for sr in (bad, odd):
        code, err, _, out = _run(tmp_path, sr, weights)
        line = one_line_message(err)
        assert code == 1 and sr.name in line and "internal error" not in line, err
        assert not out.exists()


def test_a_hint_never_suggests_a_refused_factor(tmp_path, weights):
    sr = _srvgg(tmp_path / "x3.pth", 8, 3)
    code, err, _, out = _run(tmp_path, sr, weights, "4")
    line = one_line_message(err)
    assert code == 2 and "enlarges only x3" in line and "--upscale 3" not in line and "--upscale 2" in line, err
