"""The weights registry: ``weights.toml`` at the repository root, or the file named by
``AGETOOL_REGISTRY``. Parsed into :class:`Artifact` records and validated, so that nothing read
from it (a name, a file name) can point outside the cache."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from agetool.errors import UnknownWeightsError, WeightsError

REGISTRY_ENV = "AGETOOL_REGISTRY"
# A checkout keeps the registry at the repository root; a wheel carries a copy as package data.
_ROOT_REGISTRY = Path(__file__).resolve().parents[2] / "weights.toml"
DEFAULT_REGISTRY = _ROOT_REGISTRY if _ROOT_REGISTRY.is_file() else Path(__file__).resolve().parents[1] / "data" / "weights.toml"

KINDS = ("generator", "parser", "landmarks", "detector", "classifier", "recognition", "upscaler")
REPO_TYPES = ("model", "space", "dataset")
NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
FILENAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")
HUB_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
HEX_DIGITS = {"md5": 32, "sha256": 64}
RESERVED_SUFFIXES = (".part", ".json", ".lock", ".tmp")
#: The most bytes a file of each kind may have when the registry gives no size: downloads and
#: imports of unsized entries stop there, and zip members are never read past MAX_MEMBER_BYTES
#: (a few times the largest known checkpoint, the 464 MB face parser).
KIND_MAX_BYTES = {"generator": 1 << 30, "parser": 1 << 30, "landmarks": 512 << 20, "detector": 512 << 20,
                  "classifier": 512 << 20, "recognition": 1 << 30, "upscaler": 512 << 20}
DEFAULT_MAX_BYTES = 2 << 30
MAX_MEMBER_BYTES = 2 << 30
#: The Python argument that takes a file of this kind instead of the registry's (the command line
#: shows it as its flag).
#: what each kind of file is, in a message
ROLES = {"generator": "generator", "parser": "face parser", "classifier": "age and gender classifier",
         "landmarks": "landmark model", "detector": "face detector", "recognition": "identity embedder",
         "upscaler": "super-resolution model"}
ARGUMENT_FOR_KIND = {"generator": "model", "parser": "parser_weights", "classifier": "classifier_weights",
                     "recognition": "identity_model", "upscaler": "upscale_weights"}


def max_bytes(kind: str) -> int:
    """The size cap for an artifact of ``kind`` whose registry entry gives no size."""
    return KIND_MAX_BYTES.get(kind, DEFAULT_MAX_BYTES)


@dataclass(frozen=True)
class Source:
    """One place an artifact can be fetched from: a direct URL, or a file in a Hub repository."""

    url: str | None = None
    hub: str | None = None
    filename: str | None = None
    revision: str | None = None
    repo_type: str = "model"

    @property
    def is_hub(self) -> bool:
        return self.hub is not None

    def basename(self) -> str:
        if self.is_hub:
            return PurePosixPath(self.filename or "").name
        return PurePosixPath(unquote(urlparse(self.url or "").path)).name

    @property
    def address(self) -> str:
        """Where a person can fetch the file by hand: the URL, or the Hub file's download URL."""
        if not self.is_hub:
            return self.url or "?"
        import os

        base = (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")
        kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
        return f"{base}/{kind}{self.hub}/resolve/{self.revision or 'main'}/{self.filename}"

    def describe(self) -> str:
        if self.is_hub:
            kind = "" if self.repo_type == "model" else f"{self.repo_type}s/"
            at = f"@{self.revision[:12]}" if self.revision else ""
            return f"hub:{kind}{self.hub}/{self.filename}{at}"
        return self.url or "?"


@dataclass(frozen=True)
class Artifact:
    name: str
    kind: str
    description: str
    license: str
    license_url: str
    filename: str
    non_commercial: bool = False
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    member: str | None = None
    sources: tuple[Source, ...] = ()
    config: dict = field(default_factory=dict)
    bundled: tuple[str, str] | None = None  # (Python package, path inside it) of a copy that ships installed
    preprocess: dict = field(default_factory=dict)  # what the model expects of its input (sizes, mean, std, ...)

    @property
    def has_checksum(self) -> bool:
        return bool(self.md5 or self.sha256)

    @property
    def license_line(self) -> str:
        note = " (non-commercial)" if self.non_commercial and "non-commercial" not in self.license.lower() else ""
        url = f" {self.license_url}" if self.license_url else ""
        return f"{self.name}: {self.license}{note}{url}"

    @property
    def import_command(self) -> str:
        return f"agetool weights import FILE --as {self.name}"


def check_name(name: str) -> str:
    """An artifact name that is safe as a cache path component (lower case, digits, . _ -)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise UnknownWeightsError(f"invalid artifact name {_shown_name(name)}",
                                  hint="names use lower-case letters, digits, '.', '_' and '-'; "
                                       "`agetool weights list` shows them")
    return name


def _shown_name(name) -> str:
    """``name`` quoted for a message, cut when long."""
    text = repr(name)
    return text if len(text) <= 60 else text[:56] + "...'"


def registry_path() -> Path:
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else DEFAULT_REGISTRY


_CACHE: dict[tuple, dict[str, Artifact]] = {}


def load_registry(path: Path | None = None) -> dict[str, Artifact]:
    """All artifacts of the registry, by name (parsed once per file version)."""
    path = path or registry_path()
    try:
        st = path.stat()
    except OSError:
        hint = f"unset {REGISTRY_ENV}" if os.environ.get(REGISTRY_ENV) else "reinstall agetool"
        raise WeightsError(f"weights registry not found: {path}", hint=hint) from None
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        while len(_CACHE) >= 4:  # the active registry, the bundled one, and a few earlier versions
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = parse_registry(path.read_bytes(), str(path))
    return _CACHE[key]


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise WeightsError(f"weights registry is not valid TOML: {e}") from None


def parse_registry(data: bytes, where: str = "registry") -> dict[str, Artifact]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise WeightsError(f"{where}: not UTF-8 text") from None
    models = _toml_loads(text).get("models")
    if not isinstance(models, dict) or not models:
        raise WeightsError(f"{where}: no [models.<name>] tables")
    return {name: _artifact(name, entry, where) for name, entry in models.items()}


def _artifact(name: str, entry: object, where: str) -> Artifact:
    check_name(name)
    ctx = f"{where}: models.{name}"
    if not isinstance(entry, dict):
        raise WeightsError(f"{ctx}: expected a table")
    kind = entry.get("kind", "other")  # KINDS are the ones agetool uses; others are kept as given
    if not isinstance(kind, str) or not kind:
        raise WeightsError(f"{ctx}: kind must be a word such as {', '.join(KINDS)}")
    size = entry.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise WeightsError(f"{ctx}: size must be a positive integer")
    sums = {}
    for algo, digits in HEX_DIGITS.items():
        value = entry.get(algo)
        if value is not None:
            if not isinstance(value, str) or not re.fullmatch(f"[0-9a-f]{{{digits}}}", value.lower()):
                raise WeightsError(f"{ctx}: {algo} must be {digits} hex digits")
            sums[algo] = value.lower()
    raw_sources = entry.get("sources", [{"url": entry["url"]}] if "url" in entry else [])
    if not isinstance(raw_sources, list):
        raise WeightsError(f"{ctx}: sources must be a list")
    sources = tuple(_source(s, ctx) for s in raw_sources)
    filename = entry.get("filename")
    if filename is None:
        filename = next((s.basename() for s in sources if _plain_filename(s.basename())), f"{name}.bin")
    if not _plain_filename(filename):
        raise WeightsError(f"{ctx}: filename {filename!r} is not a plain file name")
    member = entry.get("member")
    if member is not None and (not isinstance(member, str) or not member.strip("/")):
        raise WeightsError(f"{ctx}: member must be a path inside the zip")
    config = entry.get("config", {})
    if not isinstance(config, dict):
        raise WeightsError(f"{ctx}: config must be a table")
    preprocess = entry.get("preprocess", {})
    if not isinstance(preprocess, dict):
        raise WeightsError(f"{ctx}: preprocess must be a table")
    bundled = entry.get("bundled")
    if bundled is not None:
        package, inside = (bundled.get("package"), bundled.get("path")) if isinstance(bundled, dict) else (None, None)
        parts = PurePosixPath(inside).parts if isinstance(inside, str) else ()
        if not isinstance(package, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", package) or not parts \
                or inside.startswith("/") or ".." in parts:
            raise WeightsError(f"{ctx}: bundled must be {{ package = \"module\", path = \"relative/file\" }}")
        bundled = (package, inside)
    return Artifact(
        name=name, kind=kind, description=str(entry.get("description", "")),
        license=str(entry.get("license", "unknown")), license_url=str(entry.get("license_url", "")),
        non_commercial=bool(entry.get("non_commercial", False)), filename=filename, size=size,
        md5=sums.get("md5"), sha256=sums.get("sha256"), member=member, sources=sources, config=config,
        bundled=bundled, preprocess=preprocess,
    )


def _plain_filename(name: object) -> bool:
    return isinstance(name, str) and bool(FILENAME_RE.fullmatch(name)) and not name.endswith(RESERVED_SUFFIXES)


def _source(raw: object, ctx: str) -> Source:
    if not isinstance(raw, dict) or ("url" in raw) == ("hub" in raw):
        raise WeightsError(f"{ctx}: each source needs exactly one of url = ... or hub = ...")
    if "url" in raw:
        url = raw["url"]
        if not isinstance(url, str) or urlparse(url).scheme not in ("http", "https") or not urlparse(url).netloc:
            raise WeightsError(f"{ctx}: source url must be http(s): {url!r}")
        return Source(url=url)
    hub, filename = raw.get("hub"), raw.get("filename")
    if not isinstance(hub, str) or not HUB_REPO_RE.fullmatch(hub):
        raise WeightsError(f"{ctx}: hub must be 'owner/repo', not {hub!r}")
    parts = PurePosixPath(filename).parts if isinstance(filename, str) else ()
    if not parts or filename.startswith("/") or any(p in ("..", ".") for p in parts):
        raise WeightsError(f"{ctx}: hub source needs a relative filename inside the repository")
    repo_type = raw.get("repo_type", "model")
    if repo_type not in REPO_TYPES:
        raise WeightsError(f"{ctx}: repo_type must be one of {', '.join(REPO_TYPES)}")
    revision = raw.get("revision")
    if revision is not None and (not isinstance(revision, str) or not revision):
        raise WeightsError(f"{ctx}: revision must be a commit sha, branch or tag")
    return Source(hub=hub, filename=filename, revision=revision, repo_type=repo_type)


def get(name: str) -> Artifact:
    """The registered artifact ``name`` (a typed error listing the known names otherwise)."""
    check_name(name)
    models = load_registry()
    if name not in models:
        raise UnknownWeightsError(f"unknown weights {_shown_name(name)}", hint=f"known: {', '.join(sorted(models))}")
    return models[name]


def preprocessing(name: str) -> dict:
    """What model ``name`` expects of its input (its entry's ``preprocess`` table), also for a file of
    that role given by path. A registry of one's own (``AGETOOL_REGISTRY``) without the table takes
    the bundled registry's: the facts of the released models have one home, ``weights.toml``."""
    models = load_registry()
    if name in models and models[name].preprocess:
        return dict(models[name].preprocess)
    bundled = load_registry(DEFAULT_REGISTRY) if registry_path() != DEFAULT_REGISTRY else models
    if name not in bundled or not bundled[name].preprocess:
        raise WeightsError(f"the registry has no preprocessing for {name!r}", hint="reinstall agetool")
    return dict(bundled[name].preprocess)
