"""Getting bytes from one source: a direct URL (resumable with HTTP Range, retried with backoff)
or a Hub file through ``huggingface_hub`` (Hub cache, ``HF_ENDPOINT``, ``HF_HOME``)."""

from __future__ import annotations

import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from agetool.weights.registry import Artifact, Source
from agetool.weights.store import CHUNK, hub_cache_dir

RETRIES = 4  # attempts in a row without progress before a source is given up
BACKOFF_S = 1.0  # first wait between attempts; doubles each time
TIMEOUT_S = 30.0
MAX_ATTEMPTS = 50  # attempts per source in all, even when each one makes progress
PERMANENT_HTTP = {400, 401, 403, 404, 405, 410, 451}


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
    stalled = attempts = 0
    while True:
        before = _size(part)
        attempts += 1
        try:
            _get_once(art, src.url, part, progress)
            return
        except SourceFailed as e:
            if e.permanent or attempts >= MAX_ATTEMPTS:
                raise
            stalled = 0 if _size(part) > before else stalled + 1
            if stalled >= RETRIES:
                raise SourceFailed(f"{e.reason} (gave up after {attempts} attempts)") from None
            time.sleep(BACKOFF_S * 2 ** max(stalled - 1, 0))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _get_once(art: Artifact, url: str, part: Path, progress) -> None:
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
        raise SourceFailed(f"HTTP {e.code} {e.reason}".strip(),
                           permanent=e.code in PERMANENT_HTTP) from None
    except urllib.error.URLError as e:
        raise SourceFailed(_reason(e.reason)) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise SourceFailed(_reason(e)) from None
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
        total = total if total is not None else art.size
        got = offset
        with progress_bar(progress, art.name, total) as advance, open(part, mode) as f:
            advance(offset)
            try:
                while chunk := resp.read(CHUNK):
                    f.write(chunk)
                    got += len(chunk)
                    advance(len(chunk))
                    if art.size is not None and got > art.size:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise SourceFailed(f"server sent more than {art.size} bytes", permanent=True)
            except (OSError, http.client.HTTPException) as e:
                raise SourceFailed(f"connection lost after {got} bytes ({_reason(e)})") from None
    if total is not None and got < total:
        raise SourceFailed(f"connection closed after {got} of {total} bytes")


def _reason(e: object) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:160]


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
    """Fetch ``src`` into the Hub cache; returns the local path and the commit it came from."""
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    permanent = (hf_errors.RepositoryNotFoundError, hf_errors.RevisionNotFoundError,
                 hf_errors.EntryNotFoundError, hf_errors.DisabledRepoError)
    stalled = 0
    while True:
        try:
            with _quiet_hub():
                path = huggingface_hub.hf_hub_download(
                    src.hub, src.filename, repo_type=src.repo_type, revision=src.revision,
                    cache_dir=str(hub_cache_dir()), endpoint=os.environ.get("HF_ENDPOINT") or None,
                    tqdm_class=_tqdm_adapter(progress, art.name),
                )
            break
        except permanent as e:
            raise SourceFailed(_hub_reason(e), permanent=True) from None
        except Exception as e:  # noqa: BLE001 - network and server errors: retry, then next source
            stalled += 1
            if stalled >= RETRIES:
                raise SourceFailed(f"{_hub_reason(e)} (gave up after {stalled} attempts)") from None
            time.sleep(BACKOFF_S * 2 ** (stalled - 1))
    path = Path(path)
    return path, _commit_of(path)


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


def _hub_reason(e: Exception) -> str:
    status = getattr(getattr(e, "response", None), "status_code", None)
    name = type(e).__name__
    return f"HTTP {status} ({name})" if status else f"{name}: {_reason(e)}"


def _commit_of(path: Path) -> str | None:
    """The commit of a Hub-cache snapshot path (``.../snapshots/<commit>/<filename>``)."""
    parts = path.parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i + 1 < len(parts):
            return parts[i + 1]
    return None


def _tqdm_adapter(progress, description: str):
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
            return super().update(n)

        def close(self):
            if self._ctx is not None:
                ctx, self._ctx, self._advance = self._ctx, None, None
                ctx.__exit__(None, None, None)
            super().close()

    return _Bar
