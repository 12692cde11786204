"""Clips at the networks' cost: the stage profile, features reused for crops that did not change,
reading and writing overlapped with the networks, the encoder's bfloat16 fast path.

Clips are made with the ffmpeg of imageio-ffmpeg from the astronaut photo (a real face); the
generator is the tiny seeded one and the paste-back mask elliptical (no parser) unless a test is
about parsing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, cli, make_clip

FAST = ["--no-mask", "--device", "cpu", "--landmarks", "dlib"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """The astronaut at 256 px (face about 45 px wide)."""
    from PIL import Image

    p = tmp_path_factory.mktemp("clips") / "astronaut256.png"
    Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256), Image.LANCZOS).save(p)
    return p


def test_profile_names_each_stage_of_a_clip_with_its_share(tmp_path, photo, weights, capsys):
    src = make_clip(photo, tmp_path / "walk.mp4", 4)
    code, _, err = cli(["video", src, "--from", "20", "--to", "70", "--out", tmp_path / "old.mp4",
                        "--weights", weights, "--profile", *FAST], capsys)
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in err.splitlines() if line.strip() and "%" in line}
    for stage in ("detect", "encode", "decode", "paste", "write", "total"):
        assert stage in rows, err
    assert rows["total"][-1] == "100%"
    shares = [int(r[-1].rstrip("%")) for k, r in rows.items() if k != "total" and "(background)" not in " ".join(r)]
    assert 90 <= sum(shares) <= 110  # each stage's share of the run, rounded
