"""Clips: `agetool age CLIP` (agetool.clip) against the photo pipeline called on every frame.

A 1280x720 clip is made from a real photo (examples/astronaut.png) with known camera motion: the
photo pans across the frame and zooms in. Both paths read the same decoded frames and age the face
to 60 with the same models, in the same run:

- seconds per frame (models loaded before timing);
- flicker: each aged frame is warped back through the known camera motion onto the photo, and the
  mean absolute change of the face region between consecutive frames is taken (in 0-255 levels);
  the same number for the unaged frames shows what resampling and encoding alone give;
- peak memory (VmHWM of a child process) of `age_clip` on the clip at 60 and at 300 frames.

The models are the stand-ins of the tests: the seeded full-architecture generator (ngf 64, as the
released one) and the seeded full-size face parser; the landmarks are dlib's (real). Stand-in weights
cost what the released ones cost, but the faces they draw are not meaningful.

    python benchmarks/clip_bench.py                 # timing and flicker (24 frames), then memory
    python benchmarks/clip_bench.py --frames 12 --no-memory
    python benchmarks/clip_bench.py --against ../old    # this checkout's clip path against another's

``--against DIR`` runs the clip path of this checkout and of the checkout in DIR (an earlier commit,
made with ``git worktree add DIR COMMIT``) on the same clip and weights, each in its own process,
taking turns: seconds per frame, flicker, and how far the two give different frames.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks.bench, tests.seeding

W, H = 1280, 720
FACE = (220.0, 125.0)  # the face centre in the 512 px photo
FACE_BOX = (160, 55, 285, 205)  # the face region compared for flicker, in photo pixels


def camera(t: float) -> np.ndarray:
    """Photo -> frame affine [2, 3] at time ``t`` in [0, 1]: the view zooms in (2.6x -> 3.1x the photo)
    while it pans right and up; it stays inside the photo (no border is ever shown)."""
    s = 2.6 + 0.5 * t
    vx, vy = 250 + 40 * t, 170 - 20 * t  # the photo point at the frame's centre
    return np.array([[s, 0, W / 2 - s * vx], [0, s, H / 2 - s * vy]])


def make_clip(path: Path, frames: int, fps: int = 30) -> None:
    import av
    import cv2
    from PIL import Image

    photo = np.asarray(Image.open(ROOT / "examples" / "astronaut.png").convert("RGB"))
    with av.open(str(path), "w") as box:
        vs = box.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = W, H, "yuv420p"
        vs.options = {"crf": "14", "preset": "fast"}
        for i in range(frames):
            m = camera(i / max(1, frames - 1))
            frame = cv2.warpAffine(photo, m, (W, H), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            box.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        box.mux(vs.encode(None))


def stand_in_generator(path: Path, ngf: int = 64) -> Path:
    from agetool.nn.checkpoint import save_generator
    from agetool.nn.generator import Generator, GeneratorConfig
    from tests.seeding import seed_module

    return save_generator(path, seed_module(Generator(GeneratorConfig(ngf=ngf)), 1, "generator"))


def stand_in_weights(folder: Path) -> tuple[Path, Path]:
    import torch

    from agetool.nn.parser import DeepLabV3
    from tests.seeding import seeded_state_dict

    gen = stand_in_generator(folder / "generator.safetensors")
    parser = folder / "deeplab_model.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in seeded_state_dict(DeepLabV3(), 3, "parser").items()}},
               parser)
    return gen, parser


def pipeline(gen: Path, parser: Path):
    import agetool

    return agetool.AgingPipeline.from_pretrained(model=gen, parser_weights=parser, device="cpu", landmarks="dlib")


def flicker(frames: list[np.ndarray]) -> float:
    """Mean absolute change of the face region between consecutive frames, camera motion undone."""
    import cv2

    x0, y0, x1, y1 = FACE_BOX
    n = len(frames)
    back = []
    for i, f in enumerate(frames):
        inv = cv2.invertAffineTransform(camera(i / max(1, n - 1)))
        back.append(cv2.warpAffine(f, inv, (512, 512), flags=cv2.INTER_LINEAR)[y0:y1, x0:x1].astype(np.float32))
    return float(np.mean([np.abs(a - b).mean() for a, b in zip(back, back[1:])]))


def compare(clip: Path, gen: Path, parser: Path, frames: int) -> dict:
    from agetool.clip.media import probe, read_frames

    pipe = pipeline(gen, parser)
    source = [f for f, _ in read_frames(probe(clip))][:frames]
    pipe(source[0], ages=[60], paste_back=True)  # models loaded before timing
    t0 = time.perf_counter()
    photo = [pipe(f, ages=[60], paste_back=True).pasted[0] for f in source]
    photo_s = (time.perf_counter() - t0) / len(source)
    photo_stages = pipe.timings
    parser, calls = pipe.models.parser, []
    real = parser.parse
    parser.parse = lambda crop: calls.append(1) or real(crop)  # parses counted (the photo path: one a frame)
    t0 = time.perf_counter()
    clip_frames = [f.image for f in pipe.clip_frames(clip, ages=60)]
    clip_s = (time.perf_counter() - t0) / len(clip_frames)
    clip_stages = {k: v - photo_stages.get(k, 0.0) for k, v in pipe.timings.items()}
    return {"photo_s": photo_s, "clip_s": clip_s, "photo_flicker": flicker(photo), "clip_flicker": flicker(clip_frames),
            "source_flicker": flicker(source), "frames": len(source), "clip_parses": len(calls), "clip_stages": clip_stages,
            "photo_stages": photo_stages, "strip": (source, photo, clip_frames)}


def memory_child(clip: Path, gen: Path, parser: Path, out: Path) -> None:
    """``age_clip`` on ``clip``; prints this process's peak RSS in MB."""
    pipe = pipeline(gen, parser)
    pipe.age_clip(clip, out, ages=60)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)


