"""Start and stop the web app: a private temporary folder for everything written, one model set."""

from __future__ import annotations

import os
import shutil
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


class Server:
    """The app on ``host:port``. ``start()`` returns the URL; ``close()`` stops it and removes every
    file it wrote (uploads, grids, videos), all of which lie in one temporary folder."""

    def __init__(self, pipeline, host: str = "127.0.0.1", port: int = 7860, limits=None,
                 fixed_model: str | None = None, seed: int = DEFAULT_SEED, noise: float = DEFAULT_NOISE, warm_up: bool = True,
                 upscale: int | None = None):
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
                             seed=seed, noise=noise, upscale=upscale, uploads=self.folder / "uploads")
        self.example = example_photo(self.folder)
        if warm_up:
            self.studio.warm_up(self.example)
        self.demo = build_app(self.studio, self.example)
        self.url: str | None = None

    def start(self) -> str:
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
