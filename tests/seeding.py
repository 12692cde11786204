"""Test and benchmark support, not used by the tool itself: deterministic seeded weights (no downloads).

The fill reproduces the weights the reference fixtures were computed with, so parity tests and
benchmarks run the full-size networks without the released checkpoints.

The fill walks the state dict in order; parameter ``p`` (0-based among parameters only) draws
``torch.rand`` from a CPU generator seeded with ``seed * 100000 + p`` and maps it to a
unit-variance uniform. Biases are scaled by 0.1, the generator's and discriminator's output
conv (``decoder.conv_img.*``) by 0.25 and 1-D parser tensors (GroupNorm gamma) to 0.1 x + 1.
Buffers keep their constructor values. ``torch.rand`` gives identical bits on every CPU kernel.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

import torch
from torch import nn

Network = Literal["generator", "discriminator", "parser"]


def seeded_tensor(shape, seed: int, param_index: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed(seed * 100000 + param_index)
    u = torch.rand(tuple(shape), generator=g, dtype=torch.float32)
    return (u * 2.0 - 1.0) * math.sqrt(3)


def seeded_value(key: str, shape, seed: int, param_index: int, network: Network) -> torch.Tensor:
    t = seeded_tensor(shape, seed, param_index)
    if key.endswith("bias"):
        return t * 0.1
    if network in ("generator", "discriminator") and key.startswith("decoder.conv_img."):
        return t * 0.25
    if network == "parser" and len(shape) == 1:
        return t * 0.1 + 1.0
    return t


def seeded_state_dict(module: nn.Module, seed: int, network: Network) -> dict[str, torch.Tensor]:
    """A full state dict for ``module`` with the deterministic fill; buffers as constructed."""
    params = {name for name, _ in module.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    p = 0
    for key, value in module.state_dict().items():
        if key in params:
            out[key] = seeded_value(key, value.shape, seed, p, network)
            p += 1
        else:
            out[key] = value.detach().clone()
    return out


def seed_module(module: nn.Module, seed: int, network: Network) -> nn.Module:
    module.load_state_dict(seeded_state_dict(module, seed, network), strict=True)
    return module


# ---------------------------------------------------------------- stand-in ONNX models

def onnx_linear_model(path, side: int, weight: np.ndarray, bias: np.ndarray,
                      first_nodes: tuple[str, str] = ("ReduceMean_0", "MatMul_1"), input_name: str = "data",
                      output_name: str = "fc1"):
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


def genderage_standin(path, age: float = 30.0, male: bool = True):
    """insightface's genderage shapes ([1, 3, 96, 96] -> [1, 3]) answering a constant age and gender."""

    return onnx_linear_model(path, 96, np.zeros((3, 3)), [0.0, 1.0, age / 100] if male else [1.0, 0.0, age / 100])


def arcface_standin(path, constant: bool = True):
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
