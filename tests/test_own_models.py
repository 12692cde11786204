"""Model files a user sets once (config file, environment, `weights import --trust`), and the one
message that names every missing model, with advice that works, before anything loads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agetool.cli import console
from agetool.config import load_settings
from agetool.errors import UsageError
from tests.helpers import ROOT, cli, face_like

FIRST_RUN_MODELS = ("deeplab-parser", "genderage", "lats-male", "lats-female")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty cache and no config file: a first run."""
    for name, sub in (("AGETOOL_CACHE", "cache"), ("HF_HOME", "hf"), ("TORCH_HOME", "torch"),
                      ("XDG_CONFIG_HOME", "config")):
        monkeypatch.setenv(name, str(tmp_path / sub))
    for key in ("AGETOOL_CONFIG", "AGETOOL_PARSER_WEIGHTS", "AGETOOL_AGE_MODEL", "AGETOOL_WEIGHTS",
                "AGETOOL_OFFLINE", "AGETOOL_MODEL", "AGETOOL_DEVICE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(console.err, "width", 1000)
    monkeypatch.setattr(console.out, "width", 1000)
    return tmp_path


@pytest.fixture
def photo(tmp_path) -> Path:
    from agetool.images import write_image

    return write_image(tmp_path / "photo.png", face_like())


def _agetool(args, env_dir: Path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGETOOL_")}
    environ.update(PYTHONPATH=str(ROOT), AGETOOL_CACHE=str(env_dir / "cache"), HF_HOME=str(env_dir / "hf"),
                   TORCH_HOME=str(env_dir / "torch"), XDG_CONFIG_HOME=str(env_dir / "config"), COLUMNS="1000")
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "agetool", *map(str, args)], capture_output=True, text=True,
                          env=environ, timeout=120)


def test_first_run_offline_names_every_missing_model_at_once(home, photo):
    """Empty cache, no network: one error line naming the parser, the classifier and both
    generators, each with the option that takes a file, and every way out; nothing loads first."""
    t0 = time.monotonic()
    done = _agetool(["age", photo, "--offline"], home)
    elapsed = time.monotonic() - t0
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 4 model files are not at hand"), done.stderr
    for name in FIRST_RUN_MODELS:
        assert name in lines[0]
    for flag in ("--parser-weights FILE", "--age-model FILE", "--weights FILE", "--offline",
                 "agetool weights import FILE --as NAME", "--trust", "config.toml",
                 "agetool weights download deeplab-parser genderage lats-male lats-female"):
        assert flag in lines[0], flag
    assert "landmarks:" not in done.stderr  # the landmark detector was not even loaded
    assert elapsed < 60, elapsed  # seconds of start-up, not the 10-40 s of loading models one by one
    # HF_HUB_OFFLINE=1 says so, and a folder run says it once, not once per photo
    (photo.parent / "more").mkdir()
    for i in range(3):
        (photo.parent / "more" / f"{i}.png").write_bytes(photo.read_bytes())
    done = _agetool(["age", photo.parent / "more", "--out", photo.parent / "grids/"], home, HF_HUB_OFFLINE="1")
    assert done.returncode == 1
    assert done.stderr.count("error:") == 1 and "(HF_HUB_OFFLINE=1)" in done.stderr, done.stderr


def test_missing_classifier_advice_names_the_option_that_helps(home, photo, capsys, weights):
    code, _, err = cli(["estimate", photo, "--aligned", "--offline"], capsys)
    assert code == 1
    assert "genderage" in err and "--age-model FILE" in err and "--model" not in err, err
    # ages relative to the estimate: the classifier is the one thing missing
    code, _, err = cli(["age", photo, "--aligned", "--no-mask", "--weights", weights, "--ages", "+20",
                        "--offline"], capsys)
    assert code == 1 and "genderage" in err and "--age-model FILE" in err and "lats-" not in err, err


def test_eval_names_the_identity_model_option(home, photo, capsys, weights):
    pytest.importorskip("matplotlib")
    code, _, err = cli(["eval", photo, "--out", home / "ev", "--aligned", "--no-mask", "--weights", weights,
                        "--identity", "auraface", "--offline"], capsys)
    assert code == 1
    assert "auraface" in err and "--identity-model FILE" in err and "genderage" in err, err


