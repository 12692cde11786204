"""Seconds per face for ``--upscale 2|4``: one aged 256 px face through each Real-ESRGAN network.

The networks are randomly initialised at the released sizes (the released files can't be downloaded
on the build machines); the time of a convolution does not depend on its weights. Each case runs in a
fresh process, so its peak memory is its own.

    python -m benchmarks.upscale_bench                  # every case
    python -m benchmarks.upscale_bench --cases compact-x2,compact-x4 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

#: case -> (architecture, network keyword arguments, upscale factor)
CASES = {
    "compact-x2": ("SRVGGNetCompact", {"num_feat": 64, "num_conv": 32, "upscale": 4}, 2),
    "compact-x4": ("SRVGGNetCompact", {"num_feat": 64, "num_conv": 32, "upscale": 4}, 4),
    "rrdb-x2": ("RRDBNet", {"scale": 2, "num_feat": 64, "num_block": 23, "num_grow_ch": 32}, 2),
    "rrdb-x4": ("RRDBNet", {"scale": 4, "num_feat": 64, "num_block": 23, "num_grow_ch": 32}, 4),
}
NAMES = {"compact-x2": "realesr-general-x4v3", "compact-x4": "realesr-general-x4v3",
         "rrdb-x2": "realesrgan-x2plus", "rrdb-x4": "realesrgan-x4plus"}


def one_case(case: str, repeat: int, device: str) -> dict:
    import numpy as np
    import torch

    from agetool.nn import realesrgan
    from agetool.upscale import Upscaler
    from benchmarks.bench import rss_peak_mb

    arch, kwargs, factor = CASES[case]
    torch.manual_seed(0)
    net = getattr(realesrgan, arch)(**kwargs).eval().to(device)
    up = Upscaler(net, realesrgan.network_scale(net), NAMES[case], arch, torch.device(device))
    face = (np.random.default_rng(0).random((256, 256, 3)) * 255).astype(np.uint8)
    up.upscale(face[:64, :64], factor)  # warm-up: kernels chosen, memory pools filled
    seconds, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = up.upscale(face, factor)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"case": case, "weights": NAMES[case], "arch": arch, "factor": factor, "tile": out.shape[0],
            "seconds": statistics.median(seconds),
            "cpu_seconds": statistics.median(cpu), "threads": torch.get_num_threads(), "runs": len(seconds), "peak_mb": rss_peak_mb(),
            "params": sum(p.numel() for p in net.parameters())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a single case, in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_case(args.one, args.repeat, args.device)))
        return 0
    from benchmarks.bench import machine

    print(f"machine: {machine()}")
    print("networks randomly initialised at the released sizes; one 256 px face, median of "
          f"{args.repeat} runs after a warm-up; each case in its own process\n")
    rows = []
    for case in args.cases.split(","):
        done = subprocess.run([sys.executable, "-m", "benchmarks.upscale_bench", "--one", case, "--repeat",
                               str(args.repeat), "--device", args.device], capture_output=True, text=True)
        if done.returncode:
            print(f"{case}: failed: {done.stderr.strip().splitlines()[-1]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout))
    # CPU seconds / threads: what a face costs on an otherwise idle machine (wall seconds grow with the load)
    print("| weights | network | params | --upscale | tile px | s per face (wall) | CPU s per face | "
          "CPU s / threads | 101-frame video, min | peak MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        idle = r["cpu_seconds"] / r["threads"]
        print(f"| {r['weights']} | {r['arch']} | {r['params'] / 1e6:.1f}M | {r['factor']} | {r['tile']} | "
              f"{r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {idle:.2f} | {101 * idle / 60:.1f} | "
              f"{r['peak_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
