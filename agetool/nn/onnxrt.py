"""ONNX models (insightface's attribute and recognition networks): sessions, providers, input rules.

One place for what every ONNX model of agetool needs: an ``onnxruntime`` session on the CPU or the
CUDA provider, insightface's rule for whether the graph normalizes its input itself, and the input
shapes a graph fixes. Files come from ``agetool.weights.resolve``.
"""

from __future__ import annotations

import os

from agetool.errors import CheckpointError, arg, detail


def providers(device=None) -> list[str]:
    """onnxruntime providers for ``device``: CUDA first on a CUDA device where onnxruntime has it."""
    kind = getattr(device, "type", str(device or "cpu"))
    if kind.startswith("cuda"):
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            index = getattr(device, "index", None)
            options = {"device_id": int(index)} if index is not None else {}
            return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session(path: str | os.PathLike, *, argument: str, device=None):
    """An ``onnxruntime.InferenceSession`` for ``path``; a ``CheckpointError`` for a file it can't read."""
    try:
        import onnxruntime
    except ImportError:
        raise CheckpointError("onnxruntime is not installed", hint="pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # no provider warnings on stderr
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=providers(device))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise CheckpointError(f"{arg(argument, path)}: not a usable ONNX model ({detail(e, 120)})") from None


def graph_normalizes(path: str | os.PathLike) -> bool:
    """insightface's rule: the graph subtracts the mean and scales by itself when its first nodes
    are named Sub / Mul (or a ``bn_data`` batch norm comes first)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    has_sub = has_mul = False
    for i, node in enumerate(graph.node[:8]):
        has_sub |= node.name.startswith(("Sub", "_minus"))
        has_mul |= node.name.startswith(("Mul", "_mul"))
        if i < 3 and node.name == "bn_data":
            has_sub = has_mul = True
    return has_sub and has_mul


def input_side(session, default: int) -> int:
    """The square input side of ``session``'s first input (``default`` where the shape is symbolic)."""
    shape = session.get_inputs()[0].shape
    return int(shape[2]) if len(shape) == 4 and isinstance(shape[2], int) else default


def fixed_batch(session) -> int | None:
    """The batch size the first input demands, or None when it takes any."""
    first = session.get_inputs()[0].shape[0]
    return first if isinstance(first, int) and first > 0 else None
