"""The full-size training step of the loss parity test, run in a process of its own.

A 256 px reference step (discriminator and generator update, R1, the intermediates) holds about 5.5 GB
at its peak; in the test process it would add to whatever earlier tests left, so the parity tests
run it here and read the numbers back:

    python -m tests.train_losses_worker OUT.json
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from agetool.ages import AGE_CLASSES
from tests.seeding import seeded_state_dict
from agetool.train.losses import Codes
from tests import reference

INTERMEDIATES = [("gen", "gen_images"), ("rec", "rec_images"), ("cyc", "cyc_images"),
                 ("age_real", "orig_age_features"), ("age_fake", "fake_age_features"),
                 ("real_logits", "real_disc_out")]


def _data_folder(root: Path, images: np.ndarray, classes: np.ndarray) -> Path:
    """The batch's own images as a training folder (the trainer needs one to start)."""
    from agetool.images import write_image

    for i, (image, k) in enumerate(zip(images, classes)):
        write_image(root / f"train{AGE_CLASSES[int(k)]}" / f"{i:05d}.png", image)
    return root


def compute(work: Path) -> dict:
    """The trainer's update on the reference batch (learning rate 0: the reference's weights throughout):
    its loss terms, the relative error of the R1 gradient and the max error of each intermediate."""
    from agetool.train.config import TrainConfig
    from agetool.train.trainer import Trainer

    with np.load(reference.path("train_losses_256.npz")) as f:
        z = {k: f[k] for k in f.files}
    codes = Codes(gen=torch.from_numpy(z["gen_conditions"]), cyc=torch.from_numpy(z["cyc_conditions"]),
                  orig=torch.from_numpy(z["orig_conditions"]))
    classes = np.concatenate([z["class_A"], z["class_B"]])
    data = _data_folder(work / "batch", z["reals_uint8"], classes)
    cfg = TrainConfig(data=str(data), out=str(work / "run"), size=256, ngf=64, ndf=64, batch_size=1, lr=0.0,
                      mask=False, flip=False, workers=0, device="cpu",
                      grad_checkpoint=True)  # same values; a fraction of the memory at 256 px
    t = Trainer(cfg)
    t.g.load_state_dict(seeded_state_dict(t.g, int(z["seed_G"]), "generator"))
    t.d.load_state_dict(seeded_state_dict(t.d, int(z["seed_D"]), "discriminator"))
    reals = torch.from_numpy(z["reals"])
    class_a, class_b = torch.from_numpy(z["class_A"]), torch.from_numpy(z["class_B"])
    got: dict = {}  # what the update computed on the way: one pass, read twice
    terms = {k: v.item() for k, v in t.update(reals, class_a, class_b, codes, codes, probe=got).items()}
    grad = got["r1_grad"]
    r1 = float(np.linalg.norm(grad.numpy() - z["r1_grad"]) / np.linalg.norm(z["r1_grad"]))
    errors = {ours: float(np.abs(got[ours].numpy() - z[ref]).max()) for ours, ref in INTERMEDIATES}
    return {"terms": terms, "r1_grad_error": r1, "intermediate_errors": errors}


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        result = compute(Path(tmp))
    Path(sys.argv[1]).write_text(json.dumps(result))
