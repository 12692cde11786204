"""The first run as it really looks without network: an empty cache, every source refusing the
connection, no --offline. One message names every missing model before anything loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT
from tests.weights_server import refused_url


def _refusing_registry(path) -> str:
    """The real registry with every source moved to a local port where nothing listens."""
    base = refused_url("")
    text = (ROOT / "weights.toml").read_text(encoding="utf-8")
    text, n = re.subn(r'url = "https?://[^/"]+', f'url = "{base}', text)
    assert n >= 5
    path.write_text(text, encoding="utf-8")
    return base


def test_a_first_run_without_network_names_every_missing_model(tmp_path):
    pytest.importorskip("dlib")
    hub = _refusing_registry(tmp_path / "weights.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AGETOOL_"))}
    env.update(PYTHONPATH=str(ROOT), AGETOOL_REGISTRY=str(tmp_path / "weights.toml"), HF_ENDPOINT=hub,
               AGETOOL_CACHE=str(tmp_path / "cache"), HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"),
               XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="1000")
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "agetool", "age", str(ROOT / "examples" / "astronaut.png"),
                           "--out", "grid.png"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 1 and len(errors) == 1, done.stderr
    line = errors[0]
    assert line.startswith("error: 4 model files are not at hand and could not be downloaded: ")
    for name in ("deeplab-parser", "genderage", "lats-male", "lats-female"):
        assert f"{name} (" in line, name  # every one in the same message ...
    assert line.count("refused the connection") >= 4  # ... each with why
    assert "--parser-weights FILE" in line and "--age-model FILE" in line and "--weights FILE" in line
    assert "from https://grail.cs.washington.edu" not in line and f"from {hub}" in line  # where to fetch each
    assert "agetool weights download deeplab-parser genderage lats-male lats-female" in line
    assert "Traceback" not in done.stderr and not re.search(r"\bload", done.stderr)  # nothing loaded
    assert not (tmp_path / "grid.png").exists()
    assert elapsed < 120, elapsed  # refused connections are not retried

