"""Reading and writing network weights, never unpickling arbitrary objects.

Accepted generator files:
- the released flat state dict (``latest_net_g_running.pth``; tensors may be CUDA-tagged),
  read with ``torch.load(map_location="cpu", weights_only=True)``;
- the released zip (``males_model.zip`` / ``females_model.zip``), the member streamed to a
  temporary file and its tensors memory-mapped from there, so the member is never held in memory
  (never more than its declared size, and never more than ``MAX_MEMBER_BYTES``);
- agetool's format: safetensors with the network config as JSON in the header metadata
  (and optionally a ``<file>.json`` sidecar).

Conversion of released generators to agetool's format, and the generator configuration read from
weight shapes (:func:`generator_config_from_state_dict`), live here too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from agetool.errors import CheckpointError, arg, detail
from agetool.files import new_file_mode, replacing, write_text

GENERATOR_MEMBER = "latest_net_g_running.pth"
#: The largest zip member ever read: a few times the largest known checkpoint (464 MB).
MAX_MEMBER_BYTES = 2 << 30
#: The first convolution of the identity encoder: its output channels are the generator's ``ngf``.
NGF_KEY = "id_encoder.encoder.1.conv.weight_orig"
FORMAT_KEY = "agetool_format"
CONFIG_KEY = "agetool_config"


def _torch_load(data: bytes | Path, what: str,
                hint: str = "pass a released .pth, the released zip or an agetool .safetensors") -> dict:
    src = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    try:
        obj = _load_mapped(src) if isinstance(src, str) else None
        if obj is None:
            obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler refuses anything but tensors and plain containers
        raise CheckpointError(f"{what}: not a readable weights file ({detail(e)})", hint=hint) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{what}: expected a state dict, found {type(obj).__name__}")
    return obj


def _load_mapped(path: str):
    """A file's tensors memory-mapped (pages read on first use, not copied), or None where the file
    is in the legacy, non-zip format that cannot be mapped."""
    if not zipfile.is_zipfile(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


@contextlib.contextmanager
def extracted_member(path: Path, member_suffix: str, *, limit: int | None = None) -> Iterator[Path]:
    """The first zip member whose name ends with ``member_suffix``, streamed in chunks to a
    temporary file that is removed when the block ends (tensors mapped from it stay valid).

    At most its declared size, itself at most ``limit`` (default ``MAX_MEMBER_BYTES``), is read: a
    member that declares or inflates to more is refused without being read whole."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="agetool-member-", suffix=".pth")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_member(path, member_suffix, min(limit or MAX_MEMBER_BYTES, MAX_MEMBER_BYTES), out)
        yield tmp
    finally:
        try:
            tmp.unlink()
        except OSError:  # pragma: no cover - a platform that keeps mapped files
            pass


def _copy_member(path: Path, member_suffix: str, limit: int, out) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if member_matches(i.filename, member_suffix)]
            if not infos:
                raise CheckpointError(f"{path}: the zip has no {member_suffix}",
                                      hint="is this the released males_model.zip / females_model.zip?")
            info = sorted(infos, key=lambda i: len(i.filename))[0]
            if info.file_size > limit:
                raise CheckpointError(f"{path}: {info.filename} declares {info.file_size} bytes, more than the "
                                      f"{limit} a checkpoint may have", hint="is this the released zip?")
            copied = 0
            with zf.open(info) as f:
                while chunk := f.read(min(1 << 20, info.file_size + 1 - copied)):
                    copied += len(chunk)
                    if copied > info.file_size:
                        raise CheckpointError(f"{path}: {info.filename} inflates past its declared "
                                              f"{info.file_size} bytes", hint="download it again")
                    out.write(chunk)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: damaged zip file ({type(e).__name__})", hint="download it again") from None
    except OSError as e:
        raise CheckpointError(f"{path}: can't unpack {member_suffix} ({e.strerror or e})",
                              hint="check free space in the temporary folder (TMPDIR)") from None


def member_matches(name: str, member_suffix: str) -> bool:
    name = name.replace("\\", "/")
    return name.split("/")[-1] == member_suffix or name.endswith("/" + member_suffix)


