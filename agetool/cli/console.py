"""Terminal output helpers: one stderr console, progress bars.

Nothing printed here is read as rich markup unless it is our own styling: file names, paths,
license strings and messages may contain ``[`` and ``]`` (``missing[/b].png``) and must print as
they are. Both consoles have markup off, so tables and plain prints are literal too.
"""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

#: --debug was given: tracebacks, and the chatter of libraries that have their own (Ray's logging)
DEBUG = False
#: the command line as typed, for messages that show a value as the user wrote it
TYPED: list[str] = []
#: the flag that gives the library's ``model=PATH`` (a generator file): ``--weights``; None on
#: ``compare``, whose own ``--model`` takes an identity model's file
MODEL_FILE_FLAG: str | None = "--weights"


def printable(text: str) -> str:
    """``text`` with terminal control characters shown escaped (``\\x1b``), line breaks and tabs kept:
    a file name or a setting can't clear the screen, move the cursor or retitle the terminal."""
    import unicodedata

    if text.isprintable():
        return text
    return "".join(c if c in "\n\t" or c.isprintable() or unicodedata.category(c) == "Zs" else repr(c)[1:-1]
                   for c in text)


class _Console(Console):
    """A console whose text passes through ``printable`` (our own styling is added after it)."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(printable(text), **kwargs)


err = _Console(stderr=True, highlight=False, soft_wrap=True, markup=False, emoji=False)
out = _Console(highlight=False, soft_wrap=True, markup=False, emoji=False)


#: arguments whose flag is not ``--<name>``: (flag when true, flag when false)
#: library arguments whose command-line flag says the opposite (mask=False is --no-mask)
_NEGATED = {"mask": "--no-mask", "labels": "--no-labels", "estimate_age": "--no-age"}
#: library arguments whose flag is spelled differently (from_age is --from)
_FLAGS = {"from_age": "--from", "to_age": "--to", "frames_dir": "--frames", "batch": "--batch-size",
          "classifier_weights": "--age-model", "json_lines": "--json", "metadata_json": "--json",
          "address": "--ray-address", "timeout": "--ray-timeout"}


def flag_style(name: str, python: str | None, plain: str | None) -> str:
    """How an argument named in a library error reads on the command line: its flag and value
    (``flip=False`` reads ``--no-flip``, ``mask=False`` reads ``--no-mask``)."""
    flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
    if name == "model" and MODEL_FILE_FLAG and plain not in (None, "auto", "male", "female") \
            and _typed("--model") != plain:
        flag = MODEL_FILE_FLAG  # the library's model=PATH is this command's --weights PATH
    if name in _NEGATED:
        return _NEGATED[name] if plain == "False" else flag
    if plain is None or plain == "True":
        return flag
    if plain == "False":
        return "--no-" + name.replace("_", "-")
    return f"{flag} {as_typed(flag, plain)}"


def as_typed(flag: str, plain: str) -> str:
    """``plain`` as the user typed it after ``flag`` (``1e309`` rather than ``inf``, ``1e-5`` rather
    than ``1e-05``) when that is the same number; else ``plain``."""
    import math

    typed = _typed(flag)
    if typed is None or typed == plain:
        return plain
    try:
        a, b = float(typed), float(plain)
    except (ValueError, OverflowError):
        return plain
    same = a == b or (math.isnan(a) and math.isnan(b))
    return typed if same and len(typed) <= 80 else plain


def _typed(flag: str) -> str | None:
    """The value typed after ``flag`` on the command line (its last), or None."""
    typed = None
    for i, token in enumerate(TYPED):
        if token == flag and i + 1 < len(TYPED):
            typed = TYPED[i + 1]
        elif token.startswith(flag + "="):
            typed = token[len(flag) + 1:]
    return typed


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
    """A progress column that shows its text literally (descriptions hold file names), escaped."""
    from rich.progress import TextColumn
    from rich.text import Text

    class PrintableColumn(TextColumn):
        def render(self, task):
            return Text(printable(self.text_format.format(task=task)), style=self.style, justify=self.justify)

    return PrintableColumn(field, markup=False)


def rate_column():
    """A progress column with items per second, for tasks added with a ``unit`` field (frames), and
    the faces of the last step where a task says them (a clip's frames: ``faces``)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            unit, faces = task.fields.get("unit"), task.fields.get("faces")
            parts = [] if faces is None else [count_of(faces, "face")]
            if unit and task.speed:
                parts.append(f"{task.speed:.2f} {unit}/s")
            return Text(", ".join(parts))

    return RateColumn()


#: seconds between progress lines when stderr is not a terminal (a log file, a pipe)
LOG_EVERY_S = 5.0


@contextmanager
def progress(transient: bool = True):
    """A rich progress bar on stderr; where stderr is not a terminal, a plain line per task every
    ``LOG_EVERY_S`` seconds instead (``rendering 101 frames: 40/101, 15 s``)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    if err.is_terminal:
        bar = Progress(SpinnerColumn(), text_column(), BarColumn(), MofNCompleteColumn(), rate_column(),
                       TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=transient)
    else:
        bar = _log_progress()(console=err, disable=True)
    with bar:
        yield bar


def _log_progress():
    """A ``rich.progress.Progress`` that draws nothing and prints a plain line per task every
    ``LOG_EVERY_S`` seconds (a task counted in units, such as a clip's frames, also as it starts and at
    its first step), with the rate and the time left where they are known
    (``ageing clip.mp4: 9/90 frames, 6 faces, 0.21 frames/s, 43 s, about 6 min 26 s left``)."""
    from rich.progress import Progress

    class LogProgress(Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._last: dict = {}

        def add_task(self, description, *args, **kwargs):
            task_id = super().add_task(description, *args, **kwargs)
            task = self._tasks[task_id]
            if task.fields.get("unit") and task.total:  # long work counted in units (a clip's frames): said at once
                info(f"{description}: {progress_line(0, task.total, 0.0, task.fields['unit'])}")
            return task_id

        def update(self, task_id, **kwargs) -> None:
            super().update(task_id, **kwargs)
            self._log(task_id)

        def advance(self, task_id, advance: float = 1) -> None:
            super().advance(task_id, advance)
            self._log(task_id)

        def _log(self, task_id) -> None:
            task = self._tasks.get(task_id)
            if task is None or not task.completed or self._last.get(task_id) == "done":
                return
            now, counted = self.get_time(), bool(task.fields.get("unit"))
            if not counted:  # short work (a photo): a line only every LOG_EVERY_S, the first one too
                self._last.setdefault(task_id, now)
            last = self._last.get(task_id)
            if last is not None and now - last < LOG_EVERY_S and not (counted and task.finished):
                return
            self._last[task_id] = "done" if task.finished else now
            line = progress_line(task.completed, task.total, task.elapsed or 0.0, task.fields.get("unit"),
                                 task.fields.get("faces"))
            info(f"{task.description}: {line}")

    return LogProgress


def progress_line(done: float, total: float | None, elapsed: float, unit: str | None = None,
                  faces: int | None = None) -> str:
    """``9/90 frames, 6 faces, 0.21 frames/s, 43 s, about 6 min 26 s left``: what a piped progress
    line says (the faces of the last step where they are known; the rate and the time left once a
    step has taken measurable time)."""
    count = f"{done:g}/{total:g}" if total else f"{done:g}"
    parts = [f"{count} {unit}" if unit else count]
    if faces is not None:
        parts.append(count_of(faces, "face"))
    rate = done / elapsed if elapsed > 0 else 0.0
    if rate > 0 and unit:
        parts.append(f"{rate:.2f} {unit}/s")
    parts.append(f"{elapsed:.0f} s")
    if rate > 0 and total and done < total:
        parts.append(f"about {_duration((total - done) / rate)} left")
    return ", ".join(parts)


def count_of(n: int, noun: str) -> str:
    """``1 face``, ``6 faces``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def clock(seconds: float | None) -> str:
    """``1:02:03`` or ``2:03`` (``?`` when not known): a duration as a clock shows it."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Stopped(int):
    """The exit code of a command that a signal stops by design (``serve``): it has said so in its
    own words, so no ``error: interrupted`` line follows."""
