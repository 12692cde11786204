"""Images per second of `agetool dataset ffhq-aging`, stage by stage, on photos of in-the-wild size.

    python -m benchmarks.ffhq_build                      # 6 photos, 256 and 1024 px, CPU
    python -m benchmarks.ffhq_build --photos 12 --device cuda

A small FFHQ is written to a temporary folder (tests/ffhq_fixture.py: real photos, dlib landmarks,
FFHQ's JSON layout), with the photos scaled to in-the-wild sizes (1.5 to 4 megapixels, faces of
700 to 1040 px), read from a local folder. The parser is the full-size DeepLabV3 with seeded weights
(the released file's cost). Stages: read (file, size and MD5 check), align (decode + the builder's
alignment with its 4096 px warp), parse (DeepLabV3 at 513 px), write (two PNGs); each is its own
time summed over the images, so a stage's images/s is what it alone would sustain; "build" is the
wall-clock rate of the whole run with the given worker threads.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def small_ffhq(root: Path, count: int) -> tuple[Path, Path]:
    from PIL import Image

    from agetool.face.detect import DlibDetector, bundled_dlib_predictor
    from tests.ffhq_fixture import LABEL_HEADER, entry, photos, png, wild_path

    dlib = DlibDetector(predictor=bundled_dlib_predictor())
    base = photos()
    sized = []
    for name, k in (("astronaut", 4), ("hopper", 3)):
        photo, _ = base[name]
        big = np.asarray(Image.fromarray(photo).resize((photo.shape[1] * k, photo.shape[0] * k), Image.LANCZOS))
        box = dlib.detect(photo)[0].box
        sized.append((big, dlib.landmarks_in(big, tuple(k * v for v in box)).astype(np.float64)))
    sized.append(base["big"])
    entries = {}
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(LABEL_HEADER)
        for n in range(count):
            photo, lm = sized[n % len(sized)]
            data = png(photo)
            path = root / "src" / wild_path(n)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            entries[str(n)] = entry(n, data, lm, f"Author {n}")
            w.writerow([n, "30-39", 0.9, "female" if n % 2 else "male", 0.9, 0, 0, 0, 0, 0, "None"])
    (root / "ffhq.json").write_text(json.dumps(entries))
    return root / "ffhq.json", root / "labels.csv"


def timed(fn, items) -> tuple[float, float, list]:
    """(wall seconds, process CPU seconds, results) of ``fn`` over ``items``, one after the other."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = [fn(x) for x in items]
    return time.perf_counter() - t0, time.process_time() - c0, out


def main() -> None:
    import os

    import torch

    from agetool.face.parse import FaceParser
    from agetool.nn.parser import DeepLabV3
    from agetool.train.ffhq import align_wild, build_ffhq_aging, decode
    from agetool.train.ffhq_meta import iter_entries, wild_photo
    from tests.seeding import seed_module

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resolutions", default="256,1024")
    ap.add_argument("--workers", default="1,2")
    args = ap.parse_args()
    device = torch.device(args.device)
    parser = FaceParser(seed_module(DeepLabV3(), 3, "parser").eval().to(device).freeze(), device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        meta, labels = small_ffhq(tmp, args.photos)
        photos = [wild_photo(n, e) for n, e in iter_entries(meta)]
        pixels = [decode((tmp / "src" / p.file_path).read_bytes()) for p in photos]
        mp = sum(a.shape[0] * a.shape[1] for a in pixels) / len(pixels) / 1e6
        parser.parse(np.zeros((256, 256, 3), np.uint8))  # warm-up
        # each stage alone, one image after the other
        for resolution in map(int, args.resolutions.split(",")):
            wall, cpu, crops = timed(lambda i: align_wild(pixels[i], photos[i].landmarks, resolution), range(len(photos)))
            rows.append(("align (alone)", resolution, 1, len(photos) / wall, wall / len(photos), cpu / len(photos)))
            wall, cpu, _ = timed(parser.parse, crops)
            rows.append(("parse (alone)", resolution, 1, len(photos) / wall, wall / len(photos), cpu / len(photos)))
        # whole builds
        for resolution in map(int, args.resolutions.split(",")):
            for workers in map(int, args.workers.split(",")):
                out = tmp / f"out{resolution}-{workers}"
                t0, c0 = time.perf_counter(), time.process_time()
                r = build_ffhq_aging(meta, labels, tmp / "src", out, resolution=resolution, workers=workers,
                                     parser=parser, device=device)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                assert r.built == args.photos and not r.failed, r.failed
                for stage in ("read", "align", "parse", "write"):
                    rows.append((f"{stage} (in the build)", resolution, workers, r.rate(stage),
                                 r.seconds[stage] / r.built, None))
                rows.append(("build (wall clock)", resolution, workers, r.built / wall, wall / r.built, cpu / r.built))
    print(f"\n{args.photos} photos of {mp:.1f} MP on average, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    print("| stage | px | workers | images/s | s/image | CPU s/image |")
    print("|---|---:|---:|---:|---:|---:|")
    for stage, px, workers, rate, per, cpu in rows:
        print(f"| {stage} | {px} | {workers} | {rate:.2f} | {per:.2f} | {'' if cpu is None else f'{cpu:.2f}'} |")
    import resource

    print(f"\npeak RSS of the process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
