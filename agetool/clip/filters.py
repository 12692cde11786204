"""Temporal filters for per-frame measurements of a tracked face.

``OneEuro`` (Casiez, Roussel and Vogel, CHI 2012) smooths landmarks: a low-pass filter whose cutoff
rises with the signal's speed, so a still face holds still (no jitter) and a moving one lags little.
Updates are written ``prev + a * (x - prev)``: a constant input gives exactly that constant back,
so a still clip gives identical crops in every frame.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: float, dt: float) -> float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuro:
    """One-Euro filter over an array signal sampled at irregular times (seconds).

    ``min_cutoff`` (Hz) sets the smoothing of a still signal, ``beta`` how fast the cutoff rises
    with speed (in the signal's units per second, here relative to ``scale``), ``d_cutoff`` the
    smoothing of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.5, beta: float = 0.5, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or self.t is None or t <= self.t:  # the first sample (or time went back)
            return self._reset(x, t)
        dt = t - self.t
        dx = (x - self.x) / dt
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * (dx - self.dx)
        speed = float(np.sqrt(np.mean(self.dx ** 2))) / max(scale, 1e-9)
        cutoff = self.min_cutoff + self.beta * speed
        self.x = self.x + _alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x.copy()

    def _reset(self, x: np.ndarray, t: float) -> np.ndarray:
        self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
        return self.x.copy()


class Ema:
    """Exponential moving average of an array: ``prev + rate * (x - prev)`` (exact for a constant)."""

    def __init__(self, rate: float):
        self.rate = rate
        self.value: np.ndarray | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.value is None or self.value.shape != x.shape:
            self.value = np.array(x, dtype=np.float32, copy=True)
        else:
            self.value += np.float32(self.rate) * (x - self.value)
        return self.value
