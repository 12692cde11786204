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
(``males_model/latest_net_g_running.pth``), or ``<name>.safetensors``; every file in it is either
imported or named with the reason it was not.

Whatever is registered without a published checksum (an own file, or a copy of an artifact that
publishes none) is loaded first, by the loader of its kind, with the limits a run has.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from agetool.errors import AgetoolError, ChecksumError, WeightsError, arg
from agetool.loading import Loading, given
from agetool.weights import store
from agetool.weights.core import _remember, human_size
from agetool.weights.registry import ARGUMENT_FOR_KIND, ROLES, Artifact, check_name, get, load_registry, max_bytes
from agetool.weights.store import LOCAL_FORMS, MEMBER, OWN, RELEASED, SAFETENSORS, read_record
from agetool.weights.transfer import progress_bar

MAX_DEPTH = 3  # folder levels searched below the folder given


@dataclass
class Imported:
    name: str
    path: Path  # where it now lives in the cache
    form: str  # released | member | safetensors | own
    source: Path  # the file given


@dataclass
class Skipped:
    source: Path  # a file of the folder that was not imported
    reason: AgetoolError  # why (its message names the file)
    recognised: bool = True  # False: no registered name or size (any other file of the folder)


@dataclass
class FolderImport:
    imported: list[Imported]
    skipped: list[Skipped]  # every other file of the folder, with the reason


def import_file(src: str | os.PathLike, name: str | None = None, *, trust: bool = False,
                loading: Loading | None = None, progress=None, report=None) -> Path:
    """Verify a file the user has and place it in the cache as artifact ``name`` (any accepted
    form, see the module docstring; None: recognised by its size, name or folder); returns its
    path in the cache.

    ``trust=True`` registers a file of the user's own for ``name`` (a fine-tuned parser, another
    classifier): the published size and checksums are not asked for; the file must still load
    where agetool can load that kind, and its sha256 is pinned. The released file itself is
    imported as released. ``progress`` and ``report`` as for ``fetch`` (or ``loading``)."""
    loading = given(loading, progress=progress, report=report)
    src = _regular_file(Path(src).expanduser())
    if trust and name is None:
        raise WeightsError(f"{arg('trust')} registers a file for a name", hint="name it: --as NAME")
    if name is None:
        hits = recognise_file(src, src.parent) if src.is_file() else []
        if len({a.name for _, a, _ in hits}) != 1:
            raise WeightsError(f"{src}: can't tell which registered file this is",
                               hint="name it: agetool weights import FILE --as NAME")
        name = hits[0][1].name
    return _import(src, get(check_name(name)), loading, trust=trust).path


def import_folder(folder: str | os.PathLike, *, loading: Loading | None = None, progress=None,
                  report=None) -> FolderImport:
    """Import every recognised file under ``folder``; every other file is returned with the reason
    it was not imported (not recognised, ambiguous, failed verification, a link). ``WeightsError``
    when nothing could be imported."""
    loading = given(loading, progress=progress, report=report)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise WeightsError(f"{folder}: no such folder")
    done: list[Imported] = []
    skipped: list[Skipped] = []
    found, unknown = [], []
    for path in _files(folder):
        if path.is_symlink() or not path.is_file():
            what = "a symbolic link" if path.is_symlink() else "not a regular file"
            skipped.append(Skipped(path, WeightsError(f"{path}: {what}; links are not followed in a folder",
                                                      hint=f"import the file it points to: "
                                                           f"`agetool weights import {_target(path)}`")))
            continue
        hits = recognise_file(path, folder)
        if hits:
            found += hits
            continue
        owners = _member_owners(path)
        if len(owners) > 1:
            names = " or ".join(a.name for a in owners)
            skipped.append(Skipped(path, WeightsError(
                f"{path}: the unzipped generator of {names}; the folder's name does not say which",
                hint=f"name it: `agetool weights import {path} --as {owners[0].name}` (or {owners[1].name}), "
                     f"or keep it in a folder named {' or '.join(sorted(_zip_folders(owners)))}")))
        else:
            unknown.append(path)
    for path, art, form in sorted(found, key=lambda t: (t[2] != RELEASED, str(t[0]))):
        first = next((d for d in done if d.name == art.name), None)
        if first is not None:
            skipped.append(Skipped(path, WeightsError(f"{path}: {art.name} was imported from {first.source} "
                                                      f"already")))
            continue
        try:
            done.append(_import(path, art, loading))
        except AgetoolError as e:
            skipped.append(Skipped(path, e))
    for path in unknown:
        skipped.append(Skipped(path, WeightsError(f"{path}: not a registered file (no registered name or size)",
                                                  hint="name it if it stands for one: "
                                                       "`agetool weights import FILE --as NAME`"),
                               recognised=False))
    if not done:
        known = sorted({a.filename for a in load_registry().values()} | {"latest_net_g_running.pth"})
        failed = [k for k in skipped if k.recognised]
        why = (f"{len(failed)} file(s) not imported, {len(unknown)} not recognised" if failed
               else "no file with a registered name or size")
        error = WeightsError(f"nothing imported from {folder}: {why}",
                             hint=f"known files: {', '.join(known)}; or name one: "
                                  f"`agetool weights import FILE --as NAME`")
        error.skipped = skipped
        raise error
    return FolderImport(done, skipped)