def clip_child(clip: Path, gen: Path, parser: Path, out: Path) -> None:
    """The clip path on ``clip`` with the agetool first on ``sys.path``, models loaded before timing;
    saves the aged frames and the seconds per frame to ``out`` (npz)."""
    from agetool.clip.media import probe, read_frames

    pipe = pipeline(gen, parser)
    pipe(next(read_frames(probe(clip)))[0], ages=[60], paste_back=True)  # models loaded before timing
    t0 = time.perf_counter()
    frames = [f.image for f in pipe.clip_frames(clip, ages=60)]
    np.savez(out, frames=np.stack(frames), secs=(time.perf_counter() - t0) / len(frames))


def against(other: Path, clip: Path, gen: Path, parser: Path, folder: Path, rounds: int = 2) -> dict:
    """The clip path of this checkout ("this") and of ``other``, ``rounds`` runs each, taking turns."""
    runs: dict = {"this": [], "other": []}
    for k in range(rounds):
        for name, tree in (("this", ROOT), ("other", other.resolve())):
            out = folder / f"{name}{k}.npz"
            subprocess.run([sys.executable, __file__, "--clip-child", str(tree), str(clip), str(gen), str(parser),
                            str(out)], check=True)
            with np.load(out) as z:
                runs[name].append((float(z["secs"]), z["frames"]))
    return runs


def memory(folder: Path, gen: Path, parser: Path, frames: int) -> tuple[float, float]:
    clip = folder / f"mem{frames}.mp4"
    make_clip(clip, frames)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(clip), str(gen), str(parser),
                          str(folder / f"mem{frames}_old.mp4")], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1]), time.perf_counter() - t0


def upscale_cost(clip: Path, gen: Path, parser: Path, folder: Path) -> dict:
    """Seconds per frame of ``age_clip`` without ``--upscale``, at x2 and at x4, with the default
    super-resolution network (realesr-general-x4v3's architecture at its released size, randomly
    initialised: a convolution costs the same whatever its weights), side by side in one process."""
    import torch

    import agetool
    from agetool.nn.realesrgan import SRVGGNetCompact

    torch.manual_seed(0)
    sr = folder / "realesr-general-x4v3.pth"
    torch.save({"params": SRVGGNetCompact(num_feat=64, num_conv=32, upscale=4).state_dict()}, sr)
    pipe = agetool.AgingPipeline.from_pretrained(model=gen, parser_weights=parser, device="cpu", landmarks="dlib",
                                                 upscale_weights=sr)
    warm = folder / "warm.mp4"
    make_clip(warm, 2)
    for _ in pipe.clip_frames(warm, ages=60, upscale=4):  # every model loaded before timing
        pass
    out = {}
    for factor in (None, 2, 4):
        t0 = time.perf_counter()
        n = sum(1 for _ in pipe.clip_frames(clip, ages=60, upscale=factor))
        out[factor or 1] = (time.perf_counter() - t0) / n
    return out


