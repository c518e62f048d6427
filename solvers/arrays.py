"""Input checking and the numpy <-> torch bridge shared by every public function.

Every numeric routine in ``solvers`` and ``lipdeq.geometry`` is written once, in torch, and
accepts numpy arrays (and nested lists) through :func:`to_tensor`, which is zero-copy for
numpy arrays; :func:`from_tensor` hands the result back in the caller's type.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch


def to_tensor(A: Any, name: str = "A", *, square: bool = True, allow_batch: bool = True,
              min_ndim: int = 0) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """Return ``(tensor, back)`` where ``back(t)`` converts a result to A's original type.

    Raises ``TypeError`` for non-numeric input and ``ValueError`` (naming ``name``) for ragged,
    non-square (when ``square``), too few dimensions (fewer than ``min_ndim``; a square matrix
    always needs 2), empty (0 rows or columns) matrices, or non-finite input. Empty batches are
    fine. Nothing is modified.
    """
    if isinstance(A, torch.Tensor):
        t = A
        back = _identity
    else:
        try:
            arr = np.asarray(A)
        except ValueError as exc:  # ragged nested sequences
            raise ValueError(f"{name} is ragged or not a rectangular array: {exc}") from None
        if arr.dtype == object:
            raise ValueError(f"{name} is ragged or not a rectangular numeric array")
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
        if arr.dtype.kind != "f":
            arr = arr.astype(np.float64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        back = _to_numpy
    if not (t.is_floating_point()):
        if t.dtype in (torch.complex64, torch.complex128):
            raise TypeError(f"{name} must be real, got {t.dtype}")
        t = t.to(torch.get_default_dtype())
    if t.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions, got shape {tuple(t.shape)}")
    if (square or min_ndim >= 2) and t.ndim >= 2 and 0 in t.shape[-2:]:
        raise ValueError(f"{name} must have at least one row and one column, got shape {tuple(t.shape)}")
    if square:
        if t.ndim < 2 or t.shape[-1] != t.shape[-2]:
            raise ValueError(f"{name} must be a square matrix (or a batch of them), got shape {tuple(t.shape)}")
        if not allow_batch and t.ndim != 2:
            raise ValueError(f"{name} must be a single (n, n) matrix, got shape {tuple(t.shape)}")
    check_finite(t, name)
    return t, back


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` if ``t`` holds NaN or Inf (one reduction, one host sync)."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_scalar(value: Any, name: str) -> float:
    """A finite real number, or ``ValueError`` naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def weight_vector(weights: Any, n: int, like: torch.Tensor, dtype: torch.dtype | None = None
                  ) -> torch.Tensor | None:
    """Validate a positive weight vector η of length n.

    Returns it on ``like``'s device, in ``dtype`` (default ``like``'s dtype). ``ValueError``
    naming ``weights`` if it has the wrong shape, is not finite, or is not strictly positive
    (also after the conversion to ``dtype``, so float32 underflow is caught).
    """
    if weights is None:
        return None
    w, _ = to_tensor(weights, "weights", square=False)
    if w.ndim != 1 or w.shape[0] != n:
        raise ValueError(f"weights must be a vector of length {n}, got shape {tuple(w.shape)}")
    if not bool((w > 0).all()):
        raise ValueError("weights must be strictly positive")
    w = w.to(device=like.device, dtype=like.dtype if dtype is None else dtype)
    if not bool((w > 0).all()) or not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be positive and finite in {w.dtype}")
    return w


def ratio_matrix(eta: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor | None:
    """W with W[i, j] = η_j / η_i (the weights of row i's off-diagonal entries), or None."""
    if eta is None:
        return None
    return eta.unsqueeze(-2) / eta.unsqueeze(-1)


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
