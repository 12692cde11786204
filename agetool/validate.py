"""Checks of numbers given by users: finite, in range, and of sizes a machine can hold.

Each check returns the value in its canonical form (``-0.0`` becomes ``0.0``) or raises
``UsageError`` naming the argument (``agetool.errors.arg``), so the command line shows the flag.
"""

from __future__ import annotations

import math
import operator

from agetool.errors import UsageError, arg

#: the seeds a torch.Generator accepts
SEED_MIN, SEED_MAX = -(2 ** 63), 2 ** 64 - 1


def _range_text(low, high, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None and not low_open and not high_open:
        return f"must be between {low:g} and {high:g}"
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return "must be " + " and ".join(parts)


def finite(name: str, value, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within [low, high] (bounds excluded with ``low_open`` /
    ``high_open``); ``-0.0`` is returned as ``0.0``."""
    if isinstance(value, (bool, bytes, bytearray)) or type(value).__name__ in ("bool", "bool_"):
        raise UsageError(f"{arg(name, value)}: not a number")
    try:
        x = float(value)
    except OverflowError:
        raise UsageError(f"{arg(name, value)}: {_range_text(low, high, low_open, high_open)}") from None
    except (TypeError, ValueError):
        raise UsageError(f"{arg(name, value)}: not a number") from None
    if not math.isfinite(x):
        raise UsageError(f"{arg(name, value)}: must be a finite number")
    x += 0.0  # -0.0 -> 0.0
    if ((low is not None and (x < low or (low_open and x == low)))
            or (high is not None and (x > high or (high_open and x == high)))):
        raise UsageError(f"{arg(name, value)}: {_range_text(low, high, low_open, high_open)}")
    return x


def integer(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int within [low, high] (a float only when it is a whole number)."""
    bad = UsageError(f"{arg(name, value)}: not a whole number")
    if isinstance(value, bool):
        raise bad
    if isinstance(value, float):
        if not value.is_integer():  # also nan and inf
            raise bad
        n = int(value)
    else:
        try:
            n = operator.index(value)
        except TypeError:
            try:
                n = int(str(value).strip())
            except ValueError:
                raise bad from None
    if (low is not None and n < low) or (high is not None and n > high):
        raise UsageError(f"{arg(name, value)}: {_range_text(low, high, False, False)}")
    return n


def seed(value, name: str = "seed") -> int:
    """A random seed: a whole number that fits 64 bits (what ``torch.Generator.manual_seed`` takes)."""
    n = integer(name, value)
    if not SEED_MIN <= n <= SEED_MAX:
        raise UsageError(f"{arg(name, value)}: a seed must fit in 64 bits ({SEED_MIN} to {SEED_MAX})")
    return n


def flag(name: str, value) -> bool:
    """``value`` if it is a boolean (Python's or numpy's), else a ``UsageError`` naming the argument:
    a string such as ``"no"`` is true to Python, so it is never read as one."""
    if isinstance(value, bool):
        return value
    if type(value).__name__ in ("bool", "bool_"):  # numpy.bool_, without importing numpy
        return bool(value)
    raise UsageError(f"{arg(name, value)}: expected True or False, got {type(value).__name__}")


def choice(name: str, value, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``, else a ``UsageError`` naming the argument."""
    if value not in allowed:
        raise UsageError(f"{arg(name, value)}: expected {', '.join(allowed)}")
    return value
