"""Age classes, class codes, ages in years and latent schedules for continuous aging.

The generator knows six classes. An age in years is a blend of the latents of the two classes whose
anchor ages surround it (by default the middle of each class's range), the same blend the video
traversal uses between consecutive classes.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agetool.errors import UsageError, arg

if TYPE_CHECKING:  # torch is imported where tensors are made: checking ages needs no torch
    import torch

AGE_CLASSES: tuple[str, ...] = ("0-2", "3-6", "7-9", "15-19", "30-39", "50-69")
N_CLASSES = len(AGE_CLASSES)
CODE_PER_CLASS = 50
CODE_DIM = N_CLASSES * CODE_PER_CLASS


def class_codes(classes: torch.Tensor | list[int], noise: float,
                generator: torch.Generator | None = None, *, n_classes: int = N_CLASSES,
                code_per_class: int = CODE_PER_CLASS) -> torch.Tensor:
    """Class codes [N, n_classes * code_per_class] (released: [N, 300]): sigma * N(0, 1) everywhere,
    +1 on entries [50k, 50k + 50) of class k. Rows draw their noise in order, from ``generator``."""
    import torch

    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1).cpu()
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= n_classes):
        raise ValueError(f"class index out of range 0..{n_classes - 1}")
    n, dim = classes.numel(), n_classes * code_per_class
    codes = torch.zeros(n, dim)
    if noise > 0:
        codes = torch.randn(n, dim, generator=generator) * noise
    block = torch.arange(dim) // code_per_class  # the class of each entry
    return codes + (block[None, :] == classes[:, None]).float()


def all_class_codes(noise: float, seed: int) -> torch.Tensor:
    """The six anchor codes [6, 300], youngest first, with seeded noise."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return class_codes(list(range(N_CLASSES)), noise=noise, generator=g)


def reference_alphas(step: float) -> torch.Tensor:
    """[ceil(1/step)] float32 weights of the younger anchor, from 1 down (torch's arange kernel)."""
    import torch

    return torch.arange(1, 0, -step, dtype=torch.float32)


def transition_alphas(steps: int) -> torch.Tensor:
    """Frame j of a transition has alpha = 1 - j/steps (weight of the younger anchor). [steps]"""
    import torch

    if steps < 1:
        raise ValueError("steps must be >= 1")
    alphas = reference_alphas(1.0 / steps)
    if alphas.numel() != steps:  # step does not divide 1 exactly in double: use the formula
        alphas = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
        alphas = alphas.float()
    return alphas


