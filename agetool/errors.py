"""Typed errors. The library raises these; only the CLI turns them into a message and an exit code."""

from __future__ import annotations


class AgetoolError(Exception):
    """Base class: a failure the user can act on. ``exit_code`` is what the CLI exits with."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # one line: message, then what to do
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(AgetoolError):
    """Options that contradict each other or are out of range (exit 2)."""

    exit_code = 2


class InputError(AgetoolError):
    """A missing, unreadable or undecodable input file."""


class NoFaceError(InputError):
    """No face was found in a photo."""


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


class ChecksumError(WeightsError):
    """A downloaded or cached file whose size or hash is not the registered one."""


class DownloadError(WeightsError):
    """Every source of an artifact failed."""


class OfflineError(WeightsError):
    """An artifact is needed but network access is forbidden and it is not cached."""


class ModelChoiceError(AgetoolError):
    """The male / female model can't be chosen automatically."""


class ResourceError(AgetoolError):
    """Out of memory or a similar resource limit."""


class Interrupted(AgetoolError):
    """The user pressed Ctrl-C; outputs written so far are kept, partial ones removed."""

    exit_code = 130
