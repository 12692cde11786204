"""Files users hand in (anchor ages, landmarks, config sidecars, CSV lists): regular files only, a
size limit, bounded JSON (nesting, numbers); a zip checkpoint's member streamed, never held in memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from agetool.errors import CheckpointError, UsageError
from tests.helpers import ROOT, cli, common

ANCHORS = {"0-2": 1, "3-6": 4.5, "7-9": 8, "15-19": 17, "30-39": 34.5, "50-69": 59.5}


def _unblock_later(fifo: Path, seconds: float = 5.0) -> threading.Timer:
    """Open the FIFO for writing after a while, so that a reader blocked on it gets end-of-file
    (a check that fails shows as a failed assertion, not as a hung test)."""

    def release():
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK) if _has_reader(fifo) else None
        if fd is not None:
            os.close(fd)

    timer = threading.Timer(seconds, release)
    timer.daemon = True
    timer.start()
    return timer


def _has_reader(fifo: Path) -> bool:
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_a_fifo_is_refused_not_waited_on(tmp_path, crop, weights, capsys):
    fifo = tmp_path / "anchors.json"
    os.mkfifo(fifo)
    timer = _unblock_later(fifo)
    try:
        code, _, err = cli(["age", crop, "--ages", "20", "--age-anchors", fifo, "--out", tmp_path / "g.png",
                            *common(weights)], capsys)
    finally:
        timer.cancel()
    assert code == 2 and err.count("\n") == 1 and f"--age-anchors {fifo}: not a regular file" in err
    from agetool.train.prepare import read_photo_csv

    timer = _unblock_later(fifo)
    try:
        with pytest.raises(UsageError, match="not a regular file"):
            read_photo_csv(fifo)
    finally:
        timer.cancel()


def test_a_device_that_never_ends_is_refused_in_bounded_memory():
    """/dev/zero as anchor ages: refused before a byte is read (once read until memory ran out)."""
    code = "from agetool.ages import load_anchors\nload_anchors('/dev/zero')"

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)
    assert "age_anchors='/dev/zero': not a regular file" in proc.stderr, proc.stderr[-500:]
    assert "MemoryError" not in proc.stderr


def test_a_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    from agetool import userfiles
    from agetool.ages import load_anchors

    big = tmp_path / "anchors.json"
    big.write_text(json.dumps(ANCHORS) + " " * 2000)
    monkeypatch.setattr(userfiles, "MAX_TEXT_BYTES", 1000)
    with pytest.raises(UsageError, match=r"over the limit of 1,000"):
        load_anchors(big)


@pytest.mark.parametrize("text, needle", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"0-2": 1e999}', "the number 1e999 is too large"),
    ('{"0-2": ' + "9" * 5000 + "}", "5,000 digits is too large"),
    ('{"0-2": NaN}', "NaN is not a number JSON allows"),
    (b"\xff\xfe{}", "not UTF-8 text"),
], ids=["deep", "1e999", "digits", "nan", "not-utf8"])
def test_malformed_json_is_one_usage_line(tmp_path, crop, weights, capsys, text, needle):
    path = tmp_path / "anchors.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = cli(["age", crop, "--ages", "20", "--age-anchors", path, "--out", tmp_path / "g.png",
                        *common(weights)], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err and "Traceback" not in err, err
    code, _, err = cli(["align", crop, "--out", tmp_path / "crops", "--landmarks-json", path, "--offline"], capsys)
    assert code == 2 and err.count("\n") == 1 and needle in err and "--landmarks-json" in err, err


def test_a_sidecar_that_is_no_regular_file_or_nested_too_deeply(tmp_path, weights):
    import shutil

    from agetool.nn.checkpoint import read_state_dict
    from agetool.nn.checkpoint import save_safetensors

    own = tmp_path / "g.safetensors"
    sd, _ = read_state_dict(weights)
    save_safetensors(own, sd, "generator", {})
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(own)), str(own))  # no config metadata: the sidecar is read
    sidecar = tmp_path / "g.safetensors.json"
    sidecar.write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        read_state_dict(own)
    sidecar.unlink()
    sidecar.mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        read_state_dict(own)
    shutil.rmtree(sidecar)


def test_toml_config_nested_too_deeply(tmp_path, monkeypatch):
    from agetool import config

    path = tmp_path / "config.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000)
    with pytest.raises(UsageError, match="nested too deeply"):
        config._read_file(path)
    path.write_text("a = " + "9" * 5000)
    with pytest.raises(UsageError, match="not valid TOML"):
        config._read_file(path)


MEMBER_SCRIPT = """
import sys
from agetool.errors import CheckpointError
from agetool.nn.checkpoint import read_state_dict

def hwm():
    return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) * 1024

base = hwm()
try:
    read_state_dict(sys.argv[1])
except CheckpointError as e:
    print("error:", e.message)
print(hwm() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM")
def test_a_zip_member_is_streamed_not_held_in_memory(tmp_path):
    """A 384 MiB member (zeros, a few hundred kB zipped) raises peak memory by far less than its size
    (read whole it raised it by twice its size)."""
    size = 384 << 20
    archive = tmp_path / "males_model.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("males_model/latest_net_g_running.pth", "w", force_zip64=True) as f:
            chunk = b"\0" * (16 << 20)
            for _ in range(size // len(chunk)):
                f.write(chunk)
    proc = subprocess.run([sys.executable, "-c", MEMBER_SCRIPT, str(archive)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-800:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("error:") and "not a readable weights file" in lines[0]
    raised = int(lines[-1])
    assert raised < size // 4, f"peak memory rose by {raised / 2**20:.0f} MiB for a {size >> 20} MiB member"
    assert [p.name for p in tmp_path.iterdir()] == ["males_model.zip"], "the unpacked member is removed"
