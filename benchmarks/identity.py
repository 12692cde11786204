"""Identity embeddings on the CPU: milliseconds per face with dlib's face descriptor.

    python -m benchmarks.identity                 # the astronaut and Grace Hopper photos, 20 repeats
    python -m benchmarks.identity --repeats 50

Rows: loading the model files; one face's embedding from a known face box (5-point shape predictor,
150 px chip, descriptor network: what eval, face selection and clips pay per face); two faces
embedded in one call (the descriptor runs them as one batch); a whole photo with face detection
(dlib HOG, one upsampling); and choosing faces by a reference (the reference embedded once, then
each face of the group photo embedded and compared). Each time is the median (and the fastest) of
the repeats after one warm-up run.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from benchmarks.face_stages import median_time


def photos() -> tuple[np.ndarray, np.ndarray]:
    import matplotlib
    from PIL import Image
    from skimage import data

    hopper = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    return data.astronaut(), hopper


def group_photo(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    h = min(a.shape[0], b.shape[0])
    return np.ascontiguousarray(np.concatenate([a[:h], b[:h]], axis=1))


def run(repeats: int) -> list[tuple[str, int, float, float, str]]:
    from agetool.identity import FaceIdentity, FaceReference

    astronaut, hopper = photos()
    group = group_photo(hopper, astronaut)
    t0 = time.perf_counter()
    ident = FaceIdentity.from_pretrained("dlib")
    load = time.perf_counter() - t0
    [face] = ident.embed(astronaut)
    found = ident.detector.detect(group)
    assert len(found) == 2, "both faces of the group photo are expected"
    rows = [("load model files (descriptor + 5-point predictor)", 1, load, load, "once per process")]
    med, best = median_time(lambda: ident.embed(astronaut, face=face.box), repeats)
    rows.append(("embed one face from its box", 1, med, best, "chip + descriptor"))
    med, best = median_time(lambda: ident.embed_faces(group, found), repeats)
    rows.append(("embed two faces in one call", 2, med / 2, best / 2, "one descriptor batch"))
    med, best = median_time(lambda: ident.embed(astronaut), repeats)
    rows.append(("embed a 512x512 photo, detection included", 1, med, best, "HOG detection dominates"))
    reference = FaceReference(np.ascontiguousarray(astronaut[:, ::-1]), model=ident)
    _ = reference.embedding
    med, best = median_time(lambda: reference.match(group, found, "group"), repeats)
    rows.append(("faces by reference (2 faces, reference embedded once)", 2, med / 2, best / 2,
                 "per face of the group photo"))
    return rows


def machine() -> str:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    import dlib

    return f"{cpu}, {os.cpu_count()} CPUs, load average {load}; dlib {dlib.__version__}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = run(args.repeats)
    print(f"machine: {machine()}\n")
    print("| stage | model | faces | ms per face (median) | fastest | note |")
    print("|---|---|---:|---:|---:|---|")
    for stage, faces, med, best, note in rows:
        print(f"| {stage} | dlib | {faces} | {med * 1000:.1f} | {best * 1000:.1f} | {note} |")


if __name__ == "__main__":
    main()
