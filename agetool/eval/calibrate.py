"""Calibrated class anchors: the anchor ages that make the estimated age of outputs follow the
requested ages.

A traversal renders each face at positions ``t`` in [0, K - 1] along the anchor latents (``t = k``
is class k's latent, ``k + f`` blends classes k and k + 1 with weight f). With anchors m, a
requested age a renders the position where the piecewise-linear ``age(t) = (1 - f) m_k + f m_(k+1)``
equals a. The anchors are fitted so that ``age(t)`` matches the estimated age of the frame at t in
least squares over every frame of every face, under the constraint that they increase (by at least
``min_gap`` years) and start at or above 0: then a requested age lands on the frame whose face is
estimated to be that old.
"""

from __future__ import annotations

import numpy as np

MIN_GAP = 0.5


def blend_matrix(positions, count: int) -> np.ndarray:
    """[N, K] weights with ``age(t) = blend_matrix(t) @ anchors``: (1 - f) on anchor k, f on k + 1."""
    t = np.clip(np.asarray(positions, dtype=np.float64).reshape(-1), 0, count - 1)
    k = np.minimum(np.floor(t).astype(int), count - 2)
    f = t - k
    a = np.zeros((t.size, count))
    a[np.arange(t.size), k] = 1 - f
    a[np.arange(t.size), k + 1] += f
    return a


def ages_at(positions, anchors) -> np.ndarray:
    """The age that ``anchors`` give each traversal position."""
    anchors = np.asarray(anchors, dtype=np.float64)
    return blend_matrix(positions, anchors.size) @ anchors


def fit_anchors(positions, estimated, count: int, min_gap: float = MIN_GAP) -> np.ndarray:
    """Increasing anchors [count] that make ``ages_at(positions)`` closest to ``estimated`` (least squares)."""
    from scipy.optimize import lsq_linear

    t = np.asarray(positions, dtype=np.float64).reshape(-1)
    e = np.asarray(estimated, dtype=np.float64).reshape(-1)
    if t.size != e.size or t.size == 0:
        raise ValueError("one estimated age per position, and at least one")
    missing = set(range(count)) - set(np.clip(np.floor(t), 0, count - 1).astype(int).tolist()) - {count - 1}
    if missing or not np.isfinite(e).all():
        raise ValueError("the positions must cover every anchor interval and the estimates be finite")
    cumulative = np.tril(np.ones((count, count)))  # anchors = cumulative @ (m_0, gap_1, ..., gap_(K-1))
    lower = np.full(count, min_gap)
    lower[0] = 0.0
    fit = lsq_linear(blend_matrix(t, count) @ cumulative, e, bounds=(lower, np.inf))
    return cumulative @ fit.x


def calibration(positions, estimated, labels: list[str], default_anchors: list[float]) -> dict:
    """The report's calibration section: fitted anchors by class label, and the mean absolute
    difference between estimated and requested age before (default anchors) and after."""
    anchors = np.round(fit_anchors(positions, estimated, len(labels)), 2)
    e = np.asarray(estimated, dtype=np.float64)
    return {
        "anchors": {label: float(a) for label, a in zip(labels, anchors)},
        "anchors_before": dict(zip(labels, map(float, default_anchors))),
        "error_before": float(np.abs(ages_at(positions, default_anchors) - e).mean()),
        "error_after": float(np.abs(ages_at(positions, anchors) - e).mean()),
        "frames": len(e),
    }
