"""Reading and writing network weights, never unpickling arbitrary objects.

Accepted generator files:
- the released flat state dict (``latest_net_g_running.pth``; tensors may be CUDA-tagged),
  read with ``torch.load(map_location="cpu", weights_only=True)``;
- the released zip (``males_model.zip`` / ``females_model.zip``), the member read in memory;
- agetool's format: safetensors with the network config as JSON in the header metadata
  (and optionally a ``<file>.json`` sidecar).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from agetool.errors import CheckpointError

GENERATOR_MEMBER = "latest_net_g_running.pth"
FORMAT_KEY = "agetool_format"
CONFIG_KEY = "agetool_config"


def _torch_load(data: bytes | Path, what: str) -> dict:
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        obj = _load_mapped(src) if isinstance(src, str) else None
        if obj is None:
            obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler refuses anything but tensors and plain containers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{what}: not a readable weights file ({first[:160]})",
                              hint="pass a released .pth, the released zip or an agetool .safetensors") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what}: expected a state dict, found {type(obj).__name__}")
    return obj


def _load_mapped(path: str):
    """A file's tensors memory-mapped (pages read on first use, not copied), or None where the file
    is in the legacy, non-zip format that cannot be mapped."""
    if not zipfile.is_zipfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_zip_member(path: Path, member_suffix: str) -> bytes:
    """Bytes of the first zip member whose name ends with ``member_suffix`` (never extracted to disk)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.replace("\\", "/").split("/")[-1] == member_suffix
                     or n.endswith("/" + member_suffix)]
            if not names:
                raise CheckpointError(f"{path}: the zip has no {member_suffix}",
                                      hint="is this the released males_model.zip / females_model.zip?")
            return zf.read(sorted(names, key=len)[0])
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path}: damaged zip file", hint="download it again") from None


def read_state_dict(path: str | os.PathLike, member: str = GENERATOR_MEMBER) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and metadata from a .pth, a zip (``member`` inside) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found", hint="check --weights")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if zipfile.is_zipfile(path) and suffix == ".zip":
        sd = _torch_load(read_zip_member(path, member), f"{path}:{member}")
        return _tensors_only(sd, path), {}
    sd = _torch_load(path, str(path))
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return _tensors_only(sd, path), {}


def _tensors_only(sd: dict, path: Path) -> dict[str, torch.Tensor]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {', '.join(map(str, bad[:3]))}")
    return {str(k): v for k, v in sd.items()}


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({str(e)[:120]})") from None
    config = {}
    if CONFIG_KEY in meta:
        config = json.loads(meta[CONFIG_KEY])
    else:
        sidecar = path.with_suffix(path.suffix + ".json")
        if sidecar.is_file():
            config = json.loads(sidecar.read_text())
    return sd, {"format": meta.get(FORMAT_KEY), "config": config}


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Strict load with one clear error naming the first missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shaped = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shaped:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        if shaped:
            parts.append(f"{len(shaped)} wrongly shaped (first: {shaped[0]})")
        raise CheckpointError(f"{what} does not fit the network: " + "; ".join(parts),
                              hint="is it a LATS generator checkpoint?")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return module


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """A ready, eval-mode Generator from any accepted file."""
    from agetool.nn.generator import Generator, GeneratorConfig

    sd, meta = read_state_dict(path)
    sd = strip_prefix(sd)
    cfg = GeneratorConfig.from_dict(meta.get("config", {}).get("generator", meta.get("config", {})))
    g = Generator(cfg)
    load_into(g, sd, str(path))
    return g.eval().to(device)


def save_safetensors(path: str | os.PathLike, sd: dict[str, torch.Tensor], fmt: str, config: dict) -> Path:
    """Write tensors + config atomically as agetool's safetensors format."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    try:
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: fmt, CONFIG_KEY: json.dumps(config)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_generator(path: str | os.PathLike, generator) -> Path:
    return save_safetensors(path, generator.state_dict(), "generator", {"generator": generator.cfg.to_dict()})
