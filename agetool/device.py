"""Where and how to compute: the device, the dtype and this process's rank.

One owner for these choices: inference (``AgingPipeline``), training and benchmarks ask here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from agetool.errors import UsageError, arg

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_ALIASES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
                  "float16": "float16", "fp16": "float16"}


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when started alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of ``items``: every world-th item, starting at the rank."""
        return list(items[self.rank::self.world])


#: the most processes a job may have
MAX_WORLD = 65536
_AS_TORCHRUN = "as torchrun sets them"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        return int(text.strip())
    except ValueError:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise UsageError(f"{name}={shown}: not a whole number ({_AS_TORCHRUN})") from None


def env_dist() -> Dist:
    """The rank, world size and local rank that ``torchrun`` sets in the environment; a
    ``UsageError`` for values no job has (a rank outside the world, one set without the other)."""
    rank, world, local = (_env_int(n) for n in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if world is None:  # a lone process: rank 0, local rank 0 (an unset or zero LOCAL_RANK)
        given = [f"{n}={v}" for n, v in (("RANK", rank), ("LOCAL_RANK", local)) if v not in (None, 0)]
        if rank is not None or given:
            given = given or [f"RANK={rank}"]
            raise UsageError(f"{' and '.join(given)} without WORLD_SIZE", hint=f"set all three, {_AS_TORCHRUN}, or none")
        return Dist()
    if not 1 <= world <= MAX_WORLD:
        raise UsageError(f"WORLD_SIZE={world}: expected 1 to {MAX_WORLD:,} processes ({_AS_TORCHRUN})")
    if rank is None and world > 1:
        raise UsageError(f"WORLD_SIZE={world} without RANK", hint=f"set all three, {_AS_TORCHRUN}, or none")
    rank = 0 if rank is None else rank
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank}: expected 0 to {world - 1} in a job of WORLD_SIZE={world} ({_AS_TORCHRUN})")
    local = rank if local is None else local
    if not 0 <= local <= rank:
        raise UsageError(f"LOCAL_RANK={local}: expected 0 to RANK={rank} ({_AS_TORCHRUN})")
    if world == 1:
        return Dist()
    port = _env_int("MASTER_PORT")
    if not os.environ.get("MASTER_ADDR", "").strip() or port is None:
        raise UsageError(f"a job of WORLD_SIZE={world} needs MASTER_ADDR and MASTER_PORT, where its processes meet",
                         hint="start it with torchrun, which sets them")
    if not 1 <= port <= 65535:
        raise UsageError(f"MASTER_PORT={port}: expected 1 to 65535")
    return Dist(rank, world, local)


def mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def check_names(device="auto", dtype="float32") -> None:
    """The spelling of a device and a dtype, checked without importing torch (usage errors come
    before the seconds torch takes to load); whether they exist here is ``pick_device``'s question."""
    import re

    if isinstance(device, str) and not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", device.strip().lower() or "auto"):
        raise UsageError(f"{arg('device', device)}: expected {', '.join(DEVICES)}")
    if isinstance(dtype, str) and (dtype.strip().lower() or "float32") not in (*_DTYPE_ALIASES, "auto"):
        raise UsageError(f"{arg('dtype', dtype)}: expected {', '.join(DTYPES)}")


def pick_device(name: str = "auto", *, dist: Dist | None = None):
    """``auto`` -> cuda, then mps, then cpu; ``cuda`` in a multi-process job -> this rank's GPU.

    An explicit choice that is not available is a ``UsageError`` naming the ``device`` argument.
    """
    import torch

    if isinstance(name, torch.device):
        return name
    text = str(name or "auto").strip().lower()
    dist = dist or Dist()
    if text == "auto":
        if torch.cuda.is_available():
            text = "cuda"
        elif mps_available() and dist.world == 1:
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{arg('device', name)}: no CUDA device is available", hint=f"use {arg('device', 'cpu')}")
        try:
            device = torch.device(text)
        except RuntimeError:
            raise UsageError(f"{arg('device', name)}: expected {', '.join(DEVICES)}") from None
        if dist.world > 1 and device.index is None:
            return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"{arg('device', name)}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    if text == "mps":
        if not mps_available():
            raise UsageError(f"{arg('device', name)}: Metal is not available", hint=f"use {arg('device', 'cpu')}")
        if dist.world > 1:
            raise UsageError(f"{arg('device', name)}: multi-process jobs run on CUDA or the CPU")
        return torch.device("mps")
    if text != "cpu":
        raise UsageError(f"{arg('device', name)}: expected {', '.join(DEVICES)}")
    return torch.device("cpu")


def pick_dtype(name: str, device):
    """``auto`` -> bfloat16 where the hardware computes it natively (CUDA GPUs that support it, CPUs
    with AVX512-BF16 or AMX), else float32. bfloat16 stays above 40 dB PSNR against float32 on the
    parity cases; float16 is never chosen automatically and not offered on the CPU."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    text = str(name or "float32").strip().lower()
    if text == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if text not in _DTYPE_ALIASES:
        raise UsageError(f"{arg('dtype', name)}: expected {', '.join(DTYPES)}")
    dtype = getattr(torch, _DTYPE_ALIASES[text])
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError(f"{arg('dtype', name)} is not supported on the CPU",
                         hint=f"use {arg('dtype', 'bfloat16')} or {arg('dtype', 'float32')}")
    return dtype


def cpu_has_native_bf16() -> bool:
    """True on x86 CPUs with AVX512-BF16 or AMX tiles (elsewhere bfloat16 is emulated and slower)."""
    import torch

    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            pass
    return False


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads counted once); the CPU count if unknown."""
    try:
        cpus = os.sched_getaffinity(0)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list") as f:
                cores.add(f.read().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def tune_process(device, dtype) -> None:
    """Process-wide torch settings that suit agetool's work, for programs that own their process
    (the command line applies them; the library itself leaves them alone):

    - CPU: one intra-op thread per physical core (convs gain nothing from hyper-threads), unless
      OMP_NUM_THREADS is set or fewer threads were chosen already;
    - CUDA: cuDNN picks its fastest convolution once (decode chunks repeat one shape), and float32
      means float32 (no TF32 convolutions or matrix products).
    """
    import torch

    if device.type == "cpu":
        if "OMP_NUM_THREADS" not in os.environ and torch.get_num_threads() > physical_cores():
            torch.set_num_threads(physical_cores())
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        if dtype == torch.float32:
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
