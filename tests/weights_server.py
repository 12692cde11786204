"""A local HTTP server for download tests: plain files with Range support, and Hub-style
``/<repo>/resolve/<revision>/<file>`` URLs answering HEAD with ``X-Repo-Commit`` and ``ETag``.
Misbehaviours on demand: dropped connections, forced statuses, trickled bodies, redirect loops,
bodies without Content-Length. ``refused_url()`` gives a 127.0.0.1 URL where nothing listens."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
HUB_PATH = re.compile(r"/((?:spaces/|datasets/)?[^/]+/[^/]+)/resolve/([^/]+)/(.+)")


class State:
    def __init__(self):
        self.files: dict[str, bytes] = {}  # URL path -> bytes (plain and Hub-style alike)
        self.drop_after: dict[str, int] = {}  # URL path -> bytes sent before the connection drops (once)
        self.status: dict[str, int] = {}  # URL path -> forced HTTP status
        self.trickle: dict[str, tuple[int, float]] = {}  # URL path -> (bytes, seconds) per write
        self.redirect: dict[str, str] = {}  # URL path -> Location (a loop when it points back)
        self.no_length: set[str] = set()  # URL paths answered without Content-Length (body ends at close)
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.lock = threading.Lock()

    def requests(self, method: str | None = None, path: str | None = None):
        with self.lock:
            return [r for r in self.log if (method is None or r[0] == method) and (path is None or r[1] == path)]


class Handler(BaseHTTPRequestHandler):
    state: State

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        st = self.server.state
        path = self.path.split("?", 1)[0]
        rng = self.headers.get("Range")
        with st.lock:
            st.log.append((self.command, path, rng))
            data = st.files.get(path)
            forced = st.status.get(path)
            drop = st.drop_after.pop(path, None) if body else None
            trickle = st.trickle.get(path)
            location = st.redirect.get(path)
            no_length = path in st.no_length
        hub = HUB_PATH.fullmatch(path)
        if location is not None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if forced is not None or data is None:
            self.send_response(forced or 404)
            if hub:
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if m and int(m.group(1)) < len(data):
            start = int(m.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        elif m:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        if no_length:
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(data) - start))
        if hub:
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.end_headers()
        if not body:
            return
        if drop is not None:
            self.wfile.write(data[start:start + drop])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if trickle is not None:
            step, pause = trickle
            try:
                for i in range(start, len(data), step):
                    self.wfile.write(data[i:i + step])
                    self.wfile.flush()
                    time.sleep(pause)
            except OSError:  # the client gave up
                pass
            return
        self.wfile.write(data[start:])


class Server:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state = State()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def refused_url(path: str = "/x.bin") -> str:
    """A URL on 127.0.0.1 whose port has no listener: connecting is refused at once."""
    from tests.helpers import free_port

    return f"http://127.0.0.1:{free_port()}{path}"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(type(value))


def write_registry(path: Path, models: dict[str, dict]) -> Path:
    lines = []
    for name, entry in models.items():
        lines.append(f'[models."{name}"]')
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in entry.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
