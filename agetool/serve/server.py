"""Start and stop the web app: a private temporary folder for everything written, one model set."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from agetool.errors import AgetoolError, UsageError, arg
from agetool.options import DEFAULT_NOISE, DEFAULT_SEED

INSTALL_HINT = 'pip install "agetool[ui]"'


def require_gradio() -> None:
    """Raise a one-line error naming the extra to install when Gradio is missing."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise AgetoolError("the web app needs Gradio, which is not installed", hint=INSTALL_HINT) from None


def example_photo(folder: Path) -> Path | None:
    """The bundled example photo, copied into ``folder`` (where the app may serve it); None if absent."""
    import agetool

    source = Path(agetool.__file__).resolve().parents[1] / "examples" / "astronaut.png"
    target = folder / "astronaut.png"
    if source.is_file():
        shutil.copyfile(source, target)
        return target
    try:
        from skimage import data

        from agetool.images import write_image

        return write_image(target, data.astronaut())
    except ImportError:
        return None


class ClientNoise(logging.Filter):
    """What the web server and Gradio report about clients, one line each: a malformed request's
    exception joins its message instead of a traceback under it (the ASGI server's errors come from
    requests that failed before any handler ran); nothing once the server stopped. Failures inside
    the app's handlers keep their traceback (``agetool.serve``'s log)."""

    def __init__(self):
        super().__init__()
        self.stopped = False

    def filter(self, record: logging.LogRecord) -> bool:
        if self.stopped:
            return False
        if record.exc_info and (record.levelno <= logging.WARNING or record.name == "uvicorn.error"):
            record.msg = f"{record.getMessage().strip().rstrip('.')} ({_one_line(record.exc_info[1])})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True

    def print_exc(self, *args, **kwargs) -> None:
        """Gradio's queue prints the traceback of a request that failed before any handler ran
        (data no component accepts): one warning line instead."""
        if not self.stopped:
            log.warning("rejected a request: %s", _one_line(sys.exc_info()[1]))

    def __getattr__(self, name):  # the rest of the traceback module, for Gradio's queue
        import traceback

        return getattr(traceback, name)


def _one_line(e: BaseException | None) -> str:
    if e is None:
        return "no details"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:160]}" if text else type(e).__name__


log = logging.getLogger("agetool.serve")
#: the loggers of the web server that report on clients
CLIENT_LOGGERS = ("uvicorn.error", "uvicorn.access", "python_multipart.multipart")


class Server:
    """The app on ``host:port``. ``start()`` returns the URL; ``close()`` stops it and removes every
    file it wrote (uploads, grids, videos), all of which lie in one temporary folder."""

    def __init__(self, pipeline, host: str = "127.0.0.1", port: int = 7860, limits=None,
                 fixed_model: str | None = None, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE, warm_up: bool = True,
                 upscale: int | None = None, signing=None, label: bool = False):
        if not 1 <= port <= 65535:
            raise UsageError(f"{arg('port', port)}: expected 1 to 65535")
        require_gradio()
        self.host, self.port = host, port
        self.folder = Path(tempfile.mkdtemp(prefix="agetool-serve-"))
        # Gradio keeps uploads and results under GRADIO_TEMP_DIR (read when it is imported) and makes
        # a few scratch files with tempfile: both point into this server's folder.
        # Matplotlib (imported by Gradio) keeps its font cache under MPLCONFIGDIR.
        self._saved_env = {k: os.environ.get(k) for k in ("GRADIO_TEMP_DIR", "GRADIO_ANALYTICS_ENABLED",
                                                          "MPLCONFIGDIR")}
        self._saved_tempdir = tempfile.tempdir
        os.environ["GRADIO_TEMP_DIR"] = str(self.folder / "uploads")
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        os.environ.setdefault("MPLCONFIGDIR", str(self.folder / "matplotlib"))
        (self.folder / "tmp").mkdir()
        tempfile.tempdir = str(self.folder / "tmp")
        from agetool.serve.app import build_app
        from agetool.serve.studio import Limits, Studio

        self.limits = limits or Limits()
        self.studio = Studio(pipeline, self.folder / "tmp" / "results", self.limits, fixed_model=fixed_model,
                             seed=seed, noise=noise, upscale=upscale, uploads=self.folder / "uploads",
                             signing=signing, label=label)
        self.example = example_photo(self.folder)
        if warm_up:
            self.studio.warm_up(self.example)
        self.demo = build_app(self.studio, self.example)
        self.url: str | None = None

    def start(self) -> str:
        import gradio.queueing

        self._noise = ClientNoise()
        for name in CLIENT_LOGGERS:  # silenced by close(): nothing is logged after "stopped"
            logging.getLogger(name).addFilter(self._noise)
        gradio.queueing.traceback = self._noise  # the app's own process: its queue reports in one line
        self.demo.queue(default_concurrency_limit=1, max_size=64)
        try:
            _, url, _ = self.demo.launch(
                server_name=self.host, server_port=self.port, prevent_thread_lock=True, quiet=True,
                show_error=True, ssr_mode=False, max_file_size=self.limits.max_bytes, inbrowser=False,
                share=False, footer_links=[], theme=self.demo.agetool_theme, css=self.demo.agetool_css,
                mcp_server=False, enable_monitoring=False, state_session_capacity=64)
        except OSError as e:
            self.close()
            raise UsageError(f"{arg('port', self.port)}: can't listen on {self.host} ({e})",
                             hint="choose another port") from None
        self.url = url
        return f"http://{self.host}:{self.demo.server_port}/"

    def close(self) -> None:
        demo = getattr(self, "demo", None)
        if demo is not None:
            try:
                demo.close()
            except Exception:  # noqa: BLE001 - stopping: nothing left to report to
                pass
        shutil.rmtree(self.folder, ignore_errors=True)
        noise = getattr(self, "_noise", None)
        if noise is not None:  # requests still in flight report nothing after the server stopped
            noise.stopped = True
        tempfile.tempdir = self._saved_tempdir
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
