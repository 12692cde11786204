"""The training objective reproduces the reference's eight loss values on its fixture batch, computed by
the trainer's own update (the discriminator step, then the generator step) with frozen weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agetool.train.losses import make_codes

ROOT = Path(__file__).resolve().parents[1]

NAMES = {  # reference name -> ours
    "loss_D_real": "D_real", "loss_D_fake": "D_fake", "loss_G_Adv": "G_adv", "loss_G_Cycle": "G_cyc",
    "loss_G_Rec": "G_rec", "loss_G_identity_reconst": "G_id", "loss_G_age_reconst": "G_age",
    "loss_D_total": "D", "loss_G_total": "G",
}


@pytest.fixture(scope="module")
def reference(reference_dir):
    meta = json.loads((reference_dir / "train_losses_256.json").read_text())
    reference_dir / "train_losses_256.npz"  # present, or the test skips for want of it
    return meta


@pytest.fixture(scope="module")
def step(reference, tmp_path_factory):
    """The trainer's update on the reference batch, computed in a process of its own (it peaks at ~5.5 GB;
    see tests/train_losses_worker.py)."""
    out = tmp_path_factory.mktemp("losses") / "step.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "tests.train_losses_worker", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("ref,ours", sorted(NAMES.items()))
def test_loss_values_of_the_trainers_update(reference, step, ref, ours):
    assert step["terms"][ours] == pytest.approx(reference["losses"][ref], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_r1_of_the_trainers_update(reference, step):
    assert step["terms"]["D_r1"] == pytest.approx(reference["losses"]["loss_D_reg"], rel=1e-3)


@pytest.mark.slow
def test_r1_gradient_and_intermediates(step):
    assert step["r1_grad_error"] < 1e-2
    for name, err in step["intermediate_errors"].items():
        assert err < 1e-4, f"{name}: max abs error {err:.3g}"


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
