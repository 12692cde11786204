"""How model files are had: ``Loading``, the network switch and the two callbacks that every loader
of a model takes, passed on as one value from the public entry point that builds it
(``AgingPipeline.from_pretrained``, ``FaceIdentity.from_pretrained``, ``agetool.weights.fetch``)
down to the download.

- ``offline``: never use the network (``HF_HUB_OFFLINE=1`` says the same); a file that is not
  cached is an error naming the ways out.
- ``progress(description, total) -> advance(n)``: downloads, hashing and long work (see
  ``agetool.weights``).
- ``report(message)``: one-line notices (model choices, licences, warnings prefixed ``warning: ``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agetool import validate
from agetool.errors import UsageError, arg


@dataclass(frozen=True)
class Loading:
    offline: bool = False
    progress: Callable | None = None
    report: Callable[[str], None] | None = None

    @classmethod
    def of(cls, offline: bool = False, progress=None, report=None) -> "Loading":
        """Checked: ``offline`` a boolean, the callbacks callable (or None)."""
        for name, value in (("progress", progress), ("report", report)):
            if value is not None and not callable(value):
                raise UsageError(f"{arg(name, value)}: expected a function (or None)")
        return cls(validate.flag("offline", offline), progress, report)

    def say(self, message: str) -> None:
        """``message`` to ``report`` (nothing without one)."""
        if self.report is not None:
            self.report(message)

    def advance(self, description: str, total: int | None) -> Callable[[int], None]:
        """``advance(n)`` of the progress callback for one pass of work (nothing without one)."""
        return (lambda n: None) if self.progress is None else self.progress(description, total)


#: online, silent: what a loader uses when it is given none
LOADING = Loading()


def given(loading: Loading | None = None, *, offline: bool = False, progress=None, report=None) -> Loading:
    """The context of a public entry point that takes either ``loading`` or the loose keywords
    ``offline`` / ``progress`` / ``report`` (not both)."""
    if loading is None:
        return Loading.of(offline, progress, report)
    if not isinstance(loading, Loading):
        raise UsageError(f"{arg('loading', loading)}: expected agetool.loading.Loading")
    if offline is not False or progress is not None or report is not None:
        raise UsageError(f"give {arg('loading')} or {arg('offline')} / {arg('progress')} / {arg('report')}, not both")
    return loading
