"""Fetching and verifying registered artifacts (see ``agetool.weights``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from agetool.errors import ChecksumError, DownloadError, InputError, OfflineError, WeightsError, arg
from agetool.files import link_or_copy
from agetool.loading import LOADING, Loading, given
from agetool.weights import store, transfer
from agetool.weights.registry import ARGUMENT_FOR_KIND, Artifact, get, load_registry
from agetool.weights.store import Digest, read_record, write_record
from agetool.weights.transfer import SourceFailed, progress_bar

FACE_ALIGNMENT = ("fan-2d", "s3fd")
_TRUE = ("1", "true", "yes", "on")


def is_offline(offline: bool = False) -> bool:
    """``offline``, or ``HF_HUB_OFFLINE=1`` in the environment."""
    return bool(offline) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def human_size(n: int | None) -> str:
    """``213.2 MB`` (decimal units), ``?`` when unknown."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"  # pragma: no cover


def ways_out(art: Artifact, argument: str | None = None) -> str:
    """How to do without a download: import a copy, or pass the file directly (as ``argument``, by
    default the one that takes a file of the artifact's kind); then stay offline."""
    text = f"have the file? `{art.import_command}`"
    if art.sources:
        text = f"it is published at {art.sources[0].address}; " + text
    argument = argument or ARGUMENT_FOR_KIND.get(art.kind)
    if argument:
        text += f", or pass it as {arg(argument, 'FILE')}"
    return text + f"; {arg('offline', True)} never uses the network"


def _hash(art: Artifact, path: Path, progress, what: str = "verifying") -> Digest:
    size = path.stat().st_size
    with progress_bar(progress, f"{what} {art.name}", size) as advance:
        return store.hash_file(path, md5=bool(art.md5), advance=advance)


