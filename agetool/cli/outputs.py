"""Where a command's outputs go: ``--out`` as a file or a folder, checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def is_folder(out: str) -> bool:
    """``--out`` names a folder: it ends in a path separator or is an existing folder."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def output_files(stems: list[str], out: str | None, several: bool, suffix: str) -> list[Path]:
    """The output file of each input, checked before any work: ``--out`` is a file with a known
    suffix for one input, else a folder that gets ``<stem><suffix>`` per input."""
    from agetool.errors import UsageError, arg
    from agetool.images import output_image

    if out is not None and not several and not is_folder(out):
        return [output_image("out", out)]
    folder = Path(out) if out is not None else Path(".")
    if out is not None and not is_folder(out):
        if folder.suffix.lower() in IMAGE_SUFFIXES or folder.exists():
            raise UsageError(f"{arg('out', out)}: with several inputs --out is a folder")
    return [folder / f"{stem}{suffix}" for stem in stems]
