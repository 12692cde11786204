"""Where other libraries look for the model files agetool places for them.

face-alignment loads its networks (2D-FAN-4, S3FD) from torch's hub checkpoint folder
(``$TORCH_HOME/hub/checkpoints``) under the file names of its own download addresses.
"""

from __future__ import annotations

from pathlib import Path

#: the file names of face-alignment 1.5, used where the installed version can't be asked
FAN_FILES = {"fan-2d": "2DFAN4-11f355bf06.pth.tar", "s3fd": "s3fd-619a316812.pth"}


def fan_checkpoint_dir() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def fan_file_names() -> dict[str, str]:
    """The file names the installed face-alignment loads from ``fan_checkpoint_dir()`` (registry name -> file)."""
    from urllib.parse import urlparse

    try:
        from face_alignment import api
        from face_alignment.detection.sfd import sfd_detector
    except Exception:  # noqa: BLE001 - not installed or broken: the names of face-alignment 1.5
        return dict(FAN_FILES)
    urls = {"fan-2d": api.models_urls.get("2DFAN-4"), "s3fd": sfd_detector.models_urls.get("s3fd")}
    return {k: Path(urlparse(u).path).name if u else FAN_FILES[k] for k, u in urls.items()}


def fan_files_present() -> bool:
    folder = fan_checkpoint_dir()
    return all((folder / f).is_file() for f in fan_file_names().values())
