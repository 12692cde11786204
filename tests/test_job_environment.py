"""Multi-process jobs: nonsense RANK / WORLD_SIZE / LOCAL_RANK are usage errors before any work, a
rank waits a bounded time for its peers, and a stop signal ends the wait at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from agetool.device import Dist, env_dist
from agetool.errors import UsageError
from tests.helpers import ROOT, cli, common, free_port

JOB_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "AGETOOL_PEER_TIMEOUT",
            "TORCHELASTIC_USE_AGENT_STORE")


@pytest.fixture()
def job_env(monkeypatch):
    """A clean slate for the job variables; returns a setter."""
    for name in JOB_VARS:
        monkeypatch.delenv(name, raising=False)

    def set_env(**values):
        for name, value in values.items():
            monkeypatch.setenv(name, str(value))

    return set_env


@pytest.mark.parametrize("values, needle", [
    ({"RANK": 2, "WORLD_SIZE": 2}, "RANK=2: expected 0 to 1"),
    ({"RANK": -1, "WORLD_SIZE": 2}, "RANK=-1: expected 0 to 1"),
    ({"RANK": 1}, "RANK=1 without WORLD_SIZE"),
    ({"RANK": 0}, "RANK=0 without WORLD_SIZE"),
    ({"WORLD_SIZE": 2}, "WORLD_SIZE=2 without RANK"),
    ({"WORLD_SIZE": 0, "RANK": 0}, "WORLD_SIZE=0: expected 1 to"),
    ({"WORLD_SIZE": -3, "RANK": 0}, "WORLD_SIZE=-3"),
    ({"LOCAL_RANK": 3}, "LOCAL_RANK=3 without WORLD_SIZE"),
    ({"RANK": 1, "WORLD_SIZE": 2, "LOCAL_RANK": -1}, "LOCAL_RANK=-1"),
    ({"RANK": 0, "WORLD_SIZE": 2, "LOCAL_RANK": 1}, "LOCAL_RANK=1: expected 0 to RANK=0"),
    ({"RANK": "one", "WORLD_SIZE": 2}, "RANK=one: not a whole number"),
    ({"RANK": 0, "WORLD_SIZE": 2}, "needs MASTER_ADDR and MASTER_PORT"),
    ({"RANK": 0, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 70000}, "MASTER_PORT=70000"),
], ids=lambda v: v if isinstance(v, str) else "-".join(f"{k}{w}" for k, w in v.items()))
def test_nonsense_job_variables_are_usage_errors(job_env, values, needle):
    job_env(**values)
    with pytest.raises(UsageError, match=needle):
        env_dist()


def test_job_variables_that_make_sense(job_env):
    assert env_dist() == Dist()
    job_env(LOCAL_RANK=0)
    assert env_dist() == Dist()
    job_env(WORLD_SIZE=1, RANK=0)
    assert env_dist() == Dist()
    job_env(WORLD_SIZE=4, RANK=3, LOCAL_RANK=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=29500)
    assert env_dist() == Dist(3, 4, 1)


def test_nonsense_job_variables_stop_the_command_before_any_work(tmp_path, crop, weights, capsys, job_env):
    job_env(RANK=3, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    out = tmp_path / "g.png"
    code, _, err = cli(["age", crop, "--out", out, *common(weights)], capsys)
    assert code == 2 and err.count("\n") == 1 and "RANK=3" in err
    assert not out.exists()


def _spawn(env: dict, out, crop, weights) -> subprocess.Popen:
    full = {k: v for k, v in os.environ.items() if k not in JOB_VARS}
    full.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **{k: str(v) for k, v in env.items()}})
    return subprocess.Popen([sys.executable, "-m", "agetool", "age", str(crop), "--out", str(out),
                             *map(str, common(weights))], env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_a_rank_without_peers_gives_up_before_any_work(tmp_path, crop, weights):
    out = tmp_path / "g.png"
    t0 = time.monotonic()
    proc = _spawn({"RANK": 0, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": free_port(),
                   "AGETOOL_PEER_TIMEOUT": 2}, out, crop, weights)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert err.strip() == err.strip().splitlines()[0] and "waited 2 s for rank(s) 1 to start" in err
    assert not out.exists() and time.monotonic() - t0 < 60


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_ends_the_wait_for_peers(tmp_path, crop, weights, signame):
    port = free_port()
    proc = _spawn({"RANK": 0, "WORLD_SIZE": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}, tmp_path / "g.png",
                  crop, weights)
    deadline = time.monotonic() + 60
    while True:  # waiting: rank 0 serves the meeting point
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(getattr(signal, signame))
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 128 + getattr(signal, signame), err
    assert time.monotonic() - sent < 10 and "Traceback" not in err


def test_two_ranks_meet_without_torchrun(tmp_path, crop, weights):
    """Rank 0 serves the meeting point itself when no torchrun agent does; each rank takes its share."""
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        shutil.copy(crop, photos / name)
    port = free_port()
    out = f"{tmp_path / 'out'}/"
    procs = [_spawn({"RANK": r, "WORLD_SIZE": 2, "LOCAL_RANK": r, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                    out, photos, weights) for r in (0, 1)]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_ages.png", "b_ages.png"]
    assert "".join(err for _, err in results).count("done: 2 written, 0 failed") == 1
