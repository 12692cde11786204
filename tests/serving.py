"""A running ``agetool serve`` for tests: stand-in weights, 127.0.0.1, a free port, its own folders."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "astronaut.png"


@dataclass
class Served:
    url: str
    proc: subprocess.Popen
    log: Path
    home: Path  # HOME, TMPDIR and working folder of the server: nothing else is writable to it
    tmp: Path

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(folder: Path, weights: Path, parser_weights: Path, *extra: str, timeout: float = 180) -> Served:
    """``agetool serve`` in a subprocess, with HOME, TMPDIR and the working folder inside ``folder``."""
    home, tmp = folder / "home", folder / "tmp"
    home.mkdir(parents=True)
    tmp.mkdir()
    port = free_port()
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    log = folder / "server.log"
    cmd = [sys.executable, "-m", "agetool", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--weights", str(weights), "--parser-weights", str(parser_weights), "--landmarks", "dlib",
           "--offline", "--device", "cpu", *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served(f"http://127.0.0.1:{port}/", proc, log, home, tmp)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"agetool serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(served.url, timeout=2) as r:
                if r.status == 200:
                    return served
        except OSError:
            time.sleep(0.5)
    served.stop()
    pytest.fail(f"agetool serve did not answer within {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def stand_in_generator(tmp_path_factory) -> Path:
    from tests.helpers import tiny_generator_file

    return tiny_generator_file(tmp_path_factory.mktemp("serve-gen") / "stand-in.safetensors")


@pytest.fixture(scope="session")
def served(tmp_path_factory, stand_in_generator, seeded_parser_file):
    """One server for the endpoint and browser tests (stand-in generator, seeded parser, dlib)."""
    pytest.importorskip("gradio", reason='the web app needs the ui extra: pip install "agetool[ui]"')
    server = start_server(tmp_path_factory.mktemp("serve"), stand_in_generator, seeded_parser_file)
    yield server
    server.stop()