def blend(w: torch.Tensor, lower: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Latents [K, D], anchor indices [N], weights of the lower anchor [N] -> [N, D].

    Row n is alpha_n * w_k + (1 - alpha_n) * w_(k+1) with k = lower_n, in the dtype of w: the one
    blend behind video frames and ages in years, so an age on a frame reproduces that frame.
    """
    import torch

    lower = torch.as_tensor(lower, dtype=torch.long, device=w.device).reshape(-1)
    a = torch.as_tensor(alpha).to(w.dtype).to(w.device).reshape(-1, 1)
    upper = torch.clamp(lower + 1, max=w.shape[0] - 1)
    return a * w[lower] + (1 - a) * w[upper]


def traversal_latents(w: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """Anchor latents [K, D] -> frames [len(alphas) * (K - 1) + 1, D], youngest to oldest.

    Frame (i, j) is alpha_j * w_i + (1 - alpha_j) * w_(i+1) in the dtype of w; the last is w_(K-1).
    """
    import torch

    alphas = alphas.to(w.dtype).to(w.device)
    frames = [blend(w, torch.full((alphas.numel(),), i), alphas) for i in range(w.shape[0] - 1)]
    frames.append(w[-1:])
    return torch.cat(frames)


# ---------------------------------------------------------------------------------- years
#: Anchor age (years) of each class: the middle of its range.
DEFAULT_ANCHORS: dict[str, float] = {"0-2": 1.0, "3-6": 4.5, "7-9": 8.0, "15-19": 17.0, "30-39": 34.5,
                                     "50-69": 59.5}
#: The oldest age the training data shows; older requests render the last class with a warning.
OLDEST_MODELLED = 69.0
MAX_AGE = 150.0
#: most ages one call renders (each is a decoded image)
MAX_AGES = 64


def check_anchors(anchors: Mapping[str, float], where: str = "age_anchors") -> tuple[float, ...]:
    """The six anchor ages, youngest class first; strictly increasing, finite and >= 0."""
    if not isinstance(anchors, Mapping):
        raise UsageError(f"{arg(where)}: expected a mapping of class label -> age in years")
    unknown = sorted(set(anchors) - set(AGE_CLASSES))
    missing = [c for c in AGE_CLASSES if c not in anchors]
    if unknown or missing:
        raise UsageError(f"{arg(where)}: needs exactly the classes {', '.join(AGE_CLASSES)}"
                         + (f"; unknown {', '.join(map(str, unknown))}" if unknown else "")
                         + (f"; missing {', '.join(missing)}" if missing else ""))
    values = []
    for c in AGE_CLASSES:
        v = anchors[c]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise UsageError(f"{arg(where)}: the age of class {c} must be a finite number >= 0, got {v!r}")
        values.append(float(v))
    if any(b <= a for a, b in zip(values, values[1:])):
        raise UsageError(f"{arg(where)}: anchor ages must increase from class to class, got {values}")
    return tuple(values)


def load_anchors(path: str | os.PathLike) -> dict[str, float]:
    """Anchor ages from a JSON file ``{"0-2": 1, ..., "50-69": 59.5}`` (as ``agetool eval --calibrate`` writes)."""
    from agetool.userfiles import read_json

    data = read_json(path, "age_anchors")  # a regular file, of a bounded size, with finite numbers
    check_anchors(data, "age_anchors")
    return {c: float(data[c]) for c in AGE_CLASSES}


@dataclass(frozen=True)
class AgeTarget:
    """One requested column: ``entry`` as given, and what it means.

    ``kind`` is ``"class"`` (``value`` = class index), ``"years"`` (``value`` = age) or
    ``"relative"`` (``value`` = years added to the face's estimated age).
    """

    entry: str
    kind: str
    value: float

    def years(self, anchors: Sequence[float], estimate: float | None = None) -> float:
        """This target in years (a class gives its anchor age)."""
        if self.kind == "class":
            return float(anchors[int(self.value)])
        if self.kind == "years":
            return self.value
        if estimate is None:
            from agetool.errors import EstimateError

            raise EstimateError(f"{arg('ages', self.entry)}: a relative age needs the face's estimated age, "
                                "and no age estimate is available",
                                hint="give ages in years or install the age classifier (genderage)")
        return max(0.0, estimate + self.value)


def _number(text: str, entry: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UsageError(f"{arg('ages', entry)}: not an age: expected years (20, 20.5), a class "
                         f"({', '.join(AGE_CLASSES)}) or a relative age (+20)") from None
    if not math.isfinite(v):
        raise UsageError(f"{arg('ages', entry)}: ages must be finite numbers")
    return v


def parse_ages(ages: str | float | Iterable[str | float] | None) -> list[AgeTarget] | None:
    """Years, class labels and relative ages -> targets, in the order given.

    Accepts ``"5,20.5,30-39,+20"``, ``[5, 20.5, "30-39", "+20"]`` or a single number; ``None`` or
    ``""`` means the six classes (returns None). Negative, non-finite or non-numeric ages, and ages
    over 150, are ``UsageError``.
    """
    if ages is None:
        return None
    if isinstance(ages, str):
        items: list = [a.strip() for a in ages.split(",")]
        if all(not a for a in items):
            return None
    elif _is_number(ages):
        items = [ages]
    elif isinstance(ages, (bytes, bytearray, memoryview, Mapping, set, frozenset)) or _is_bool(ages) \
            or not isinstance(ages, Iterable):
        raise UsageError(f"{arg('ages')}: expected a list or a comma-separated string of ages, "
                         f"got {type(ages).__name__}")
    else:
        items = []
        for item in ages:  # an endless iterator stops at the limit
            items.append(item)
            if len(items) > MAX_AGES:
                break
        if not items:
            return None
    if len(items) > MAX_AGES:
        raise UsageError(f"{arg('ages')}: more than {MAX_AGES} ages", hint="render them in several calls")
    targets = []
    for item in items:
        if isinstance(item, AgeTarget):
            targets.append(item)
            continue
        if not (isinstance(item, str) or _is_number(item)):
            raise UsageError(f"{arg('ages', item)}: expected years, class labels or relative ages, "
                             f"got {type(item).__name__}")
        entry = item.strip() if isinstance(item, str) else _plain(item)
        if not entry:
            raise UsageError(f"{arg('ages', ages)}: empty entry in the list")
        if entry in AGE_CLASSES:
            targets.append(AgeTarget(entry, "class", float(AGE_CLASSES.index(entry))))
            continue
        if entry.startswith("+"):
            v = _number(entry[1:], entry)
            if v < 0 or v > MAX_AGE:
                raise UsageError(f"{arg('ages', entry)}: a relative age adds 0 to {MAX_AGE:g} years")
            targets.append(AgeTarget(entry, "relative", v))
            continue
        if isinstance(item, str):
            v = _number(entry, entry)
        else:
            try:
                v = float(item)
            except OverflowError:  # an int too large for a float
                raise UsageError(f"{arg('ages', entry)}: over {MAX_AGE:g} years") from None
        if not math.isfinite(v):
            raise UsageError(f"{arg('ages', entry)}: ages must be finite numbers")
        if v < 0:
            raise UsageError(f"{arg('ages', entry)}: ages can't be negative")
        if v > MAX_AGE:
            raise UsageError(f"{arg('ages', entry)}: over {MAX_AGE:g} years")
        targets.append(AgeTarget(entry, "years", v))
    return targets


def _is_bool(value) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool", "bool_")  # numpy's too


def _is_number(value) -> bool:
    """A real number that is not a boolean (Python's or numpy's)."""
    return isinstance(value, numbers.Real) and not _is_bool(value)


def _plain(v) -> str:
    if isinstance(v, numbers.Integral):
        return str(int(v))
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def class_targets() -> list[AgeTarget]:
    """The six classes as targets, youngest first (what ``ages=None`` renders)."""
    return [AgeTarget(c, "class", float(k)) for k, c in enumerate(AGE_CLASSES)]


def year_weights(years: Sequence[float], anchors: Sequence[float] = tuple(DEFAULT_ANCHORS.values())
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ages in years -> (lower anchor index [N], weight of the lower anchor [N] float32).

    Between anchors m_k <= a <= m_(k+1): alpha = 1 - (a - m_k) / (m_(k+1) - m_k). Below the first
    anchor the first class; above the last, the last class.
    """
    import torch

    lower, alpha = [], []
    last = len(anchors) - 1
    for a in years:
        if a <= anchors[0]:
            lower.append(0)
            alpha.append(1.0)
        elif a >= anchors[last]:
            lower.append(last - 1)
            alpha.append(0.0)
        else:
            k = max(i for i in range(last) if anchors[i] <= a)
            alpha.append(1.0 - (a - anchors[k]) / (anchors[k + 1] - anchors[k]))
            lower.append(k)
    return torch.tensor(lower, dtype=torch.long), torch.tensor(alpha, dtype=torch.float64).float()


def target_latents(w: torch.Tensor, targets: Sequence[AgeTarget], anchors: Sequence[float],
                   estimate: float | None = None) -> torch.Tensor:
    """Class latents [6, D] and targets -> [N, D]: a class gives its latent exactly, years a blend."""
    import torch

    rows = []
    for t in targets:
        if t.kind == "class":
            rows.append(w[int(t.value)][None])
        else:
            lower, alpha = year_weights([t.years(anchors, estimate)], anchors)
            rows.append(blend(w, lower, alpha))
    return torch.cat(rows) if rows else w[:0]


def span_targets(start: float, stop: float, anchors: Sequence[float]) -> list[AgeTarget]:
    """The ages that stand for a continuous aging from ``start`` to ``stop`` (where its noise draws
    are scored): ``start``, the class anchors strictly between, and ``stop``, in years."""
    low, high = min(start, stop), max(start, stop)
    years = [start, *(a for a in anchors if low < a < high), stop]
    return [AgeTarget(f"{y:g}", "years", float(y)) for y in dict.fromkeys(years)]


def year_schedule(start: float, stop: float, frames: int) -> list[float]:
    """``frames`` ages from ``start`` to ``stop``, uniformly spaced in years."""
    if frames < 2:
        return [float(start)]
    step = (stop - start) / (frames - 1)
    return [start + i * step for i in range(frames - 1)] + [float(stop)]


def year_frame_count(start: float, stop: float, steps: int, anchors: Sequence[float]) -> int:
    """Frames for a video from ``start`` to ``stop`` years at the density of ``steps`` frames per
    class transition of the full traversal."""
    span = anchors[-1] - anchors[0]
    return max(2, round(abs(stop - start) / span * steps * (len(anchors) - 1)) + 1)


def traversal_ages(steps: int, anchors: Sequence[float]) -> list[float]:
    """The nominal age (years) of each frame of the class traversal: linear between anchors."""
    ages = []
    for i in range(len(anchors) - 1):
        ages += [anchors[i] + (anchors[i + 1] - anchors[i]) * j / steps for j in range(steps)]
    return ages + [float(anchors[-1])]


def age_caption(age: float) -> str:
    """A caption for a frame or tile: ``34 years`` (one decimal below 10), ``1 year``."""
    return years_text(age, 1 if age < 10 and not float(age).is_integer() else 0)


def years_text(age: float, digits: int = 0) -> str:
    """``age`` in words: ``1 year``, ``4.5 years``, ``34 years`` (``digits`` after the point)."""
    text = f"{age:.{digits}f}"
    return f"{text} year" if float(text) == 1 else f"{text} years"


def old_age_warning(targets) -> str | None:
    """What to say about targets in years past the oldest class (None when there are none)."""
    old = [t.entry for t in targets if t.kind == "years" and t.value > OLDEST_MODELLED]
    if not old:
        return None
    return (f"ages over {OLDEST_MODELLED:g} ({', '.join(old)}) render the oldest class ({AGE_CLASSES[-1]}): "
            "the model knows no older faces")
