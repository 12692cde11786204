"""Getting bytes from one source: a direct URL (resumable with HTTP Range, retried with backoff)
or a Hub file through ``huggingface_hub`` (Hub cache, ``HF_ENDPOINT``, ``HF_HOME``).

Failures are sorted by whether another try could help: an unreachable host (name not found,
connection refused, no answer to connect), a permanent HTTP status, a redirect loop or a source
that serves the wrong size move on to the next source at once; timeouts mid-transfer, dropped
connections and 5xx / 429 answers are retried with backoff while each try makes progress. Every
transfer has an overall deadline and a minimum rate (``MIN_BYTES`` per ``RATE_WINDOW_S``), and
reads at most the registered size (or, without one, the source's Content-Length or the kind's
maximum, :func:`agetool.weights.registry.max_bytes`).
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from agetool.weights.registry import Artifact, Source, max_bytes
from agetool.weights.store import CHUNK, hub_cache_dir

RETRIES = 4  # attempts in a row without progress before a source is given up
BACKOFF_S = 1.0  # first wait between attempts; doubles each time
TIMEOUT_S = 10.0  # to connect, and for each read
MAX_ATTEMPTS = 50  # attempts per source in all, even when each one makes progress
RETRY_HTTP = {408, 425, 429}  # and every 5xx; other statuses are final
DEADLINE_S = 600.0  # a whole download may take this long ...
DEADLINE_RATE = 100_000  # ... plus one second per this many bytes expected
RATE_WINDOW_S = 60.0  # a transfer slower than MIN_BYTES in this window is given up
MIN_BYTES = 64 * 1024
UNREACHABLE_ERRNO = {errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL}


class SourceFailed(Exception):
    """One source could not deliver; ``reason`` is a short phrase for the final error."""

    def __init__(self, reason: str, *, permanent: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


@contextmanager
def progress_bar(progress, description: str, total: int | None):
    """Open a bar with the caller's ``progress`` factory (see ``agetool.weights``); yields ``advance``."""
    if progress is None:
        yield lambda n: None
        return
    advance = progress(description, total)
    try:
        yield advance
    finally:
        close = getattr(advance, "close", None)
        if callable(close):
            close()


def _user_agent() -> str:
    from agetool import __version__

    return f"agetool/{__version__}"


# --- direct URLs ---------------------------------------------------------------------------------

def download_url(art: Artifact, src: Source, part: Path, *, progress=None) -> None:
    """Complete ``part`` from ``src.url``, resuming whatever is already in it."""
    part.parent.mkdir(parents=True, exist_ok=True)
    watch = Watch(art)
    stalled = attempts = 0
    while True:
        before = _size(part)
        attempts += 1
        try:
            _get_once(art, src.url, part, progress, watch)
            return
        except SourceFailed as e:
            if e.permanent or attempts >= MAX_ATTEMPTS:
                raise
            stalled = 0 if _size(part) > before else stalled + 1
            if stalled >= RETRIES:
                raise SourceFailed(f"{e.reason} (gave up after {attempts} attempts)") from None
            watch.sleep(BACKOFF_S * 2 ** max(stalled - 1, 0))


