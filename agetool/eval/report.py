"""The evaluation report: per-face records, the summary per target, ``report.json`` and ``report.md``.

A face record (one per photo, face and generator)::

    {"photo": "a.jpg", "face": 0, "generator": "lats-auto", "model": "male",
     "input": {"estimated_age": 31.2, "identity": 1.0},
     "outputs": [{"target": "0-2", "target_age": 1.0, "estimated_age": 4.1, "identity": 0.61,
                  "skin_tone": 3.2}, ...]}

The summary has one row per generator and target, in the order the targets were asked for:
``n``, ``estimated_age_mean``, ``age_error_mean`` (mean absolute difference to ``target_age``),
``identity_mean`` and ``identity_min`` (cosine similarity: higher is more alike) or, when the
identity model's metric is a distance (dlib), ``identity_max``: the least alike output either way;
``skin_tone_mean`` and ``skin_tone_max`` (CIELAB chroma distance to the input's skin, None where
no output could be measured).
``models["identity"]["metric"]`` says which.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

REPORT_VERSION = 1


def face_record(photo: str, face: int, generator: str, model: str, targets: list[tuple[str, float]],
                measures) -> dict:
    """One face's record from its ``targets`` [(target, target_age)] and ``measures`` (FaceMeasures)."""
    if len(targets) != len(measures.ages):
        raise ValueError("one measurement per target")
    return {
        "photo": photo, "face": int(face), "generator": generator, "model": model,
        "input": {"estimated_age": _age(measures.input_age), "identity": float(measures.input_identity)},
        "outputs": [{"target": str(t), "target_age": float(a), "estimated_age": _age(e), "identity": float(s)}
                    for (t, a), e, s in zip(targets, measures.ages, measures.identities)],
    }


def add_upscaled(record: dict, measures) -> dict:
    """Each output of ``record`` with ``upscaled: {estimated_age, identity}``: the same output measured
    after super-resolution (``measures``: FaceMeasures of the upscaled tiles, same order)."""
    for out, e, s in zip(record["outputs"], measures.ages, measures.identities):
        out["upscaled"] = {"estimated_age": _age(e), "identity": float(s)}
    return record


def _age(value) -> float | None:
    return None if value is None else float(value)  # None: not measured (identity only)


def _age_means(estimated: list, targets) -> tuple[float | None, float | None]:
    """(mean estimated age, mean absolute error) of ``estimated``; None for both when ages were not measured."""
    if any(e is None for e in estimated):
        return None, None
    est = np.array(estimated, dtype=np.float64)
    return float(est.mean()), float(np.abs(est - targets).mean())


def add_skin_tones(record: dict, tones: list[float] | None) -> dict:
    """Each output of ``record`` with ``skin_tone``: its skin chroma distance to the input (CIELAB
    a*, b* over the input's eroded skin region, ``agetool.faithful.skin_tones``); None where the
    input shows too little skin to measure. Records without it (faces not parsed) have no ``skin_tone``."""
    for k, out in enumerate(record["outputs"]):
        out["skin_tone"] = None if tones is None else float(tones[k])
    return record


def identity_metric(models: dict) -> str:
    """``"cosine"`` or ``"distance"``: what the identity numbers of a report with ``models`` are."""
    return (models.get("identity") or {}).get("metric") or "cosine"


def worst_key(metric: str) -> str:
    """The summary key of the least alike output: the lowest cosine, the largest distance."""
    return "identity_max" if metric == "distance" else "identity_min"


def _worst(ids: np.ndarray, metric: str) -> float:
    return float(ids.max() if metric == "distance" else ids.min())


