"""Per-stage time of one photo through the face pipeline, for each landmark backend.

    python -m benchmarks.face_stages                          # examples/astronaut.png, CPU
    python -m benchmarks.face_stages --fan-random             # time fan with random weights if its files are absent
    python -m benchmarks.face_stages --photo me.jpg --repeats 5 --device cuda

Stages: detect (face boxes), landmarks (68 points), align (256 px crop), parse (DeepLabV3 at 513),
generate (identity encoder + six decodes). Parser and generator use the seeded full-size weights,
which cost exactly what the released ones do. Each time is the median (and the fastest) of the
repeats after one warm-up run. With --fan-random the S3FD and FAN networks get random weights in
a temporary TORCH_HOME: the timing is real, the boxes are not, so FAN then runs on dlib's box.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def median_time(fn, repeats: int) -> tuple[float, float]:
    """(median, fastest) seconds of ``repeats`` runs after a warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def random_fan_files(folder: Path) -> None:
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    from agetool.face.detect import fan_file_names

    names = fan_file_names()
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), folder / names["fan-2d"])
    torch.save(s3fd().state_dict(), folder / names["s3fd"])


Row = tuple[str, str, "tuple[float, float] | None"]


def backend_rows(photo: np.ndarray, device, repeats: int, fan_random: bool) -> list[Row]:
    from agetool.face import detect

    rows = []
    dlib_det = detect.LandmarkDetector.create("dlib")
    faces = dlib_det.detect(photo)
    rects = dlib_det._detector.run(photo, dlib_det.upsample, 0.0)[0]
    rows.append(("dlib", "detect", median_time(lambda: dlib_det._detector.run(photo, dlib_det.upsample, 0.0), repeats)))
    rows.append(("dlib", "landmarks", median_time(lambda: [dlib_det._predictor(photo, r) for r in rects], repeats)))

    if not detect.fan_files_present():
        if not fan_random:
            rows += [("fan", "detect", None), ("fan", "landmarks", None)]
            return rows
        os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="agetool-fan-")
        random_fan_files(detect.fan_checkpoint_dir())
    fan = detect.LandmarkDetector.create("fan", device=device)
    box = np.array([[*faces[0].box, 1.0]], dtype=np.float64)
    rows.append(("fan", "detect", median_time(lambda: fan._fa.face_detector.detect_from_image(photo.copy()), repeats)))
    rows.append(("fan", "landmarks",
                 median_time(lambda: fan._fa.get_landmarks_from_image(photo, detected_faces=box), repeats)))
    return rows


def model_rows(photo: np.ndarray, device, repeats: int) -> list[Row]:
    from agetool.engine import AgingEngine
    from agetool.face.align import align_face
    from agetool.face.detect import LandmarkDetector
    from agetool.face.parse import FaceParser
    from agetool.images import to_tensor
    from agetool.nn.generator import Generator
    from agetool.nn.parser import DeepLabV3
    from tests.seeding import seed_module

    landmarks = LandmarkDetector.create("dlib").detect(photo)[0].landmarks
    rows = [("-", "align", median_time(lambda: align_face(photo, landmarks, size=256), repeats))]
    crop = align_face(photo, landmarks, size=256).image
    parser = FaceParser(seed_module(DeepLabV3(), 3, "parser").eval().to(device).freeze(), device)
    rows.append(("-", "parse", median_time(lambda: parser.parse(crop), repeats)))
    del parser
    engine = AgingEngine(seed_module(Generator(), 1, "generator").eval().to(device), device, torch.float32, chunk=6)
    w = engine.anchor_latents(0.2, 0)

    def generate():
        feats = engine.encode(to_tensor(crop))
        return engine.decode(feats[0], w)

    rows.append(("-", "generate (6 ages)", median_time(generate, repeats)))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photo", type=Path, default=ROOT / "examples" / "astronaut.png")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fan-random", action="store_true", help="time fan with random weights when its files are absent")
    args = ap.parse_args(argv)

    from agetool.images import read_image

    device = torch.device(args.device)
    photo = read_image(args.photo)
    rows = backend_rows(photo, device, args.repeats, args.fan_random) + model_rows(photo, device, args.repeats)
    print(f"{args.photo.name} {photo.shape[1]}x{photo.shape[0]}, {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'backend':8} {'stage':18} {'median s':>9} {'fastest s':>9}")
    for backend, stage, secs in rows:
        print(f"{backend:8} {stage:18} " + ("n/a (weights absent)" if secs is None else f"{secs[0]:9.3f} {secs[1]:9.3f}"))


if __name__ == "__main__":
    main()
