"""Clips against the networks' cost: `age_clip` per face and frame, against the generator's encode and
decode of the same crops measured alone, in the same run ("the network floor").

Two 1280x720 clips with known camera motion (``--frames`` frames, 30 fps, H.264):

- one face: the pan-and-zoom clip of ``benchmarks/clip_bench.py`` (the astronaut);
- six faces: a 3 x 2 grid of cells, each a real photo (the astronaut, Grace Hopper from matplotlib's
  sample data, and their mirror images, at two scales) seen by its own camera, zooming and panning.

For each clip, with the models loaded before timing:

- ``age_clip`` to an H.264 file, whole (reading, faces, parsing, networks, paste-back, writing), with
  each stage's share (``--profile``'s stages);
- the floor: every face crop the clip run gave its generator (recorded during that run), encoded in
  the clip path's batches and decoded at the clip's age, one crop after another, nothing reused;
- clip seconds per face-frame / floor seconds per face-frame (target <= 1.5);
- flicker: each aged frame's cells warped back through their known camera motion onto their photo, and
  the mean absolute change (0-255 levels) of the face region between consecutive frames, averaged.

``--against DIR`` also runs the checkout in DIR (an earlier commit, ``git worktree add DIR COMMIT``) on
the same clips and weights, each run in its own process, taking turns: seconds per face-frame, flicker,
and how far the frames differ. ``--no-reuse`` runs this checkout with features and tiles never reused
(every crop encoded and decoded: what the clip path costs beyond the networks).

    python benchmarks/clip_floor.py --frames 12
    python benchmarks/clip_floor.py --frames 12 --faces 1 --against ../before
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.*, tests.*

W, H = 1280, 720


@dataclass
class Cell:
    """A photo seen by a camera in a region of the frame: ``camera(t)`` maps photo pixels to frame
    pixels at clip time ``t`` in [0, 1]; ``box`` is the face region compared for flicker (photo pixels)."""

    photo: np.ndarray
    camera: object
    box: tuple[int, int, int, int]
    rect: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the frame the cell fills


def one_face() -> list[Cell]:
    from PIL import Image

    from benchmarks.clip_bench import FACE_BOX, camera

    photo = np.asarray(Image.open(ROOT / "examples" / "astronaut.png").convert("RGB"))
    return [Cell(photo, camera, FACE_BOX, (0, 0, W, H))]


def six_faces() -> list[Cell]:
    """A 3 x 2 grid: the astronaut, Grace Hopper and their mirror images, faces 95-130 px wide,
    each cell's view zooming in by 12% while it pans (each cell its own direction)."""
    import matplotlib.cbook
    from PIL import Image

    from agetool.face.detect import DlibDetector, bundled_dlib_predictor

    astronaut = np.asarray(Image.open(ROOT / "examples" / "astronaut.png").convert("RGB"))
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        hopper = np.asarray(im.convert("RGB"))
    dlib = DlibDetector(predictor=bundled_dlib_predictor())
    cells = []
    cw, ch = W // 3, H // 2
    photos = [astronaut, hopper, np.ascontiguousarray(hopper[:, ::-1]), np.ascontiguousarray(astronaut[:, ::-1]),
              astronaut, hopper]
    widths = [110, 100, 120, 130, 95, 115]
    for k, (photo, width) in enumerate(zip(photos, widths)):
        (face,) = dlib.detect(photo)
        x0, y0, x1, y1 = face.box
        centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        base = width / (x1 - x0)
        direction = np.array([np.cos(k * 1.1), np.sin(k * 1.1)]) * 18
        col, row = k % 3, k // 3
        rect = (col * cw, row * ch, (col + 1) * cw, (row + 1) * ch)

        def cam(t, centre=centre, base=base, direction=direction, rect=rect):
            s = base * (1 + 0.12 * t)
            target = np.array([(rect[0] + rect[2]) / 2, (rect[1] + rect[3]) / 2]) + direction * (2 * t - 1)
            return np.array([[s, 0, target[0] - s * centre[0]], [0, s, target[1] - s * centre[1]]])

        pad = 0.15 * (x1 - x0)
        box = (int(x0 - pad), int(y0 - 2 * pad), int(x1 + pad), int(y1 + pad))
        cells.append(Cell(photo, cam, box, rect))
    return cells


