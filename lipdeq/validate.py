"""Argument validators, one per kind, all ``check_<kind>(name, value)`` → the value, converted.

Each raises ``ValueError`` (or ``TypeError`` for a wrong type) with a message that names the
argument and repeats the bad value, so the CLI can print it as its one-line error.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_positive_int", "check_nonnegative_int", "check_positive", "check_nonnegative",
           "check_finite", "check_probability", "check_choice"]


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _integer(name: str, value: Any, what: str) -> int:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real)
    v = float(value) if ok else None
    if v is None or not math.isfinite(v) or int(v) != v:
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(v)


def check_positive_int(name: str, value: Any) -> int:
    """An integer ≥ 1 (3 or 3.0)."""
    v = _integer(name, value, "a positive integer")
    if v < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return v


def check_nonnegative_int(name: str, value: Any) -> int:
    """An integer ≥ 0."""
    v = _integer(name, value, "a non-negative integer")
    if v < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return v


def check_finite(name: str, value: Any) -> float:
    """A finite real number."""
    v = _real(name, value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def check_positive(name: str, value: Any) -> float:
    """A finite real number > 0."""
    v = _real(name, value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


def check_nonnegative(name: str, value: Any) -> float:
    """A finite real number ≥ 0."""
    v = _real(name, value)
    if not (math.isfinite(v) and v >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def check_probability(name: str, value: Any) -> float:
    """A real number in [0, 1]."""
    v = _real(name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_choice(name: str, value: Any, choices) -> Any:
    """One of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value
