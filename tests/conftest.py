"""Shared fixtures. Reference data lives in ../shared/reference beside the checkout; tests that need it
skip cleanly where it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("AGETOOL_REFERENCE", ROOT.parent / "shared" / "reference"))


def _need_reference() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference fixtures not found at {REFERENCE}")
    return REFERENCE


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need_reference()


@pytest.fixture(scope="session")
def load_npz(reference_dir):
    cache: dict[str, dict] = {}

    def load(name: str) -> dict:
        if name not in cache:
            with np.load(reference_dir / name) as z:
                cache[name] = {k: z[k] for k in z.files}
        return cache[name]

    return load


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory):
    """Never touch the user's caches or the network."""
    base = tmp_path_factory.mktemp("env")
    mp = pytest.MonkeyPatch()
    mp.setenv("AGETOOL_CACHE", str(base / "agetool-cache"))
    mp.setenv("HF_HOME", str(base / "hf"))
    mp.setenv("TORCH_HOME", str(base / "torch"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session")
def seeded_parser_state():
    """The reference's seeded face-parser weights (seed 3): a full-size DeepLabV3 state dict."""
    from agetool.nn.parser import DeepLabV3
    from agetool.nn.seeded import seeded_state_dict

    return seeded_state_dict(DeepLabV3(), 3, "parser")


@pytest.fixture(scope="session")
def seeded_parser_file(tmp_path_factory, seeded_parser_state) -> Path:
    """Those weights in the released ``deeplab_model.pth`` layout (``state_dict``, ``module.`` keys)."""
    import torch

    path = tmp_path_factory.mktemp("parser") / "deeplab_model.pth"
    sd = {f"module.{k}": v for k, v in seeded_parser_state.items()}
    sd["module.bn1.num_batches_tracked"] = torch.tensor(7)  # the reference loader drops keys with "tracked"
    torch.save({"state_dict": sd, "epoch": 12}, path)
    return path


@pytest.fixture(scope="session")
def seeded_parser(seeded_parser_file):
    """A loaded FaceParser with the seeded weights (shared: a full-size forward takes seconds)."""
    from agetool.face.parse import FaceParser

    return FaceParser.load(seeded_parser_file, device="cpu")
