"""GPU check: parity, reduced precision and decode throughput on one CUDA device.

    bash benchmarks/gpu_check.sh            # the whole check, at most 5 minutes
    python -m benchmarks.gpu_check --help

1. Parity with the reference fixtures (seeded weights, no downloads): float32 features and images
   within 1e-3 (prepared decoder in both schedules, and the grouped reference form), bfloat16 and
   float16 images at PSNR >= 40 dB against the float32 fixtures.
2. End to end (benchmarks/gpu_e2e.py): the whole `agetool age` command on the example photo,
   cold (fresh process, empty cache) and warm, float32 and bfloat16; and the slider-style latency
   of rendering one age of an already encoded face.
3. Decode throughput of the prepared decoder at 256 px, batch 32 / 64 / 128, float32 and bfloat16,
   eager and ``torch.compile`` (compiled runs are skipped when the time budget runs short), with the
   peak CUDA allocation; the reference form (grouped convs, float32) as the baseline.

``--device cpu --parts e2e --no-write`` runs the end-to-end part on the CPU: a dry run of its logic.

The tables go into benchmarks/RESULTS.md (between the gpu-check markers) and, where $OUT is set,
into $OUT/gpu_check.md. Exit status 1 when a parity check fails. Needs only torch and numpy.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("AGETOOL_REFERENCE") or next(
    (p for p in (ROOT.parent / "shared" / "reference", ROOT / "shared" / "reference") if p.is_dir()),
    ROOT.parent / "shared" / "reference"))
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- gpu-check:begin -->", "<!-- gpu-check:end -->"
FP32_ATOL = 1e-3
MIN_PSNR = 40.0
DEPLOY_CASES = ("gen_case0_deploy_traverse_64", "gen_case1_noisycond_64", "gen_case3_deploy_256")


class Report:
    def __init__(self):
        self.parity: list[tuple[str, str, str, bool]] = []  # check, value, limit, ok
        self.speed: list[tuple[str, str, str, str, str, str]] = []  # what, dtype, batch, frames/s, MB, note
        self.e2e: list[tuple[str, str, str, str, str]] = []  # what, dtype, cold, warm / latency, note
        self.notes: list[str] = []

    def check(self, name: str, value: float, limit: float, higher_is_better: bool = False) -> None:
        ok = value >= limit if higher_is_better else value <= limit  # NaN fails both
        shown = f"{value:.1f} dB" if higher_is_better else f"{value:.2e}"
        bound = f">= {limit:g} dB" if higher_is_better else f"<= {limit:g}"
        self.parity.append((name, shown, bound, ok))
        print(f"[parity] {'ok  ' if ok else 'FAIL'} {name}: {shown} ({bound})", flush=True)

    def rate(self, what, dtype, batch, fps, mb, note=""):
        row = (what, dtype, str(batch), "-" if fps is None else f"{fps:.0f}",
               "-" if mb is None else f"{mb:.0f}", note)
        self.speed.append(row)
        print(f"[speed] {' | '.join(row)}", flush=True)

    @property
    def ok(self) -> bool:
        return all(r[3] for r in self.parity)

    def markdown(self, machine: str, seconds: float) -> str:
        lines = [BEGIN, "## GPU decode (benchmarks/gpu_check.sh)", "",
                 f"Machine: {machine}. Check took {seconds:.0f} s; "
                 f"parity {'passed' if self.ok else 'FAILED'}.", "",
                 "| check | value | limit | ok |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {'yes' if d else '**no**'} |" for a, b, c, d in self.parity]
        lines += ["", "Decode throughput, 256 px frames (decoder only; features and latents already on the GPU; "
                  "float32 rows without TF32):",
                  "", "| decoder | dtype | batch | frames/s | peak MB | note |", "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.speed]
        if self.e2e:
            lines += ["", "End to end (whole process, seeded full-size weights, dlib landmarks, parser at 513; "
                      "cold = fresh process and empty cache, warm = the same command again):", "",
                      "| what | dtype | cold | warm | note |", "|---|---|---|---|---|"]
            lines += ["| " + " | ".join(r) + " |" for r in self.e2e]
        if self.notes:
            lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines + [END, ""])


def free_cache(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def psnr(a: torch.Tensor, b: np.ndarray) -> float:
    mse = float(((a.double().cpu() - torch.from_numpy(b).double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(4.0 / mse)


def max_err(a: torch.Tensor, b: np.ndarray) -> float:
    return float((a.float().cpu() - torch.from_numpy(b)).abs().max())


def load(name: str) -> dict:
    with np.load(REFERENCE / f"{name}.npz") as z:
        return {k: z[k] for k in z.files}


def seeded_generator(device):
    from agetool.nn.generator import Generator
    from tests.seeding import seeded_state_dict

    g = Generator().eval()
    g.load_state_dict(seeded_state_dict(g, 1, "generator"), strict=True)
    return g.to(device)


def parity(rep: Report, g, device) -> None:
    from agetool.engine import AgingEngine
    from agetool.nn.prepared import PreparedDecoder

    if not REFERENCE.is_dir():
        rep.notes.append(f"parity skipped: no fixtures at {REFERENCE}")
        rep.parity.append(("fixtures present", "missing", str(REFERENCE), False))
        return
    fp32 = AgingEngine(g, device, torch.float32, chunk=64)
    for case in DEPLOY_CASES:
        z = load(case)
        x, cond = torch.from_numpy(z["x"]), torch.from_numpy(z["cond"])
        feats = fp32.encode(x)
        rep.check(f"{case}: float32 features", max_err(feats, z["id_features"]), FP32_ATOL)
        w = fp32.latents(cond)
        rep.check(f"{case}: float32 images", max_err(fp32.decode(feats[0], w), z["out_deploy"]), FP32_ATOL)
        per_sample = PreparedDecoder(g.decoder, device, torch.float32, per_sample=True)(feats, w)
        rep.check(f"{case}: float32 images, per-sample schedule", max_err(per_sample, z["out_deploy"]), FP32_ATOL)
        g.set_grouped_modconv(True)
        try:
            with torch.inference_mode():
                grouped = g.decode(feats.to(device).expand(len(w), -1, -1, -1), w.to(device))
        finally:
            g.set_grouped_modconv(False)
        rep.check(f"{case}: float32 images, reference form", max_err(grouped, z["out_deploy"]), FP32_ATOL)
        for dtype in (torch.bfloat16, torch.float16):
            eng = AgingEngine(g, device, dtype, chunk=64)
            out = eng.decode(eng.encode(x)[0], eng.latents(cond))
            rep.check(f"{case}: {str(dtype)[6:]} images vs float32", psnr(out, z["out_deploy"]), MIN_PSNR, True)
    z = load("gen_case0_deploy_traverse_64")
    lat = torch.from_numpy(z["latents_traverse_main"])
    frames = fp32.decode(fp32.encode(torch.from_numpy(z["x"]))[0], lat)
    rep.check("traversal (21 frames): float32", max_err(frames, z["out_traverse_main"]), FP32_ATOL)


def throughput(rep: Report, g, device, batches, deadline: float, compile_: bool) -> None:
    from agetool.engine import AgingEngine
    from agetool.nn.prepared import PreparedDecoder

    torch.backends.cudnn.benchmark = True
    face = torch.from_numpy(load("gen_case3_deploy_256")["x"]) if REFERENCE.is_dir() else \
        torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eng = AgingEngine(g, device, torch.float32)
    feats = eng.encode(face)
    anchors = eng.anchor_latents(0.2, 0)
    lat_all = eng.traversal(anchors, 64)[:max(batches)].to(device)  # 321 frames, cut to the largest batch

    def timed(fn, n_frames: int, min_seconds: float = 1.0, max_iters: int = 30):
        sync(device)
        reset_peak(device)
        iters, t0 = 0, time.perf_counter()
        while True:
            fn()
            iters += 1
            sync(device)
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds or iters >= max_iters:
                break
        return n_frames * iters / elapsed, peak_mb(device)

    # the baseline: grouped convs in float32, TF32 off, the batch in one call
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    b = min(batches)
    g.set_grouped_modconv(True)
    try:
        with torch.inference_mode():
            fe, w = feats.to(device).expand(b, -1, -1, -1), lat_all[:b]
            g.decode(fe, w)
            fps, mb = timed(lambda: g.decode(fe, w), b)
        rep.rate("reference form (grouped)", "float32", b, fps, mb)
    finally:
        g.set_grouped_modconv(False)

    plans = [(dt, c) for c in ((False, True) if compile_ else (False,)) for dt in (torch.bfloat16, torch.float32)]
    for dtype, compiled in plans:
        name = str(dtype)[6:]
        dec = PreparedDecoder(g.decoder, device, dtype)
        fn = torch.compile(dec.forward, dynamic=False) if compiled else dec.forward
        label = "prepared, torch.compile" if compiled else "prepared, eager"
        for b in sorted(batches, reverse=True):
            left = deadline - time.perf_counter()
            if left < (60 if compiled else 10):
                rep.rate(label, name, b, None, None, f"skipped: {left:.0f} s of budget left")
                continue
            try:
                with torch.inference_mode():
                    w = lat_all[:b]
                    t0 = time.perf_counter()
                    fn(feats, w)
                    fn(feats, w)
                    sync(device)
                    warm = time.perf_counter() - t0
                    fps, mb = timed(lambda: fn(feats, w), b)
                rep.rate(label, name, b, fps, mb, f"first calls {warm:.0f} s" if compiled else "")
            except Exception as e:  # out of memory, a compiler failure: record it and go on
                rep.rate(label, name, b, None, None, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
                free_cache(device)
        dec = fn = None
        free_cache(device)

    # what `agetool video` sees: the engine's own chunking and the copy of every frame to the CPU
    if deadline - time.perf_counter() > 15:
        try:
            from agetool.engine import default_chunk

            eng = AgingEngine(g, device, torch.bfloat16, chunk=default_chunk(device, torch.bfloat16))
            lat = eng.traversal(anchors, 80)  # 401 frames

            def stream():
                for _ in eng.decode_stream(feats[0], lat):
                    pass

            stream()
            fps, mb = timed(stream, len(lat), min_seconds=0.5, max_iters=5)
            rep.rate("engine stream, 401 frames to CPU", "bfloat16", eng.chunk, fps, mb)
        except Exception as e:
            rep.rate("engine stream, 401 frames to CPU", "bfloat16", "-", None, None,
                     f"failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}")


def end_to_end(rep: Report, device) -> None:
    import tempfile

    from benchmarks.gpu_e2e import end_to_end as commands, slider_latency

    with tempfile.TemporaryDirectory(prefix="agetool-gpu-e2e-") as tmp:
        for what, dtype, cold, warm, top in commands(device, ["float32", "bfloat16"], Path(tmp)):
            rep.e2e.append((what, dtype, f"{cold:.2f} s", f"{warm:.2f} s", f"warm stages: {top}"))
    for dtype in (torch.float32, torch.bfloat16):
        median, first = slider_latency(device, dtype)
        rep.e2e.append(("slider: one age of an encoded face, to the CPU", str(dtype)[6:], f"{first:.0f} ms (first)",
                        f"{median:.1f} ms", "median of 29 frames"))
        print(f"[e2e] slider {dtype}: {median:.1f} ms per frame (first {first:.0f} ms)", flush=True)


def machine(device) -> str:
    if device.type != "cuda":
        return f"{device.type} (logic check only), torch {torch.__version__}"
    p = torch.cuda.get_device_properties(device)
    return (f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}")


def write(md: str) -> None:
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmark results\n\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + md.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + md
    RESULTS.write_text(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.md").write_text(md)
        (Path(out) / "RESULTS.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda or cuda:N (cpu only tries the script's logic)")
    ap.add_argument("--budget", type=float, default=270.0, help="seconds for the whole check")
    ap.add_argument("--batches", default="32,64,128")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--parts", default="parity,e2e,throughput", help="comma-separated subset of parity,e2e,throughput (always run in that order)")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    start = time.perf_counter()
    device = torch.device(args.device)
    from agetool.device import tune_process

    tune_process(device, torch.float32)  # as the command line does
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("no CUDA device: nothing to check", file=sys.stderr)
            return 2
        torch.cuda.set_device(device)
    rep = Report()
    name = machine(device)
    print(name, flush=True)
    try:
        g = seeded_generator(device) if parts & {"parity", "throughput"} else None
        if "parity" in parts:
            parity(rep, g, device)
        if "e2e" in parts:
            try:
                end_to_end(rep, device)
            except Exception as e:  # a failing command must not lose the throughput rows
                rep.notes.append(f"end to end failed: {type(e).__name__}: {str(e).splitlines()[-1][:160]}")
        if "throughput" in parts:
            throughput(rep, g, device, [int(b) for b in args.batches.split(",")], start + args.budget,
                       not args.no_compile)
    except KeyboardInterrupt:
        rep.notes.append("stopped early (time limit); the rows above are complete")
    except Exception as e:
        rep.notes.append(f"stopped by {type(e).__name__}: {str(e).splitlines()[0][:160]}")
        traceback.print_exc()
    finally:
        md = rep.markdown(name, time.perf_counter() - start)
        print(md)
        if not args.no_write:
            write(md)
    return 0 if rep.ok and (rep.parity or "parity" not in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
