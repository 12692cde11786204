"""What `--candidates N` costs: the whole `agetool age` command at six ages, one draw against N, side by side.

    python -m benchmarks.candidates_bench                  # N = 1 and 4, 3 rounds
    python -m benchmarks.candidates_bench --candidates 1,4,8 --runs 2

Each run is the command a user types, in a process of its own, on examples/astronaut.png (one face,
dlib landmarks, the parser at 513, the six classes), with the seeded full-size generator and parser
in the released layouts (the real checkpoints' cost; no gender classifier, so no gender term). The
settings alternate within each round, every one run once untimed first (page cache). A row gives
the fastest and the median wall time of its runs, its ratio to N = 1 (fastest / fastest), and the
decode and scoring seconds of its fastest run (``--profile``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.e2e import write_weights

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "astronaut.png"


def run(n: int, gen: Path, parser: Path, work: Path) -> tuple[float, dict[str, float]]:
    """One `agetool age` with ``--candidates n``: (wall seconds, stage seconds from --profile)."""
    args = [sys.executable, "-m", "agetool", "age", str(PHOTO), "--weights", str(gen), "--parser-weights",
            str(parser), "--landmarks", "dlib", "--offline", "--device", "cpu", "--out", str(work / f"n{n}.png"),
            "--profile"]
    if n != 1:
        args += ["--candidates", str(n)]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"agetool age --candidates {n} failed:\n{proc.stderr}")
    stages = {m.group(1).strip(): float(m.group(2))
              for m in re.finditer(r"^\s*([a-z][a-z ()]*?)\s+│\s+([0-9.]+)\s*$", proc.stderr, re.M)}
    return wall, stages


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", default="1,4", help="comma-separated N (the first is the baseline)")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args(argv)
    ns = [int(n) for n in a.candidates.split(",")]
    with tempfile.TemporaryDirectory(prefix="agetool-candidates-") as tmp:
        work = Path(tmp)
        gen, parser = write_weights(work)
        for n in ns:  # untimed: files in the page cache, caches of prepared weights written
            run(n, gen, parser, work)
        walls: dict[int, list[float]] = {n: [] for n in ns}
        stages: dict[int, list[dict]] = {n: [] for n in ns}
        for _ in range(a.runs):
            for n in ns:
                wall, st = run(n, gen, parser, work)
                walls[n].append(wall)
                stages[n].append(st)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    import torch

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {load:.1f} at the end")
    print()
    print("| command | runs | fastest s | median s | x N=1 (fastest) | decode s | score s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    base = min(walls[ns[0]])
    for n in ns:
        fastest = min(range(len(walls[n])), key=walls[n].__getitem__)
        st = stages[n][fastest]
        print(f"| `agetool age` six ages, --candidates {n} | {len(walls[n])} | {walls[n][fastest]:.2f} | "
              f"{statistics.median(walls[n]):.2f} | {walls[n][fastest] / base:.2f} | {st.get('decode', 0):.2f} | "
              f"{st.get('score', 0):.2f} |")


if __name__ == "__main__":
    main()
