"""eval checks what the measuring models give (finite numbers, one vector per face) and names the model
at fault in one line; report.json never holds a bare NaN; the report set is written whole or not at all."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("matplotlib")

from tests.helpers import arcface_standin, cli, face_like, genderage_standin, onnx_linear_model  # noqa: E402

REPORT_SET = ["report.json", "report.md", "report.png"]


@pytest.fixture(scope="module")
def kit(tmp_path_factory, weights):
    d = tmp_path_factory.mktemp("evalchecks")
    photos = d / "photos"
    photos.mkdir()
    Image.fromarray(face_like(256, seed=1)).save(photos / "p.png")
    return {"dir": d, "photos": photos, "gen": weights, "age": genderage_standin(d / "genderage.onnx", age=30.0),
            "identity": arcface_standin(d / "arcface.onnx", constant=True),
            "nan_age": onnx_linear_model(d / "nan_age.onnx", 96, np.zeros((3, 3)), [0.0, 1.0, np.nan]),
            "nan_identity": onnx_linear_model(d / "nan_id.onnx", 112, np.zeros((3, 512)), np.full(512, np.nan),
                                              input_name="input.1", output_name="683")}


def _args(kit, out, age="age", identity="identity") -> list:
    return ["eval", kit["photos"], "--out", out, "--aligned", "--no-mask", "--device", "cpu", "--weights", kit["gen"],
            "--age-model", kit[age], "--identity-model", kit[identity], "--ages", "20"]


@pytest.mark.parametrize("which, needle", [("nan_age", "nan_age.onnx: the age and gender classifier gave values "
                                                       "that are not finite numbers"),
                                           ("nan_identity", "the identity model nan_id.onnx gave embeddings that "
                                                            "are not finite")])
def test_model_outputs_that_are_not_numbers_name_the_model(kit, tmp_path, capsys, which, needle):
    out = tmp_path / "eval"
    args = _args(kit, out, age=which) if which == "nan_age" else _args(kit, out, identity=which)
    code, _, err = cli(args, capsys)
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err
    assert not any((out / name).exists() for name in REPORT_SET)


def test_a_value_that_is_no_number_reads_as_null_with_a_warning(kit, tmp_path, monkeypatch):
    from agetool.eval import report as rep
    from agetool import AgingPipeline
    from agetool.eval.run import evaluate
    from agetool.options import EvalOptions, request

    build = rep.build

    def with_a_gap(*args, **kwargs):  # a statistic of too few faces
        result = build(*args, **kwargs)
        result["summary"][0]["identity_worst"] = float("nan")
        return result

    monkeypatch.setattr(rep, "build", with_a_gap)
    notes: list[str] = []
    out = tmp_path / "eval"
    pipe = AgingPipeline.from_pretrained(model=kit["gen"], device="cpu", report=notes.append)
    result = evaluate(kit["photos"], pipe, request("20", aligned=True, mask=False),
                      EvalOptions(age_model=kit["age"], identity_model=kit["identity"], out=out))
    text = (out / "report.json").read_text()
    assert "NaN" not in text and json.loads(text)["summary"][0]["identity_worst"] is None
    assert result["summary"][0]["identity_worst"] is None
    assert any(n.startswith("warning: 1 value(s) of the report are not numbers") for n in notes), notes


def test_the_report_set_is_written_whole_or_not_at_all(kit, tmp_path, monkeypatch):
    import agetool.eval.plot as plot_module
    from agetool.eval import report as rep
    from agetool import AgingPipeline
    from agetool.eval.run import evaluate
    from agetool.options import EvalOptions, request

    report = evaluate(kit["photos"], AgingPipeline.from_pretrained(model=kit["gen"], device="cpu"),
                      request("20", aligned=True, mask=False),
                      EvalOptions(age_model=kit["age"], identity_model=kit["identity"]))
    out = tmp_path / "eval"
    out.mkdir()
    for name in REPORT_SET:
        (out / name).write_text("earlier run")

    def failing_plot(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(plot_module, "plot", failing_plot)
    with pytest.raises(OSError):
        rep.write(report, out)
    assert sorted(p.name for p in out.iterdir()) == REPORT_SET  # no temporary file left
    assert all((out / name).read_text() == "earlier run" for name in REPORT_SET)
