"""The generator and discriminator reproduce the reference implementation on its golden fixtures."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from agetool.nn.discriminator import Discriminator
from agetool.nn.generator import Generator
from tests.seeding import seeded_state_dict

ATOL = 1e-4


@pytest.fixture(scope="module")
def generator(reference_dir):
    g = Generator().eval()
    g.load_state_dict(seeded_state_dict(g, 1, "generator"), strict=True)
    return g


def close(actual: torch.Tensor, expected: np.ndarray, atol: float = ATOL) -> None:
    a = actual.detach().cpu().numpy()
    assert a.shape == expected.shape
    err = np.abs(a - expected).max()
    assert err <= atol, f"max abs error {err:.3g} > {atol}"


@pytest.mark.parametrize("name,network", [("generator", Generator), ("discriminator", Discriminator)])
def test_state_dict_matches_manifest_and_fill_checksums(reference_dir, name, network):
    manifest = json.loads((reference_dir / f"{name}_state_dict.json").read_text())
    checks = json.loads((reference_dir / "weight_fill_checksums.json").read_text())
    seed = checks["seeds"][name]
    net = network()
    sd = seeded_state_dict(net, seed, name)
    assert [e["key"] for e in manifest["entries"]] == list(sd)
    n_params = sum(v.numel() for k, v in sd.items() if k in dict(net.named_parameters()))
    assert n_params == manifest["total_parameter_count"]
    with np.load(reference_dir / f"{name}_buffers.npz") as bufs:
        for key in bufs.files:
            np.testing.assert_array_equal(sd[key].numpy(), bufs[key])
    for key, want in checks["networks"][name].items():
        got = sd[key].contiguous().numpy().astype("<f4")
        assert hashlib.sha256(got.tobytes()).hexdigest() == want["sha256"], key


@pytest.mark.parametrize("case", ["gen_case0_deploy_traverse_64", "gen_case1_noisycond_64",
                                  "gen_case3_deploy_256"])
def test_deploy(generator, load_npz, case):
    z = load_npz(f"{case}.npz")
    x, cond = torch.from_numpy(z["x"]), torch.from_numpy(z["cond"])
    with torch.inference_mode():
        feats = generator.encode(x)
        close(feats, z["id_features"])
        close(generator.encode_age(x), z["age_features"])
        w = generator.latent(cond)
        close(w, z["latents"])
        out = generator.decode(feats.expand(cond.shape[0], -1, -1, -1), w)
    close(out, z["out_deploy"])


def test_input_uint8_mapping(load_npz):
    from agetool.images import to_tensor

    z = load_npz("gen_case0_deploy_traverse_64.npz")
    np.testing.assert_array_equal(to_tensor(z["x_uint8"][0]).numpy(), z["x"])


@pytest.mark.parametrize("grouped", [False, True])
def test_debug_intermediates(generator, load_npz, grouped):
    z = load_npz("gen_case0_deploy_traverse_64.npz")
    k = int(z["dbg_class"])
    generator.set_grouped_modconv(grouped)
    try:
        with torch.inference_mode():
            x = generator.encode(torch.from_numpy(z["x"]))
            w = generator.latent(torch.from_numpy(z["cond"][k : k + 1]))
            for name in generator.decoder.block_names:
                block = getattr(generator.decoder, name)
                close(block.conv0.style(w), z[f"dbg_style_{name}_conv0"])
                close(block.conv1.style(w), z[f"dbg_style_{name}_conv1"])
                x = block(x, w)
                close(x, z[f"dbg_out_{name}"], atol=2e-4)
            pre = generator.decoder.conv_img[0](x)
            close(pre, z["dbg_pre_tanh"])
            close(torch.tanh(pre), z["dbg_out"])
    finally:
        generator.set_grouped_modconv(False)


@pytest.mark.parametrize("case,suffix", [("gen_case0_deploy_traverse_64", "main"),
                                         ("gen_case1_noisycond_64", "second")])
def test_traversal(generator, load_npz, case, suffix):
    from agetool.ages import traversal_latents
    from agetool.engine import AgingEngine

    z = load_npz(f"{case}.npz")
    alphas = torch.from_numpy(z[f"alphas_{suffix}"])
    with torch.inference_mode():
        w = generator.latent(torch.from_numpy(z["cond"]))
        lat = traversal_latents(w, alphas)
        close(lat, z[f"latents_traverse_{suffix}"])
        engine = AgingEngine(generator, torch.device("cpu"), chunk=4)
        feats = engine.encode(torch.from_numpy(z["x"]))
        frames = torch.cat(list(engine.decode_stream(feats[0], lat)))
    close(frames, z[f"out_traverse_{suffix}"])


def test_alpha_schedule_matches_reference(load_npz):
    from agetool.ages import reference_alphas

    for case, suffix in [("gen_case0_deploy_traverse_64", "main"), ("gen_case1_noisycond_64", "second")]:
        z = load_npz(f"{case}.npz")
        np.testing.assert_array_equal(reference_alphas(float(z[f"interp_step_{suffix}"])).numpy(),
                                      z[f"alphas_{suffix}"])


@pytest.mark.parametrize("grouped", [False, True])
def test_batch_nondeploy_and_cycle(generator, load_npz, grouped):
    z = load_npz("gen_case2_batch_nondeploy_64.npz")
    from agetool.ages import class_codes

    clean = class_codes(torch.from_numpy(z["target_classes"]), noise=0.0)
    np.testing.assert_array_equal(clean.numpy(), z["cond"])
    generator.set_grouped_modconv(grouped)
    try:
        with torch.inference_mode():
            x = torch.from_numpy(z["x"])
            close(generator.encode(x), z["id_features"])
            close(generator.encode_age(x), z["age_features"])
            close(generator.latent(torch.from_numpy(z["cond"])), z["latents"])
            out = generator.infer(x, torch.from_numpy(z["cond"]))
            close(out, z["out"])
            close(generator.infer(out, torch.from_numpy(z["cond_cyc"])), z["out_cyc"])
    finally:
        generator.set_grouped_modconv(False)


def test_cli_tiles_match_reference(reference_dir, load_npz, tmp_path, capsys):
    """`agetool age --aligned --no-mask --noise 0 --weights released.pth --tiles` equals the reference."""
    from PIL import Image

    from agetool.images import to_uint8
    from tests.helpers import cli

    z = load_npz("gen_case3_deploy_256.npz")
    weights = tmp_path / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), weights)
    tiles = tmp_path / "tiles"
    code, _, err = cli(["age", reference_dir / "align_case0_out256.png", "--aligned", "--no-mask", "--noise", "0",
                        "--weights", weights, "--tiles", tiles, "--out", tmp_path / "g.png", "--device", "cpu"],
                       capsys)
    assert code == 0, err
    want = to_uint8(torch.from_numpy(z["out_deploy"]))
    from agetool.ages import AGE_CLASSES

    for k, label in enumerate(AGE_CLASSES):
        got = np.asarray(Image.open(tiles / "align_case0_out256" / f"face0_{label}.png")).astype(int)
        diff = np.abs(got - want[k])
        assert diff.max() <= 3 and (diff <= 1).mean() >= 0.999, label
