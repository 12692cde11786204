"""Whole-process speed of the commands a user runs: `agetool age`, `agetool video` and a folder run,
for this tree and (optionally) an earlier agetool installed side by side, in one interleaved run.

    python -m benchmarks.e2e --base /tmp/agetool-base          # both, float32 and bfloat16
    python -m benchmarks.e2e --what age --runs 5               # this tree only, age only
    python -m benchmarks.e2e --base /tmp/agetool-base --what age,video --dtypes float32

An earlier agetool is a checkout at PATH (``git worktree add PATH <commit>``); it runs with
PYTHONPATH=PATH, this tree with PYTHONPATH=this tree, both from an empty folder. Weights are the
seeded full-size ones in the released layouts (generator ``latest_net_g_running.pth``, parser
``deeplab_model.pth``), written once to a temporary folder, so nothing is downloaded and the
numbers are those of the real checkpoints. Landmarks: dlib. Models are read from the page cache
(every command runs once untimed first).

Rows: ``age`` on examples/astronaut.png (one face, parser at 513, six ages), ``video`` of the same
photo (101 frames), ``folder`` (the same photo in 20 variants: flips, crops and scales; photos per
minute), and the per-stage seconds of ``age`` from ``--profile`` ("start-up" is the wall time the
stages do not cover: interpreter, imports, writing the grid). Each number is the fastest of
``--runs`` runs, base and new alternating, since the fastest run is the one least disturbed by
other processes; peak MB is the largest peak RSS (``/usr/bin/time``) over the runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "astronaut.png"
WHAT = ("age", "video", "folder")
FOLDER_PHOTOS = 20


@dataclass
class Result:
    walls: list[float] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)
    stages: list[dict[str, float]] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return min(self.walls)

    @property
    def peak(self) -> float | None:
        return max(self.peaks) if self.peaks else None

    def stage(self, name: str) -> float | None:
        values = [s[name] for s in self.stages if name in s]
        return min(values) if values else None


# ------------------------------------------------------------------ inputs
def write_weights(folder: Path) -> tuple[Path, Path]:
    """Seeded generator and parser checkpoints in the released layouts (flat .pth; {'state_dict': module.*})."""
    import torch

    from agetool.nn.generator import Generator
    from agetool.nn.parser import DeepLabV3
    from tests.seeding import seeded_state_dict

    gen = folder / "latest_net_g_running.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), gen)
    parser = folder / "deeplab_model.pth"
    sd = seeded_state_dict(DeepLabV3(), 1, "parser")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, parser)
    return gen, parser


def write_folder(folder: Path, photo: Path, count: int = FOLDER_PHOTOS) -> Path:
    """``count`` variants of one photo (mirror, crops, scales): every one has the face, none is a copy."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    im = Image.open(photo).convert("RGB")
    w, h = im.size
    for i in range(count):
        v = ImageOps.mirror(im) if i % 2 else im
        m = 4 * (i // 2)  # a different crop each pair
        v = v.crop((m, m // 2, w - m // 2, h - m))
        scale = (0.8, 1.0, 1.25, 1.5)[(i // 2) % 4]
        v = v.resize((round(v.size[0] * scale), round(v.size[1] * scale)), Image.LANCZOS)
        v.save(folder / f"photo_{i:02d}.png")
    return folder


# ------------------------------------------------------------------ running
def run(tree: Path, args: list[str], cwd: Path) -> tuple[float, float | None, str]:
    """Run ``python -m agetool ARGS`` against ``tree``: wall seconds, peak RSS MB, stderr."""
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1", COLUMNS="100")
    env.setdefault("AGETOOL_CACHE", str(cwd / "cache"))  # the parser's prepared weights: not the user's cache
    timer = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        cmd = [sys.executable, "-m", "agetool", *args]
        if timer.is_file():
            cmd = [str(timer), "-f", "%M", "-o", rss.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{tree}: agetool {' '.join(args[:2])} exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-600:]}")
        peak = None
        if timer.is_file():
            nums = [x for x in Path(rss.name).read_text().split() if x.isdigit()]
            peak = int(nums[-1]) / 1024 if nums else None
    return wall, peak, proc.stderr


def profile_table(stderr: str) -> dict[str, float]:
    """Stage -> seconds from the table ``--profile`` prints (the last one in the output)."""
    stages: dict[str, float] = {}
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.replace("\u2502", "|").replace("\u2503", "|").split("|")]
        if len(cells) == 2 and cells[0]:
            try:
                stages[cells[0]] = float(cells[1])
            except ValueError:
                continue
    return stages


class E2E:
    def __init__(self, trees: dict[str, Path], dtypes: list[str], runs: int, workdir: Path, folder_runs: int):
        self.trees, self.dtypes, self.runs, self.workdir = trees, dtypes, runs, workdir
        self.folder_runs = folder_runs
        self.gen, self.parser = write_weights(workdir)
        self.results: dict[tuple[str, str, str], Result] = {}
        self.commands: dict[str, str] = {}

    def common(self, dtype: str) -> list[str]:
        return ["--weights", str(self.gen), "--parser-weights", str(self.parser), "--landmarks", "dlib",
                "--offline", "--device", "cpu", "--dtype", dtype, "--profile"]

    def args(self, what: str, dtype: str, out: Path) -> list[str]:
        if what == "age":
            return ["age", str(PHOTO), "--out", str(out / "grid.png"), *self.common(dtype)]
        if what == "video":
            return ["video", str(PHOTO), "--out", str(out / "aging.mp4"), "--steps", "20", *self.common(dtype)]
        folder = write_folder(self.workdir / "photos", PHOTO)
        return ["age", str(folder), "--out", str(out / "grids"), *self.common(dtype)]

    def measure(self, what: str) -> None:
        runs = self.folder_runs if what == "folder" else self.runs
        for dtype in self.dtypes:
            for name, tree in self.trees.items():  # warm the page cache and each tree's bytecode
                out = self.workdir / f"out-{name}"
                out.mkdir(exist_ok=True)
                if what != "folder":
                    run(tree, self.args(what, dtype, out), self.workdir)
            for r in range(runs):
                for name, tree in self.trees.items():
                    out = self.workdir / f"out-{name}"
                    args = self.args(what, dtype, out)
                    self.commands.setdefault(what, "agetool " + shlex.join(args))
                    print(f"[e2e] {what} {dtype} {name} run {r + 1}/{runs} ...", file=sys.stderr, flush=True)
                    wall, peak, err = run(tree, args, self.workdir)
                    res = self.results.setdefault((what, dtype, name), Result())
                    res.walls.append(wall)
                    if peak is not None:
                        res.peaks.append(peak)
                    res.stages.append(profile_table(err))


# ------------------------------------------------------------------ output
def machine() -> str:
    from benchmarks.bench import cpu_name

    cpu = cpu_name()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return f"{cpu}, {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}"


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def tables(e: E2E) -> str:
    names = list(e.trees)
    lines = ["| command | device | dtype | batch | " + " | ".join(f"{n} s" for n in names)
             + (" | speed-up" if len(names) == 2 else "") + " | rate | " + " | ".join(f"{n} peak MB" for n in names)
             + " |"]
    lines.append("|" + "---|" * (len(lines[0].split("|")) - 2))
    units = {"age": (1, "images/s"), "video": (101, "frames/s"), "folder": (FOLDER_PHOTOS, "photos/min")}
    for what in WHAT:
        for dtype in e.dtypes:
            res = [e.results.get((what, dtype, n)) for n in names]
            if not all(res):
                continue
            count, unit = units[what]
            rates = [count / r.wall * (60 if unit == "photos/min" else 1) for r in res]
            cells = [what if what != "video" else "video, 101 frames", "cpu", dtype,
                     "1" if what != "video" else "auto", *(fmt(r.wall) for r in res)]
            if len(names) == 2:
                cells.append(f"**{res[0].wall / res[1].wall:.2f}x**")
            cells.append(" / ".join(f"{x:.2f}" if unit != "photos/min" else f"{x:.1f}" for x in rates) + f" {unit}")
            cells += [fmt(r.peak, 0) for r in res]
            lines.append("| " + " | ".join(cells) + " |")
    out = ["\n".join(lines)]
    for dtype in e.dtypes:
        res = {n: e.results.get(("age", dtype, n)) for n in names}
        if not all(res.values()):
            continue
        stages: list[str] = []
        for r in res.values():
            for s in r.stages[0]:
                if s != "total" and s not in stages:
                    stages.append(s)
        rows = [f"`age` per stage, {dtype} (seconds, fastest run; --profile)", "",
                "| stage | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for s in stages:
            rows.append(f"| {s} | " + " | ".join(fmt(r.stage(s), 3) for r in res.values()) + " |")
        # background loads overlap the other stages; releases before stages were counted once time
        # "load parser" inside "parse" as well, so their start-up row reads low
        covered = {n: min(sum(v for k, v in st.items() if k != "total" and "background" not in k)
                          for st in r.stages) for n, r in res.items()}
        rows.append("| start-up and writing (wall - foreground stages) | "
                    + " | ".join(fmt(max(0.0, r.wall - covered[n]), 3) for n, r in res.items()) + " |")
        rows.append("| whole process | " + " | ".join(fmt(r.wall, 3) for r in res.values()) + " |")
        out.append("\n".join(rows))
    return "\n\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, default=None, help="an earlier agetool checkout to compare against")
    ap.add_argument("--new", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    ap.add_argument("--what", default=",".join(WHAT), help=f"comma-separated subset of {','.join(WHAT)}")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--runs", type=int, default=3, help="timed runs of age and video per tree and dtype")
    ap.add_argument("--folder-runs", type=int, default=1, help="timed runs of the 20-photo folder")
    args = ap.parse_args(argv)
    what = [w for w in args.what.split(",") if w]
    if set(what) - set(WHAT):
        ap.error(f"unknown: {', '.join(sorted(set(what) - set(WHAT)))}")
    trees = {}
    if args.base is not None:
        if not (args.base / "agetool" / "__init__.py").is_file():
            ap.error(f"--base {args.base}: no agetool checkout there")
        trees["base"] = args.base.resolve()
    trees["new"] = args.new.resolve()
    before = machine()
    with tempfile.TemporaryDirectory(prefix="agetool-e2e-") as tmp:
        e = E2E(trees, [d for d in args.dtypes.split(",") if d], args.runs, Path(tmp), args.folder_runs)
        for w in what:
            e.measure(w)
        grids = compare_grids(Path(tmp), list(trees))
    print(f"machine: {before} at the start; load average {machine().rsplit('load average ', 1)[1]} at the end")
    print(f"reproduce: python -m benchmarks.e2e {' '.join(argv if argv is not None else sys.argv[1:])}")
    for w, cmd in e.commands.items():
        print(f"  {w}: {cmd.replace(tmp, '$TMP')}")
    if grids:
        print(grids)
    print()
    print(tables(e))
    return 0


def compare_grids(workdir: Path, names: list[str]) -> str | None:
    """How far apart the two trees' `age` grids are (the last dtype run): max level difference and
    the share of pixels within 2 levels."""
    import numpy as np
    from PIL import Image

    paths = [workdir / f"out-{n}" / "grid.png" for n in names]
    if len(paths) != 2 or not all(p.is_file() for p in paths):
        return None
    a, b = (np.asarray(Image.open(p).convert("RGB")).astype(np.int16) for p in paths)
    if a.shape != b.shape:
        return f"grids differ in shape: {a.shape} vs {b.shape}"
    d = np.abs(a - b)
    return (f"`age` grids, {names[0]} vs {names[1]}: max difference {d.max()} levels, "
            f"{(d <= 2).mean() * 100:.2f}% of values within 2 levels, {(d == 0).mean() * 100:.2f}% equal")


if __name__ == "__main__":
    sys.exit(main())
