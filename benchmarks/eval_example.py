"""The example evaluation report of the README, made with stand-in weights (no downloads).

    python benchmarks/eval_example.py [--out docs/eval-example]

Stand-ins, so the numbers say nothing about LATS: a tiny seeded generator (ngf 8), an "age model"
with genderage's shapes whose age is a linear function of the face's mean colour, and an
"identity model" with ArcFace's shapes whose embedding is the face's mean colour. The inputs are
three synthetic aligned crops. The real models run the same code: ``agetool eval photos/ --out DIR``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/eval-example"))
    args = parser.parse_args()
    out = args.out.resolve()

    from PIL import Image

    import agetool
    from agetool.nn.checkpoint import save_generator
    from agetool.options import EvalOptions, request
    from agetool.nn.generator import Generator, GeneratorConfig
    from tests.seeding import arcface_standin, onnx_linear_model, seed_module

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = save_generator(tmp / "standin-generator.safetensors",
                             seed_module(Generator(GeneratorConfig(ngf=8)), 1, "generator"))
        weight = np.zeros((3, 3))
        weight[:, 2] = (0.45, 0.30, 0.25)  # age / 100 from the mean normalized colour
        age_model = onnx_linear_model(tmp / "standin-genderage.onnx", 96, weight, [0.0, 1.0, 0.35])
        identity_model = arcface_standin(tmp / "standin-arcface.onnx", constant=False)
        photos = tmp / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:256, 0:256] / 256
        for i in range(3):
            phase = rng.uniform(0, 3, 3)
            base = np.stack([np.sin(6 * xx + phase[0]), np.cos(5 * yy + phase[1]), xx * yy + phase[2] / 3], -1)
            image = ((base - base.min()) / np.ptp(base) * 255).astype(np.uint8)
            Image.fromarray(image).save(photos / f"face{i}.png")
        here = os.getcwd()
        os.chdir(tmp)  # the report names the photos as given: photos/face0.png ...
        try:
            pipe = agetool.AgingPipeline.from_pretrained(model=gen, device="cpu")
            report = agetool.evaluate("photos", pipe, request(aligned=True, mask=False),
                                      EvalOptions(age_model=age_model, identity_model=identity_model, out=out))
        finally:
            os.chdir(here)
    import shutil

    shutil.rmtree(out / ".parts", ignore_errors=True)
    from agetool.eval.report import markdown

    print(markdown(report).split("\n\n")[1])
    print(f"wrote {args.out}/report.json, report.md, report.png")


if __name__ == "__main__":
    main()