def summarize(faces: list[dict], metric: str = "cosine") -> list[dict]:
    """One row per (generator, target), in first-seen order."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for face in faces:
        for out in face["outputs"]:
            groups.setdefault((face["generator"], out["target"]), []).append(out)
    rows = []
    for (generator, target), outs in groups.items():
        tgt = np.array([o["target_age"] for o in outs])
        est_mean, error_mean = _age_means([o["estimated_age"] for o in outs], tgt)
        ids = np.array([o["identity"] for o in outs])
        rows.append({
            "generator": generator, "target": target, "target_age": float(tgt[0]), "n": len(outs),
            "estimated_age_mean": est_mean, "age_error_mean": error_mean,
            "identity_mean": float(ids.mean()), worst_key(metric): _worst(ids, metric),
        })
        if any("skin_tone" in o for o in outs):  # faces parsed: the skin-tone drift
            tones = [o["skin_tone"] for o in outs if o.get("skin_tone") is not None]
            rows[-1].update({"skin_tone_mean": float(np.mean(tones)) if tones else None,
                             "skin_tone_max": float(np.max(tones)) if tones else None})
        if all("upscaled" in o for o in outs):  # the same outputs after super-resolution
            up_mean, up_error = _age_means([o["upscaled"]["estimated_age"] for o in outs], tgt)
            rows[-1].update({"upscaled_estimated_age_mean": up_mean, "upscaled_age_error_mean": up_error,
                             "upscaled_identity_mean": float(np.mean([o["upscaled"]["identity"] for o in outs]))})
    return rows


def summarize_inputs(faces: list[dict], metric: str = "cosine") -> dict:
    """The input faces (each photo and face once): their estimated ages and self-identity."""
    seen: dict[tuple[str, int], dict] = {}
    for face in faces:
        seen.setdefault((face["photo"], face["face"]), face["input"])
    ids = np.array([i["identity"] for i in seen.values()]) if seen else np.zeros(0)
    if not seen:
        return {"n": 0, "estimated_age_mean": None, "identity_mean": None, worst_key(metric): None}
    ages, _ = _age_means([i["estimated_age"] for i in seen.values()], 0.0)
    return {"n": len(seen), "estimated_age_mean": ages, "identity_mean": float(ids.mean()),
            worst_key(metric): _worst(ids, metric)}


def build(faces: list[dict], *, models: dict, settings: dict, failed: list[dict] | None = None,
          calibration: dict | None = None) -> dict:
    """The whole report (what ``report.json`` holds and ``agetool.evaluate`` returns)."""
    from agetool import __version__

    report = {
        "version": REPORT_VERSION, "agetool": __version__, "models": models, "settings": settings,
        "summary": summarize(faces, identity_metric(models)), "inputs": summarize_inputs(faces, identity_metric(models)),
        "faces": faces,
        "failed": list(failed or []),
    }
    if calibration is not None:
        report["calibration"] = calibration
    return report


def generators(report: dict) -> list[str]:
    return list(dict.fromkeys(row["generator"] for row in report["summary"]))


def _fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(report: dict) -> tuple[list[str], list[list[str]]]:
    """The summary as text: a header and one row per generator and target (shared by md and the CLI)."""
    several = len(generators(report)) > 1
    worst = worst_key(identity_metric(report["models"]))
    header = (["generator"] if several else []) + ["target", "target age", "n", "estimated age",
                                                   "age error", "identity mean", worst.replace("_", " "),
                                                   "skin mean", "skin max"]
    factor = report.get("settings", {}).get("upscale") or 1
    if factor > 1:  # the upscaled outputs' numbers next to the 256 px ones
        header += [f"estimated age x{factor}", f"age error x{factor}", f"identity mean x{factor}"]
    rows = []
    for r in report["summary"]:
        rows.append(([r["generator"]] if several else []) + [
            r["target"], _fmt(r["target_age"], 1), str(r["n"]), _fmt(r["estimated_age_mean"], 1),
            _fmt(r["age_error_mean"], 1), _fmt(r["identity_mean"], 3), _fmt(r.get(worst), 3),
            _fmt(r.get("skin_tone_mean"), 2), _fmt(r.get("skin_tone_max"), 2)]
            + ([_fmt(r.get("upscaled_estimated_age_mean"), 1), _fmt(r.get("upscaled_age_error_mean"), 1),
                _fmt(r.get("upscaled_identity_mean"), 3)] if factor > 1 else []))
    inp = report["inputs"]
    if inp["n"]:
        rows.append(([""] if several else []) + [
            "input", "-", str(inp["n"]), _fmt(inp["estimated_age_mean"], 1), "-",
            _fmt(inp["identity_mean"], 3), _fmt(inp.get(worst), 3), "-", "-"] + ["-"] * (3 if factor > 1 else 0))
    return header, rows


def identity_text(models: dict) -> str:
    """What the identity numbers are, with the model, its file and sha256 where known."""
    info = models.get("identity") or {}
    threshold = info.get("threshold")
    if identity_metric(models) == "distance":
        text = ("Euclidean distance of the face descriptors of the input and the output (0 = same descriptor"
                + (f"; same person at {threshold:g} or less" if threshold is not None else "") + ").")
    else:
        text = ("cosine similarity of the identity embeddings of the input and the output (1 = same embedding"
                + (f"; same person at {threshold:g} or more" if threshold is not None else "") + ").")
    if info.get("name"):
        sha = info.get("sha256") or ""
        text += (f" Identity model: {info['name']} ({info.get('file') or '-'}"
                 + (f", sha256 {sha}" if sha else "") + f"), metric: {identity_metric(models)}.")
    return text


def _md_cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown(report: dict, plot: str | None = "report.png") -> str:
    """``report.md``: the summary table, the models and versions used, the settings."""
    header, rows = table_rows(report)
    lines = ["# agetool evaluation", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" if i < (2 if len(generators(report)) > 1 else 1) else "---:" for i in range(len(header))) + "|")
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    lines += ["", "Estimated age: the age model's estimate of each output; age error: mean absolute difference "
              f"to the target age; identity: {identity_text(report['models'])} Skin tone: the distance of the "
              "mean CIELAB chroma (a*, b*; lightness left out) of input and output over the input's skin "
              "(parsing labels skin and nose, eroded by 4 px); 0 = the same tone.", ""]
    if plot:
        lines += [f"![estimated age and identity per target]({plot})", ""]
    lines += ["## Models", "", "| role | name | file | sha256 | revision |", "|---|---|---|---|---|"]
    for role, info in report["models"].items():
        for entry in (info if isinstance(info, list) else [info]):
            if entry is None:  # not used: identity only, no age model
                lines.append(f"| {role} | not measured | | | |")
                continue
            sha = entry.get("sha256") or ""
            lines.append("| " + " | ".join(_md_cell(c) for c in (
                role, entry.get("name") or "", entry.get("file") or "", sha[:16], (entry.get("revision") or "")[:12])) + " |")
    lines += ["", f"agetool {report['agetool']}; settings: "
              + ", ".join(f"{k} = {_md_cell(json.dumps(v))}" for k, v in report["settings"].items()), ""]
    if report.get("failed"):
        lines += ["## Failed", ""] + [f"- {_md_cell(f['photo'])}: {_md_cell(f['error'])}" for f in report["failed"]] + [""]
    cal = report.get("calibration")
    if cal:
        lines += ["## Calibrated anchors", "", "| class | before | calibrated |", "|---|---:|---:|"]
        for label, age in cal["anchors"].items():
            lines.append(f"| {label} | {cal['anchors_before'][label]:.1f} | {age:.1f} |")
        lines += ["", f"Mean absolute difference between the estimated age of traversal frames and the "
                  f"requested age: {cal['error_before']:.1f} years with the anchors used, "
                  f"{cal['error_after']:.1f} with the calibrated ones.", ""]
    return "\n".join(lines)



def without_nan(value) -> tuple[object, int]:
    """``value`` (nested dicts and lists) with every number that is not finite as None, and how many."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, 1
    if isinstance(value, dict):
        pairs = [(k, without_nan(v)) for k, v in value.items()]
        return {k: v for k, (v, _) in pairs}, sum(n for _, (_, n) in pairs)
    if isinstance(value, (list, tuple)):
        items = [without_nan(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    return value, 0


def write(report: dict, out: Path) -> list[Path]:
    """``out/report.json``, ``out/report.md``, ``out/report.png`` (and ``anchors.json`` when calibrated):
    the whole set, or none of it (each is made under a temporary name, then all are renamed).
    Numbers that are not finite are written as null (JSON has no NaN)."""
    import os

    from agetool.eval.plot import plot
    from agetool.files import temp_sibling, write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report, _ = without_nan(report)
    metric = identity_metric(report.get("models") or {})
    makers = {"report.json": lambda p: write_text(p, json.dumps(report, indent=1, allow_nan=False) + "\n"),
              "report.md": lambda p: write_text(p, markdown(report)),
              "report.png": lambda p: plot(report, p, generators(report), metric)}
    if report.get("calibration"):
        anchors = json.dumps(report["calibration"]["anchors"], indent=1, allow_nan=False) + "\n"
        makers["anchors.json"] = lambda p: write_text(p, anchors)
    made: list[tuple[Path, Path]] = []
    try:
        for name, make in makers.items():
            tmp = temp_sibling(out / name)
            made.append((tmp, out / name))
            make(tmp)
        for tmp, target in made:
            os.replace(tmp, target)
    finally:
        for tmp, _ in made:
            tmp.unlink(missing_ok=True)
    return [target for _, target in made]
