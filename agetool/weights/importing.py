"""Placing files a user already has into the cache, so that later runs (``offline=True`` too) find
them by name.

Accepted forms of an artifact:

``released``
    the file as the registry publishes it (the released zip, ``deeplab_model.pth``, ...): checked
    against its published size and checksums (or pinned on first use where none is published);
``member``
    the unzipped ``latest_net_g_running.pth`` of a released generator zip: checked by loading it
    strictly into the generator; its sha256 is recorded and later copies must match it;
``safetensors``
    an agetool ``.safetensors`` generator or parser: checked by loading it into its network.

A folder is searched (a few levels deep) for files it can recognise: by registered size, by
registered file name, by the generator member inside a folder named like the zip
(``males_model/latest_net_g_running.pth``), or ``<name>.safetensors``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agetool.errors import AgetoolError, ChecksumError, WeightsError, arg
from agetool.weights import store
from agetool.weights.core import _remember, _say, human_size
from agetool.weights.registry import ARGUMENT_FOR_KIND, Artifact, check_name, get, load_registry, max_bytes
from agetool.weights.store import LOCAL_FORMS, MEMBER, OWN, RELEASED, SAFETENSORS, read_record
from agetool.weights.transfer import progress_bar

MAX_DEPTH = 3  # folder levels searched below the folder given


@dataclass
class Imported:
    name: str
    path: Path  # where it now lives in the cache
    form: str  # released | member | safetensors
    source: Path  # the file given


def import_file(src: str | os.PathLike, name: str | None = None, *, trust: bool = False, progress=None,
                report=None) -> Path:
    """Verify a file the user has and place it in the cache as artifact ``name`` (any accepted
    form, see the module docstring; None: recognised by its size, name or folder); returns its
    path in the cache.

    ``trust=True`` registers a file of the user's own for ``name`` (a fine-tuned parser, another
    classifier): the published size and checksums are not asked for; the file must still load
    where agetool can load that kind, and its sha256 is pinned. The released file itself is
    imported as released."""
    src = Path(src).expanduser()
    if trust and name is None:
        raise WeightsError(f"{arg('trust')} registers a file for a name", hint="name it: --as NAME")
    if name is None:
        hits = recognise_file(src, src.parent) if src.is_file() else []
        if len({a.name for _, a, _ in hits}) != 1:
            raise WeightsError(f"{src}: can't tell which registered file this is",
                               hint="name it: agetool weights import FILE --as NAME")
        name = hits[0][1].name
    return _import(src, get(check_name(name)), progress, _say(report), trust=trust).path


def import_folder(folder: str | os.PathLike, *, progress=None, report=None) -> list[Imported]:
    """Import every recognised file under ``folder``. Files that fail verification are reported
    and skipped; ``WeightsError`` when nothing could be imported."""
    folder = Path(folder).expanduser()
    say = _say(report)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder")
    found = recognise(folder)
    done: list[Imported] = []
    failed = []
    for path, art, form in found:
        if form != RELEASED and any(d.name == art.name for d in done):
            continue  # the released form of the same artifact came first
        try:
            done.append(_import(path, art, progress, say))
        except AgetoolError as e:
            failed.append(path)
            say(f"skipped {path}: {e.render()}")
    if not done:
        known = sorted({a.filename for a in load_registry().values()} | {"latest_net_g_running.pth"})
        why = f"{len(failed)} file(s) failed verification" if failed else "no file with a registered name or size"
        raise WeightsError(f"nothing imported from {folder}: {why}",
                           hint=f"known files: {', '.join(known)}; or name one: agetool weights import FILE --as NAME")
    return done


def recognise(folder: Path) -> list[tuple[Path, Artifact, str]]:
    """(file, artifact, form) for each file under ``folder`` that stands for a registered artifact,
    released forms first."""
    out = [hit for path in _files(folder) for hit in recognise_file(path, folder)]
    return sorted(out, key=lambda t: (t[2] != RELEASED, str(t[0])))


def recognise_file(path: Path, folder: Path) -> list[tuple[Path, Artifact, str]]:
    """What registered artifact ``path`` (found under ``folder``) stands for, if any."""
    models = load_registry()
    size = path.stat().st_size
    hits = [a for a in models.values()
            if (a.size is not None and a.size == size) or path.name in {a.filename, *(s.basename() for s in a.sources)}]
    if hits:
        return [(path, a, RELEASED) for a in hits]
    if path.suffix == ".safetensors" and path.stem in models:
        return [(path, models[path.stem], SAFETENSORS)]
    owners = [a for a in models.values() if a.member and PurePosixPath(a.member).name == path.name]
    parts = {p.lower() for p in path.resolve().relative_to(folder.resolve()).parts[:-1]}
    parts.add(folder.resolve().name.lower())
    named = [a for a in owners if _folder_names(a) & parts]
    return [(path, named[0], MEMBER)] if len(named) == 1 else []


def _files(folder: Path):
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        for f in sorted(files):
            path = Path(root) / f
            if not f.startswith(".") and path.is_file() and not path.is_symlink():
                yield path


def _folder_names(art: Artifact) -> set[str]:
    """Folder names that say which artifact an unzipped member belongs to: the zip's stem, the name."""
    stems = {PurePosixPath(art.filename).stem, art.name, *(PurePosixPath(s.basename()).stem for s in art.sources)}
    return {s.lower() for s in stems if s}


