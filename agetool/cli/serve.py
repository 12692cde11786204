"""`agetool serve`: the local web app (extra ``agetool[ui]``)."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from agetool.cli import console
from agetool.cli.marking import marking_options
from agetool.cli.options import OPTION, pipeline_options
from agetool.options import DEFAULT_NOISE, DEFAULT_SEED


@pipeline_options
@marking_options
def serve(
    build, marks,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. 127.0.0.1 keeps the app on this computer; 0.0.0.0 opens it to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=1, max=65535)] = 7860,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="Refuse uploaded photos and clips larger than this many megabytes.", min=0.01)] = 20.0,
    seed: OPTION.seed = DEFAULT_SEED, noise: OPTION.noise = DEFAULT_NOISE, upscale: OPTION.upscale = None,
) -> int:
    """Start the web app: drop a photo, move an age slider, render the grid and the aging video.

    The models load once at start; every request reuses them, one at a time. Needs the ui extra:
    pip install "agetool\\[ui]". Stop it with Ctrl-C.

    Examples:

      agetool serve

      agetool serve --port 8080 --model female

      agetool serve --weights males.safetensors --device cuda

      agetool serve --upscale 2

      agetool serve --label --sign chain.pem --sign-key key.pem
    """
    from agetool.serve.server import require_gradio

    require_gradio()
    # the page offers the mask, paste-back (which parses) and clips: every model they may use
    marks.check_models(build, {"mask": True, "paste_back": True, "upscale": upscale}, clip=True)
    from agetool.serve.server import Server
    from agetool.serve.studio import Limits

    stop = threading.Event()
    terminated: list[int] = []

    def on_term(signum, frame):
        terminated.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)
    with console.progress(transient=True) as bar:
        bar.add_task("loading models", total=None)
        pipe = build(bar)
        limits = Limits(max_pixels=pipe.max_pixels, max_bytes=int(max_upload_mb * 2**20))
        server = Server(pipe, host=host, port=port, limits=limits, seed=seed, noise=noise, upscale=upscale,
                        signing=marks.signing, label=marks.label)
    interrupted = False
    with server:
        url = server.start()
        console.info(f"agetool serve: {url}  (Ctrl-C to stop)")
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:  # Ctrl-C is how this command is meant to end
            interrupted = True

    if interrupted or terminated:
        how = "Ctrl-C" if interrupted else signal.Signals(terminated[0]).name
        console.info(f"agetool serve: stopped ({how}); temporary files removed")
        return console.Stopped(128 + (signal.SIGINT if interrupted else terminated[0]))
    console.info("server stopped")
    return 0