def make_clip(path: Path, cells: list[Cell], frames: int, fps: int = 30) -> None:
    import av
    import cv2

    with av.open(str(path), "w") as box:
        vs = box.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "14", "preset": "fast"}
        for i in range(frames):
            t = i / max(1, frames - 1)
            frame = np.zeros((H, W, 3), np.uint8)
            for c in cells:
                x0, y0, x1, y1 = c.rect
                m = c.camera(t).copy()
                m[:, 2] -= (x0, y0)
                frame[y0:y1, x0:x1] = cv2.warpAffine(c.photo, m, (x1 - x0, y1 - y0), flags=cv2.INTER_CUBIC,
                                                     borderMode=cv2.BORDER_REFLECT)
            box.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        box.mux(vs.encode(None))


def flicker(frames: list[np.ndarray], cells: list[Cell]) -> float:
    """Mean absolute change of the face regions between consecutive frames, camera motion undone."""
    import cv2

    n, out = len(frames), []
    for c in cells:
        bx0, by0, bx1, by1 = c.box
        back = []
        for i, f in enumerate(frames):
            x0, y0, x1, y1 = c.rect
            m = c.camera(i / max(1, n - 1)).copy()
            m[:, 2] -= (x0, y0)
            inv = cv2.invertAffineTransform(m)
            h, w = c.photo.shape[:2]
            back.append(cv2.warpAffine(np.ascontiguousarray(f[y0:y1, x0:x1]), inv, (w, h),
                                       flags=cv2.INTER_LINEAR)[max(0, by0):by1, max(0, bx0):bx1].astype(np.float32))
        out.append(np.mean([np.abs(a - b).mean() for a, b in zip(back, back[1:])]))
    return float(np.mean(out))


def record_crops(runner_class) -> list:
    """Patch ``runner_class._step`` to keep each face's network input; returns the list it fills
    ([(network_input, model)] per frame; the model filled in once the batch decides it)."""
    kept: list = []
    real = runner_class._step

    def step(self, index, time, image):
        faces = real(self, index, time, image)
        kept.append([(f.network_input.copy(), f.track) for f in faces])
        return faces

    runner_class._step = step
    return kept


def floor(pipe, crops: list, age: float = 60) -> float:
    """Seconds to encode (in the clip path's batches) and decode every crop at ``age``: nothing reused."""
    import inspect

    from agetool.options import DEFAULT_NOISE, DEFAULT_SEED, request
    from agetool.results import Face

    faces = [Face(0, crop, network_input=crop, model=track.model, estimate=track.estimate)
             for frame in crops for crop, track in frame]
    targets = request([age]).render.targets
    core = pipe.core
    fast = {"fast": True} if "fast" in inspect.signature(core.encode).parameters else {}  # as the clip path
    t0 = time.perf_counter()
    core.encode(faces, pipe.models.batch or 8, **fast)
    core.decode([(f, core.latents(f, targets, DEFAULT_NOISE, DEFAULT_SEED)) for f in faces])
    return time.perf_counter() - t0


def clip_child(tree: Path, clip: Path, cells_name: str, gen: Path, parser: Path, out: Path, reuse: bool) -> None:
    """The clip path of the checkout at ``tree`` on ``clip`` (models loaded before timing): seconds per
    face-frame, the stage times, the floor of the same crops (this checkout only) and the frames (npz)."""
    sys.path.insert(0, str(tree))
    from agetool.clip import runner
    from benchmarks.clip_bench import pipeline

    if not reuse:
        runner.REUSE_LEVELS = -1.0  # every crop encoded and decoded
    kept = record_crops(runner.ClipRunner)
    pipe = pipeline(gen, parser)
    warm = out.with_suffix(".warm.mp4")
    make_clip(warm, one_face()[:1], 2)
    pipe.age_clip(warm, out.with_suffix(".warm_out.mp4"), ages=60)  # every model loaded before timing
    kept.clear()
    before = pipe.timings
    t0 = time.perf_counter()
    pipe.age_clip(clip, out.with_suffix(".mp4"), ages=60)
    secs = time.perf_counter() - t0
    stages = {k: v - before.get(k, 0.0) for k, v in pipe.timings.items() if v - before.get(k, 0.0) > 0}
    face_frames = sum(len(f) for f in kept)
    floor_s = floor(pipe, kept)
    from agetool.clip.media import probe, read_frames

    frames = np.stack([f for f, _ in read_frames(probe(out.with_suffix(".mp4")))])
    np.savez(out, frames=frames, secs=secs, face_frames=face_frames, floor=floor_s,
             stages=np.array([f"{k}\t{v}" for k, v in stages.items()]))


