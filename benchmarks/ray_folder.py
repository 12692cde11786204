"""A folder on Ray (`agetool age DIR --engine ray`) against the plain folder run, on this machine.

    python -m benchmarks.ray_folder                      # 48 photos: plain, attached Ray, private Ray
    python -m benchmarks.ray_folder --photos 12 --rounds 2

Every run is a whole `agetool age` process on the same folder (variants of examples/astronaut.png:
flips, crops, scales, as photos from the wild come) with dlib landmarks, the parser at 513 px and the
seeded full-size generator and parser in the released layouts (benchmarks/e2e.py writes them), so
the work per photo is that of real checkpoints. Three runs per round, interleaved so that the load
of a shared machine falls on each alike:

- plain: the plain folder run;
- attached: `--ray-address` to a Ray started once before (`ray start --head`, all CPUs), as a
  cluster user runs many jobs;
- private: `--engine ray` alone, a Ray started and stopped inside the job.

Throughput leaves start-up apart: photos whose line came after the first one (a batch's lines come
together), over the time from the first photo's line to the last's (one line per photo). The whole-job time counts everything.
The load average is sampled during each run. Grids are compared byte for byte with the plain run's.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.e2e import PHOTO, ROOT, machine, write_folder, write_weights


def load() -> float:
    return os.getloadavg()[0]


def run(args: list[str], cwd: Path, env: dict) -> dict:
    """One `agetool age` process: whole time, the times its per-photo lines arrived, load samples."""
    loads: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(5):
            loads.append(load())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "agetool", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines, err = [], []
    for line in proc.stderr:
        err.append(line)
        if " -> " in line and "face" in line:
            lines.append(time.perf_counter() - t0)
    code = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    text = "".join(err)
    startup = re.search(r"Ray start-up: ([0-9.]+) s", text)
    return {"wall": wall, "lines": lines, "code": code, "err": text, "loads": loads or [load()],
            "startup": float(startup.group(1)) if startup else None}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_with(marker: str) -> list[int]:
    """Processes whose environment holds ``marker`` (the Ray temp folder of this benchmark)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def stop_ray(marker: str) -> None:
    """End the Ray processes this benchmark started (by process id, never by name)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in processes_with(marker):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        time.sleep(2)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the three runs, interleaved")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="agb") as tmp:  # short: Ray's socket paths must fit 107 bytes
        work = Path(tmp)
        gen, parser = write_weights(work)
        photos = write_folder(work / "photos", PHOTO, a.photos)
        common = ["--weights", str(gen), "--parser-weights", str(parser), "--landmarks", "dlib", "--device", "cpu"]
        token = secrets.token_hex(16)
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", RAY_DISABLE_USAGE_STATS="1",
                   AGETOOL_CACHE=str(work / "cache"), RAY_TMPDIR=str(work), RAY_AUTH_TOKEN=token)
        env.pop("RAY_ADDRESS", None)
        env.pop("RAY_AUTH_MODE", None)
        cpus = os.cpu_count() or 1
        port = free_port()
        t0 = time.perf_counter()
        subprocess.run(["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", str(cpus), "--include-dashboard", "false", "--disable-usage-stats"],
                       env={**env, "RAY_AUTH_MODE": "token"}, check=True, capture_output=True, timeout=600)
        head_start = time.perf_counter() - t0
        results: dict[str, list[dict]] = {"plain": [], "attached": [], "private": []}
        try:
            for r in range(a.rounds):
                for side in results:
                    out = work / f"{side}{r}"
                    extra = {"plain": [], "attached": ["--engine", "ray", "--ray-address", f"127.0.0.1:{port}"],
                             "private": ["--engine", "ray"]}[side]
                    res = run(["age", str(photos), "--out", str(out), *common, *extra, "--profile"], work, env)
                    if res["code"] != 0:
                        print(res["err"][-3000:], file=sys.stderr)
                        return 1
                    results[side].append(res)
                    print(f"round {r + 1} {side}: {res['wall']:.1f} s, load {min(res['loads']):.1f}-"
                          f"{max(res['loads']):.1f}", file=sys.stderr)
        finally:
            stop_ray(str(work))
        same = all((work / f"plain{r}" / p.name).read_bytes() == p.read_bytes()
                   for r in range(a.rounds) for side in ("attached", "private")
                   for p in (work / f"{side}{r}").iterdir())
        print(f"machine: {machine()}, ray {ray_version()}")
        print(f"folder of {a.photos} photos (one face each; dlib, parser at 513, full-size generator, six ages); "
              f"`ray start --head` took {head_start:.1f} s, once\n")
        print("| round | run | load (1 min) | whole job s | Ray start-up s | photos/s, start-up apart "
              "| vs plain | whole job vs plain |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        names = {"plain": "plain folder run", "attached": "--engine ray, attached (`ray start --head` before)",
                 "private": "--engine ray, private Ray"}
        for r in range(a.rounds):
            base = results["plain"][r]
            for side in results:
                res = results[side][r]
                rate, base_rate = throughput(res), throughput(base)
                up = "-" if res["startup"] is None else f"{res['startup']:.1f}"
                print(f"| {r + 1} | {names[side]} | {min(res['loads']):.1f}-{max(res['loads']):.1f} | {res['wall']:.1f} "
                      f"| {up} | {rate:.3f} | {rate / base_rate:.2f}x | {base['wall'] / res['wall']:.2f}x |")
        print(f"\ngrids identical to the plain run's: {'yes' if same else 'NO'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def throughput(res: dict) -> float:
    """Photos whose line came after the first line, over the time from the first line to the last
    (a batch's lines arrive together: the first batch is left out whole)."""
    lines = res["lines"]
    later = [t for t in lines if t > lines[0] + 0.05] if lines else []
    return len(later) / (lines[-1] - lines[0]) if later else float("nan")


def ray_version() -> str:
    import ray

    return ray.__version__


if __name__ == "__main__":
    sys.exit(main())
