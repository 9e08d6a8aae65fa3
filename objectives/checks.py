"""Argument checks shared by the objectives (and the study's own classes): one wording each.

Each raises ``ValueError("NAME must be …, but got NAME=VALUE")``, the form Optuna uses, and
takes its values as keywords so that the message names them.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["SEED_MAX", "check_int", "check_pair", "check_positive", "check_real", "check_seed", "is_real"]

#: The largest seed: torch's generators take an unsigned 64-bit one (NumPy's SeedSequence, which
#: draws the minibatch orders, takes any int >= 0).
SEED_MAX = 2**64 - 1


def is_real(value: object) -> bool:
    """A real number (an int, a float, a NumPy scalar: not a bool) that is not NaN."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


def check_int(*, low: int = 1, high: int | None = None, **values: object) -> None:
    """Each value is an int (not a bool) in ``[low, high]`` (``high`` None: no upper end)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{name} must be an int {bounds}, but got {name}={value!r}")


def check_seed(**values: object) -> None:
    """Each value is a seed: an int (not a bool) in ``[0, SEED_MAX]``. Checked where a function
    takes it, so that ``-1`` or ``1.5`` names the argument, not an error deep in torch or NumPy."""
    check_int(low=0, high=SEED_MAX, **values)


def check_positive(**values: object) -> None:
    """Each value is a finite real number above 0."""
    for name, value in values.items():
        if not is_real(value) or not value > 0 or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number > 0, but got {name}={value!r}")


def _within(value: float, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    return (low < value if low_open else low <= value) and (value < high if high_open else value <= high)


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_real(*, low: float, high: float, low_open: bool = False, high_open: bool = False, **values: object) -> None:
    """Each value is a real number in the interval from ``low`` to ``high`` (open at an end where said)."""
    for name, value in values.items():
        if not (is_real(value) and _within(value, low, high, low_open, high_open)):
            raise ValueError(f"{name} must be in {_interval(low, high, low_open, high_open)}, but got {name}={value!r}")


def check_pair(name: str, value: object, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
               high_open: bool = False, integer: bool = False) -> None:
    """``value`` is a ``(low, high)`` tuple of finite numbers (ints if ``integer``), in order, in the interval."""
    kind = int if integer else (int, float)
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(isinstance(v, kind) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        and value[0] <= value[1]
        and all(_within(v, low, high, low_open, high_open) for v in value)
    )
    if not ok:
        what = "ints" if integer else "numbers"
        raise ValueError(f"{name} must be a (low, high) pair of {what} in {_interval(low, high, low_open, high_open)} "
                         f"with low <= high, but got {name}={value!r}")
