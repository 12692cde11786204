"""Speed and memory of each agetool stage, with seeded full-size weights (nothing is downloaded).

    python -m benchmarks.bench                      # CPU, float32, every stage
    python -m benchmarks.bench --dtype bfloat16     # reduced precision where supported
    python -m benchmarks.bench --quick              # fewer frames and repeats, about a minute
    python -m benchmarks.bench --stages decode,reference --markdown

Prints one table: stage, device, dtype, batch, images/s (median of the repeats) and peak memory
(the process's peak RSS during the stage on the CPU, read from /proc; the peak CUDA allocation on a
GPU; the command's own peak RSS for the command-line rows). "reference form" rows compute the
decoder as the original implementation does: per-sample grouped modulated convs in float32, NCHW,
all frames of the request in one batch. Stages whose components are missing are skipped with a
note. In-process rows share one process, so their memory includes the models loaded before them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("AGETOOL_REFERENCE", ROOT.parent / "shared" / "reference"))
ALIGNED = "align_case0_out256.png"  # an aligned 256 px face
PHOTO = "align_case0_input.png"  # a photo with one face
STAGES = ("encode", "decode", "traversal", "reference", "parse", "landmarks", "age", "video")
#: peak RSS of the reference form per 256 px frame decoded in one batch (10.1 GB for 101 frames)
REFERENCE_BYTES_PER_FRAME = 100 * 2**20


@dataclass
class Row:
    stage: str
    device: str
    dtype: str
    batch: str
    rate: float | None  # images (frames, photos) per second
    peak_mb: float | None
    note: str = ""


# ------------------------------------------------------------------ measurement
class PeakMemory:
    """Peak memory of a block: CUDA allocations, or the process's RSS high-water mark (VmHWM, reset
    through /proc/self/clear_refs where the kernel allows; else the lifetime peak)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = rss_peak_mb()
        return False


def rss_peak_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
    except ImportError:
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, count: int, device: torch.device, repeat: int, warmup: bool = True):
    """Median images/s of ``fn`` (which handles ``count`` images) over ``repeat`` runs, and peak MB."""
    if warmup:
        fn()
    rates = []
    with PeakMemory(device) as peak:
        for _ in range(repeat):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            rates.append(count / (time.perf_counter() - t0))
    return statistics.median(rates), peak.mb


def run_command(args: list[str]) -> tuple[float, float | None, str]:
    """Run a command to completion: wall seconds, its peak RSS in MB, and its stderr.

    The peak comes from /usr/bin/time where present (a child forked from this large process would
    report this process's RSS as its own peak); else from polling the child's VmHWM.
    """
    timer = Path("/usr/bin/time")
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        cmd = [str(timer), "-f", "%M", "-o", rss.name, *args] if timer.is_file() else args
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT, text=True)
        polled = [None]
        if not timer.is_file():
            import threading

            threading.Thread(target=_poll_hwm, args=(proc, polled), daemon=True).start()
        err = proc.communicate()[1]
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[2:5])} ... exited {proc.returncode}: {err.strip()[-400:]}")
        peak = polled[0]
        if timer.is_file():
            lines = [ln for ln in Path(rss.name).read_text().split() if ln.isdigit()]
            peak = int(lines[-1]) / 1024 if lines else None
    return wall, peak, err


def _poll_hwm(proc: subprocess.Popen, out: list) -> None:
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[0] = int(line.split()[1]) / 1024
        except OSError:
            return
        time.sleep(0.05)


def profile_seconds(stderr: str, stage: str) -> float | None:
    """A stage's seconds from the ``--profile`` table a command printed."""
    for line in stderr.splitlines():
        cells = [c.strip() for c in line.replace("\u2502", "|").split("|")]
        if len(cells) >= 2 and cells[0] == stage:
            try:
                return float(cells[1])
            except ValueError:
                return None
    return None


