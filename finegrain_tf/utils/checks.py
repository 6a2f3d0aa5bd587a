"""Argument validation shared by the whole package.

Each helper returns the value converted to its plain Python type, or raises ValueError whose message
names the argument and quotes the bad value (`repr`), e.g. "batch_size must be a positive int, got 0".
`bool` is never accepted as a number (True == 1 would otherwise pass silently). numpy scalars are
accepted. Use them in constructors and config validation:

    self.order = checks.positive_int(order, "order")
    self.gamma = checks.finite_float(gamma, "gamma")
    self.beta = checks.in_range(beta, "beta", 0.0, 1.0, high_inclusive=False)
    self.mode = checks.one_of(mode, "mode", ("sum", "mean"))
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(value: Any, name: str) -> int:
    """`value` as an int > 0."""
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def non_negative_int(value: Any, name: str) -> int:
    """`value` as an int >= 0."""
    if not _is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def finite_float(value: Any, name: str) -> float:
    """`value` (an int or float, not bool) as a finite float."""
    if not _is_real(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def in_range(value: Any, name: str, low: Optional[float] = None, high: Optional[float] = None, *,
             low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """`value` as a finite float within [low, high] (bounds optional; `*_inclusive=False` opens them)."""
    number = finite_float(value, name)
    too_low = low is not None and (number < low if low_inclusive else number <= low)
    too_high = high is not None and (number > high if high_inclusive else number >= high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low!r}"
        right = "inf" if high is None else f"{high!r}"
        interval = (("[" if low_inclusive and low is not None else "(") + f"{left}, {right}"
                    + ("]" if high_inclusive and high is not None else ")"))
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return number


def one_of(value: Any, name: str, choices: Iterable[Any]) -> Any:
    """`value` unchanged if it is one of `choices` (the message lists them)."""
    choices = list(choices)
    try:
        ok = value in choices
    except (TypeError, ValueError):  # arrays and other / incomparable values are simply not a choice
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value
