"""Terminal output helpers: one stderr console, progress bars."""

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


from agetool.device import cpu_has_native_bf16, pick_device, pick_dtype  # noqa: E402,F401  (moved to the library)
