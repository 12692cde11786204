"""The training objective reproduces the reference's eight loss values on its fixture batch, computed by
the trainer's own update (the discriminator step, then the generator step) with frozen weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agetool.ages import AGE_CLASSES
from agetool.testing import seeded_state_dict
from agetool.train.losses import (Codes, discriminator_real_losses, generator_pass, make_codes)

NAMES = {  # reference name -> ours
    "loss_D_real": "D_real", "loss_D_fake": "D_fake", "loss_G_Adv": "G_adv", "loss_G_Cycle": "G_cyc",
    "loss_G_Rec": "G_rec", "loss_G_identity_reconst": "G_id", "loss_G_age_reconst": "G_age",
    "loss_D_total": "D", "loss_G_total": "G",
}


def _data_folder(root: Path, images: np.ndarray, classes: np.ndarray) -> Path:
    """The batch's own images as a training folder (the trainer needs one to start)."""
    from agetool.images import write_image

    for i, (image, k) in enumerate(zip(images, classes)):
        write_image(root / f"train{AGE_CLASSES[int(k)]}" / f"{i:05d}.png", image)
    return root


@pytest.fixture(scope="module")
def reference(reference_dir, load_npz):
    z = load_npz("train_losses_256.npz")
    meta = json.loads((reference_dir / "train_losses_256.json").read_text())
    codes = Codes(gen=torch.from_numpy(z["gen_conditions"]), cyc=torch.from_numpy(z["cyc_conditions"]),
                  orig=torch.from_numpy(z["orig_conditions"]))
    return z, meta, codes


@pytest.fixture(scope="module")
def trainer(reference, tmp_path_factory):
    """A 256 px trainer with the reference's seeded G and D and a learning rate of 0: its update computes
    every loss with the weights the reference used, in the order and precision it trains with."""
    from agetool.train.config import TrainConfig
    from agetool.train.trainer import Trainer

    z, _, _ = reference
    classes = np.concatenate([z["class_A"], z["class_B"]])
    data = _data_folder(tmp_path_factory.mktemp("batch"), z["reals_uint8"], classes)
    cfg = TrainConfig(data=str(data), out=str(tmp_path_factory.mktemp("run")), size=256, ngf=64, ndf=64,
                      batch_size=1, lr=0.0, mask=False, flip=False, workers=0, device="cpu",
                      grad_checkpoint=True)  # same values; a fraction of the memory at 256 px
    t = Trainer(cfg)
    t.g.load_state_dict(seeded_state_dict(t.g, int(z["seed_G"]), "generator"))
    t.d.load_state_dict(seeded_state_dict(t.d, int(z["seed_D"]), "discriminator"))
    return t


@pytest.fixture(scope="module")
def step_terms(reference, trainer):
    z, _, codes = reference
    reals = torch.from_numpy(z["reals"])
    class_a, class_b = torch.from_numpy(z["class_A"]), torch.from_numpy(z["class_B"])
    return {k: v.item() for k, v in trainer.update(reals, class_a, class_b, codes, codes).items()}


@pytest.mark.slow
@pytest.mark.parametrize("ref,ours", sorted(NAMES.items()))
def test_loss_values_of_the_trainers_update(reference, step_terms, ref, ours):
    _, meta, _ = reference
    assert step_terms[ours] == pytest.approx(meta["losses"][ref], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_r1_of_the_trainers_update(reference, step_terms):
    _, meta, _ = reference
    assert step_terms["D_r1"] == pytest.approx(meta["losses"]["loss_D_reg"], rel=1e-3)


@pytest.mark.slow
def test_r1_gradient_and_intermediates(reference, trainer):
    z, _, codes = reference
    reals = torch.from_numpy(z["reals"])
    class_a, class_b = torch.from_numpy(z["class_A"]), torch.from_numpy(z["class_B"])
    reals_d = reals.clone().requires_grad_(True)
    real_logits = trainer.d(reals_d)
    _, _, grad = discriminator_real_losses(real_logits, reals_d, class_a, class_b, create_graph=False)
    want = z["r1_grad"]
    assert np.linalg.norm(grad.numpy() - want) / np.linalg.norm(want) < 1e-2
    with torch.no_grad():
        out = generator_pass(trainer.g, reals, codes)
    got = {"gen": out.gen, "rec": out.rec, "cyc": out.cyc, "age_real": out.age_real, "age_fake": out.age_fake,
           "real_logits": real_logits}
    for ours, ref in [("gen", "gen_images"), ("rec", "rec_images"), ("cyc", "cyc_images"),
                      ("age_real", "orig_age_features"), ("age_fake", "fake_age_features"),
                      ("real_logits", "real_disc_out")]:
        err = np.abs(got[ours].detach().numpy() - z[ref]).max()
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


def test_codes_follow_the_generators_class_layout():
    """A generator with 4 classes of 10 entries gets 40-entry codes from the trainer's step."""
    from agetool.ages import class_codes

    codes = make_codes(torch.tensor([0, 3]), torch.tensor([2, 1]), 0.0, 10, 4)
    assert codes.gen.shape == (4, 40)
    assert torch.equal(codes.gen, class_codes([2, 1, 0, 3], 0.0, n_classes=4, code_per_class=10))
