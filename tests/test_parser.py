"""DeepLabV3 face parser: key layout, seeded weights, parity with the reference, checkpoint loading, `agetool parse`."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from agetool.face.mask import mask_background
from agetool.face.parse import FaceParser, labels_from_logits, preprocess, save_parser
from agetool.loading import Loading
from agetool.nn.parser import read_parser_state_dict
from agetool.nn.parser import DeepLabV3
from tests.helpers import cli


@pytest.fixture(scope="module")
def crop(reference_dir) -> np.ndarray:
    return np.asarray(Image.open(reference_dir / "align_case0_out256.png").convert("RGB"))


@pytest.fixture(scope="module")
def logits513(seeded_parser, crop):
    """The one full-size forward of this module: scores [19, 513, 513] of the reference crop."""
    return seeded_parser.logits(crop)


def test_state_dict_layout_matches_release(reference_dir):
    manifest = json.loads((reference_dir / "deeplab_state_dict.json").read_text())
    sd = DeepLabV3().state_dict()
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(e["key"], e["shape"]) for e in manifest["entries"]]
    assert sum(v.numel() for v in sd.values()) == manifest["total_parameter_count"]


def test_seeded_fill_matches_reference_checksums(reference_dir, seeded_parser_state):
    sums = json.loads((reference_dir / "weight_fill_checksums.json").read_text())["networks"]["deeplab"]
    for key, value in seeded_parser_state.items():
        digest = hashlib.sha256(value.contiguous().numpy().astype("<f4").tobytes()).hexdigest()
        assert digest == sums[key]["sha256"], key


def test_logits_match_reference_at_129(seeded_parser, load_npz):
    ref = load_npz("deeplab_case0_129.npz")
    with torch.inference_mode():
        got = seeded_parser.network(torch.from_numpy(ref["x"]))[0].numpy()
    np.testing.assert_allclose(got, ref["logits"][0], rtol=0, atol=0.05)
    pred = got.argmax(0)
    assert (pred[ref["top2_margin"][0] > 0.05] == ref["argmax"][0][ref["top2_margin"][0] > 0.05]).all()


def test_preprocessing_matches_reference(crop, load_npz):
    ref = load_npz("deeplab_pipeline_513.npz")
    x = preprocess(crop)
    assert x.shape == (1, 3, 513, 513) and x.dtype == torch.float32
    resized = np.asarray(Image.fromarray(crop).resize((513, 513), Image.BILINEAR))
    np.testing.assert_array_equal(resized, ref["resized513_uint8"])


def test_pipeline_513_matches_reference(logits513, load_npz):
    ref = load_npz("deeplab_pipeline_513.npz")
    pred = logits513.argmax(0).numpy()
    margin = ref["top2_margin513"].astype(np.float32)
    assert (pred == ref["argmax513"]).mean() >= 0.995
    assert (pred[margin > 0.05] == ref["argmax513"][margin > 0.05]).all()


def test_masked_network_input_matches_reference(logits513, load_npz, crop, reference_dir):
    ref = load_npz("deeplab_pipeline_513.npz")
    labels = labels_from_logits(logits513, (256, 256))
    assert labels.dtype == np.uint8 and labels.shape == (256, 256)
    assert (labels == ref["seg_map256"]).mean() >= 0.995
    masked = mask_background(crop, labels)
    png = np.asarray(Image.open(reference_dir / "deeplab_pipeline_masked256.png").convert("RGB"))
    assert (np.abs(masked.astype(int) - png) == 0).mean() >= 0.995
    x = (torch.from_numpy(masked).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
    assert (np.abs(x.numpy() - ref["network_input"][0]) < 1e-6).mean() >= 0.995


def test_released_layout_and_safetensors_read_the_same(tmp_path, seeded_parser_state, seeded_parser_file,
                                                        seeded_parser):
    """The released layout (``state_dict``, ``module.`` keys, a ``*tracked*`` counter) and agetool's format."""
    own = save_parser(tmp_path / "parser.safetensors", seeded_parser_state)
    released = read_parser_state_dict(seeded_parser_file)
    converted = read_parser_state_dict(own)
    assert list(released) == list(seeded_parser_state) and set(converted) == set(seeded_parser_state)
    loaded = seeded_parser.network.state_dict()  # FaceParser.load read the released file
    for key, value in seeded_parser_state.items():
        assert torch.equal(released[key], value) and torch.equal(converted[key], value), key
        assert torch.equal(loaded[key], value), key


def test_wrong_checkpoint_is_a_clear_error(tmp_path, capsys, reference_dir):
    bad = tmp_path / "generator.pth"
    torch.save({"conv.weight": torch.zeros(3)}, bad)
    code, _, err = cli(["parse", reference_dir / "align_case0_out256.png", "--aligned", "--out",
                        tmp_path / "l.png", "--parser-weights", bad, "--device", "cpu"], capsys)
    assert code == 1
    assert "does not fit" in err and "Traceback" not in err


def test_parse_command_aligned(tmp_path, capsys, reference_dir, load_npz, seeded_parser_file):
    out, overlay = tmp_path / "labels.png", tmp_path / "overlay.png"
    code, _, err = cli(["parse", reference_dir / "align_case0_out256.png", "--aligned", "--out", out,
                        "--parser-weights", seeded_parser_file, "--overlay", overlay, "--device", "cpu"], capsys)
    assert code == 0, err
    labels = np.asarray(Image.open(out))
    assert labels.dtype == np.uint8 and labels.shape == (256, 256)
    assert (labels == load_npz("deeplab_pipeline_513.npz")["seg_map256"]).mean() >= 0.995
    assert np.asarray(Image.open(overlay)).shape == (256, 256, 3)


def test_parser_load_offline_without_weights_is_a_clear_error():
    from agetool.errors import AgetoolError

    with pytest.raises(AgetoolError) as e:
        FaceParser.load(None, loading=Loading(offline=True))
    assert e.value.exit_code == 1 and "deeplab-parser" in str(e.value)


def test_prepared_weights_are_cached_and_give_the_same_logits(seeded_parser_file, tmp_path, monkeypatch):
    """The standardized weights are kept after the first load, read back while the file is unchanged,
    give the same logits to the bit, and are rebuilt when the file changes or the cache is damaged."""
    import os
    import shutil

    from agetool.face.parse import load_parser_network, prepared_path

    monkeypatch.setenv("AGETOOL_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "deeplab_model.pth"
    shutil.copyfile(seeded_parser_file, source)
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(0))

    def logits(**kw):
        with torch.inference_mode():
            return load_parser_network(source, **kw)(x)

    fresh = logits(prepared=False)
    assert not prepared_path(source).exists()
    assert torch.equal(logits(), fresh)  # builds the cache file
    cached = prepared_path(source)
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    assert torch.equal(logits(), fresh)  # reads it
    assert cached.stat().st_mtime_ns == stamp
    net = load_parser_network(source)
    with pytest.raises(RuntimeError):
        net.freeze(False)  # standardized weights can't be unstandardized

    os.utime(source, ns=(stamp + 10**9, stamp + 10**9))  # the source changed: prepared again
    assert torch.equal(logits(), fresh)
    assert cached.stat().st_mtime_ns != stamp
    cached.write_bytes(b"not safetensors")  # damaged: prepared again, same numbers
    assert torch.equal(logits(), fresh)
    assert cached.stat().st_size > 1000
