"""Training throughput: full LATS steps (D update with R1, G update, EMA) on synthetic data.

    python benchmarks/train_bench.py                          # 256 px, batch 6, CPU, fp32
    python benchmarks/train_bench.py --device cuda --batch-size 6 12 24 --amp none bf16
    python benchmarks/train_bench.py --device cuda --check    # loss parity on the device first

Weights are the deterministic seeded fill (G seed 1, D seed 2), the data a synthetic folder in the
reference layout; one batch is loaded once and reused, so the numbers are the step alone. A batch of B
is B pairs, i.e. 2B images per step; images/s counts those 2B images. Prints a table: stage, device,
dtype, batch, images/s, peak MB.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def synthetic_data(root: Path, size: int) -> Path:
    from PIL import Image

    from agetool.ages import AGE_CLASSES

    rng = np.random.default_rng(0)
    for name in AGE_CLASSES:
        folder = root / f"train{name}"
        (folder / "parsings").mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            Image.fromarray(np.ones((size, size), np.uint8)).save(folder / "parsings" / f"{i}.png")
    return root


def peak_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(data: Path, size: int, batch: int, amp: str, device: str, steps: int, warmup: int, ngf: int,
          grad_checkpoint: bool = False) -> dict:
    import torch

    from tests.seeding import seeded_state_dict
    from agetool.train.config import TrainConfig
    from agetool.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data=str(data), out=out, size=size, ngf=ngf, ndf=64, batch_size=batch, workers=0,
                          device=device, amp=amp, save_every=0, sample_every=0,
                          grad_checkpoint=grad_checkpoint)
        tr = Trainer(cfg)
        if ngf == 64 and size == 256:
            for net, seed, kind in ((tr.g, 1, "generator"), (tr.g_ema, 1, "generator"), (tr.d, 2, "discriminator")):
                net.load_state_dict({k: v.to(tr.device) for k, v in seeded_state_dict(net, seed, kind).items()})
        batch_data = next(iter(tr.loader))
        if tr.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(tr.device)
        for _ in range(warmup):
            tr.train_step(batch_data)
            tr.step += 1
        sync(tr.device)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            terms = tr.train_step(batch_data)
            sync(tr.device)
            times.append(time.perf_counter() - t0)
            tr.step += 1
        finite = all(bool(torch.isfinite(v).all()) for v in terms.values())
        sec = float(np.median(times))
        stage = "train step" + (", G checkpointed" if grad_checkpoint else "")
        return {"stage": stage, "device": str(tr.device),
                "dtype": "bfloat16 autocast" if amp in ("bf16", "bfloat16") else "float32", "batch": f"{batch} pairs",
                "size": size, "images_per_s": 2 * batch / sec, "sec_per_step": sec, "peak_mb": peak_mb(tr.device),
                "finite": finite, "G": float(terms["G"]), "D": float(terms["D"])}


def check(device: str) -> bool:
    """The eight losses of the reference fixture, computed on ``device`` by the trainer's own update
    (learning rate 0, so both halves see the reference's weights)."""
    import torch

    from agetool.ages import AGE_CLASSES
    from agetool.images import write_image
    from tests.seeding import seeded_state_dict
    from agetool.train.config import TrainConfig
    from agetool.train.losses import Codes, discriminator_real_losses
    from agetool.train.trainer import Trainer

    ref = Path(os.environ.get("AGETOOL_REFERENCE", ROOT.parent / "shared" / "reference"))
    if not (ref / "train_losses_256.npz").is_file():
        print(f"check skipped: no reference fixtures at {ref}")
        return True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    z = np.load(ref / "train_losses_256.npz")
    want = json.loads((ref / "train_losses_256.json").read_text())["losses"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        for i, (image, k) in enumerate(zip(z["reals_uint8"], np.concatenate([z["class_A"], z["class_B"]]))):
            write_image(data / f"train{AGE_CLASSES[int(k)]}" / f"{i:05d}.png", image)
        tr = Trainer(TrainConfig(data=str(data), out=str(Path(tmp) / "run"), size=256, ngf=64, ndf=64, batch_size=1,
                                 lr=0.0, mask=False, flip=False, workers=0, device=device))
        tr.g.load_state_dict(seeded_state_dict(tr.g, 1, "generator"))
        tr.d.load_state_dict(seeded_state_dict(tr.d, 2, "discriminator"))
        t = lambda k: torch.from_numpy(z[k]).to(tr.device)  # noqa: E731
        codes = Codes(t("gen_conditions"), t("cyc_conditions"), t("orig_conditions"))
        out = tr.update(t("reals"), t("class_A"), t("class_B"), codes, codes)
        reals = t("reals").requires_grad_(True)
        _, _, r1 = discriminator_real_losses(tr.d(reals), reals, t("class_A"), t("class_B"), create_graph=False)
    names = {"loss_D_real": "D_real", "loss_D_fake": "D_fake", "loss_D_reg": "D_r1", "loss_G_Adv": "G_adv",
             "loss_G_Cycle": "G_cyc", "loss_G_Rec": "G_rec", "loss_G_identity_reconst": "G_id",
             "loss_G_age_reconst": "G_age"}
    ok = True
    for ref_name, ours in names.items():
        rel = abs(out[ours].item() - want[ref_name]) / abs(want[ref_name])
        tol = 1e-3 if ours == "D_r1" else 1e-4
        ok &= rel < tol
        print(f"check {ours:7s} rel err {rel:.2e} {'ok' if rel < tol else 'FAIL'}")
    g_ref = z["r1_grad"]
    rel = float(np.linalg.norm(r1.detach().cpu().numpy() - g_ref) / np.linalg.norm(g_ref))
    ok &= rel < 1e-2
    print(f"check r1_grad rel L2 {rel:.2e} {'ok' if rel < 1e-2 else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--ngf", type=int, default=64)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[6])
    ap.add_argument("--amp", nargs="+", default=["none"], choices=["none", "bfloat16", "bf16"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--grad-checkpoint", action="store_true", help="recompute generator activations (less memory)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--check", action="store_true", help="verify the loss values on the device first")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check and not check(args.device):
        print("loss check FAILED")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp), args.size)
        for amp in args.amp:
            for b in args.batch_size:
                oom = False
                try:
                    rows.append(bench(data, args.size, b, amp, args.device, args.steps, args.warmup, args.ngf,
                                      args.grad_checkpoint))
                except torch.cuda.OutOfMemoryError:
                    oom = True
                if oom:  # outside the except block, so the failed step's tensors can be freed
                    rows.append({"stage": "train step (out of memory)", "device": args.device, "dtype": amp,
                                 "batch": f"{b} pairs", "images_per_s": float("nan"), "peak_mb": float("nan"),
                                 "finite": True, "size": args.size, "sec_per_step": float("nan")})
                    gc.collect()
                    torch.cuda.empty_cache()
                r = rows[-1]
                print(f"  done: {r['dtype']} batch {b}: {r['images_per_s']:.3g} img/s", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} CPU threads, size {args.size}, ngf {args.ngf}")
    header = f"{'stage':32s} {'device':8s} {'dtype':14s} {'batch':9s} {'images/s':>9s} {'s/step':>8s} {'peak MB':>8s} finite"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['stage']:32s} {r['device']:8s} {r['dtype']:14s} {r['batch']:9s} {r['images_per_s']:9.3g} "
              f"{r['sec_per_step']:8.2f} {r['peak_mb']:8.0f} {r['finite']}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0 if all(r["finite"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
