"""The end-to-end part of the GPU check: the whole `agetool age` command, cold and warm, and the
single-frame (slider-style) latency of a loaded engine. Used by benchmarks/gpu_check.py; runnable
alone, also on the CPU to try its logic:

    python -m benchmarks.gpu_e2e --device cuda
    python -m benchmarks.gpu_e2e --device cpu --dtypes float32 --frames 3     # dry run

Cold: a fresh process with an empty agetool cache (the parser standardizes its weights, CUDA and
cuDNN start up, every kernel is chosen for the first time). Warm: the same command again (files in
the page cache, the parser's prepared weights cached). Both are whole-process wall times; the
stage split comes from ``--profile``. Slider: one face encoded once, then one age rendered per
call, as an interactive slider does (latent, decode, copy to the CPU): the median latency.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.e2e import PHOTO, ROOT, profile_table, run, write_weights


def end_to_end(device: torch.device, dtypes: list[str], workdir: Path) -> list[tuple[str, str, float, float, str]]:
    """(command, dtype, cold s, warm s, slowest stages when warm) for `agetool age` on the example photo."""
    gen, parser = write_weights(workdir)
    rows = []
    saved = os.environ.get("AGETOOL_CACHE")
    for dtype in dtypes:
        os.environ["AGETOOL_CACHE"] = str(workdir / f"cache-{dtype}")  # empty: the cold run prepares the parser
        args = ["age", str(PHOTO), "--out", str(workdir / f"grid-{dtype}.png"), "--weights", str(gen),
                "--parser-weights", str(parser), "--landmarks", "dlib", "--offline", "--device", str(device),
                "--dtype", dtype, "--profile"]
        try:
            cold, _, _ = run(ROOT, args, workdir)
            warm, _, err = run(ROOT, args, workdir)
        finally:
            if saved is None:
                os.environ.pop("AGETOOL_CACHE", None)
            else:
                os.environ["AGETOOL_CACHE"] = saved
        stages = {k: v for k, v in profile_table(err).items() if k != "total"}
        top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(stages.items(), key=lambda kv: -kv[1])[:4])
        rows.append(("agetool age (1 face, parser, 6 ages)", dtype, cold, warm, top))
        print(f"[e2e] age {dtype}: cold {cold:.2f} s, warm {warm:.2f} s ({top})", flush=True)
    return rows


def slider_latency(device: torch.device, dtype: torch.dtype, frames: int = 30) -> tuple[float, float]:
    """(median, first) milliseconds to render one age of an encoded face, copy to the CPU included."""
    from agetool.engine import AgingEngine
    from agetool.images import read_image, to_tensor, to_uint8
    from agetool.nn.generator import Generator
    from tests.seeding import seeded_state_dict

    g = Generator().eval()
    g.load_state_dict(seeded_state_dict(g, 1, "generator"))
    engine = AgingEngine(g, device, dtype, chunk=1)
    face = read_image(PHOTO).copy()[128:384, 128:384]  # any 256 px crop: the time does not depend on it
    feats = engine.encode(to_tensor(face))[0]
    lat = engine.traversal(engine.anchor_latents(0.2, 0), max(1, frames // 5))
    times = []
    for i in range(min(frames, len(lat))):
        t0 = time.perf_counter()
        to_uint8(engine.decode(feats, lat[i:i + 1]))  # to_uint8 copies to the CPU: the frame is shown
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[1:] or times), times[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_e2e", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--frames", type=int, default=30, help="single frames rendered for the slider latency")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtypes = [d for d in args.dtypes.split(",") if d]
    with tempfile.TemporaryDirectory(prefix="agetool-gpu-e2e-") as tmp:
        for command, dtype, cold, warm, top in end_to_end(device, dtypes, Path(tmp)):
            print(f"| {command} | {dtype} | {cold:.2f} | {warm:.2f} | {top} |")
    for dtype in dtypes:
        median, first = slider_latency(device, getattr(torch, dtype), args.frames)
        print(f"| slider: one age of an encoded face | {dtype} | {median:.1f} ms | first {first:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
