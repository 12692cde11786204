"""Latency of the web app's age slider: one move on an already-encoded face.

    python -m benchmarks.serve_slider [--moves 20] [--dtype float32]

Builds the full-size generator (ngf 64) and face parser with seeded weights in a temporary folder,
encodes the example photo once (dlib landmarks), then times ``Studio.at_age`` (the latent blend of
the two neighbouring classes and one decode, what the page runs per slider move) for random ages,
without and with paste-back, plus the PNG encoding the page adds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def seeded_files(folder: Path) -> tuple[Path, Path]:
    import torch

    from agetool.nn.generator import Generator
    from agetool.nn.parser import DeepLabV3
    from tests.seeding import seeded_state_dict

    gen, parser = folder / "latest_net_g_running.pth", folder / "deeplab_model.pth"
    torch.save(seeded_state_dict(Generator(), 1, "generator"), gen)
    torch.save({"state_dict": {f"module.{k}": v for k, v in seeded_state_dict(DeepLabV3(), 3, "parser").items()}},
               parser)
    return gen, parser


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from agetool.images import encode_image
    from agetool.serve.studio import Studio, load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        gen, parser = seeded_files(Path(tmp))
        pipe = load_pipeline(weights=gen, parser_weights=parser, landmarks="dlib", device=args.device,
                             dtype=args.dtype, offline=True)
        studio = Studio(pipe, Path(tmp) / "results", fixed_model=gen.name)
        t0 = time.perf_counter()
        session = studio.encode(ROOT / "examples" / "astronaut.png")
        first = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        rows = []
        for paste_back in (False, True):
            studio.at_age(session, 0, 30.0, paste_back)  # warm: prepared decoder, frame workers
            times, cpu, png = [], [], []
            for age in rng.uniform(0, 69, args.moves):
                t0, c0 = time.perf_counter(), time.process_time()
                image = studio.at_age(session, 0, float(age), paste_back)
                t1, c1 = time.perf_counter(), time.process_time()
                encode_image(image, "slider.png")  # what the page sends
                times.append(t1 - t0)
                cpu.append(c1 - c0)
                png.append(time.perf_counter() - t1)
            rows.append((paste_back, image.shape, times, cpu, png))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}")
    print(f"first encode of the example photo (dlib, parser, encoder; models loaded): {first:.2f} s\n")
    print("| slider move | output | median s | p90 s | max s | CPU s (median) | + PNG s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for paste_back, shape, times, cpu, png in rows:
        q = statistics.quantiles(times, n=10)
        what = "whole photo (paste-back)" if paste_back else "face tile"
        print(f"| {what} | {shape[1]}x{shape[0]} | {statistics.median(times):.3f} | {q[-1]:.3f} | {max(times):.3f} "
              f"| {statistics.median(cpu):.3f} | {statistics.median(png):.3f} |")


if __name__ == "__main__":
    main()
