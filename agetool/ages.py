"""Age classes, class codes and latent schedules for continuous aging."""

from __future__ import annotations

import torch

AGE_CLASSES: tuple[str, ...] = ("0-2", "3-6", "7-9", "15-19", "30-39", "50-69")
N_CLASSES = len(AGE_CLASSES)
CODE_PER_CLASS = 50
CODE_DIM = N_CLASSES * CODE_PER_CLASS
DEFAULT_NOISE = 0.2
DEFAULT_STEPS = 20


def class_index(label: str) -> int:
    try:
        return AGE_CLASSES.index(label)
    except ValueError:
        raise ValueError(f"unknown age class {label!r}; expected one of {', '.join(AGE_CLASSES)}") from None


def class_codes(classes: torch.Tensor | list[int], noise: float = DEFAULT_NOISE,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Class codes [N, 300]: sigma * N(0, 1) everywhere, +1 on entries [50k, 50k + 50) of class k."""
    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= N_CLASSES):
        raise ValueError(f"class index out of range 0..{N_CLASSES - 1}")
    n = classes.numel()
    codes = torch.zeros(n, CODE_DIM)
    if noise > 0:
        codes = torch.randn(n, CODE_DIM, generator=generator) * noise
    onehot = torch.zeros(n, CODE_DIM)
    for row, k in enumerate(classes.tolist()):
        onehot[row, k * CODE_PER_CLASS:(k + 1) * CODE_PER_CLASS] = 1.0
    return codes + onehot


def all_class_codes(noise: float = DEFAULT_NOISE, seed: int = 0) -> torch.Tensor:
    """The six anchor codes [6, 300], youngest first, with seeded noise."""
    g = torch.Generator().manual_seed(seed)
    return class_codes(list(range(N_CLASSES)), noise=noise, generator=g)


def reference_alphas(step: float) -> torch.Tensor:
    """[ceil(1/step)] float32 weights of the younger anchor, from 1 down (torch's arange kernel)."""
    return torch.arange(1, 0, -step, dtype=torch.float32)


def transition_alphas(steps: int) -> torch.Tensor:
    """Frame j of a transition has alpha = 1 - j/steps (weight of the younger anchor). [steps]"""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    alphas = reference_alphas(1.0 / steps)
    if alphas.numel() != steps:  # step does not divide 1 exactly in double: use the formula
        alphas = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
        alphas = alphas.float()
    return alphas


def traversal_latents(w: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Anchor latents [K, D] -> frames [len(alphas) * (K - 1) + 1, D], youngest to oldest.

    Frame (i, j) is alpha_j * w_i + (1 - alpha_j) * w_(i+1) in the dtype of w; the last is w_(K-1).
    """
    alphas = alphas.to(w.dtype).to(w.device)
    frames = []
    for i in range(w.shape[0] - 1):
        a = alphas[:, None]
        frames.append(a * w[i][None] + (1 - a) * w[i + 1][None])
    frames.append(w[-1:])
    return torch.cat(frames)


def frame_count(steps: int, anchors: int = N_CLASSES) -> int:
    return steps * (anchors - 1) + 1


def frame_age_label(index: int, steps: int) -> str:
    """A caption for a video frame: the class name at anchors, 'a -> b' in between."""
    i, j = divmod(index, steps)
    if j == 0 or i >= N_CLASSES - 1:
        return AGE_CLASSES[min(i, N_CLASSES - 1)]
    return f"{AGE_CLASSES[i]} \u2192 {AGE_CLASSES[i + 1]}"


def nominal_age(index: int, steps: int) -> float:
    """Linear interpolation of class mid-ages (years), for captions."""
    mids = [1.0, 4.5, 8.0, 17.0, 34.5, 59.5]
    i, j = divmod(index, steps)
    if i >= N_CLASSES - 1:
        return mids[-1]
    t = j / steps
    return mids[i] * (1 - t) + mids[i + 1] * t

