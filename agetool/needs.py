"""Which registered model files a call needs, which of them are not at hand, and one error that
names all of them (with every way out) before anything loads.

A file is at hand when it is cached (verified or not yet re-hashed), converted, or shipped by an
installed package. With network access off, something missing stops a call at once; online, every
missing file is downloaded before anything loads, and those that could not be (no network, a
source that refuses) are named together in one error.
"""

from __future__ import annotations

from collections.abc import Iterable

from agetool.errors import MissingModelsError, arg
from agetool.loading import LOADING, Loading
from agetool.weights.registry import ROLES



def at_hand(name: str) -> bool:
    """Whether registry file ``name`` can be used without a download (no hashing, no network)."""
    from agetool import weights
    from agetool.errors import AgetoolError

    try:
        st = weights.status(name)
    except AgetoolError:
        return False
    return st.path is not None or st.bundled is not None or st.converted is not None


def landmark_files(backend: str) -> list[str]:
    """The registry files a landmark backend (``auto``, ``fan``, ``dlib``) loads."""
    from agetool.weights.places import fan_files_present

    if backend == "auto":
        backend = "fan" if fan_files_present() else "dlib"
    if backend == "fan":
        return [] if fan_files_present() else ["fan-2d", "s3fd"]
    return ["dlib-landmarks68"]


def upscaler_files(models) -> list[str]:
    """The registry file ``upscale=2|4`` loads: the default, or the registered name given (a file: none)."""
    from pathlib import Path

    from agetool.upscale import DEFAULT_WEIGHTS, registered

    given = getattr(models, "upscale_weights", None)
    if given is None:
        return [DEFAULT_WEIGHTS]
    return [str(given)] if not Path(given).is_file() and str(given) in registered() else []


def pipeline_files(models, model: str, *, generate: bool = True, landmarks: bool = True, parser: bool = False,
                   classifier: bool = False, upscale: bool = False) -> list[list[str]]:
    """The registry files a pipeline call needs, as groups of alternatives (one of each group must be
    at hand): ``models`` is the pipeline's ``Models`` (files given by path need nothing)."""
    groups: list[list[str]] = []
    if landmarks:
        groups += [[name] for name in landmark_files(models.landmarks)]
    if parser and models.parser_weights is None:
        groups.append(["deeplab-parser"])
    if (classifier or (generate and model == "auto")) and models.classifier_weights is None:
        groups.append(["genderage"])
    if generate and model in ("male", "female"):
        groups.append([f"lats-{model}"])
    elif generate and model == "auto":
        groups.append(["lats-male", "lats-female"])  # each face takes one; with neither, none can be aged
    if upscale:
        groups += [[name] for name in upscaler_files(models)]
    return groups


def missing(groups: Iterable[list[str]]) -> list[str]:
    """The names of the groups of which no file is at hand (all of a group's names), in order."""
    out: list[str] = []
    for group in groups:
        if not any(at_hand(name) for name in group):
            out += [name for name in group if name not in out]
    return out


def require(groups: Iterable[list[str]], loading: Loading = LOADING) -> None:
    """Every file of ``groups`` at hand before anything loads: with the network off
    (``loading.offline``), a ``MissingModelsError`` naming each one that is not; online, each
    missing one is downloaded first (as ``agetool.weights.fetch`` does), and those that could not
    be are named together, each with why."""
    from agetool import weights
    from agetool.errors import ChecksumError, DownloadError

    groups = [list(g) for g in groups]
    names = missing(groups)
    if not names:
        return
    if weights.is_offline(loading.offline):
        raise missing_error(names, offline=loading.offline)
    failed: dict[str, str] = {}
    for name in names:
        if any(at_hand(other) for group in groups if name in group for other in group):
            continue  # an alternative of its group arrived meanwhile
        try:
            weights.fetch(name, loading=loading)
        except (DownloadError, ChecksumError) as e:  # the next file is still tried
            failed[name] = ", ".join(dict.fromkeys(getattr(e, "reasons", None) or [e.message]))
    still = missing(groups)
    if still:
        raise missing_error(still, offline=loading.offline, failed=failed)


def missing_error(names: list[str], *, offline: bool = True, failed: dict[str, str] | None = None
                  ) -> MissingModelsError:
    """One error for files ``names`` that are not at hand, with every way out and where each file
    comes from; ``failed``: why the download of each file tried here did not succeed (online)."""
    from agetool import weights
    from agetool.config import config_path
    from agetool.weights.registry import ARGUMENT_FOR_KIND

    parts = []
    for name in names:
        try:
            art = weights.get(name)
        except Exception:  # noqa: BLE001 - an unknown name still gets named
            art = None
        kind = "" if art is None else art.kind
        argument = ARGUMENT_FOR_KIND.get(kind)
        takes = f", or {arg(argument, 'FILE')}" if argument else ""
        where = "" if art is None or not art.sources else f"; from {art.sources[0].address}"
        why = f": {failed[name]}" if failed and name in failed else ""
        parts.append(f"{name} ({ROLES.get(kind, kind or 'model')}{takes}{where}){why}")
    count = "1 model file is" if len(names) == 1 else f"{len(names)} model files are"
    if failed is None:
        off = arg("offline", True) if offline else "HF_HUB_OFFLINE=1"
        message = f"{count} not at hand and network access is off ({off}): " + "; ".join(parts)
        fetch = f"run `agetool weights download {' '.join(names)}` while online"
    else:
        message = f"{count} not at hand and could not be downloaded: " + "; ".join(parts)
        fetch = f"run `agetool weights download {' '.join(names)}` once the network is reachable"
    hint = (f"place copies with `agetool weights import FILE --as NAME` (add --trust for files of your own), "
            f"give files with the options named, set them once in {config_path()}, or {fetch}")
    return MissingModelsError(message, missing=names, hint=hint)
