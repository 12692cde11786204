"""Small helpers shared by tests: tiny seeded generators, CLI runner, synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_generator_file(path: Path, seed: int = 1, ngf: int = 8) -> Path:
    """An agetool safetensors generator with ngf=8 (fast on CPU), deterministically seeded."""
    from agetool.nn.checkpoint import save_generator
    from agetool.nn.generator import Generator, GeneratorConfig
    from agetool.testing import seed_module

    g = seed_module(Generator(GeneratorConfig(ngf=ngf)), seed, "generator")
    return save_generator(path, g)


def cli(args: list[str], capsys=None) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from agetool.cli import run

    code = run([str(a) for a in args])
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def face_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """A smooth synthetic RGB image (not a real face) for aligned-crop tests."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(6 * xx + rng.uniform(0, 3)), np.cos(5 * yy + rng.uniform(0, 3)), xx * yy], -1)
    return ((base - base.min()) / (np.ptp(base) + 1e-9) * 255).astype(np.uint8)


def onnx_linear_model(path: Path, side: int, weight: np.ndarray, bias: np.ndarray,
                      first_nodes: tuple[str, str] = ("ReduceMean_0", "MatMul_1"), input_name: str = "data",
                      output_name: str = "fc1") -> Path:
    """A stand-in ONNX model [1, 3, side, side] -> [1, D]: ``channel_means(input) @ weight + bias``.

    ``weight`` [3, D], ``bias`` [D]. Naming the first nodes Sub / Mul marks a graph that normalizes
    its input itself (insightface's rule)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.asarray(weight, np.float32)
    bias = np.asarray(bias, np.float32)
    nodes = [
        helper.make_node("ReduceMean", [input_name], ["pooled"], axes=[2, 3], keepdims=0, name=first_nodes[0]),
        helper.make_node("MatMul", ["pooled", "w"], ["mm"], name=first_nodes[1]),
        helper.make_node("Add", ["mm", "b"], [output_name], name="Add_2"),
    ]
    graph = helper.make_graph(
        nodes, "stand-in",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, weight.shape[1]])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def genderage_standin(path: Path, age: float = 30.0, male: bool = True) -> Path:
    """insightface's genderage shapes ([1, 3, 96, 96] -> [1, 3]) answering a constant age and gender."""
    return onnx_linear_model(path, 96, np.zeros((3, 3)), [0.0, 1.0, age / 100] if male else [1.0, 0.0, age / 100])


def arcface_standin(path: Path, constant: bool = True) -> Path:
    """ArcFace shapes ([1, 3, 112, 112] -> [1, 512]): a constant embedding, or (mean R, mean G, mean B,
    1, 0, ...) of the normalized input, so the identity of uniform colours is known."""
    weight = np.zeros((3, 512))
    bias = np.zeros(512)
    bias[3] = 1.0
    if constant:
        bias[:3] = (0.3, -0.2, 0.5)
    else:
        weight[0, 0] = weight[1, 1] = weight[2, 2] = 1.0
    return onnx_linear_model(path, 112, weight, bias, input_name="input.1", output_name="683")
