"""`weights import` says what it did with every file and registers nothing it has not loaded:
a folder's files are imported or named with why; a copy of a file that publishes no checksum is
the user's own; `--trust` loads every kind (pickles, system files behind links and garbage are
refused); messages are one line in the command line's words."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from agetool import weights
from agetool.loading import Loading
from agetool.nn.realesrgan import SRVGGNetCompact
from tests.helpers import cli
from tests.test_weights import entry, env, payload, server, use_registry  # noqa: F401
from tests.test_weights_import import _pth, _tiny_state, folder_registry, wide  # noqa: F401


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_a_flat_folder_names_every_file_it_does_not_import(env, monkeypatch, capsys, wide):
    _, onnx = folder_registry(env, monkeypatch)
    folder = env / "flat"
    folder.mkdir()
    _pth(folder / "latest_net_g_running.pth", _tiny_state())  # which of the two? the folder doesn't say
    (folder / "deeplab_model.pth").write_bytes(payload(2999, seed=9))  # the name, not the file
    (folder / "genderage.onnx").write_bytes(onnx)
    (folder / "notes.md").write_text("my notes")
    os.symlink("/etc/hostname", folder / "linked.pth")

    code, out, err = cli(["weights", "import", folder], capsys)
    assert code == 0, err
    assert [line.split(":")[0] for line in out.splitlines()] == ["genderage"]
    skipped = [line for line in err.splitlines() if line.startswith("warning: skipped ")]
    assert len(skipped) == 4, err
    member = next(line for line in skipped if "latest_net_g_running.pth" in line)
    assert "lats-male or lats-female" in member and "--as lats-male" in member and "males_model/" in member
    refused = next(line for line in skipped if "deeplab_model.pth" in line)
    assert "--parser-weights FILE" in refused and "parser_weights=" not in refused  # the command line's words
    assert "not a registered file" in next(line for line in skipped if "notes.md" in line)
    assert "symbolic link" in next(line for line in skipped if "linked.pth" in line)
    assert weights.status("deeplab-parser").path is None and weights.status("lats-male").path is None


def _small_upscaler(path):
    torch.save({"params": SRVGGNetCompact(num_feat=8, num_conv=2).state_dict()}, path)
    return path


def test_an_upscaler_copy_without_a_published_checksum_is_yours(env, monkeypatch, capsys, wide):
    from agetool.upscale import load_upscaler

    monkeypatch.delenv("AGETOOL_REGISTRY", raising=False)  # the real registry: no checksum for the upscalers
    assert not weights.get("realesr-general-x4v3").has_checksum
    sr = _small_upscaler(env / "realesr-general-x4v3.pth")
    code, out, err = cli(["weights", "import", sr, "--as", "realesr-general-x4v3"], capsys)
    assert code == 0, err
    assert "registered as your own file" in err and "publishes no checksum" in err
    assert "BSD" not in err  # no borrowed licence
    assert weights.status("realesr-general-x4v3").own
    code, out, err = cli(["weights", "list"], capsys)
    row = next(line for line in out.splitlines() if line.startswith("realesr-general-x4v3 "))
    assert "yes, yours" in row
    notes = []
    load_upscaler("realesr-general-x4v3", loading=Loading(offline=True, report=notes.append))
    assert notes == ["upscale: " + notes[0][len("upscale: "):]] and "your own file" in notes[0]
    assert "BSD" not in notes[0]


class _Runs:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file if it were ever unpickled


@pytest.mark.parametrize("name", ["realesr-general-x4v3", "dlib-landmarks68", "fan-2d", "s3fd", "genderage",
                                  "deeplab-parser"])
@pytest.mark.parametrize("content", ["pickle", "garbage", "system file"])
def test_trust_loads_every_kind_before_registering(env, monkeypatch, capsys, wide, name, content):
    monkeypatch.delenv("AGETOOL_REGISTRY", raising=False)
    marker = env / "unpickled"
    given = env / f"mine{'.dat' if name.startswith('dlib') else '.pth'}"
    if content == "pickle":
        with open(given, "wb") as f:
            pickle.dump({"weight": _Runs(str(marker))}, f)
    elif content == "garbage":
        given.write_bytes(payload(5000, seed=3))
    else:
        os.symlink("/etc/passwd", given)  # followed, read as what it is, refused
    code, out, err = cli(["weights", "import", given, "--as", name, "--trust"], capsys)
    errors = _errors(err)
    assert code == 1 and len(errors) == 1 and err.strip() == errors[0], err
    line = errors[0]
    assert "is not a usable" in line and "nothing was placed in the cache" in line
    assert "Traceback" not in err and ".tmp" not in line and "--file" not in line and "agetool-" not in line
    assert "/etc/passwd" in line if content == "system file" else given.name in line
    assert not line.rstrip(")").endswith(("(", "`")) and line.count("(") == line.count(")")  # not cut mid-way
    assert not marker.exists()
    assert weights.status(name).path is None


def test_the_registered_name_is_a_usage_error_and_cut(env, capsys, wide):
    some = env / "some.pth"
    some.write_bytes(b"x")
    code, _, err = cli(["weights", "import", some, "--as", "no-such-model"], capsys)
    assert code == 2 and "unknown weights 'no-such-model'" in err
    code, _, err = cli(["weights", "import", some, "--as", "X" * 5000], capsys)
    assert code == 2 and len(err) < 400 and "..." in err and err.count("\n") == 1


def test_the_fan_backend_offline_says_how_to_give_its_files(env, monkeypatch):
    from agetool.errors import OfflineError
    from agetool.face.detect import FanDetector

    monkeypatch.setenv("TORCH_HOME", str(env / "empty-torch"))
    with pytest.raises(OfflineError) as info:
        FanDetector._place_files(Loading(offline=True))
    text = str(info.value)
    assert "`agetool weights import FILE --as fan-2d`" in text and "--as s3fd" in text and "landmarks='dlib'" in text