def form_of(path: Path, art: Artifact) -> str:
    """Which form of ``art`` the file at ``path`` is, judged by its content."""
    from agetool.nn.checkpoint import is_released_zip

    if path.suffix.lower() == ".safetensors" and art.kind in _LOADERS and not art.filename.endswith(".safetensors"):
        return SAFETENSORS
    if art.member and art.kind in _LOADERS and not is_released_zip(path, PurePosixPath(art.member).name):
        return MEMBER
    return RELEASED


def _import(src: Path, art: Artifact, progress, say, *, trust: bool = False) -> Imported:
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    form = form_of(src, art)
    size = src.stat().st_size
    if trust and (form != RELEASED or art.size is not None and size != art.size or not art.has_checksum):
        form = OWN
    _check_size(src, size, art, form)  # before anything is copied
    name = art.name
    dest = store.file_path(art)
    if form == MEMBER:
        dest = dest.with_name(PurePosixPath(art.member).name)
    elif form == SAFETENSORS:
        dest = dest.with_name(f"{name}.safetensors")
    elif form == OWN:
        dest = dest.with_name(_own_name(src))
    with store.locked(art), store.writing():
        store.clean_stale(art)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = store.temp_path(dest)
        record = read_record(name)
        try:
            with progress_bar(progress, f"importing {name} ({human_size(size)}) from {src.name}", size) as advance:
                digest = _copy(src, tmp, art, advance)
            if form == RELEASED:
                why = store.mismatch(art, digest, record if record.get("form", RELEASED) == RELEASED else {})
                if why and trust:  # the released size, other bytes: a file of the user's own
                    form, dest = OWN, dest.with_name(_own_name(src))
                elif why:
                    raise ChecksumError(f"{src} is not {name}: {why}", hint=_not_it_hint(art))
            if form != RELEASED:
                _check_loads(tmp, art, form, src)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        base = record if record.get("form", RELEASED) == form else {k: v for k, v in record.items() if k in ("placed",)}
        _remember(art, dest, digest, base, say, source=f"import {src}", form=form)
    if form == OWN:
        checked = ("loads into its network" if art.kind in _LOADERS else
                   "opens as an ONNX model" if art.kind in _ONNX_KINDS else "not checked: no loader for its kind")
        say(f"{name}: {src.name} registered as your own file ({checked}); recorded sha256 {digest.sha256}")
    elif form in LOCAL_FORMS:
        what = "the unzipped generator" if form == MEMBER else "an agetool safetensors file"
        say(f"{name}: {src.name} is {what} and loads into its network, but could not be checked against a "
            f"published checksum (only the released {art.filename} has one); recorded sha256 {digest.sha256}")
    if art.non_commercial and form != OWN:
        say(art.license_line)
    return Imported(name, dest, form, src)


def _check_size(src: Path, size: int, art: Artifact, form: str) -> None:
    if form == RELEASED and art.size is not None and size != art.size:
        raise ChecksumError(f"{src} is not {art.name}: {size} bytes, expected {art.size}", hint=_not_it_hint(art))
    if size > max_bytes(art.kind):
        raise ChecksumError(f"{src} is not {art.name}: {human_size(size)}, more than a {art.kind} may have "
                            f"({human_size(max_bytes(art.kind))})", hint=_not_it_hint(art))


def _not_it_hint(art: Artifact) -> str:
    hint = "nothing was placed in the cache"
    argument = ARGUMENT_FOR_KIND.get(art.kind)
    if argument:
        hint += f"; a file of your own can be passed as {arg(argument, 'FILE')}"
    return hint + f", or registered once with `agetool weights import FILE --as {art.name} --trust`"


#: suffixes a registered own file keeps (loaders go by them); anything else is stored as .bin
_OWN_SUFFIXES = (".pth", ".pt", ".safetensors", ".zip", ".onnx", ".dat", ".bin")


def _own_name(src: Path) -> str:
    suffix = src.suffix.lower()
    return "own" + (suffix if suffix in _OWN_SUFFIXES else ".bin")


def _copy(src: Path, tmp: Path, art: Artifact, advance) -> store.Digest:
    """Hash while copying; never more bytes than the size checked (the source may grow meanwhile)."""
    try:
        return store.hash_file(src, md5=bool(art.md5), advance=advance, copy_to=tmp)
    except OSError as e:
        if e.filename and Path(e.filename) == src:
            raise WeightsError(f"{src}: {e.strerror}") from None
        raise


def _check_generator(path: Path, art: Artifact, form: str) -> None:
    from agetool.nn.checkpoint import GENERATOR_MEMBER, read_generator

    read_generator(path, member=art.member or GENERATOR_MEMBER, base=art.config, what=art.name)


def _check_parser(path: Path, art: Artifact, form: str) -> None:
    from agetool.nn.parser import parser_from_file

    parser_from_file(path)


_LOADERS = {"generator": _check_generator, "parser": _check_parser}


def _check_onnx(path: Path, art: Artifact, form: str) -> None:
    from agetool.nn.onnxrt import session

    session(path, argument="file")


_ONNX_KINDS = ("classifier", "recognition")


def _check_loads(tmp: Path, art: Artifact, form: str, src: Path) -> None:
    """A file without a published checksum must at least load strictly into its network (own files
    of kinds agetool has no loader for are taken as they are)."""
    from agetool.errors import CheckpointError

    check = _LOADERS.get(art.kind) or (_check_onnx if art.kind in _ONNX_KINDS else None)
    if check is None:
        return
    try:
        check(tmp, art, form)
    except CheckpointError as e:
        raise ChecksumError(f"{src} is not {art.name}: {e.message.replace(str(tmp), src.name)}",
                            hint=_not_it_hint(art)) from None