def readme_strip(path: Path, gen: Path, parser: Path, folder: Path, frames: int = 8) -> None:
    """Frames of a small panning clip (320x256, cut from the photo) above the same frames aged to 60,
    captioned: the README's picture of a clip run."""
    import av
    from PIL import Image

    from agetool.clip.media import probe, read_frames
    from agetool.images import caption, write_image

    photo = np.asarray(Image.open(ROOT / "examples" / "astronaut.png").convert("RGB"))
    clip = folder / "strip.mp4"
    with av.open(str(clip), "w") as box:
        vs = box.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 320, 256, "yuv420p"
        for i in range(frames):
            frame = np.ascontiguousarray(photo[10:266, 40 + 6 * i:360 + 6 * i])
            box.mux(vs.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        box.mux(vs.encode(None))
    source = [f for f, _ in read_frames(probe(clip))]
    aged = [f.image for f in pipeline(gen, parser).clip_frames(clip, ages=60)]
    picks = [0, frames // 3, 2 * frames // 3, frames - 1]
    rows = [np.concatenate([caption(seq[i], f"{label}, frame {i}") for i in picks], 1)
            for seq, label in ((source, "clip"), (aged, "age 60, stand-in weights"))]
    write_image(path, np.concatenate(rows, 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-frames", default="60,300")
    ap.add_argument("--memory-ngf", type=int, default=8,
                    help="generator width of the memory runs (8: a 300-frame run in minutes; 64: the released size)")
    ap.add_argument("--strip", type=Path, default=None, help="also save source / photo path / clip path frames")
    ap.add_argument("--readme-strip", type=Path, default=None,
                    help="only write the README's strip (a small clip and its aged frames) to this PNG")
    ap.add_argument("--upscale", action="store_true",
                    help="only the cost of --upscale 2 and 4 per clip frame (against none), on --frames frames")
    ap.add_argument("--against", type=Path, default=None, metavar="DIR",
                    help="only compare this checkout's clip path with the checkout in DIR (speed, flicker, frames)")
    ap.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--clip-child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(*map(Path, args.memory_child))
        return
    if args.clip_child:
        sys.path.insert(0, args.clip_child[0])  # that checkout's agetool
        clip_child(*map(Path, args.clip_child[1:]))
        return
    import torch

    from benchmarks.bench import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        gen, parser = stand_in_weights(folder)
        if args.readme_strip is not None:
            readme_strip(args.readme_strip, gen, parser, folder)
            return
        clip = folder / "pan_zoom.mp4"
        make_clip(clip, args.frames)
        if args.against is not None:
            runs = against(args.against, clip, gen, parser, folder)
            print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}; {args.frames} frames of "
                  f"{W}x{H}, stand-in weights; runs taking turns; load {os.getloadavg()[0]:.1f}")
            print("| checkout | s/frame (each run) | flicker (levels) |\n|---|---:|---:|")
            for name, label in (("other", str(args.against)), ("this", "this checkout")):
                secs = ", ".join(f"{s:.2f}" for s, _ in runs[name])
                print(f"| {label} | {secs} | {flicker(list(runs[name][0][1])):.2f} |")
            a, b = runs["this"][0][1].astype(np.int16), runs["other"][0][1].astype(np.int16)
            diff = np.abs(a - b)
            best = {name: min(s for s, _ in runs[name]) for name in runs}
            print(f"frames: largest difference {diff.max()} levels, {(diff > 1).mean() * 100:.4f}% of values over 1; "
                  f"speed (best runs): this / other = {best['this'] / best['other']:.2f}")
            return
        if args.upscale:
            cost = upscale_cost(clip, gen, parser, folder)
            print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}; {args.frames} frames of "
                  f"{W}x{H}; load {os.getloadavg()[0]:.1f}")
            print("| --upscale | s per frame | added per frame |\n|---|---:|---:|")
            for factor, secs in cost.items():
                print(f"| {factor if factor > 1 else 'none'} | {secs:.2f} | {secs - cost[1]:+.2f} |")
            return
        r = compare(clip, gen, parser, args.frames)
        print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; {W}x{H}, {r['frames']} frames, stand-in weights")
        print("| path | s/frame | flicker (levels) |\n|---|---:|---:|")
        print(f"| photo pipeline on every frame | {r['photo_s']:.2f} | {r['photo_flicker']:.2f} |")
        print(f"| `age_clip` | {r['clip_s']:.2f} | {r['clip_flicker']:.2f} |")
        print(f"| (source frames, not aged) | - | {r['source_flicker']:.2f} |")
        print(f"speed-up {r['photo_s'] / r['clip_s']:.2f}x; flicker ratio {r['clip_flicker'] / r['photo_flicker']:.2f}; "
              f"the clip path parsed {r['clip_parses']} times")
        for name in ("photo", "clip"):
            stages = r[f"{name}_stages"]
            total = sum(v for k, v in stages.items() if not k.endswith("(background)")) or 1.0
            print(f"{name} stages (s, share): " + ", ".join(f"{k} {v:.1f} ({100 * v / total:.0f}%)"
                                                         for k, v in stages.items() if v > 0.05))
        if args.strip is not None:
            import cv2

            source, photo, aged = r["strip"]
            picks = [0, len(source) // 2, len(source) - 1]
            rows = [np.concatenate([cv2.resize(seq[i], (W // 4, H // 4), interpolation=cv2.INTER_AREA)
                                    for i in picks], 1) for seq in (source, photo, aged)]
            from agetool.images import write_image

            write_image(args.strip, np.concatenate(rows, 0))
        if not args.no_memory:
            peaks = {}
            mem_gen = gen if args.memory_ngf == 64 else stand_in_generator(folder / "mem.safetensors", args.memory_ngf)
            for n in (int(x) for x in args.memory_frames.split(",")):
                peaks[n], secs = memory(folder, mem_gen, parser, n)
                print(f"age_clip, {n} frames (generator ngf {args.memory_ngf}): peak RSS {peaks[n]:.0f} MB ({secs:.0f} s)")
            ns = sorted(peaks)
            print(f"peak at {ns[-1]} frames / peak at {ns[0]} frames: {peaks[ns[-1]] / peaks[ns[0]]:.3f}")


if __name__ == "__main__":
    main()
