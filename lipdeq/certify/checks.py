r"""Input checks and the ℓ∞ threat model shared by the attacks and the certificates.

Used by :mod:`lipdeq.attacks` and :mod:`lipdeq.robustness` (one copy of every check).
Inputs ``u`` are pixel values in [0, 1] (docs/design.md §8) and the threat model at radius ε is the
box {u' : ‖u' − u‖∞ ≤ ε, 0 ≤ u' ≤ 1}. ``eps`` is a number or a tensor of shape (N,) (one radius
per sample); it must be finite and ≥ 0. Every check raises ``ValueError`` with one line.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def _check_inputs(u: Any, name: str = "u", *, unit_box: bool = True) -> torch.Tensor:
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(u).__name__}")
    if u.ndim < 2 or u.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, ...), got shape {tuple(u.shape)}")
    if not u.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {u.dtype}")
    if not bool(torch.isfinite(u).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    if unit_box and bool(((u < 0) | (u > 1)).any()):
        raise ValueError(f"{name} must lie in [0, 1] (pixels / 255, docs/design.md §8)")
    return u


def _check_labels(labels: Any, n: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    return labels.long()


def _check_label_range(labels: torch.Tensor, q: int) -> None:
    if q < 2:
        raise ValueError(f"a classifier needs at least 2 outputs, got {q}")
    if bool(((labels < 0) | (labels >= q)).any()):
        raise ValueError(f"labels must lie in [0, {q})")


def _check_eps(eps: Any, u: torch.Tensor) -> torch.Tensor:
    """ε as a tensor of shape (N,) in u's dtype/device (a number or an (N,)/0-d tensor)."""
    N = u.shape[0]
    if isinstance(eps, bool):
        raise ValueError(f"eps must be a number or a tensor, got {eps!r}")
    if isinstance(eps, torch.Tensor):
        if eps.is_complex() or eps.dtype == torch.bool or not (eps.ndim == 0 or eps.shape == (N,)):
            raise ValueError(f"eps must be a number or a real tensor of shape ({N},), "
                             f"got {eps.dtype} {tuple(eps.shape)}")
        e = eps.detach().to(device=u.device, dtype=u.dtype).expand(N)
    else:
        try:
            value = float(eps)
        except (TypeError, ValueError):
            raise ValueError(f"eps must be a number, got {eps!r}") from None
        e = torch.full((N,), value, dtype=u.dtype, device=u.device)
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return e


def _per_sample(e: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) → (N, 1, …, 1) to broadcast against ``like``."""
    return e.view(-1, *([1] * (like.ndim - 1)))


def _box(u: torch.Tensor, eps: torch.Tensor):
    """The threat-model box [max(u − ε, 0), min(u + ε, 1)] (ε per sample, shape (N,))."""
    e = _per_sample(eps, u)
    return (u - e).clamp_min(0.0), (u + e).clamp_max(1.0)


def _attack_box(u: torch.Tensor, eps: Any):
    """(lo, hi) in u's dtype such that every point of [lo, hi] is in the exact threat box of the
    given ε: ‖u' − u‖∞ ≤ ε and 0 ≤ u' ≤ 1 hold in float64 (the box is computed in float64 and
    each end rounded inward). The attacks clamp into it: ε rounded to float32 (0.1 → 0.10000000149)
    or u ± ε rounded in float32 would let an adversarial point sit a rounding outside the box."""
    u64 = u.detach().double()
    e64 = _per_sample(_check_eps(eps, u64), u64)
    lo64, hi64 = (u64 - e64).clamp_min(0.0), (u64 + e64).clamp_max(1.0)
    lo, hi = lo64.to(u.dtype), hi64.to(u.dtype)
    lo = torch.where(lo.double() < lo64, torch.nextafter(lo, torch.full_like(lo, math.inf)), lo)
    hi = torch.where(hi.double() > hi64, torch.nextafter(hi, torch.full_like(hi, -math.inf)), hi)
    return lo, hi
