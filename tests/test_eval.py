"""`agetool eval` and `agetool.evaluate` end to end: a seeded tiny generator, aligned crops, and
stand-in ONNX models whose answers are known (a constant age of 30, a constant embedding)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("matplotlib")
if importlib.util.find_spec("agetool.cli.options") is None:  # the command line of the Python API
    pytest.skip("agetool eval runs on agetool.AgingPipeline and its shared options", allow_module_level=True)

from agetool.ages import AGE_CLASSES, DEFAULT_ANCHORS  # noqa: E402
from tests.helpers import arcface_standin, cli, face_like, free_port, genderage_standin, tiny_generator_file  # noqa: E402

AGE = 30.0


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    photos = d / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(face_like(256, seed=i)).save(photos / f"p{i}.png")
    return {"photos": photos, "gen": tiny_generator_file(d / "gen.safetensors", seed=1),
            "gen2": tiny_generator_file(d / "gen2.safetensors", seed=2),
            "age": genderage_standin(d / "genderage.onnx", age=AGE),
            "identity": arcface_standin(d / "arcface.onnx", constant=True)}


def _args(kit, out, *extra) -> list:
    return ["eval", kit["photos"], "--out", out, "--aligned", "--no-mask", "--device", "cpu",
            "--age-model", kit["age"], "--identity-model", kit["identity"], *extra]


def _check_constant_report(report: dict, photos: int, targets: list[tuple[str, float]], generator: str):
    assert len(report["faces"]) == photos
    for face in report["faces"]:
        assert face["generator"] == generator == face["model"] and face["face"] == 0
        assert face["input"]["estimated_age"] == pytest.approx(AGE, abs=1e-4)
        assert face["input"]["identity"] == pytest.approx(1.0, abs=1e-6)
        assert [(o["target"], o["target_age"]) for o in face["outputs"]] == targets
        for o in face["outputs"]:
            assert o["estimated_age"] == pytest.approx(AGE, abs=1e-4)
            assert o["identity"] == pytest.approx(1.0, abs=1e-6)
    rows = [r for r in report["summary"] if r["generator"] == generator]
    assert [(r["target"], r["target_age"]) for r in rows] == targets
    for r, (_, target_age) in zip(rows, targets):
        assert r["n"] == photos
        assert r["estimated_age_mean"] == pytest.approx(AGE, abs=1e-4)
        assert r["age_error_mean"] == pytest.approx(abs(AGE - target_age), abs=1e-4)
        assert r["identity_mean"] == pytest.approx(1.0, abs=1e-6) and r["identity_min"] == pytest.approx(1.0, abs=1e-6)
    assert report["inputs"]["n"] == photos
    assert report["inputs"]["estimated_age_mean"] == pytest.approx(AGE, abs=1e-4)


CLASS_TARGETS = [(c, DEFAULT_ANCHORS[c]) for c in AGE_CLASSES]


def test_eval_command_writes_the_report(kit, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = cli(_args(kit, out, "--weights", kit["gen"]), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    _check_constant_report(report, 3, CLASS_TARGETS, "gen.safetensors")
    assert [f["photo"] for f in report["faces"]] == [str(kit["photos"] / f"p{i}.png") for i in range(3)]
    assert report["failed"] == [] and "calibration" not in report
    assert report["models"]["age"]["file"] == "genderage.onnx" and report["models"]["identity"]["file"] == "arcface.onnx"
    assert report["models"]["generator"][0]["sha256"] == __import__("hashlib").sha256(kit["gen"].read_bytes()).hexdigest()
    md = (out / "report.md").read_text()
    for label, anchor in CLASS_TARGETS:
        assert f"| {label} | {anchor:.1f} | 3 | 30.0 | {abs(AGE - anchor):.1f} | 1.000 | 1.000 |" in md
    with Image.open(out / "report.png") as im:
        assert im.format == "PNG" and im.size[0] > 500
    for label, anchor in CLASS_TARGETS:  # the same summary printed as a table
        line = next(row for row in stdout.splitlines() if row.strip().startswith(label))
        assert f"{abs(AGE - anchor):.1f}" in line and "1.000" in line
    assert str(out / "report.json") in err
    assert not [p for p in out.rglob("*") if ".part." in p.name]  # no temporary files left


def test_python_api_returns_the_report(kit, tmp_path):
    import agetool

    from agetool.options import EvalOptions, request

    pipe = agetool.AgingPipeline.from_pretrained(model=kit["gen"], device="cpu")
    report = agetool.evaluate(kit["photos"] / "p0.png", pipe, request("5,30-39,80", aligned=True, mask=False),
                              EvalOptions(age_model=kit["age"], identity_model=kit["identity"]))
    _check_constant_report(report, 1, [("5", 5.0), ("30-39", 34.5), ("80", 80.0)], "gen.safetensors")
    assert report["settings"]["targets"] == ["5", "30-39", "80"]
    assert not list(tmp_path.iterdir())  # nothing written without out


def test_compare_two_checkpoints(kit, tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, err = cli(_args(kit, out, "--compare", kit["gen"], kit["gen2"], "--ages", "20,40"), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert [g["name"] for g in report["models"]["generator"]] == ["gen.safetensors", "gen2.safetensors"]
    assert [(r["generator"], r["target"]) for r in report["summary"]] == [
        ("gen.safetensors", "20"), ("gen.safetensors", "40"), ("gen2.safetensors", "20"), ("gen2.safetensors", "40")]
    assert report["inputs"]["n"] == 3 and len(report["faces"]) == 6
    assert "gen2.safetensors" in stdout and "| gen2.safetensors | 40 | 40.0 | 3 | 30.0 | 10.0 |" in (out / "report.md").read_text()


def test_one_eval_run_parses_its_ages_once(kit, tmp_path, monkeypatch, capsys):
    """Two generators over three photos: the ages are parsed once for the whole run."""
    from agetool import ages

    calls = []
    parse = ages.parse_ages
    monkeypatch.setattr(ages, "parse_ages", lambda *a, **k: calls.append(a) or parse(*a, **k))
    out = tmp_path / "once"
    code, _, err = cli(_args(kit, out, "--compare", kit["gen"], kit["gen2"], "--ages", "5,30-39,61"), capsys)
    assert code == 0, err
    assert len(json.loads((out / "report.json").read_text())["faces"]) == 6
    assert calls == [("5,30-39,61",)]


def test_pipelines_compared_from_python(kit, tmp_path):
    """A list of pipelines is compared; two checkpoints of the same file name are told apart by their
    paths."""
    import shutil

    import agetool
    from agetool.errors import UsageError
    from agetool.options import EvalOptions, request

    files = [tmp_path / d / "generator.safetensors" for d in ("a", "b")]
    for src, dst in zip((kit["gen"], kit["gen2"]), files):
        dst.parent.mkdir()
        shutil.copy(src, dst)
    pipes = [agetool.AgingPipeline.from_pretrained(model=f, device="cpu") for f in files]
    options = EvalOptions(age_model=kit["age"], identity_model=kit["identity"])
    report = agetool.evaluate([kit["photos"] / "p0.png"], pipes, request("20", aligned=True, mask=False),
                              options)
    assert [g["name"] for g in report["models"]["generator"]] == [str(f) for f in files]
    assert [f["generator"] for f in report["faces"]] == [str(f) for f in files]
    assert report["settings"]["targets"] == ["20"] and "upscale" not in report["settings"]
    with pytest.raises(UsageError, match=r"^paste_back=True: eval measures the aged faces of the run's seed"):
        agetool.evaluate([kit["photos"]], pipes[0], request(paste_back=True), options)
    with pytest.raises(UsageError, match=r"^candidates=2: eval measures"):
        agetool.evaluate([kit["photos"]], pipes[0], request(candidates=2), options)
    with pytest.raises(UsageError, match=r"^calibrate fits the anchors of one generator"):
        agetool.evaluate([kit["photos"]], pipes, None, EvalOptions.of(calibrate=True))
    with pytest.raises(UsageError, match=r"^pipeline=.*: expected an AgingPipeline"):
        agetool.evaluate([kit["photos"]], "female")


def test_calibrate_writes_anchors(kit, tmp_path, capsys):
    out = tmp_path / "cal"
    code, stdout, err = cli(_args(kit, out, "--weights", kit["gen"], "--calibrate", "--calibrate-steps", "2"), capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    cal = report["calibration"]
    anchors = json.loads((out / "anchors.json").read_text())
    assert anchors == cal["anchors"] and list(anchors) == list(AGE_CLASSES)
    assert cal["frames"] == 3 * 11
    values = np.array(list(anchors.values()))
    assert (np.diff(values) >= 0.5 - 1e-6).all()
    assert abs(values.mean() - AGE) < 1.0  # every frame looks 30: the anchors gather around 30
    assert cal["error_after"] < cal["error_before"]
    assert "calibrated anchors" in stdout
    from agetool.ages import load_anchors

    assert load_anchors(out / "anchors.json") == anchors  # usable as --age-anchors


def test_skip_existing_reuses_kept_results(kit, tmp_path, capsys):
    out = tmp_path / "resume"
    assert cli(_args(kit, out, "--weights", kit["gen"]), capsys)[0] == 0
    parts = sorted((out / ".parts").glob("*.json"))
    assert len(parts) == 3
    part = json.loads(parts[1].read_text())
    part["faces"][0]["outputs"][0]["estimated_age"] = 99.0  # marks a kept result
    parts[1].write_text(json.dumps(part))
    assert cli(_args(kit, out, "--weights", kit["gen"], "--skip-existing"), capsys)[0] == 0
    report = json.loads((out / "report.json").read_text())
    assert report["faces"][1]["outputs"][0]["estimated_age"] == 99.0
    assert report["summary"][0]["estimated_age_mean"] == pytest.approx((2 * AGE + 99) / 3, abs=1e-4)
    # other settings do not reuse it
    assert cli(_args(kit, out, "--weights", kit["gen"], "--skip-existing", "--seed", "1"), capsys)[0] == 0
    assert json.loads((out / "report.json").read_text())["faces"][1]["outputs"][0]["estimated_age"] == pytest.approx(AGE, abs=1e-4)


def test_a_bad_photo_is_reported_and_the_rest_kept(kit, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(face_like(256, seed=5)).save(photos / "a.png")
    (photos / "b.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code, _, err = cli(["eval", photos, "--out", out, "--aligned", "--no-mask", "--device", "cpu", "--weights",
                        kit["gen"], "--age-model", kit["age"], "--identity-model", kit["identity"]], capsys)
    assert code == 1
    report = json.loads((out / "report.json").read_text())
    assert [f["photo"] for f in report["faces"]] == [str(photos / "a.png")]
    assert [f["photo"] for f in report["failed"]] == [str(photos / "b.png")]
    assert "b.png" in err and "Traceback" not in err


def test_usage_errors(kit, tmp_path, capsys):
    code, _, err = cli(_args(kit, tmp_path / "o", "--weights", kit["gen"], "--identity", "nope"), capsys)
    assert code == 2 and "--identity nope" in err
    code, _, err = cli(_args(kit, tmp_path / "o", "--compare", kit["gen"], kit["gen2"], "--calibrate"), capsys)
    assert code == 2 and "--calibrate" in err
    code, _, err = cli(_args(kit, tmp_path / "o", "--weights", kit["gen"], "--identity-model", tmp_path / "x.onnx"),
                       capsys)
    assert code == 1 and "--identity-model" in err and "x.onnx" in err


def test_two_torchrun_ranks_give_the_same_report(kit, tmp_path):
    one = tmp_path / "one"
    assert cli(_args(kit, one, "--weights", kit["gen"]))[0] == 0
    two = tmp_path / "two"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = [str(a) for a in _args(kit, two, "--weights", kit["gen"])]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "agetool", *args],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((one / "report.json").read_text())
    b = json.loads((two / "report.json").read_text())
    assert a == b
    assert proc.stdout.count("evaluation") == 1  # one summary, from rank 0


def test_identity_only_without_the_age_model(kit, tmp_path, capsys, monkeypatch):
    """--no-age, or automatically offline when genderage is not at hand (saying so): only the
    generator (and the identity model given) are needed; every estimated age is null."""
    from agetool import weights

    monkeypatch.setenv("AGETOOL_CACHE", str(tmp_path / "empty-cache"))
    assert weights.status("genderage").path is None
    base = ["eval", kit["photos"], "--aligned", "--no-mask", "--device", "cpu", "--weights", kit["gen"],
            "--identity-model", kit["identity"], "--ages", "5,30-39"]
    code, out, err = cli([*base, "--out", tmp_path / "auto", "--offline"], capsys)
    assert code == 0, err
    assert "genderage is not at hand and network access is off: measuring identity only" in err and "--no-age" in err
    code, out2, err2 = cli([*base, "--out", tmp_path / "asked", "--no-age"], capsys)
    assert code == 0 and "warning" not in err2, err2
    for run in ("auto", "asked"):
        report = json.loads((tmp_path / run / "report.json").read_text())
        assert report["models"]["age"] is None
        outputs = [o for f in report["faces"] for o in f["outputs"]]
        assert len(outputs) == 6 and all(o["estimated_age"] is None for o in outputs)
        assert all(o["identity"] == pytest.approx(1.0, abs=1e-6) for o in outputs)
        assert all(r["estimated_age_mean"] is None and r["identity_mean"] is not None for r in report["summary"])
        assert "| age | not measured |" in (tmp_path / run / "report.md").read_text()
        assert (tmp_path / run / "report.png").stat().st_size > 0
    code, _, err = cli([*base, "--out", tmp_path / "cal", "--no-age", "--calibrate"], capsys)
    assert code == 2 and "--calibrate" in err and "--no-age" in err
