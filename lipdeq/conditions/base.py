"""The interface every well-posedness condition implements (base class and error).

The conditions themselves and their registry are in :mod:`lipdeq.conditions`. :class:`Condition`
holds γ and the shared behaviour (``margin``, ``contains``, the "no projection" and "no
parameterization" defaults); :class:`NotConvexError` is what ``project`` raises on a set that is
not convex. ``_emit`` and ``_eye_like`` are small helpers of the subclasses.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..solvers.arrays import check_scalar


class NotConvexError(ValueError):
    """The condition's set is not convex: there is no (unique) projection onto it."""


class Condition:
    """Base class: subclasses set ``name``, ``training``, ``convex`` and implement ``measure``."""
    name = "condition"
    training = "none"
    #: fixed-point solver used when a model does not name one: the average iteration has its
    #: guarantee under μ∞,η < 1; the Euclidean sets use monDEQ's Peaceman–Rachford splitting.
    default_solver = "average"
    convex = False
    tol = 1e-9

    def __init__(self, gamma: float = 0.95, **options: Any):
        self.gamma = check_scalar(gamma, "gamma")
        if options:
            raise TypeError(f"{self.name} got unexpected options {sorted(options)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(gamma={self.gamma})"

    def measure(self, A: Any) -> Any:
        raise NotImplementedError

    def margin(self, A: Any) -> Any:
        """γ − measure(A), the measure evaluated in float64 on the values as stored (CONVENTIONS
        §1: a float32 A is judged by its exact values, not by float32 arithmetic on them)."""
        return self.gamma - self.measure(_float64(A))

    def contains(self, A: Any) -> Any:
        return self.margin(A) >= -self.tol * (1 + abs(self.gamma))

    def project(self, A: Any, *, out: Any = None) -> Any:
        raise NotConvexError(f"condition {self.name!r} has no projection: its set is not convex "
                             f"(train it through its parameterization instead)")

    def parameterize(self, raw: dict) -> torch.Tensor:
        raise NotImplementedError(f"condition {self.name!r} has no parameterization")

    def init_raw(self, A: torch.Tensor) -> dict:
        raise NotImplementedError(f"condition {self.name!r} has no parameterization")

    def norm_weights(self, raw: dict | None) -> torch.Tensor | None:
        return None

    @property
    def has_projection(self) -> bool:
        return type(self).project is not Condition.project


def _emit(X: torch.Tensor, back, out: Any) -> Any:
    """Return X in the caller's type, or write it into ``out`` (tensor or numpy array)."""
    if out is None:
        return back(X)
    result = back(X)
    if tuple(out.shape) != tuple(result.shape) or out.dtype != result.dtype:
        # a cast (float32, bfloat16, int) could put the stored matrix outside the set
        raise ValueError(f"out must have shape {tuple(result.shape)} and dtype {result.dtype} "
                         f"(a cast could break feasibility), got {tuple(out.shape)} {out.dtype}")
    if isinstance(out, torch.Tensor):
        with torch.no_grad():
            return out.copy_(X)
    out[...] = result
    return out


def _eye_like(T: torch.Tensor) -> torch.Tensor:
    return torch.eye(T.shape[-1], dtype=T.dtype, device=T.device)


def _float64(A: Any) -> Any:
    """A as float64 (torch or numpy; exact for float16/32 values); other inputs unchanged."""
    if isinstance(A, torch.Tensor) and A.is_floating_point():
        return A.double()
    if isinstance(A, np.ndarray) and A.dtype.kind == "f":
        return A.astype(np.float64)
    return A