# ------------------------------------------------------------------ the benchmark
class Bench:
    def __init__(self, device: torch.device, dtype: torch.dtype, quick: bool, repeat: int, workdir: Path):
        from agetool.engine import AgingEngine
        from agetool.nn.generator import Generator
        from tests.seeding import seeded_state_dict
        from agetool.engine import default_chunk

        self.device, self.dtype, self.quick, self.repeat = device, dtype, quick, repeat
        self.workdir = workdir
        self.steps = 4 if quick else 20  # frames per transition: 21 or 101 frames
        self.rows: list[Row] = []
        self.generator = Generator().eval()
        self.generator.load_state_dict(seeded_state_dict(self.generator, 1, "generator"))
        self.chunk = default_chunk(device, dtype)
        from agetool.device import tune_process

        tune_process(device, dtype)  # as the command line does
        self.engine = AgingEngine(self.generator, device, dtype, chunk=self.chunk)
        self.face = self._aligned_tensor()
        self.features = self.engine.encode(self.face)
        self.anchors = self.engine.anchor_latents(0.2, 0)
        self.frames = self.engine.traversal(self.anchors, self.steps)
        self._weights: dict[str, Path] = {}

    # ---------------------------------------------------------- helpers
    @property
    def dev(self) -> str:
        return self.device.type

    @property
    def dt(self) -> str:
        return str(self.dtype).replace("torch.", "")

    def workers_note(self) -> str:
        from agetool.engine import frame_pool

        pool = frame_pool() if self.device.type == "cpu" and self.engine.decoder.per_sample else None
        return f"{pool.workers} frame workers" if pool else ""

    def add(self, stage, batch, rate, peak, note="", dtype=None):
        self.rows.append(Row(stage, self.dev, dtype or self.dt, str(batch), rate, peak, note))

    def skip(self, stage, note):
        self.rows.append(Row(stage, self.dev, "-", "-", None, None, note))

    def _aligned_tensor(self) -> torch.Tensor:
        from agetool.images import read_image, to_tensor

        path = REFERENCE / ALIGNED
        if path.is_file():
            return to_tensor(read_image(path))
        g = torch.Generator().manual_seed(0)
        return torch.rand(1, 3, 256, 256, generator=g) * 2 - 1

    def weights(self, kind: str) -> Path:
        """Seeded checkpoints written once into the work folder (generator .pth, parser .safetensors)."""
        if kind not in self._weights:
            from tests.seeding import seeded_state_dict

            if kind == "generator":
                path = self.workdir / "generator_seed1.pth"
                torch.save(self.generator.state_dict(), path)
            else:
                from agetool.face.parse import save_parser
                from agetool.nn.parser import DeepLabV3

                path = save_parser(self.workdir / "parser_seed1.safetensors",
                                   seeded_state_dict(DeepLabV3(), 1, "parser"))
            self._weights[kind] = path
        return self._weights[kind]

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agetool", *args, "--device", str(self.device), "--dtype", self.dt]

    # ---------------------------------------------------------- stages
    def encode(self):
        rate, peak = measure(lambda: self.engine.encode(self.face), 1, self.device, self.repeat)
        self.add("encode", 1, rate, peak)

    def decode(self):
        self.engine.chunk = len(self.anchors)
        try:
            rate, peak = measure(lambda: self.engine.decode(self.features[0], self.anchors), len(self.anchors),
                                 self.device, self.repeat)
        finally:
            self.engine.chunk = self.chunk
        self.add("decode, six classes", len(self.anchors), rate, peak, self.workers_note())

    def traversal(self):
        n = len(self.frames)

        def run():
            for _ in self.engine.decode_stream(self.features[0], self.frames):
                pass

        rate, peak = measure(run, n, self.device, max(1, self.repeat - 1), warmup=False)
        self.add(f"traversal, {n} frames", self.chunk, rate, peak, self.workers_note())

    def reference(self):
        """The original computation: grouped modulated convs, float32, NCHW, one batch per request."""
        from agetool.engine import available_memory

        g = self.generator.to(self.device)
        g.set_grouped_modconv(True)
        try:
            feats = self.features.float()
            for label, w in (("six classes", self.anchors), (f"traversal, {len(self.frames)} frames", self.frames)):
                n = len(w)
                batch, note = n, ""
                if self.device.type == "cpu":
                    fits = max(1, int(available_memory() * 0.7 // REFERENCE_BYTES_PER_FRAME))
                    if fits < n:
                        batch, note = fits, f"batch cut from {n} to fit memory"

                def run(w=w, batch=batch):
                    with torch.inference_mode():
                        for i in range(0, len(w), batch):
                            wc = w[i:i + batch].to(self.device)
                            g.decode(feats.expand(len(wc), -1, -1, -1), wc)

                rate, peak = measure(run, n, self.device, max(1, self.repeat - 1), warmup=n <= 8)
                self.add(f"reference form: {label}", batch, rate, peak, note, dtype="float32")
        finally:
            g.set_grouped_modconv(False)

    def parse(self):
        try:
            from agetool.face.parse import FaceParser, load_parser_network
        except ImportError as e:
            return self.skip("parse", f"parser not available ({e})")
        from agetool.images import to_uint8

        parser = FaceParser(load_parser_network(self.weights("parser"), self.device), self.device)
        crop = to_uint8(self.face)[0]
        rate, peak = measure(lambda: parser.parse(crop), 1, self.device, self.repeat)
        self.add("parse (DeepLabV3, 513 px)", 1, rate, peak, dtype="float32")

    def landmarks(self):
        try:
            from agetool.face.detect import LandmarkDetector, fan_files_present
        except ImportError as e:
            return self.skip("landmarks", f"detector not available ({e})")
        from agetool.images import read_image

        photo_path = REFERENCE / PHOTO
        if not photo_path.is_file():
            return self.skip("landmarks", f"no test photo at {photo_path}")
        photo = read_image(photo_path)
        from agetool.loading import Loading

        for backend in ("dlib", "fan"):
            if backend == "fan" and not fan_files_present():
                self.skip("landmarks fan", "FAN weights not in the cache (agetool weights download)")
                continue
            try:
                det = LandmarkDetector.create(backend, device=self.device, loading=Loading(offline=True))
            except Exception as e:  # a missing package or model file
                self.skip(f"landmarks {backend}", f"unavailable: {str(e).splitlines()[0][:80]}")
                continue
            rate, peak = measure(lambda: det.detect(photo), 1, self.device, self.repeat)
            self.add(f"landmarks {backend} ({photo.shape[1]}x{photo.shape[0]})", 1, rate, peak, dtype="float32")

    def age(self):
        """Warm: one photo through a loaded pipeline (dlib, parser, generator). Cold: the command."""
        from agetool.pipeline import AgingPipeline

        photo_path = REFERENCE / PHOTO
        if not photo_path.is_file():
            return self.skip("end to end: age", f"no test photo at {photo_path}")
        try:
            pipeline = AgingPipeline.from_pretrained(model=self.weights("generator"),
                                                     parser_weights=self.weights("parser"), landmarks="dlib",
                                                     offline=True, device=str(self.device), dtype=self.dt)
            rate, peak = measure(lambda: pipeline(photo_path), 1, self.device, self.repeat)
        except Exception as e:
            return self.skip("end to end: age", f"unavailable: {str(e).splitlines()[0][:80]}")
        self.add("end to end: age, warm (dlib)", 1, rate, peak, f"{1 / rate:.2f} s per photo")
        walls, peaks = [], []
        for _ in range(max(1, self.repeat - 1)):
            wall, peak_mb, _ = run_command(self.cli(
                "age", str(photo_path), "--out", str(self.workdir / "grid.png"), "--weights",
                str(self.weights("generator")), "--parser-weights", str(self.weights("parser")),
                "--landmarks", "dlib", "--offline"))
            walls.append(wall)
            peaks.append(peak_mb)
        wall = statistics.median(walls)
        self.add("end to end: agetool age (command)", 1, 1 / wall, max(p or 0 for p in peaks),
                 f"{wall:.2f} s with start-up")

    def video(self):
        aligned = REFERENCE / ALIGNED
        if not aligned.is_file():
            return self.skip("end to end: video", f"no aligned face at {aligned}")
        for steps in ((self.steps,) if self.quick else (self.steps, 4 * self.steps)):
            n = 5 * steps + 1
            walls, peaks, decodes = [], [], []
            for _ in range(1 if steps > self.steps else max(1, self.repeat - 1)):
                wall, peak_mb, err = run_command(self.cli(
                    "video", str(aligned), "--aligned", "--no-mask", "--steps", str(steps), "--out",
                    str(self.workdir / "video.mp4"), "--weights", str(self.weights("generator")), "--profile"))
                walls.append(wall)
                peaks.append(peak_mb)
                decodes.append(profile_seconds(err, "decode") or wall)
            wall = statistics.median(walls)
            self.add(f"end to end: agetool video, {n} frames", "auto", n / statistics.median(decodes),
                     max(p or 0 for p in peaks), f"frames/s while decoding; {wall:.1f} s in all")


# ------------------------------------------------------------------ output
def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine() -> str:
    cpu = cpu_name()
    from agetool.device import physical_cores

    text = f"{cpu}, {physical_cores()} cores, {torch.get_num_threads()} threads; torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f"; {torch.cuda.get_device_name()}"
    return text


def table(rows: list[Row]) -> str:
    head = ["stage", "device", "dtype", "batch", "images/s", "peak MB", "note"]
    body = [[r.stage, r.device, r.dtype, r.batch, "-" if r.rate is None else f"{r.rate:.2f}",
             "-" if r.peak_mb is None else f"{r.peak_mb:.0f}", r.note] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), rule, *map(fmt, body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 (GPU) or auto")
    ap.add_argument("--quick", action="store_true", help="21-frame traversals, one repeat, no 401-frame video")
    ap.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 3, quick 1)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    args = ap.parse_args(argv)

    from agetool.device import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages: {', '.join(sorted(unknown))}")
    repeat = args.repeat or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="agetool-bench-") as tmp:
        bench = Bench(device, dtype, args.quick, repeat, Path(tmp))
        for stage in stages:
            print(f"[bench] {stage} ...", file=sys.stderr, flush=True)
            try:
                getattr(bench, stage)()
            except Exception as e:  # one stage failing must not lose the others
                bench.skip(stage, f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
    print(f"machine: {machine()}")
    print(table(bench.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
