"""What `weights list` and `info` show is what is there: the registry's sizes, the files on disk
with theirs, the settings in the config file's syntax, versions even with a bad config; outputs
written by agetool (exported weights, checkpoints) follow the umask like images do."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import pytest

from agetool import weights
from agetool.weights import human_size
from tests.helpers import cli, tiny_generator_file
from tests.test_train import make_dataset, one_thread  # noqa: F401 (the autouse fixture, shared)
from tests.test_weights import entry, env, server, use_registry  # noqa: F401
from tests.test_weights_import import _generator_entry, _pth, _tiny_state, wide  # noqa: F401


def test_list_shows_the_registry_size_and_the_file_on_disk(env, monkeypatch, capsys, wide):
    released = _generator_entry(None, filename="males_model.zip")
    released.update(size=213_175_683, md5="0" * 32)
    use_registry(env, monkeypatch, {"lats-male": released})
    member = _pth(env / "latest_net_g_running.pth", _tiny_state())
    assert cli(["weights", "import", member, "--as", "lats-male"], capsys)[0] == 0
    on_disk = weights.status("lats-male").path.stat().st_size
    assert on_disk < 10_000_000  # the tiny member, not the released zip

    code, out, _ = cli(["weights", "list"], capsys)
    row = next(line for line in out.splitlines() if line.startswith("lats-male "))
    assert "213.2 MB" in row and human_size(on_disk) not in row  # the size the registry publishes ...
    path_line = next(line for line in out.splitlines() if line.startswith("lats-male: "))
    assert f"{human_size(on_disk)} on disk" in path_line  # ... and what is on disk, beside its path
    code, out, _ = cli(["info"], capsys)
    assert code == 0 and "213.2 MB" in out and f"{human_size(on_disk)} on disk" in out


def test_info_prints_versions_and_devices_with_a_bad_config(tmp_path, monkeypatch, capsys):
    config = tmp_path / "config.toml"
    monkeypatch.setenv("AGETOOL_CONFIG", str(config))
    config.write_text('offline = true\ndevice = "cpu"\n')
    code, out, err = cli(["info"], capsys)
    assert code == 0 and "  offline = true  (" in out and '  device = "cpu"  (' in out and "True" not in out
    config.write_text("offline = maybe\n")
    code, out, err = cli(["info"], capsys)
    assert code == 2 and "packages: torch" in out and "devices: cpu" in out and "cached model files" in out
    assert err.count("\n") == 1 and err.startswith("error: ") and str(config) in err


@contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_exported_weights_follow_the_umask(tmp_path, mask):
    with _umask(mask):
        path = tiny_generator_file(tmp_path / "g.safetensors")
    assert _mode(path) == 0o666 & ~mask


def test_checkpoints_follow_the_umask(tmp_path):
    data = make_dataset(tmp_path / "data", per_class=2, size=64)
    run = tmp_path / "run"
    with _umask(0o022):
        assert cli(["train", "--data", data, "--out", run, "--workers", "0", "--device", "cpu", "--sample-every", "0",
                    "--no-tensorboard", "--size", "64", "--ngf", "8", "--batch-size", "2", "--max-steps", "1"])[0] == 0
        export = run / "g.safetensors"
        assert cli(["train", "export", run, "--out", export])[0] == 0
    written = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in written) and export in written
    assert {str(p.relative_to(run)): oct(_mode(p)) for p in written if _mode(p) != 0o644} == {}
