"""Terminal output helpers: one stderr console, progress bars, device and dtype choice."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console

DEBUG = False
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)


def info(message: str) -> None:
    err.print(message, markup=False, highlight=False)


def traceback() -> None:
    err.print_exception(show_locals=False)


@contextmanager
def progress(transient: bool = True):
    """A rich progress bar on stderr; disabled when stderr is not a terminal."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=transient,
                   disable=not sys.stderr.isatty())
    with bar:
        yield bar


def pick_device(name: str):
    """auto -> cuda, then mps, then cpu. An unavailable explicit choice is a usage error."""
    import torch

    from agetool.errors import UsageError

    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available", hint="use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps: Metal is not available", hint="use --device cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def pick_dtype(name: str, device):
    """auto -> bfloat16 where the hardware computes it natively (CUDA GPUs that support it, CPUs with
    AVX512-BF16 or AMX), else float32. bfloat16 stays above 40 dB PSNR against float32 on the parity
    cases (tests/test_fast_paths.py); float16 is never chosen automatically."""
    import torch

    from agetool.errors import UsageError

    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    name = name.lower()
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in table:
        raise UsageError(f"--dtype {name}: expected auto, float32, bfloat16 or float16")
    if table[name] == torch.float16 and device.type == "cpu":
        raise UsageError("--dtype float16 is not supported on the CPU", hint="use bfloat16 or float32")
    return table[name]


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
