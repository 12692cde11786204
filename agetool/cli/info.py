"""``agetool info``: versions, devices, and the model files in the cache with their licenses."""

from __future__ import annotations

import platform
import sys

from agetool.cli import console

PACKAGES = ("torch", "numpy", "safetensors", "huggingface-hub", "face-alignment", "dlib-bin", "dlib",
            "onnxruntime", "opencv-python", "av", "pillow", "typer", "rich")


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _devices() -> list[str]:
    try:
        import torch
    except ImportError:
        return ["torch is not installed"]
    out = [f"cpu ({torch.get_num_threads()} threads)"]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(f"cuda:{i} {p.name} ({p.total_memory / 2**30:.0f} GiB)")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def _print_settings(out):
    """The config file and the defaults set there or in the environment, with where each came from,
    in the file's own syntax; returns the config error, if any (the rest of ``info`` still prints)."""
    from agetool.config import config_path, load_settings
    from agetool.errors import AgetoolError

    try:
        settings = load_settings()
    except AgetoolError as e:
        out.print(f"config: {config_path()} (not read: see the error below)", markup=False)
        return e
    where = settings.path if settings.path is not None else f"{config_path()} (none)"
    out.print(f"config: {where}", markup=False)
    for key, value in settings.values.items():
        out.print(f"  {key} = {_toml(value)}  ({settings.origin[key]})", markup=False)
    return None


def _toml(value) -> str:
    """A setting as the config file writes it: true / false, quoted text, plain numbers."""
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)


def info() -> int:
    """Versions, devices, and cached model files with their licenses.

    Examples:

      agetool info

      AGETOOL_CACHE=/data/agetool agetool info
    """
    from agetool import __version__, weights

    out = console.out
    out.print(f"agetool {__version__}", markup=False)
    out.print(f"python {platform.python_version()} ({sys.executable}) on {platform.platform()}", markup=False)
    versions = [f"{name} {v}" for name in PACKAGES if (v := _version(name))]
    out.print("packages: " + ", ".join(versions), markup=False)
    out.print("devices: " + ", ".join(_devices()), markup=False)
    out.print(f"registry: {weights.registry_path()}", markup=False)
    out.print(f"cache: {weights.cache_dir()}", markup=False)
    config_error = _print_settings(out)
    cached = [st for st in weights.statuses() if st.path is not None or st.bundled is not None]
    if not cached:
        out.print("cached model files: none (they are fetched on first use)", markup=False)
    else:
        from agetool.cli.weights import print_models

        out.print("cached model files:", markup=False)
        print_models(cached, kind=False)
    if config_error is not None:
        console.error(console.message(config_error))
        return config_error.exit_code
    return 0