class Watch:
    """The overall deadline and the minimum-rate rule of one download."""

    def __init__(self, art: Artifact, expected: int | None = None):
        size = art.size or expected or max_bytes(art.kind)
        self.deadline_s = DEADLINE_S + size / DEADLINE_RATE
        self.deadline = time.monotonic() + self.deadline_s
        self.window_start, self.window_bytes = time.monotonic(), 0

    def restart_window(self) -> None:
        self.window_start, self.window_bytes = time.monotonic(), 0

    def check(self, n: int = 0) -> None:
        now = time.monotonic()
        if now > self.deadline:
            raise SourceFailed(f"not complete after {self.deadline_s:.0f} s", permanent=True)
        self.window_bytes += n
        if now - self.window_start >= RATE_WINDOW_S:
            if self.window_bytes < MIN_BYTES:
                raise SourceFailed(f"too slow ({self.window_bytes} bytes in {now - self.window_start:.0f} s)",
                                   permanent=True)
            self.window_start, self.window_bytes = now, 0

    def sleep(self, seconds: float) -> None:
        if time.monotonic() + seconds > self.deadline:
            raise SourceFailed(f"not complete after {self.deadline_s:.0f} s", permanent=True)
        time.sleep(seconds)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _get_once(art: Artifact, url: str, part: Path, progress, watch: Watch) -> None:
    offset = _size(part)
    if art.size is not None and offset > art.size:
        part.unlink()
        offset = 0
    if art.size is not None and offset == art.size:
        return  # complete from an earlier run; verification decides whether it is good
    headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the partial file doesn't fit what the server has
            part.unlink(missing_ok=True)
            raise SourceFailed("HTTP 416 on resume; starting over") from None
        raise _http_failed(e.code, e.reason if e.code < 300 or e.code >= 400 else "redirect loop") from None
    except urllib.error.URLError as e:
        raise _connect_failed(e.reason, url) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _connect_failed(e, url) from None
    with resp:
        total = _int(resp.headers.get("Content-Length"))
        if offset and resp.status == 206:
            start, full = _content_range(resp.headers.get("Content-Range"))
            if start != offset:
                part.unlink(missing_ok=True)
                raise SourceFailed("server resumed at the wrong offset; starting over")
            total = full if full is not None else (offset + total if total is not None else None)
            mode = "ab"
        else:  # a full response (the server may ignore Range): start from the beginning
            offset, mode = 0, "wb"
        if art.size is not None and total is not None and total != art.size:
            raise SourceFailed(f"server offers {total} bytes, expected {art.size}", permanent=True)
        limit = art.size or max_bytes(art.kind)
        if total is not None and total > limit:
            raise SourceFailed(f"server offers {total} bytes, more than the {limit} a {art.kind} may have",
                               permanent=True)
        limit = total if total is not None else limit
        got = offset
        watch.restart_window()
        with progress_bar(progress, art.name, total) as advance, open(part, mode) as f:
            advance(offset)
            try:
                while chunk := resp.read1(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    advance(len(chunk))
                    if got > limit:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise SourceFailed(f"server sent more than {limit} bytes", permanent=True)
                    watch.check(len(chunk))
            except (OSError, http.client.HTTPException) as e:
                raise SourceFailed(f"connection lost after {got} bytes ({_reason(e)})") from None
    if total is not None and got < total:
        raise SourceFailed(f"connection closed after {got} of {total} bytes")


def _http_failed(code: int, reason: object) -> SourceFailed:
    text = f"HTTP {code} {one_line(str(reason or ''))}".strip()
    return SourceFailed(text, permanent=not (code in RETRY_HTTP or 500 <= code < 600))


def _connect_failed(e: object, url: str) -> SourceFailed:
    """A failure before any byte arrived: final for this source when the host can't be reached."""
    host = urlparse(url).hostname or url
    if isinstance(e, socket.gaierror):
        return SourceFailed(f"host {host} not found", permanent=True)
    if isinstance(e, (TimeoutError, socket.timeout)):
        return SourceFailed(f"no answer from {host} within {TIMEOUT_S:.0f} s", permanent=True)
    if isinstance(e, OSError) and e.errno in UNREACHABLE_ERRNO:
        what = "refused the connection" if e.errno == errno.ECONNREFUSED else "is unreachable"
        return SourceFailed(f"{host} {what}", permanent=True)
    return SourceFailed(_reason(e))


def one_line(text: str, limit: int = 160) -> str:
    """``text`` on one line, shortened at a word boundary."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " ..."


def _reason(e: object) -> str:
    return one_line(str(e)) or type(e).__name__


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not m:
        return None, None
    return int(m.group(1)), (int(m.group(3)) if m.group(3) != "*" else None)


# --- Hub files -----------------------------------------------------------------------------------

def hub_cached(src: Source) -> Path | None:
    """The Hub-cache copy of ``src`` if present (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(src.hub, src.filename, cache_dir=str(hub_cache_dir()),
                                   revision=src.revision, repo_type=src.repo_type)
    return Path(found) if isinstance(found, str) else None


def download_hub(art: Artifact, src: Source, *, progress=None) -> tuple[Path, str | None]:
    """Fetch ``src`` into the Hub cache; returns the local path and the commit it came from.

    One metadata request without the Hub client's own retries comes first, so that an unreachable
    endpoint fails at once instead of after the client's backoff; retries are ours."""
    import huggingface_hub

    watch = Watch(art)
    stalled = 0
    while True:
        try:
            with _quiet_hub():
                _hub_probe(art, src)
                path = huggingface_hub.hf_hub_download(
                    src.hub, src.filename, repo_type=src.repo_type, revision=src.revision,
                    cache_dir=str(hub_cache_dir()), endpoint=_endpoint(), etag_timeout=TIMEOUT_S,
                    tqdm_class=_tqdm_adapter(progress, art.name, watch),
                )
            break
        except SourceFailed:
            raise
        except Exception as e:  # noqa: BLE001 - sorted into final and retryable failures
            failed = _hub_failed(e)
            stalled += 1
            if failed.permanent:
                raise failed from None
            if stalled >= RETRIES:
                raise SourceFailed(f"{failed.reason} (gave up after {stalled} attempts)") from None
            watch.sleep(BACKOFF_S * 2 ** (stalled - 1))
    path = Path(path)
    return path, _commit_of(path)


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _hub_probe(art: Artifact, src: Source) -> None:
    """One HEAD request (no client retries): reachability, and the size the Hub would send."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(src.hub, src.filename, repo_type=src.repo_type, revision=src.revision, endpoint=_endpoint())
    meta = get_hf_file_metadata(url, timeout=TIMEOUT_S, retry_on_errors=False)
    size = getattr(meta, "size", None)
    if size is not None and art.size is not None and size != art.size:
        raise SourceFailed(f"the Hub offers {size} bytes, expected {art.size}", permanent=True)
    if size is not None and size > max_bytes(art.kind):
        raise SourceFailed(f"the Hub offers {size} bytes, more than the {max_bytes(art.kind)} a {art.kind} "
                           f"may have", permanent=True)


_HUB_FINAL = {"RepositoryNotFoundError", "RevisionNotFoundError", "EntryNotFoundError",
              "RemoteEntryNotFoundError", "DisabledRepoError", "GatedRepoError", "TooManyRedirects",
              "FileMetadataError", "HFValidationError", "UnsupportedProtocol", "InvalidURL"}


def _chain(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def _hub_failed(e: Exception) -> SourceFailed:
    """Sort a Hub client error: unreachable endpoints, missing files and most HTTP statuses are
    final for this source; timeouts, dropped connections, 5xx and 429 are worth another try."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(status, int):
        return _http_failed(status, type(e).__name__)
    for err in _chain(e):
        names = {c.__name__ for c in type(err).__mro__}
        if names & _HUB_FINAL:
            return SourceFailed(f"{type(err).__name__}: {_reason(err)}", permanent=True)
        if "ConnectTimeout" in names:
            return _connect_failed(TimeoutError(), _endpoint() or "https://huggingface.co")
        if "ConnectError" in names or isinstance(err, (socket.gaierror, ConnectionRefusedError)):
            return _connect_failed(_os_error(err), _endpoint() or "https://huggingface.co")
    return SourceFailed(_reason(e) if str(e) else type(e).__name__)


def _os_error(e: BaseException) -> BaseException:
    """The socket error underneath a client's connection error, else a refusal-like stand-in."""
    for err in _chain(e):
        if isinstance(err, OSError) and (isinstance(err, socket.gaierror) or err.errno is not None):
            return err
    text = str(e).lower()
    if "name or service not known" in text or "nodename nor servname" in text or "name resolution" in text \
            or "getaddrinfo" in text:
        return socket.gaierror(socket.EAI_NONAME, str(e))
    return OSError(errno.EHOSTUNREACH, str(e))


@contextmanager
def _quiet_hub():
    """huggingface_hub logs its own retries as warnings; failures reach the caller as errors instead."""
    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _commit_of(path: Path) -> str | None:
    """The commit of a Hub-cache snapshot path (``.../snapshots/<commit>/<filename>``)."""
    parts = path.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _tqdm_adapter(progress, description: str, watch: Watch | None = None):
    """A silent tqdm class for ``hf_hub_download`` that forwards byte counts to ``progress``. Only
    the first bar of a download reports (the Xet backend opens a second one for transfer bytes)."""
    from tqdm import tqdm

    state = {"taken": False}

    class _Bar(tqdm):
        _ctx = None
        _advance = None

        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if not state["taken"]:
                state["taken"] = True
                self._ctx = progress_bar(progress, description, kwargs.get("total"))
                self._advance = self._ctx.__enter__()
                self._advance(kwargs.get("initial") or 0)

        def update(self, n=1):
            if self._advance is not None and n:
                self._advance(n)
                if watch is not None:
                    watch.check(max(int(n), 0))
            return super().update(n)

        def close(self):
            if self._ctx is not None:
                ctx, self._ctx, self._advance = self._ctx, None, None
                ctx.__exit__(None, None, None)
            super().close()

    return _Bar
