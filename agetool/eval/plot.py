"""``report.png``: estimated age against target age (with the line y = x), and identity per target."""

from __future__ import annotations

from pathlib import Path

from agetool.errors import UsageError

MATPLOTLIB_HINT = "pip install 'agetool[eval]'"


def require_matplotlib() -> None:
    """A ``UsageError`` before any work when the plot can't be drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("the evaluation plot needs matplotlib", hint=MATPLOTLIB_HINT) from None


def plot(report: dict, path: Path, names: list[str], metric: str = "cosine") -> Path:
    """Draw the report's plot of generators ``names`` to ``path`` (PNG, written through a temporary
    name); ``metric``: what the identity numbers are (``"cosine"`` or ``"distance"``)."""
    require_matplotlib()
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(11, 4.4), dpi=100, layout="constrained")
    ax_age, ax_id = fig.subplots(1, 2)
    targets = list(dict.fromkeys(row["target"] for row in report["summary"]))
    colors = [f"C{i}" for i in range(10)]
    width = 0.8 / max(1, len(names))
    top = 1.0
    for g, name in enumerate(names):
        color = colors[g % 10]
        outs = [(o, f) for f in report["faces"] if f["generator"] == name for o in f["outputs"]]
        rows = [r for r in report["summary"] if r["generator"] == name]
        measured = [o for o, _ in outs if o["estimated_age"] is not None]  # none: identity only
        ax_age.scatter([o["target_age"] for o in measured], [o["estimated_age"] for o in measured], s=12,
                       alpha=0.35, color=color, linewidths=0)
        order = sorted((r for r in rows if r["estimated_age_mean"] is not None), key=lambda r: r["target_age"])
        ax_age.plot([r["target_age"] for r in order], [r["estimated_age_mean"] for r in order], "o-", color=color,
                    label=name)
        per_target = [[o["identity"] for o, _ in outs if o["target"] == t] for t in targets]
        pos = [i + (g - (len(names) - 1) / 2) * width for i in range(len(targets))]
        kept = [(p, v) for p, v in zip(pos, per_target) if v]
        if kept:
            parts = ax_id.boxplot([v for _, v in kept], positions=[p for p, _ in kept], widths=width * 0.8,
                                  patch_artist=True, showfliers=True, manage_ticks=False)
            for box in parts["boxes"]:
                box.set_facecolor(color)
                box.set_alpha(0.5)
            top = max(top, max(max(v) for _, v in kept))
        ax_id.plot([], [], "s", color=color, label=name)
    ages = [o["target_age"] for f in report["faces"] for o in f["outputs"]]
    ages += [o["estimated_age"] for f in report["faces"] for o in f["outputs"] if o["estimated_age"] is not None]
    hi = max([70.0, *ages]) * 1.05
    ax_age.plot([0, hi], [0, hi], "--", color="0.5", linewidth=1, label="y = x")
    measured = report["models"].get("age") is not None
    ax_age.set(xlim=(0, hi), ylim=(0, hi), xlabel="target age (years)", ylabel="estimated age of the output (years)",
               title="Age: estimated against target" if measured else "Age: not measured (identity only)")
    ax_age.legend(loc="upper left", fontsize=8)
    ax_id.set_xticks(range(len(targets)), targets)
    distance = metric == "distance"
    ax_id.set(xlabel="target", ylabel="identity (distance to the input: lower is more alike)" if distance else
              "identity (cosine similarity to the input)", title="Identity per target",
              ylim=(min(0.0, *[o["identity"] for f in report["faces"] for o in f["outputs"]] or [0.0]) - 0.02, top + 0.02))
    ax_id.axhline(0.0 if distance else 1.0, color="0.7", linewidth=0.8)
    threshold = ((report.get("models") or {}).get("identity") or {}).get("threshold")
    if threshold is not None:
        ax_id.axhline(threshold, color="0.5", linestyle=":", linewidth=1)
    if len(names) > 1:
        ax_id.legend(loc="lower left", fontsize=8)
    from agetool.files import replacing

    with replacing(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)