def test_own_parser_registered_with_trust_then_used_without_flags(home, photo, capsys, seeded_parser_file):
    code, _, err = cli(["weights", "import", seeded_parser_file, "--as", "deeplab-parser"], capsys)
    assert code == 1 and "--trust" in err, err  # not the released file: refused, with the way to register it
    code, out, err = cli(["weights", "import", seeded_parser_file, "--as", "deeplab-parser", "--trust"], capsys)
    assert code == 0, err
    assert "registered as your own file" in err and "CC BY-NC" not in err
    code, out, _ = cli(["weights", "list"], capsys)
    row = next(line for line in out.splitlines() if line.startswith("deeplab-parser "))
    assert " yes, yours " in row, row
    assert re.search(r"^deeplab-parser: .*own\.pth \(your file, [0-9.]+ [kMG]?B on disk\)$", out, re.M), out
    labels = home / "labels.png"
    code, out, err = cli(["parse", photo, "--aligned", "--out", labels, "--offline"], capsys)
    assert code == 0 and labels.is_file(), err


def test_own_parser_set_in_the_config_file_then_used_without_flags(home, photo, capsys, seeded_parser_file):
    config = home / "config" / "agetool" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'parser-weights = "{seeded_parser_file}"\noffline = true\n')
    code, out, _ = cli(["info"], capsys)
    assert f"config: {config}" in out and f'parser-weights = "{seeded_parser_file}"  ({config})' in out, out
    labels = home / "labels.png"
    code, out, err = cli(["parse", photo, "--aligned", "--out", labels], capsys)
    assert code == 0 and labels.is_file(), err
    # a flag given on the command line wins over the config
    code, _, err = cli(["parse", photo, "--aligned", "--out", labels, "--parser-weights", home / "none.pth"], capsys)
    assert code != 0 and "none.pth" in err, err
    # the environment wins over the file
    os.environ["AGETOOL_PARSER_WEIGHTS"] = str(home / "none.pth")
    try:
        code, _, err = cli(["parse", photo, "--aligned", "--out", labels], capsys)
    finally:
        del os.environ["AGETOOL_PARSER_WEIGHTS"]
    assert code == 2 and "AGETOOL_PARSER_WEIGHTS" in err and "none.pth" in err, err


@pytest.mark.parametrize("text, needle", [
    ("parser-weight = 'x'\n", "parser-weight: unknown key"),
    ("offline = 'maybe'\n", "offline: expected true or false"),
    ("model = 'old'\n", "model: 'old': expected auto, male, female"),
    ("device = [1]\n", "device: expected a text value"),
    ("= broken\n", "not valid TOML"),
])
def test_config_errors_name_the_file_and_the_key(tmp_path, text, needle):
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(UsageError) as e:
        load_settings(path, environ={})
    assert str(path) in str(e.value) and needle in str(e.value)


def test_config_must_be_a_small_regular_file(tmp_path, capsys, home):
    with pytest.raises(UsageError, match="not a regular file"):
        load_settings(tmp_path, environ={})
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * 70_000 + "\n")
    with pytest.raises(UsageError, match="more than a config file may have"):
        load_settings(big, environ={})
    os.environ["AGETOOL_CONFIG"] = str(big)
    try:
        code, _, err = cli(["info"], capsys)
        assert code == 2 and str(big) in err
        code, out, _ = cli(["--help"], capsys)  # help still shows
        assert code == 0 and "Usage" in out
    finally:
        del os.environ["AGETOOL_CONFIG"]


def test_relative_ages_are_captioned_with_the_age_they_became(tmp_path, weights, monkeypatch):
    import agetool.images
    from agetool import AgingPipeline
    from agetool.results import column_label
    from tests.helpers import genderage_standin

    assert column_label("+20", 62.0) == "62 (+20)" and column_label("30-39", 34.5) == "30-39"
    pipe = AgingPipeline.from_pretrained(model=weights, device="cpu",
                                         classifier_weights=genderage_standin(tmp_path / "ga.onnx", age=42.0))
    result = pipe(face_like(), ages="+20,30", aligned=True, mask=False)
    shown = []
    real = agetool.images.caption
    monkeypatch.setattr(agetool.images, "caption", lambda tile, text: shown.append(text) or real(tile, text))
    result.grid_array()
    assert shown == ["input, ~42", "62 (+20)", "30"]


