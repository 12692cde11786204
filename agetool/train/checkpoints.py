"""Training checkpoints: save, read (with fallback past damaged ones), starting points and export.

A checkpoint is a folder ``RUN/checkpoints/step_<8 digits>/`` written under a temporary name and
renamed when complete, so a crash during a write leaves the previous checkpoints intact:
``G.safetensors``, ``D.safetensors``, ``G_ema.safetensors`` (agetool's weights format, loadable by
``agetool age --weights``), ``train_state.safetensors`` (optimizer moments and torch RNG states) and
``state.json`` (step, epoch, config, optimizer settings, Python / NumPy RNG states and the SHA-256 of
every other file), written last. A checkpoint whose files don't match their recorded hashes, or whose
``state.json`` can't be read, is damaged: resuming skips it with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from agetool.errors import CheckpointError, UsageError, arg
from agetool.loading import LOADING, Loading

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
TENSOR_STATE_FILE = "train_state.safetensors"
NETWORK_FILES = {"G": "G.safetensors", "D": "D.safetensors", "G_ema": "G_ema.safetensors"}
CHECKPOINT_FORMAT = "agetool-train-checkpoint"
RELEASED_MEMBERS = {"G": "latest_net_G.pth", "D": "latest_net_D.pth", "G_ema": "latest_net_g_running.pth"}


def checkpoint_dirs(run: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary ``.part`` folders are not listed)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def find_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint folder, or the newest complete checkpoint of a run folder."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = checkpoint_dirs(path)
    if not found:
        raise CheckpointError(f"{path}: no training checkpoint found",
                              hint="pass a run folder or one of its checkpoints/step_* folders")
    return found[-1]


def remove_stale_parts(run: Path) -> None:
    """Delete temporary checkpoint folders left by a killed run."""
    root = run / CHECKPOINTS
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step_") and ".part" in p.name:
                shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# optimizer and random states as tensors + JSON


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def optimizer_tensors(opt, prefix: str) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state(tensors: dict, meta: dict, prefix: str) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_states() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    meta = {"python": [version, list(mt), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def set_rng_states(tensors: dict, meta: dict) -> None:
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    if "python" in meta:
        version, mt, gauss = meta["python"]
        random.setstate((version, tuple(mt), gauss))
    if "numpy" in meta:
        name, keys, pos, has_gauss, cached = meta["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


# ----------------------------------------------------------------------------------------------
# save and read


def save_checkpoint(run: Path, *, g, d, g_ema, opt_g, opt_d, step: int, epoch: int, step_in_epoch: int,
                    steps_per_epoch: int, config: dict, world: int, keep: int = 0) -> Path:
    """Write ``RUN/checkpoints/step_<step>`` atomically; returns its path. Keeps the newest ``keep``."""
    from safetensors.torch import save_file

    from agetool.files import new_file_mode
    from agetool.nn.checkpoint import save_generator, save_safetensors

    root = run / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    if (final / STATE_FILE).is_file():  # the same step was saved already: same state, nothing to do
        return final
    tmp = root / f".step_{step:08d}.part{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_generator(tmp / NETWORK_FILES["G"], g)
        save_generator(tmp / NETWORK_FILES["G_ema"], g_ema)
        save_safetensors(tmp / NETWORK_FILES["D"], d.state_dict(), "discriminator", {"discriminator": d.cfg.to_dict()})
        tg, mg = optimizer_tensors(opt_g, "opt_G")
        td, md = optimizer_tensors(opt_d, "opt_D")
        tr, mr = rng_states()
        tensors = {k: v.detach().cpu().contiguous() for k, v in {**tg, **td, **tr}.items()}
        save_file(tensors, str(tmp / TENSOR_STATE_FILE))
        os.chmod(tmp / TENSOR_STATE_FILE, new_file_mode())  # safetensors writes 0600; checkpoints follow the umask
        files = {name: _sha256(tmp / name) for name in (*NETWORK_FILES.values(), TENSOR_STATE_FILE)}
        state = {"format": CHECKPOINT_FORMAT, "version": 1, "step": step, "epoch": epoch,
                 "step_in_epoch": step_in_epoch, "steps_per_epoch": steps_per_epoch, "world_size": world,
                 "config": config, "generator": g.cfg.to_dict(), "discriminator": d.cfg.to_dict(),
                 "optimizer_G": mg, "optimizer_D": md, "rng": mr, "files": files, "time": time.time()}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        os.rename(tmp, final)
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep > 0:
        for old in checkpoint_dirs(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def _read_state(path: Path) -> dict:
    file = path / STATE_FILE
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{file}: can't be read ({str(e)[:120]})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{file}: not an agetool training checkpoint")
    for key in ("step", "epoch", "step_in_epoch"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{file}: {key} = {value!r} is not a count")
    for key, kind in (("config", dict), ("optimizer_G", dict), ("optimizer_D", dict), ("rng", dict),
                      ("files", dict)):
        if not isinstance(state.get(key, {}), kind):
            raise CheckpointError(f"{file}: {key} is not a JSON object")
    for key in ("optimizer_G", "optimizer_D"):
        groups = state.get(key, {}).get("param_groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise CheckpointError(f"{file}: {key} has no list of parameter groups")
    return state


def read_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """Every tensor and setting of a checkpoint folder: ``{"path", "state", "config", "nets", "tensors"}``.

    Raises ``CheckpointError`` naming the file at fault when a file is missing, damaged (its SHA-256
    differs from the one recorded at saving, when ``verify``) or holds malformed settings.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from agetool.nn.checkpoint import read_state_dict
    from agetool.train.config import TrainConfig

    path = Path(path)
    state = _read_state(path)
    try:
        config = TrainConfig.from_dict(state.get("config", {}), what=f"{path / STATE_FILE} (config)")
    except UsageError as e:
        raise CheckpointError(e.message) from None
    for name in (*NETWORK_FILES.values(), TENSOR_STATE_FILE):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        want = state.get("files", {}).get(name)
        if verify and want is not None and _sha256(file) != want:
            raise CheckpointError(f"{file}: damaged (its SHA-256 is not the one recorded when it was saved)")
    nets = {key: read_state_dict(path / name)[0] for key, name in NETWORK_FILES.items()}
    try:
        tensors = load_file(str(path / TENSOR_STATE_FILE))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path / TENSOR_STATE_FILE}: not a readable safetensors file ({str(e)[:120]})") from None
    return {"path": path, "state": state, "config": config, "nets": nets, "tensors": tensors}