def _regular_file(src: Path) -> Path:
    """``src`` with links resolved; a ``WeightsError`` unless that is a regular file (a device, a
    FIFO or a folder is never read as weights)."""
    import stat

    if src.is_symlink():
        target = src.resolve()
        if not target.exists():
            raise WeightsError(f"{src}: a link to {target}, which does not exist")
        src = target
    try:
        mode = src.stat().st_mode
    except OSError:
        raise WeightsError(f"{src}: no such file") from None
    if not stat.S_ISREG(mode):
        raise WeightsError(f"{src}: not a regular file", hint="give a model file")
    return src


def _target(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:  # pragma: no cover - a link loop
        return "FILE"


def _member_owners(path: Path) -> list[Artifact]:
    return [a for a in load_registry().values() if a.member and PurePosixPath(a.member).name == path.name]


def _zip_folders(arts: list[Artifact]) -> set[str]:
    return {PurePosixPath(a.filename).stem + "/" for a in arts}


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
    owners = _member_owners(path)
    parts = {p.lower() for p in path.resolve().relative_to(folder.resolve()).parts[:-1]}
    parts.add(folder.resolve().name.lower())
    named = [a for a in owners if _folder_names(a) & parts]
    return [(path, named[0], MEMBER)] if len(named) == 1 else []


def _files(folder: Path):
    for root, dirs, files in os.walk(folder):
        depth = len(Path(root).relative_to(folder).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        for f in sorted(files):
            if not f.startswith("."):
                yield Path(root) / f


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


def _import(src: Path, art: Artifact, loading: Loading, *, trust: bool = False) -> Imported:
    say = loading.say
    if not src.is_file():
        raise WeightsError(f"{src}: no such file")
    form = form_of(src, art)
    size = src.stat().st_size
    if trust and (form != RELEASED or art.size is not None and size != art.size or not art.has_checksum):
        form = OWN
    if form == RELEASED and not art.has_checksum and not _pinned(art):
        form = OWN  # nothing published to compare with: the file can't be told from another, it is yours
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
            with progress_bar(loading.progress, f"importing {name} ({human_size(size)}) from {src.name}", size) as advance:
                digest = _copy(src, tmp, art, advance)
            if form == RELEASED:
                why = store.mismatch(art, digest, record if record.get("form", RELEASED) == RELEASED else {})
                if why and trust:  # the released size, other bytes: a file of the user's own
                    form, dest = OWN, dest.with_name(_own_name(src))
                elif why:
                    raise ChecksumError(f"{src} is not {name}: {why}", hint=_not_it_hint(art))
            if form != RELEASED:
                _check_loads(tmp, art, form, src, trust=trust)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        base = record if record.get("form", RELEASED) == form else {k: v for k, v in record.items() if k in ("placed",)}
        _remember(art, dest, digest, base, say, source=f"import {src}", form=form)
    if form == OWN:
        checked = "opens as an ONNX model" if art.kind in _ONNX_KINDS else "loads into its network"
        why = "" if trust else f"{name} publishes no checksum, so a copy can't be told from another file: "
        say(f"{name}: {why}{_short(src.name)} registered as your own file ({checked}); recorded sha256 "
            f"{digest.sha256}")
    elif form in LOCAL_FORMS:
        what = "the unzipped generator" if form == MEMBER else "an agetool safetensors file"
        say(f"{name}: {_short(src.name)} is {what} and loads into its network, but could not be checked against a "
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


def _role(art: Artifact, adjective: str = "") -> str:
    """What a file of ``art``'s kind is, with its article: "an age and gender classifier"."""
    role = " ".join(filter(None, (adjective, ROLES.get(art.kind, art.kind + " file"))))
    return ("an " if role[0] in "aeio" else "a ") + role


def _pinned(art: Artifact) -> bool:
    """Whether a verified download of ``art`` recorded its sha256 (later copies must match it)."""
    record = read_record(art.name)
    return bool(record.get("sha256")) and record.get("form", RELEASED) == RELEASED


def _short(text: str, limit: int = 80) -> str:
    """A file name for a message, cut in the middle when long."""
    return text if len(text) <= limit else text[:limit // 2 - 2] + "..." + text[-(limit // 2 - 1):]


def _not_it_hint(art: Artifact, trust: bool = False) -> str:
    hint = "nothing was placed in the cache"
    if trust:
        return hint + f"; {art.name} takes {_role(art)} that agetool can load"
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


def _check_onnx(path: Path, art: Artifact, form: str) -> None:
    from agetool.nn.onnxrt import session

    session(path, argument="file")


def _check_upscaler(path: Path, art: Artifact, form: str) -> None:
    from agetool.nn.realesrgan import read_network

    read_network(path)


def _check_dlib(path: Path, art: Artifact, form: str) -> None:
    import dlib

    from agetool.errors import CheckpointError, detail

    try:
        dlib.shape_predictor(str(path))
    except (RuntimeError, MemoryError) as e:
        raise CheckpointError(f"{path}: not a dlib shape predictor ({detail(e)})") from None


def _check_face_alignment(path: Path, art: Artifact, form: str) -> None:
    """face-alignment's own networks: the tensors (nothing else unpickled) loaded strictly, as it loads them."""
    from agetool.nn.checkpoint import load_into, read_state_dict

    if art.kind == "detector":
        from face_alignment.detection.sfd.net_s3fd import s3fd as network
    else:
        from face_alignment.models import FAN

        def network():
            return FAN(4)

    sd, _ = read_state_dict(path)
    load_into(network(), sd, path.name)


def _loader(art: Artifact):
    """The check of ``art``'s kind: the loader a run uses for it."""
    if art.kind in ("generator", "parser"):
        return {"generator": _check_generator, "parser": _check_parser}[art.kind]
    if art.kind in _ONNX_KINDS:
        return _check_onnx
    if art.kind == "upscaler":
        return _check_upscaler
    if art.kind == "landmarks" and art.filename.endswith(".dat"):
        return _check_dlib
    if art.kind in ("landmarks", "detector"):
        return _check_face_alignment
    return None


_LOADERS = ("generator", "parser")  # kinds whose local forms (member, safetensors) are imported
_ONNX_KINDS = ("classifier", "recognition")


def _check_loads(tmp: Path, art: Artifact, form: str, src: Path, *, trust: bool = False) -> None:
    """A file without a published checksum must at least load into its network, by the loader a
    run uses and with its limits; a kind without a loader is refused."""
    from agetool.errors import CheckpointError, render

    check = _loader(art)
    if check is None:
        raise WeightsError(f"{src}: {art.name} is a {art.kind} file, which agetool can't check",
                           hint="only the published file can be imported for it")
    try:
        check(tmp, art, form)
    except CheckpointError as e:
        text = render(e.message, lambda name, python, plain: plain if plain is not None else name)
        text = text.replace(str(tmp) + ": ", "").replace(str(tmp), _short(src.name)).replace(tmp.name, _short(src.name))
        raise ChecksumError(f"{src} is not {_role(art, 'usable') if trust else art.name}: {text}",
                            hint=_not_it_hint(art, trust)) from None
