"""The training objective reproduces the reference's eight loss values on its fixture batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agetool.nn.discriminator import Discriminator
from agetool.nn.generator import Generator
from agetool.testing import seeded_state_dict
from agetool.train.losses import Codes, make_codes, objectives

NAMES = {  # reference name -> ours
    "loss_D_real": "D_real", "loss_D_fake": "D_fake", "loss_G_Adv": "G_adv", "loss_G_Cycle": "G_cyc",
    "loss_G_Rec": "G_rec", "loss_G_identity_reconst": "G_id", "loss_G_age_reconst": "G_age",
    "loss_D_total": "D", "loss_G_total": "G",
}


@pytest.fixture(scope="module")
def computed(reference_dir, load_npz):
    z = load_npz("train_losses_256.npz")
    meta = json.loads((reference_dir / "train_losses_256.json").read_text())
    g, d = Generator(), Discriminator()
    g.load_state_dict(seeded_state_dict(g, int(z["seed_G"]), "generator"))
    d.load_state_dict(seeded_state_dict(d, int(z["seed_D"]), "discriminator"))
    g.requires_grad_(False), d.requires_grad_(False)  # values only: no graph through the weights (12 GB less)
    codes = Codes(gen=torch.from_numpy(z["gen_conditions"]), cyc=torch.from_numpy(z["cyc_conditions"]),
                  orig=torch.from_numpy(z["orig_conditions"]))
    class_a, class_b = torch.from_numpy(z["class_A"]), torch.from_numpy(z["class_B"])
    out = objectives(g, d, torch.from_numpy(z["reals"]), codes, class_a, class_b)
    return z, meta, out


@pytest.mark.slow
@pytest.mark.parametrize("ref,ours", sorted(NAMES.items()))
def test_loss_values(computed, ref, ours):
    z, meta, out = computed
    assert out[ours].item() == pytest.approx(meta["losses"][ref], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_r1(computed):
    z, meta, out = computed
    assert out["D_r1"].item() == pytest.approx(meta["losses"]["loss_D_reg"], rel=1e-3)
    got, want = out["r1_grad"].detach().numpy(), z["r1_grad"]
    assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-2


@pytest.mark.slow
def test_intermediates(computed):
    z, _, out = computed
    for ours, ref in [("gen", "gen_images"), ("rec", "rec_images"), ("cyc", "cyc_images"),
                      ("age_real", "orig_age_features"), ("age_fake", "fake_age_features"),
                      ("real_logits", "real_disc_out")]:
        err = np.abs(out[ours].detach().numpy() - z[ref]).max()
        assert err < 1e-4, f"{ours}: max abs error {err:.3g}"


def test_codes_layout_and_cycle_order():
    g = torch.Generator().manual_seed(0)
    codes = make_codes(torch.tensor([1, 4]), torch.tensor([3, 0]), 0.0, 50, 6, generator=g)
    block = lambda c: codes.gen.new_zeros(300).index_fill_(0, torch.arange(50 * c, 50 * c + 50), 1.0)
    assert torch.equal(codes.gen, torch.stack([block(3), block(0), block(1), block(4)]))
    assert torch.equal(codes.orig, torch.stack([block(1), block(4), block(3), block(0)]))
    assert torch.equal(codes.cyc, codes.orig)  # noiseless: cycling returns to the source class
    noisy = make_codes(torch.tensor([1, 4]), torch.tensor([3, 0]), 0.2, 50, 6,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy.cyc, torch.cat([noisy.gen[2:], noisy.gen[:2]]))
    assert 0.15 < (noisy.gen - codes.gen).std().item() < 0.25