def test_eval_report_names_the_registry_generator_file_and_its_sha256(home, photo, capsys, weights):
    import hashlib
    import json

    from tests.helpers import arcface_standin, genderage_standin

    pytest.importorskip("matplotlib")
    code, _, err = cli(["weights", "import", weights, "--as", "lats-male"], capsys)
    assert code == 0, err
    out = home / "ev"
    code, _, err = cli(["eval", photo, "--out", out, "--aligned", "--no-mask", "--model", "male", "--offline",
                        "--device", "cpu", "--age-model", genderage_standin(home / "ga.onnx", age=30.0),
                        "--identity-model", arcface_standin(home / "id.onnx", constant=True)], capsys)
    assert code == 0, err
    generator = json.loads((out / "report.json").read_text())["models"]["generator"]
    assert [g["name"] for g in generator] == ["lats-male"]
    assert generator[0]["file"] == "lats-male.safetensors"
    assert generator[0]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    md = (out / "report.md").read_text()
    assert "| generator | lats-male | lats-male.safetensors | " + generator[0]["sha256"][:16] in md
    assert "None" not in md
    # the summary table reads at 80 columns: one line per row, header words whole
    from agetool.cli.eval import print_summary

    console.out.width = 80
    print_summary(json.loads((out / "report.json").read_text()))
    table = capsys.readouterr().out.splitlines()
    first = next(i for i, line in enumerate(table) if line.split()[:1] == ["0-2"])  # after the header's lines
    header = " ".join(table[1:first])
    assert max(map(len, table)) <= 80 and "estimated" in header and "identity" in header and "skin" in header
    rows = [line.split()[0] for line in table[first:]]
    assert rows == ["0-2", "3-6", "7-9", "15-19", "30-39", "50-69", "input"], table  # one line each


def test_training_names_the_folders_it_ignores(tmp_path, capsys):
    from agetool.cli.train import TrainDisplay
    from agetool.images import write_image
    from agetool.train.data import PairDataset
    from agetool.train.report import TrainEvent

    for folder, n in (("train0-2", 1), ("train30-39", 1), ("train40-49", 2), ("train70-120", 1), ("test40-49", 1)):
        for i in range(n):
            write_image(tmp_path / folder / f"{i}.png", face_like(32, seed=i))
    data = PairDataset(tmp_path, 32, mask=False)
    assert data.summary() == {"0-2": 1, "30-39": 1}
    assert data.ignored() == {"train40-49": 2, "train70-120": 1}
    with TrainDisplay(log_every=1) as show:
        show(TrainEvent("start", info={"classes": data.summary(), "ignored": data.ignored()}))
    err = capsys.readouterr().err
    assert "warning: not used for training" in err and "train40-49/ (2 images)" in err and "train70-120/" in err


def test_model_tables_read_at_80_columns_through_a_pipe(home):
    done = _agetool(["weights", "list"], home, COLUMNS="80")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    table = lines[:lines.index(next(line for line in lines if re.match(r"\S+: ", line)))]  # then "name: path"
    assert max(len(line.rstrip()) for line in table) <= 80
    from agetool import weights

    for name in weights.load_registry():  # each name whole on its row, each row at most three lines
        start = next(i for i, line in enumerate(table) if line.startswith(name + " "))
        rest = [i for i, line in enumerate(table) if i > start and line[:1] not in (" ", "")]
        assert (rest[0] if rest else len(table)) - start <= 3, table[start:start + 5]


def test_progress_lines_where_stderr_is_not_a_terminal(tmp_path, weights, crop, capsys, monkeypatch):
    monkeypatch.setattr(console, "LOG_EVERY_S", 0.0)
    code, _, err = cli(["video", crop, "--aligned", "--no-mask", "--weights", weights, "--device", "cpu",
                        "--steps", "2", "--out", tmp_path / "v.mp4"], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("rendering 11 frames: ")]
    assert lines and lines[-1].startswith("rendering 11 frames: 11/11, "), err


