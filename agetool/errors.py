"""Typed errors. The library raises these; only the CLI turns them into a message and an exit code."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

_ARG = re.compile("\x1f([^\x1f\x1e]+)(?:\x1e([^\x1d]*)\x1d([^\x1f]*))?\x1f")
_NO_VALUE = object()


def arg(name: str, value: object = _NO_VALUE) -> str:
    """A reference to the argument ``name`` (with the ``value`` given) inside an error message.

    ``str(error)`` shows it the Python way (``device='cuda'``); the command line renders the same
    reference as its flag (``--device cuda``), so one message serves both.
    """
    if value is _NO_VALUE:
        return f"\x1f{name}\x1f"
    python, plain = _shown(value)
    if not isinstance(value, os.PathLike):  # a path is shown whole: it says which file to look at
        python, plain = _cut(python), _cut(plain)
    return f"\x1f{name}\x1e{_marks_out(python)}\x1d{_marks_out(plain)}\x1f"


#: longest value shown in a message (paths excepted); longer ones are cut with an ellipsis
SHOWN_CHARS = 200


def _shown(value: object) -> tuple[str, str]:
    """(Python, plain) text of an argument's value: paths as their text, never ``PosixPath('x')``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        items = [os.fspath(v) for v in value]
        return repr(items), " ".join(map(str, items))
    return repr(value), str(value)


def _cut(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."


def _marks_out(text: str) -> str:
    return text.translate({0x1D: "?", 0x1E: "?", 0x1F: "?"})  # the marks that delimit a reference


def detail(e: BaseException, limit: int = 160) -> str:
    """Another library's error as a clause for a message: its first line, kept to whole sentences
    (or, for one long sentence, whole words and an ellipsis) within ``limit`` characters."""
    lines = str(e).strip().splitlines()
    text = " ".join(lines[0].split()) if lines else ""
    if not text:
        return type(e).__name__
    if len(text) <= limit:
        return text
    head = text[:limit]
    end = head.rfind(". ")
    if end >= 20:
        return head[:end + 1]
    return head.rsplit(" ", 1)[0].rstrip(",;:([`'\"") + " ..."


def python_style(name: str, python: str | None, plain: str | None) -> str:
    return name if python is None else f"{name}={python}"


def render(text: str, style: Callable[[str, str | None, str | None], str] = python_style) -> str:
    """``text`` with each ``arg()`` reference written by ``style(name, repr_of_value, str_of_value)``."""
    return _ARG.sub(lambda m: style(m.group(1), m.group(2), m.group(3)), text)


class AgetoolError(Exception):
    """Base class: a failure the user can act on. ``exit_code`` is what the CLI exits with.

    Messages name the Python argument at fault (``noise=-1.0: must be >= 0``); the command line
    renders the same message with its flag names (``--noise -1.0: must be >= 0``).
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def render(self, style: Callable[[str, str | None, str | None], str] = python_style) -> str:
        """One line: the message, then what to do, with argument references written by ``style``."""
        text = f"{self.message} ({self.hint})" if self.hint else self.message
        return render(text, style)

    def __str__(self) -> str:
        return self.render()


class UsageError(AgetoolError):
    """Options that contradict each other or are out of range (exit 2)."""

    exit_code = 2


class InputError(AgetoolError):
    """A missing, unreadable or undecodable input file."""


class NoFaceError(InputError):
    """No face was found in a photo."""


class NoMatchError(NoFaceError):
    """Faces were found, but none is the person of the reference (``faces=FaceReference``)."""


class DatasetError(InputError):
    """A training data folder, label file or photo list that can't be used as given."""


class AlignmentError(InputError):
    """Landmarks that can't define a face crop (not finite, degenerate, far outside the photo)."""


class OutputError(AgetoolError):
    """An output path that can't be written."""


class CheckpointError(AgetoolError):
    """A weights file that can't be read or doesn't fit the network."""


class WeightsError(AgetoolError):
    """Registry, download or verification failure."""


class UnknownWeightsError(WeightsError, UsageError):
    """A weights name that the registry does not list (a usage error: exit 2)."""

    exit_code = 2


class ChecksumError(WeightsError):
    """A downloaded or cached file whose size or hash is not the registered one."""


class DownloadError(WeightsError):
    """Every source of an artifact failed."""


class OfflineError(WeightsError):
    """An artifact is needed but network access is forbidden and it is not cached."""


class MissingModelsError(OfflineError):
    """Models a call needs that are not at hand while network access is off: all of them at once,
    before anything loads. ``missing`` holds their registry names."""

    def __init__(self, message: str, *, missing: list[str], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.missing = list(missing)


class PeerError(AgetoolError):
    """The processes of a multi-process job did not all meet in time (one never started, or stopped)."""


class ModelChoiceError(AgetoolError):
    """The male / female model can't be chosen automatically."""


class ResourceError(AgetoolError):
    """Out of memory or a similar resource limit."""


class Interrupted(AgetoolError):
    """The user pressed Ctrl-C; outputs written so far are kept, partial ones removed."""

    exit_code = 130


class EstimateError(AgetoolError):
    """Something needs a face's estimated age or gender and no estimate is available."""
