"""Terminal output helpers: one stderr console, progress bars."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console

DEBUG = False
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


#: arguments whose flag is not ``--<name>``: (flag when true, flag when false)
_BOOL_FLAGS = {"mask": ("--mask", "--no-mask"), "labels": ("--labels", "--no-labels")}


def flag_style(name: str, python: str | None, plain: str | None) -> str:
    """How an argument named in a library error reads on the command line: its flag and value."""
    if plain in ("True", "False") and name in _BOOL_FLAGS:
        return _BOOL_FLAGS[name][plain == "False"]
    flag = "--" + name.replace("_", "-")
    if plain is None or plain == "True":
        return flag
    return f"{flag} {plain}"


def message(e) -> str:
    """An agetool error as one command-line line (flags instead of Python argument names)."""
    return e.render(flag_style)


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