def is_released_zip(path: Path, member_suffix: str = GENERATOR_MEMBER) -> bool:
    """True for a zip archive holding ``member_suffix`` (a torch ``.pth`` is a zip too, without it)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(member_matches(n, member_suffix) for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def read_state_dict(path: str | os.PathLike, member: str = GENERATOR_MEMBER) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and metadata from a .pth, a zip (``member`` inside) or a .safetensors file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found", hint=f"check {arg('weights')}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _read_safetensors(path)
    if suffix == ".zip" and zipfile.is_zipfile(path):
        with extracted_member(path, member) as unpacked:
            sd = _torch_load(unpacked, f"{path}:{member}")
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
        config = _json(meta[CONFIG_KEY], f"{path} (its {CONFIG_KEY} metadata)")
    else:
        sidecar = path.with_suffix(path.suffix + ".json")
        if sidecar.exists():
            from agetool.userfiles import read_text

            config = _json(read_text(sidecar, error=CheckpointError), str(sidecar))
    return sd, {"format": meta.get(FORMAT_KEY), "config": config}


def _json(text: str, what: str) -> dict:
    from agetool.userfiles import parse_json

    try:
        value = parse_json(text, what, error=CheckpointError)
    except CheckpointError as e:
        raise CheckpointError(e.message, hint="remove or repair it") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{what}: expected a JSON object, found {type(value).__name__}",
                              hint="remove or repair it")
    return value


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_into(module: nn.Module, sd: dict[str, torch.Tensor], what: str, *, assign: bool = False) -> nn.Module:
    """Strict load with one clear error naming the first missing / unexpected / mis-shaped keys.

    ``assign`` takes the tensors of ``sd`` as the module's own (for a module built on the meta device)."""
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
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True, assign=assign)
    return module


def infer_ngf(sd: dict) -> int | None:
    """The generator's channel width read from its weights (None when the key is absent)."""
    w = sd.get(NGF_KEY)
    return int(w.shape[0]) if w is not None and getattr(w, "ndim", 0) >= 1 else None


def generator_config_from_state_dict(sd: dict, base: dict | None = None, what: str = "generator config"):
    """A ``GeneratorConfig`` from ``base`` (a config table, e.g. the registry's or a file's), with
    ``ngf`` read from the weights where ``base`` does not give it; errors name ``what`` (the file)."""
    from agetool.nn.generator import GeneratorConfig

    try:
        cfg = dict((base or {}).get("generator", base or {}))
        ngf = infer_ngf(sd)
        if ngf is not None and "ngf" not in cfg:
            cfg["ngf"] = ngf
        config = GeneratorConfig.from_dict(cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: generator config {base}: {e}") from None
    bad = [f"{k}={v!r}" for k, v in config.to_dict().items()
           if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= _CONFIG_MAX.get(k, 4096)]
    if bad:
        raise CheckpointError(f"{what}: generator config {', '.join(bad)} out of range",
                              hint=f"each value is a positive integer, ngf at most {_CONFIG_MAX['ngf']}")
    return config


_CONFIG_MAX = {"ngf": 512, "n_downsample": 6, "n_residual": 64, "mlp_layers": 64, "n_style_blocks": 16}


def read_generator(path: str | os.PathLike, *, member: str = GENERATOR_MEMBER, base: dict | None = None,
                   what: str | None = None):
    """A strictly loaded Generator (CPU, eval mode) from a released zip, its ``.pth`` member or an
    agetool safetensors file; ``base`` is the config to start from (the file's own wins)."""
    from agetool.nn.generator import Generator

    sd, meta = read_state_dict(path, member)
    sd = strip_prefix(sd)
    cfg = generator_config_from_state_dict(sd, meta.get("config") or base, str(path))
    return load_into(Generator(cfg), sd, what or str(path)).eval()


def load_generator(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """A ready, eval-mode Generator from any accepted file."""
    return read_generator(path).to(device)


def convert_generator(src: str | os.PathLike, out: str | os.PathLike, *, member: str = GENERATOR_MEMBER,
                      base: dict | None = None, what: str | None = None) -> dict:
    """Write a released generator (zip or ``.pth``) as agetool's safetensors (and a ``.json`` sidecar);
    returns the config written."""
    generator = read_generator(src, member=member, base=base, what=what)
    config = {"generator": generator.cfg.to_dict()}
    out = Path(out)
    save_safetensors(out, generator.state_dict(), "generator", config)
    write_text(out.with_name(out.name + ".json"), json.dumps(config, indent=2), errors=False)
    return config


def save_safetensors(path: str | os.PathLike, sd: dict[str, torch.Tensor], fmt: str, config: dict) -> Path:
    """Write tensors + config atomically as agetool's safetensors format."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sd.items()}
    with replacing(path, errors=False) as tmp:
        save_file(tensors, str(tmp), metadata={FORMAT_KEY: fmt, CONFIG_KEY: json.dumps(config)})
        os.chmod(tmp, new_file_mode())  # safetensors writes 0600; outputs follow the umask
    return path


def save_generator(path: str | os.PathLike, generator) -> Path:
    return save_safetensors(path, generator.state_dict(), "generator", {"generator": generator.cfg.to_dict()})
