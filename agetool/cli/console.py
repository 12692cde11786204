"""Terminal output helpers: one stderr console, progress bars.

Nothing printed here is read as rich markup unless it is our own styling: file names, paths,
license strings and messages may contain ``[`` and ``]`` (``missing[/b].png``) and must print as
they are. Both consoles have markup off, so tables and plain prints are literal too.
"""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

DEBUG = False
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = Console(highlight=False, soft_wrap=True, markup=False)


#: arguments whose flag is not ``--<name>``: (flag when true, flag when false)
#: library arguments whose command-line flag says the opposite (mask=False is --no-mask)
_NEGATED = {"mask": "--no-mask", "labels": "--no-labels"}
#: library arguments whose flag is spelled differently (from_age is --from)
_FLAGS = {"from_age": "--from", "to_age": "--to", "frames_dir": "--frames", "batch": "--batch-size",
          "classifier_weights": "--age-model", "json_lines": "--json"}


def flag_style(name: str, python: str | None, plain: str | None) -> str:
    """How an argument named in a library error reads on the command line: its flag and value
    (``flip=False`` reads ``--no-flip``, ``mask=False`` reads ``--no-mask``)."""
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    if name in _NEGATED:
        return _NEGATED[name] if plain == "False" else flag
    if plain is None or plain == "True":
        return flag
    if plain == "False":
        return "--no-" + name.replace("_", "-")
    return f"{flag} {plain}"


def message(e) -> str:
    """An agetool error as one command-line line (flags instead of Python argument names)."""
    return e.render(flag_style)


def one_line(text: object) -> str:
    """``text`` on a single line: line breaks and runs of blanks become one space."""
    return " ".join(str(text).split())


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", markup=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(one_line(message))}", markup=True, highlight=False)


def info(message: str) -> None:
    err.print(message, markup=False, highlight=False)


def traceback() -> None:
    err.print_exception(show_locals=False)


def text_column(field: str = "{task.description}"):
    """A progress column that shows its text literally (descriptions hold file names)."""
    from rich.progress import TextColumn

    return TextColumn(field, markup=False)


def rate_column():
    """A progress column with items per second, for tasks added with a ``unit`` field (frames)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            unit = task.fields.get("unit")
            if not unit or not task.speed:
                return Text("")
            return Text(f"{task.speed:.2f} {unit}/s")

    return RateColumn()


@contextmanager
def progress(transient: bool = True):
    """A rich progress bar on stderr; disabled when stderr is not a terminal."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    bar = Progress(SpinnerColumn(), text_column(), BarColumn(), MofNCompleteColumn(), rate_column(),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=transient,
                   disable=not err.is_terminal)
    with bar:
        yield bar


from agetool.device import cpu_has_native_bf16, pick_device, pick_dtype  # noqa: E402,F401  (moved to the library)
