"""Defaults a user sets once: model files and options, from a config file and the environment.

The file is ``$AGETOOL_CONFIG``, else ``$XDG_CONFIG_HOME/agetool/config.toml`` (``~/.config/agetool/
config.toml``). Keys are the command-line option names without ``--``, at the top level::

    parser-weights = "~/models/my_parser.pth"
    age-model = "~/models/genderage.onnx"
    device = "cpu"
    offline = true

Environment variables ``AGETOOL_<KEY>`` (``AGETOOL_PARSER_WEIGHTS``, ``AGETOOL_DEVICE`` ...) win over
the file. Nothing here applies a value: ``load_settings`` reads and checks them, and the command line
uses them as the defaults of its flags (a flag given on the command line wins).
"""

from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from agetool.errors import UsageError

CONFIG_ENV = "AGETOOL_CONFIG"
ENV_PREFIX = "AGETOOL_"
MAX_BYTES = 64 << 10  # a config file is a few lines; anything larger is not one

#: key -> (kind, help); kind is "file", "file-or-name", "bool", "text" (any word) or a tuple of the
#: accepted words
KEYS: dict[str, tuple] = {
    "weights": ("file", "generator checkpoint used instead of --model"),
    "parser-weights": ("file", "face-parser checkpoint"),
    "age-model": ("file", "gender / age classifier (ONNX)"),
    "identity-model": ("file-or-name", "identity embedder: a file or a registered name"),
    "upscale-weights": ("file-or-name", "super-resolution model: a file or a registered name"),
    "model": (("auto", "male", "female"), "generator choice"),
    "landmarks": (("auto", "fan", "dlib"), "landmark backend"),
    "device": ("text", "auto, cpu, cuda, cuda:N or mps"),
    "dtype": (("auto", "float32", "bfloat16", "float16"), "generator precision"),
    "identity": ("text", "identity embedder from the registry"),
    "offline": ("bool", "never use the network"),
    "commercial-safe": ("bool", "refuse every model whose licence is non-commercial"),
    "sign": ("file", "certificate chain (PEM) that signs every output's Content Credentials"),
    "sign-key": ("file", "private key (PEM) of the signing certificate"),
    "label": ("bool", "a visible \"AI-aged\" mark on paste-back photos and clips"),
}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def config_path() -> Path:
    """Where the config file is read from (it need not exist)."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "agetool" / "config.toml"


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace("-", "_")


@dataclass
class Settings:
    """The defaults found: ``values`` by key (``parser-weights`` ...), ``origin`` by key (the file
    path or the environment variable each came from), and the file read (None when there is none)."""

    values: dict[str, object] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def get(self, key: str, default=None):
        return self.values.get(key, default)


def load_settings(path: str | os.PathLike | None = None, environ: dict | None = None) -> Settings:
    """The config file (``path``, default ``config_path()``) and the ``AGETOOL_<KEY>`` variables of
    ``environ`` (default ``os.environ``), checked; ``UsageError`` naming the file (or variable) and
    the key for anything wrong."""
    environ = os.environ if environ is None else environ
    file = Path(path).expanduser() if path is not None else config_path()
    settings = Settings()
    if _exists(file):
        settings.path = file
        for key, value in _read_file(file).items():
            settings.values[key] = _check(key, value, f"{file}: {key}", file.parent)
            settings.origin[key] = str(file)
    for key in KEYS:
        name = env_name(key)
        raw = environ.get(name)
        if raw is not None and raw.strip() != "":
            settings.values[key] = _check(key, raw.strip(), name, None)
            settings.origin[key] = name
    return settings


def _exists(file: Path) -> bool:
    try:
        file.lstat()
    except OSError:
        if os.environ.get(CONFIG_ENV):
            raise UsageError(f"{file}: no such config file", hint=f"fix or unset {CONFIG_ENV}") from None
        return False
    return True


def _read_file(file: Path) -> dict:
    try:
        st = file.stat()
    except OSError as e:
        raise UsageError(f"{file}: can't read the config file ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{file}: the config file is not a regular file")
    if st.st_size > MAX_BYTES:
        raise UsageError(f"{file}: the config file is {st.st_size:,} bytes, more than a config file may have "
                         f"({MAX_BYTES:,})")
    try:
        with open(file, "rb") as f:
            data = f.read(MAX_BYTES + 1)
        text = data.decode("utf-8")
    except OSError as e:
        raise UsageError(f"{file}: can't read the config file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{file}: the config file is not UTF-8 text") from None
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{file}: not valid TOML ({e})") from None
    except RecursionError:
        raise UsageError(f"{file}: not valid TOML (nested too deeply)") from None
    except ValueError as e:  # a whole number of more digits than Python converts
        raise UsageError(f"{file}: not valid TOML ({str(e)[:80]})") from None
    for key in table:
        if key not in KEYS:
            raise UsageError(f"{file}: {key}: unknown key", hint=f"known keys: {', '.join(KEYS)}")
    return table


def _check(key: str, value: object, where: str, base: Path | None):
    kind = KEYS[key][0]
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise UsageError(f"{where}: expected true or false, got {value!r}")
    if not isinstance(value, str) or not value.strip() or len(value) > 4096 or "\x00" in value:
        raise UsageError(f"{where}: expected a text value, got {value!r}")
    if kind in ("file", "file-or-name"):
        path = Path(value).expanduser()
        if base is not None and not path.is_absolute():
            path = base / path  # relative to the config file, not to where a command runs
        if path.is_file():
            return path
        if kind == "file-or-name" and re.fullmatch(r"[a-z0-9][a-z0-9._-]*", value) and "." not in value:
            return value  # a registered name (checked where it is used)
        raise UsageError(f"{where}: {path}: no such file")
    if isinstance(kind, tuple) and value not in kind:
        raise UsageError(f"{where}: {value!r}: expected {', '.join(kind)}")
    return value
