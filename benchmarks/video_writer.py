"""The aging video's H.264 writer alone (``agetool.video.VideoWriter``): this tree against an earlier
checkout, in one interleaved run.

    python -m benchmarks.video_writer --base /tmp/agetool-base          # 101 frames at 256 and 1024 px
    python -m benchmarks.video_writer --sizes 512 --frames 401 --runs 5

Each run is a process of its own (PYTHONPATH = the tree) that writes ``--frames`` frames of the
astronaut photo, scaled to the size and panned 3 px a frame, through ``VideoWriter`` at the default
quality, and reports its wall time and CPU time (its own and its children's: an encoder in a child
process counts too). The rows give the median of ``--runs`` runs, trees alternating, the file's size,
and how close the decoded frames are to the frames written (PSNR, decoded with PyAV).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: the child: writes the frames, prints {"wall", "cpu", "bytes", "psnr"} as JSON
CHILD = r"""
import json, resource, sys, time
import numpy as np
import agetool
assert agetool.__file__.startswith(sys.argv[5]), agetool.__file__
from PIL import Image
from agetool.video import VideoWriter
photo, size, frames, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
src = np.asarray(Image.open(photo).convert("RGB").resize((size, size), Image.LANCZOS))
images = [np.roll(src, 3 * i, axis=1) for i in range(frames)]
def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
t0, c0 = time.perf_counter(), cpu()
with VideoWriter(out, fps=30) as writer:
    for image in images:
        writer.write(image)
wall, used = time.perf_counter() - t0, cpu() - c0
import av
with av.open(out) as box:
    got = [f.to_ndarray(format="rgb24").astype(np.float64) for f in box.decode(video=0)]
mse = [np.mean((g - i) ** 2) for g, i in zip(got, images)]
psnr = float(np.mean([10 * np.log10(255 ** 2 / m) for m in mse]))
print(json.dumps({"wall": wall, "cpu": used, "bytes": len(open(out, "rb").read()), "psnr": psnr, "frames": len(got)}))
"""


def measure(tree: Path, size: int, frames: int, folder: Path) -> dict:
    out = folder / f"v{size}.mp4"
    env = dict(os.environ, PYTHONPATH=str(tree))  # run from the temporary folder: not this tree's agetool
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT / "examples" / "astronaut.png"), str(size),
                           str(frames), str(out), str(tree)], env=env, cwd=folder, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, default=None, help="an earlier agetool checkout to compare against")
    ap.add_argument("--sizes", default="256,1024", help="frame sides in pixels, comma-separated")
    ap.add_argument("--frames", type=int, default=101)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    trees = {"this": ROOT} | ({"base": args.base} if args.base else {})
    sizes = [int(s) for s in args.sizes.split(",")]
    rows: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(args.runs):
            for size in sizes:
                for name, tree in trees.items():
                    rows.setdefault((size, name), []).append(measure(tree, size, args.frames, Path(folder)))
    print(f"{os.uname().machine}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print("| frames | tree | wall s | CPU s | file kB | PSNR dB |")
    print("|---|---|---:|---:|---:|---:|")
    for (size, name), runs in sorted(rows.items()):
        med = {k: statistics.median(r[k] for r in runs) for k in ("wall", "cpu", "bytes", "psnr")}
        assert all(r["frames"] == args.frames for r in runs)
        print(f"| {args.frames} x {size} px | {name} | {med['wall']:.2f} | {med['cpu']:.2f} | "
              f"{med['bytes'] / 1000:.0f} | {med['psnr']:.2f} |")


if __name__ == "__main__":
    main()
