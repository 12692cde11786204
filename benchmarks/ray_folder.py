"""A folder on a local Ray (`agetool age DIR --engine ray`) against the plain folder run, on this machine.

    python -m benchmarks.ray_folder                    # 12 photos, one run of each
    python -m benchmarks.ray_folder --photos 24 --runs 2

Both runs are whole `agetool age` processes on the same folder (variants of examples/astronaut.png:
flips, crops, scales) with dlib landmarks, the parser at 513 px and the seeded full-size generator
and parser in the released layouts (benchmarks/e2e.py writes them), so the work per photo is that
of real checkpoints. The Ray run starts a local Ray with all CPUs and stops it; its row also gives
the time Ray's dataset ran (its own log line), so the cost of starting Ray and its workers shows
apart from the streaming. The grids of the two runs are compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.e2e import PHOTO, ROOT, machine, write_folder, write_weights


def run(args: list[str], cwd: Path) -> tuple[float, str, int]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", RAY_DISABLE_USAGE_STATS="1",
               AGETOOL_CACHE=str(cwd / "cache"))
    env.pop("RAY_ADDRESS", None)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "agetool", *args], cwd=cwd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.stderr, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=12)
    ap.add_argument("--runs", type=int, default=1, help="runs of each engine; the fastest counts")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agr") as tmp:  # short: Ray's socket paths must fit 107 bytes
        work = Path(tmp)
        gen, parser = write_weights(work)
        photos = write_folder(work / "photos", PHOTO, a.photos)
        common = ["--weights", str(gen), "--parser-weights", str(parser), "--landmarks", "dlib", "--device", "cpu"]
        os.environ["RAY_TMPDIR"] = str(work)
        walls: dict[str, list[float]] = {"plain": [], "ray": []}
        streamed: list[float] = []
        for i in range(a.runs):
            for engine in ("plain", "ray"):
                out = work / f"{engine}{i}"
                extra = ["--engine", "ray"] if engine == "ray" else []
                wall, err, code = run(["age", str(photos), "--out", str(out), *common, *extra], work)
                if code != 0:
                    print(err[-3000:], file=sys.stderr)
                    return 1
                walls[engine].append(wall)
                if engine == "ray":
                    streamed += [float(s) for s in re.findall(r"execution finished in ([0-9.]+) seconds", err)]
        same = all((work / f"plain{i}" / p.name).read_bytes() == p.read_bytes()
                   for i in range(a.runs) for p in (work / f"ray{i}").iterdir())
        plain, ray = min(walls["plain"]), min(walls["ray"])
        print(f"machine: {machine()}")
        print(f"folder of {a.photos} photos (one face each; dlib, parser at 513, full-size generator, six ages), "
              f"fastest of {a.runs} run(s)\n")
        print("| engine | wall s | photos/s | vs plain | Ray dataset s |")
        print("|---|---:|---:|---:|---:|")
        print(f"| plain folder run | {plain:.1f} | {a.photos / plain:.3f} | 1.00x | - |")
        ds = f"{min(streamed):.1f}" if streamed else "-"
        print(f"| --engine ray (local Ray) | {ray:.1f} | {a.photos / ray:.3f} | {plain / ray:.2f}x | {ds} |")
        print(f"\ngrids identical to the plain run's: {'yes' if same else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