# ----------------------------------------------------------------------------------------------
# starting points and export


def load_init(spec: str, loading: Loading = LOADING) -> tuple[dict, list[str], str]:
    """State dicts to fine-tune from: ({"G", "G_ema", "D"?}, notes, description).

    ``spec`` is ``male`` / ``female`` (the released models, fetched from the registry), a released
    zip or a folder holding ``latest_net_{G,D,g_running}.pth``, an agetool run or checkpoint folder,
    or a single generator file (.pth / .safetensors).
    """
    from agetool.nn.checkpoint import generator_config_from_state_dict, is_released_zip, read_state_dict, strip_prefix

    if spec in ("male", "female"):
        from agetool.weights import fetch

        path = Path(fetch(f"lats-{spec}", loading=loading))
        what = f"the released {spec} model ({path.name})"
    else:
        path = Path(spec).expanduser()
        what = str(path)
        if not path.exists():
            raise CheckpointError(f"{arg('init_from', spec)}: no such file or folder",
                                  hint="pass male, female, a released zip, a run folder or a generator file")
    def read(key: str, file: Path, member: str | None = None) -> None:
        sd, meta = read_state_dict(file, member=member) if member else read_state_dict(file)
        found[key] = strip_prefix(sd)
        if key != "D":  # its configuration, when it has one, must be sane
            generator_config_from_state_dict(found[key], meta.get("config"), str(file))

    found: dict = {}
    if path.is_dir() and ((path / STATE_FILE).is_file() or (path / CHECKPOINTS).is_dir()):
        found = dict(read_checkpoint(find_checkpoint(path))["nets"])
    elif path.is_dir():
        for key, member in RELEASED_MEMBERS.items():
            if (path / member).is_file():
                read(key, path / member)
    elif any(is_released_zip(path, m) for m in RELEASED_MEMBERS.values()):  # a .pth is a zip too, without them
        for key, member in RELEASED_MEMBERS.items():
            if is_released_zip(path, member):
                read(key, path, member)
    else:
        read("G", path)
    if "G" not in found and "G_ema" not in found:
        raise CheckpointError(f"{arg('init_from', spec)}: no generator weights in {what}",
                              hint="expected " + ", ".join(RELEASED_MEMBERS.values()))
    notes = []
    if "G" not in found:
        found["G"] = found["G_ema"]
        notes.append(f"{what} has no training generator ({RELEASED_MEMBERS['G']}); starting it from the EMA generator")
    if "G_ema" not in found:
        found["G_ema"] = found["G"]
        notes.append(f"{what} has no EMA generator ({RELEASED_MEMBERS['G_ema']}); starting it from the generator")
    if "D" not in found:
        notes.append(f"{what} has no discriminator ({RELEASED_MEMBERS['D']}); the discriminator starts from scratch")
    return found, notes, what


#: The discriminator's input conv: its output channels are the width ``ndf``.
NDF_KEY = "model.1.conv.weight_orig"


def init_widths(nets: dict) -> tuple[int | None, int | None]:
    """(ngf, ndf) read from the weights of ``load_init``'s networks."""
    from agetool.nn.checkpoint import infer_ngf

    d = nets.get("D", {}).get(NDF_KEY)
    return infer_ngf(nets["G"]), int(d.shape[0]) if d is not None and d.ndim >= 1 else None


EXPORTS = {"ema": NETWORK_FILES["G_ema"], "g": NETWORK_FILES["G"]}


def export_generator(source: str | os.PathLike, out: str | os.PathLike, which: str = "ema") -> Path:
    """Write the EMA (``ema``) or the training (``g``) generator of a run / checkpoint as agetool safetensors."""
    from agetool.nn.checkpoint import load_generator, save_generator

    if which not in EXPORTS:
        raise UsageError(f"{arg('which', which)}: expected ema or g")
    if Path(out).suffix.lower() != ".safetensors":
        raise UsageError(f"{arg('out', out)}: the exported file must end in .safetensors")
    ck = find_checkpoint(source)
    g = load_generator(ck / EXPORTS[which])
    return save_generator(out, g)