def run_child(tree: Path, clip: Path, cells: str, gen: Path, parser: Path, out: Path, reuse: bool = True) -> dict:
    subprocess.run([sys.executable, __file__, "--child", str(tree), str(clip), cells, str(gen), str(parser), str(out),
                    "1" if reuse else "0"], check=True)
    with np.load(out) as z:
        stages = dict(line.split("\t") for line in z["stages"])
        return {"secs": float(z["secs"]), "face_frames": int(z["face_frames"]), "floor": float(z["floor"]),
                "frames": z["frames"], "stages": {k: float(v) for k, v in stages.items()}}


def shares(stages: dict) -> str:
    mine = {k: v for k, v in stages.items() if not k.endswith("(background)") and not k.startswith("load")}
    total = sum(mine.values()) or 1.0
    top = sorted(mine.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top if v / total >= 0.005)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--faces", default="1,6", help="which clips: 1, 6 or 1,6")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each checkout, taking turns")
    ap.add_argument("--against", type=Path, default=None, metavar="DIR", help="also run the checkout in DIR")
    ap.add_argument("--no-reuse", action="store_true", help="also run this checkout with nothing reused")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tree, clip, cells, gen, parser, out, reuse = args.child
        clip_child(Path(tree), Path(clip), cells, Path(gen), Path(parser), Path(out), reuse == "1")
        return
    import torch

    from benchmarks.bench import cpu_name
    from benchmarks.clip_bench import stand_in_weights

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gen, parser = stand_in_weights(folder)
        load = [os.getloadavg()[0]]
        print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}; {W}x{H}, {args.frames} "
              f"frames a clip; stand-in weights (ngf 64 generator, full-size parser); each run in its own process")
        print("| clip | checkout | s per face-frame | floor s per face-frame | clip / floor | flicker (levels) | "
              "stage shares (clip run) |\n|---|---|---:|---:|---:|---:|---|")
        for n in (int(x) for x in args.faces.split(",")):
            cells = one_face() if n == 1 else six_faces()
            clip = folder / f"faces{n}.mp4"
            make_clip(clip, cells, args.frames)
            trees = [("this checkout", ROOT, True)]
            if args.no_reuse:
                trees.append(("this, nothing reused", ROOT, False))
            if args.against is not None:
                trees.append((str(args.against), args.against.resolve(), True))
            runs: dict = {name: [] for name, _, _ in trees}
            for k in range(args.rounds):
                for name, tree, reuse in trees:
                    out = folder / f"{n}_{len(runs[name])}_{abs(hash(name))}.npz"
                    runs[name].append(run_child(tree, clip, str(n), gen, parser, out, reuse))
                    load.append(os.getloadavg()[0])
            for name, _, _ in trees:
                best = min(runs[name], key=lambda r: r["secs"])
                per = best["secs"] / max(1, best["face_frames"])
                floor_per = best["floor"] / max(1, best["face_frames"])
                print(f"| {n} face{'s' if n > 1 else ''} | {name} | {per:.2f} | {floor_per:.2f} | "
                      f"**{per / floor_per:.2f}x** | {flicker(list(best['frames']), cells):.2f} | "
                      f"{shares(best['stages'])} |")
            if args.against is not None:
                a = runs["this checkout"][0]["frames"].astype(np.int16)
                b = runs[str(args.against)][0]["frames"].astype(np.int16)
                diff = np.abs(a - b)
                print(f"{n} face(s), this checkout against {args.against}: frames differ by at most {diff.max()} "
                      f"levels, mean {diff.mean():.3f}; {(diff > 8).mean() * 100:.3f}% of values by more than 8")
            print(f"{n} face(s): {runs['this checkout'][0]['face_frames']} face-frames; source flicker "
                  f"{flicker([f for f in _source(clip)], cells):.2f} levels")
        print(f"load average during the runs: {min(load):.1f}-{max(load):.1f} on {os.cpu_count()} CPUs")


def _source(clip: Path):
    from agetool.clip.media import probe, read_frames

    return [f for f, _ in read_frames(probe(clip))]


if __name__ == "__main__":
    main()