def _remember(art: Artifact, path: Path, digest: Digest, record: dict, say, *,
              source: str | None = None, revision: str | None = None, form: str | None = None,
              best_effort: bool = False) -> dict:
    """Record ``path`` as the verified copy of ``art`` (pinning its sha256 when the registry has none,
    or when the file is a form the registry publishes no checksum for)."""
    form = form or record.get("form") or store.RELEASED
    first_use = not art.has_checksum and form == store.RELEASED
    if first_use and record.get("pinned") != "first-use":
        say(f"{art.name}: no published checksum; recorded sha256 {digest.sha256} of this copy "
            f"(trust on first use) and every later copy must match it")
    new = {
        "name": art.name, "path": str(path), "size": digest.size, "sha256": digest.sha256, "form": form,
        "md5": digest.md5 or (record.get("md5") if record.get("sha256") == digest.sha256 else None),
        "pinned": "first-use" if first_use else ("registry" if form == store.RELEASED else "loaded"),
        "source": source or record.get("source"), "revision": revision or record.get("revision"),
        "stamp": store.stamp(path), "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for key in ("converted", "placed"):  # still valid while the bytes are the same
        if key in record and record.get("sha256") == digest.sha256:
            new[key] = record[key]
    write_record(art.name, new, best_effort=best_effort)
    return new


def _candidates(art: Artifact, record: dict) -> list[Path]:
    seen, out = set(), []
    paths = [Path(record["path"])] if record.get("path") else []
    paths.append(store.file_path(art))
    if record.get("form") in store.LOCAL_FORMS:
        paths = paths[:1]  # only the recorded file is that form; the others would be checked as released
    hub_sources = [s for s in art.sources if s.is_hub]
    if hub_sources:
        paths.extend(p for p in map(transfer.hub_cached, hub_sources) if p is not None)
    for p in paths:
        if str(p) not in seen and p.is_file() and store.managed(p):
            seen.add(str(p))
            out.append(p)
    return out


def _cached(art: Artifact, loading: Loading) -> Path | None:
    """A verified cached copy of ``art``: the recorded one if unchanged, else the first candidate
    that passes verification. Copies that fail are deleted and reported."""
    progress, say = loading.progress, loading.say
    record = read_record(art.name)
    recorded = Path(record["path"]) if record.get("path") else None
    if recorded is not None and store.record_matches(art, record, recorded) and store.managed(recorded):
        return recorded
    for path in _candidates(art, record):
        digest = _hash(art, path, progress)
        why = store.mismatch(art, digest, record)
        if why:
            store.remove(path)
            say(f"{art.name}: deleted {path}: {why}")
            continue
        same = record.get("path") == str(path)
        _remember(art, path, digest, record, say, source=None if same else "cache", best_effort=True)
        return path
    return None


def resolve(name: str, path: str | os.PathLike | None, *, argument: str, loading: Loading = LOADING,
            file_argument: str | None = None) -> Path:
    """``path`` if given (it must exist), else the registry artifact ``name`` (downloaded if needed);
    ``file_argument``: the caller's argument that takes a file instead, named when it is missing
    (default: the one of the artifact's kind)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{arg(argument, path)}: no such file")
        return path
    return fetch(name, loading=loading, argument=file_argument)


def fetch(name: str, *, loading: Loading | None = None, offline: bool = False, progress=None, report=None,
          argument: str | None = None) -> Path:
    """A verified local copy of artifact ``name``, downloaded if needed (see the module docstring):
    ``loading`` (``agetool.loading.Loading``), or its ``offline``, ``progress`` and ``report``.
    ``argument``: the caller's argument that takes the file instead, for messages."""
    art = get(name)
    loading = given(loading, offline=offline, progress=progress, report=report)
    found = _cached(art, loading)
    if found is not None:
        return found
    if is_offline(loading.offline):
        why = arg("offline", True) if loading.offline else "HF_HUB_OFFLINE=1"
        raise OfflineError(f"{name} is not in the cache and network access is off ({why})",
                           hint=f"run `agetool weights download {name}` while online; {ways_out(art, argument)}")
    with store.locked(art), store.writing():
        store.clean_stale(art)
        found = _cached(art, loading)  # another process may have finished meanwhile
        return found if found is not None else _download(art, loading)


def _download(art: Artifact, loading: Loading) -> Path:
    progress, say = loading.progress, loading.say
    if not art.sources:
        raise DownloadError(f"{art.name} has no download source", hint=ways_out(art))
    failures: list[str] = []
    reasons: list[str] = []  # the same, without the sources
    mismatches = 0
    for i, src in enumerate(art.sources):
        record = read_record(art.name)
        for fresh in (False, True):
            resumed = not src.is_hub and store.part_path(art).is_file() and not fresh
            size = f" {human_size(art.size)}" if art.size else ""
            have = f", resuming at {human_size(store.part_path(art).stat().st_size)}" if resumed else ""
            say(f"{art.name}: downloading{size} from {src.describe()}{have}")
            try:
                if src.is_hub:
                    path, revision = transfer.download_hub(art, src, progress=progress)
                else:
                    path, revision = store.part_path(art), None
                    transfer.download_url(art, src, path, progress=progress)
            except SourceFailed as e:
                failures.append(f"{src.describe()}: {e.reason}")
                reasons.append(e.reason)
                break
            digest = _hash(art, path, progress)
            why = store.mismatch(art, digest, record)
            if why:
                store.remove(path)
                say(f"{art.name}: deleted the copy from {src.describe()}: {why}")
                if resumed:
                    continue  # the old partial file may have been the bad part: one clean try
                failures.append(f"{src.describe()}: checksum mismatch ({why})")
                reasons.append("checksum mismatch")
                mismatches += 1
                break
            if not src.is_hub:
                final = store.file_path(art)
                os.replace(path, final)
                path = final
            _remember(art, path, digest, record, say, source=src.describe(), revision=revision,
                      form=store.RELEASED)
            if art.non_commercial:
                say(art.license_line)
            return path
        if i + 1 < len(art.sources):
            say(f"{art.name}: {failures[-1]}; trying the next source")
    error = (ChecksumError if mismatches == len(failures) else DownloadError)(
        f"{art.name} is not cached and could not be downloaded: " + "; ".join(failures), hint=ways_out(art))
    error.reasons = reasons
    raise error


# --- status, verify ----------------------------------------------------------------------

@dataclass
class Status:
    artifact: Artifact
    path: Path | None  # the cached copy, if any
    verified: bool  # recorded as verified and unchanged since
    partial: int  # bytes of an interrupted download
    converted: Path | None  # agetool's safetensors, for generators
    record: dict
    bundled: Path | None = None  # the copy an installed package ships (used instead of the cache)

    @property
    def own(self) -> bool:
        """Whether the cached copy is a file of the user's own, registered for this name (``trust``)."""
        return self.path is not None and self.record.get("form") == store.OWN

    @property
    def where(self) -> str:
        """One word or phrase for tables: cached, bundled with a package, partial, or not."""
        if self.path is not None:
            mine = ", your file" if self.own else ""
            return f"yes{mine}" if self.verified else f"yes (not yet verified{mine})"
        if self.bundled is not None:
            return f"bundled ({self.artifact.bundled[0].replace('_', '-')} package)"
        if self.partial:
            return f"partial ({human_size(self.partial)})"
        return "no"


def bundled_path(art: Artifact) -> Path | None:
    """The file that the installed package named in the registry's ``bundled`` ships (not imported)."""
    import importlib.util

    if art.bundled is None:
        return None
    package, inside = art.bundled
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / inside
        if path.is_file():
            return path
    return None


def status(name: str) -> Status:
    """What the cache holds for ``name`` (no network, no hashing)."""
    art = get(name)
    record = read_record(name)
    candidates = _candidates(art, record)
    path = candidates[0] if candidates else None
    conv = store.converted_path(art)
    part = store.part_path(art)
    return Status(art, path, path is not None and store.record_matches(art, record, path),
                  part.stat().st_size if part.is_file() else 0, conv if conv.is_file() else None, record,
                  bundled_path(art))


def statuses() -> list[Status]:
    return [status(name) for name in load_registry()]


@dataclass
class Check:
    name: str
    path: Path | None
    ok: bool | None  # None: nothing cached
    detail: str


def verify(names: list[str] | None = None, *, loading: Loading | None = None, progress=None,
           report=None) -> list[Check]:
    """Re-hash every cached copy (and converted file). Bad files are deleted and reported
    (``progress`` and ``report`` as for ``fetch``, or ``loading``)."""
    loading = given(loading, progress=progress, report=report)
    progress, say = loading.progress, loading.say
    checks = []
    for name in names or list(load_registry()):
        art = get(name)
        record = read_record(name)
        paths = _candidates(art, record)
        if not paths:
            checks.append(Check(name, None, None, "not cached"))
            continue
        for path in paths:
            digest = _hash(art, path, progress)
            why = store.mismatch(art, digest, record)
            if why:
                store.remove(path)
                say(f"{name}: deleted {path}: {why}")
                checks.append(Check(name, path, False, f"{why}; deleted"))
            else:
                record = _remember(art, path, digest, record, say, best_effort=True)
                checks.append(Check(name, path, True, "ok"))
        checks.extend(_verify_converted(art, progress, say))
    return checks


def _verify_converted(art: Artifact, progress, say) -> list[Check]:
    record = read_record(art.name)
    conv = record.get("converted") or {}
    path = Path(conv["path"]) if conv.get("path") else None
    if path is None or not path.is_file() or not store.managed(path):
        return []
    digest = _hash(art, path, progress)
    if digest.sha256 == conv.get("sha256"):
        record["converted"]["stamp"] = store.stamp(path)
        write_record(art.name, record, best_effort=True)
        return [Check(f"{art.name} (converted)", path, True, "ok")]
    store.remove(path)
    record.pop("converted", None)
    write_record(art.name, record, best_effort=True)
    say(f"{art.name}: deleted the damaged converted file {path}; it is rebuilt on next use")
    return [Check(f"{art.name} (converted)", path, False, "sha256 differs from the recorded one; deleted")]


# --- first-use helpers for the pipeline -----------------------------------------------------------

def generator_path(name: str, *, loading: Loading = LOADING) -> Path:
    """agetool's safetensors for a released generator, converted once from the zip's member (or
    from the imported member); an imported agetool safetensors file is used as it is."""
    from agetool.nn.checkpoint import GENERATOR_MEMBER, convert_generator

    art = get(name)
    if art.kind != "generator":
        raise WeightsError(f"{name} is a {art.kind}, not a generator")
    out = store.converted_path(art)
    if _converted_current(art, out):
        return out
    src = fetch(name, loading=loading)
    form = read_record(name).get("form")
    if form == store.SAFETENSORS or form == store.OWN and src.suffix.lower() == ".safetensors":
        return src
    with store.locked(art), store.writing():
        if _converted_current(art, out):
            return out
        convert_generator(src, out, member=art.member or GENERATOR_MEMBER, base=art.config,
                          what=f"{name} ({src.name})")
        record = read_record(name)
        record["converted"] = {"path": str(out), "sha256": store.hash_file(out).sha256,
                               "from_sha256": record.get("sha256"), "stamp": store.stamp(out)}
        write_record(name, record)
    return out


def _converted_current(art: Artifact, out: Path) -> bool:
    record = read_record(art.name)
    conv = record.get("converted") or {}
    return (conv.get("path") == str(out) and conv.get("stamp") == store.stamp(out)
            and conv.get("from_sha256") == record.get("sha256") and store.record_agrees(art, record))


def place_face_alignment_files(*, loading: Loading = LOADING) -> None:
    """Put fan-2d and s3fd where face-alignment looks (``torch.hub.get_dir()/checkpoints``), verified,
    so that it never downloads on its own."""
    from agetool.weights.places import fan_checkpoint_dir, fan_file_names

    say = loading.say
    dest_dir = fan_checkpoint_dir()
    expected = fan_file_names()
    for name in FACE_ALIGNMENT:
        art = get(name)
        target = expected.get(name, art.filename)
        if target != art.filename:
            say(f"{name}: the installed face-alignment looks for {target}, the registry holds "
                f"{art.filename}; face-alignment will use its own copy")
            continue
        dest = dest_dir / target
        record = read_record(name)
        placed = record.get("placed") or {}
        if dest.is_file() and placed.get("path") == str(dest) and placed.get("stamp") == store.stamp(dest):
            continue
        if dest.is_file():
            why = store.mismatch(art, _hash(art, dest, loading.progress), record)
            if why is None:
                _mark_placed(name, dest)
                continue
            say(f"{name}: replacing {dest}: {why}")
            store.remove(dest)
        src = fetch(name, loading=loading)
        link_or_copy(src, dest)
        _mark_placed(name, dest)


def _mark_placed(name: str, dest: Path) -> None:
    record = read_record(name)
    record["placed"] = {"path": str(dest), "stamp": store.stamp(dest)}
    write_record(name, record)