def test_help_pages_list_debug_and_only_the_options_a_command_uses(capsys):
    code, out, _ = cli(["--help"], capsys)
    assert "--debug" in out
    code, out, _ = cli(["estimate", "--help"], capsys)
    assert code == 0 and "--age-model" in out
    for generator_option in ("--weights", "--dtype", "--batch-size", "--parser-weights", "--age-anchors", "--noise"):
        assert generator_option not in out, generator_option


def test_shared_options_read_the_same_in_every_help_page():
    """One metavar and one shown default per option where it means the same thing."""
    from collections import defaultdict

    from agetool.cli import command
    from agetool.cli.helptext import walk

    shown = defaultdict(set)
    for path, cmd in walk(command()):
        for p in cmd.params:
            if getattr(p, "param_type_name", "") == "option":
                default = p.default if p.show_default and p.default not in (None, False) else None
                shown[max(p.opts, key=len)].add((p.metavar, default))
    for flag in ("--device", "--landmarks", "--offline", "--aligned", "--min-face", "--faces", "--batch-size",
                 "--seed", "--weights", "--parser-weights", "--age-model", "--debug"):
        assert len(shown[flag]) <= 1, (flag, shown[flag])


def test_settings_reach_only_the_options_that_mean_the_same(tmp_path):
    from agetool.cli import command
    from agetool.cli.defaults import default_map

    settings = load_settings(tmp_path / "none.toml", environ={"AGETOOL_MODEL": "female", "AGETOOL_DEVICE": "cpu",
                                                              "AGETOOL_IDENTITY_MODEL": "dlib"})
    assert settings.values["identity-model"] == "dlib"  # a registered name, not a file
    defaults = default_map(command(), settings)
    assert defaults["age"]["model"] == "female" and defaults["train"]["device"] == "cpu"
    assert "model" not in defaults.get("compare", {})  # compare --model names an identity model
    with pytest.raises(UsageError, match="AGETOOL_IDENTITY_MODEL: .*no such file"):
        load_settings(tmp_path / "none.toml", environ={"AGETOOL_IDENTITY_MODEL": "missing.onnx"})


def test_piped_progress_speaks_at_the_first_step_with_rate_and_time_left(monkeypatch):
    """A fake clock: the first frame is reported at once, then at most one line per LOG_EVERY_S,
    each with the rate and the time left, and the last step always."""
    now = [0.0]
    lines = []
    monkeypatch.setattr(console, "info", lines.append)
    bar = console._log_progress()(disable=True, get_time=lambda: now[0])
    task = bar.add_task("ageing clip.mp4", total=90, unit="frames")
    assert lines == ["ageing clip.mp4: 0/90 frames, 0 s"]  # said as the work starts
    lines.clear()
    now[0] = 40.0
    bar.advance(task, 1)  # the first frame took 40 s: said at once
    assert lines == ["ageing clip.mp4: 1/90 frames, 0.03 frames/s, 40 s, about 59 min 20 s left"]
    now[0] = 41.0
    bar.advance(task, 1)  # within LOG_EVERY_S of the last line: quiet
    assert len(lines) == 1
    now[0] = 40.0 + console.LOG_EVERY_S
    bar.update(task, advance=8, faces=6)  # a clip's frames say how many faces they had
    assert lines[-1] == "ageing clip.mp4: 10/90 frames, 6 faces, 0.22 frames/s, 45 s, about 6 min 0 s left"
    now[0] += 0.5
    bar.update(task, advance=80, faces=1)  # the last step is always said, without time left
    assert lines[-1] == "ageing clip.mp4: 90/90 frames, 1 face, 1.98 frames/s, 46 s"
    bar.advance(task, 0)
    assert len(lines) == 3
    assert console.progress_line(3, None, 0.0) == "3, 0 s"
    bar.add_task("ageing me.jpg", total=1)  # a photo's task: no line until it has done something
    assert len(lines) == 3
