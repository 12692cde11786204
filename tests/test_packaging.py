"""Dependencies: one OpenCV distribution, the one face-alignment requires."""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
OPENCV = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_one_opencv_the_one_face_alignment_requires():
    wanted = [_name(r) for r in metadata.requires("face-alignment") or [] if _name(r) in OPENCV]
    assert len(wanted) == 1
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [_name(r) for r in declared if _name(r) in OPENCV] == wanted
    assert [d for d in OPENCV if _installed(d)] == wanted
