r"""Sound floating-point arithmetic for the certificates of :mod:`lipdeq.robustness`.

The certificates are claims about the *exact* fixed point x* of the *stored* weights, while the
forward pass computes an approximation x̂ (solver tolerance, float32 arithmetic). The gap is
closed in float64 (docs/math.md §4.5, §11: "feasible when evaluated in float64 on the stored tensor"):

1. :func:`float64_model`: a float64 copy of the model. Stored float32 weights convert exactly, so
   the copy *is* the stored network; only its arithmetic is finer.
2. :func:`residual_bound`: |r̂ᵢ| + δᵢ ≥ |rᵢ| for the exact residual r = Φ(Ax̂ + w) − x̂ at the
   computed state, evaluated in float64 with the rounding margin

       δᵢ = κ_k · (Sᵢ + |x̂ᵢ|) + τ,   Sᵢ ≥ (|A||x̂|)ᵢ + (|B||u|)ᵢ + |bᵢ|,   κ_k = 4(k + 10)·u,

   k the length of the longest dot product (n + p), u the unit roundoff of the working dtype and
   τ = 1e-300 an absolute floor (underflow). δ does not depend on r̂: a row whose residual rounds
   to exactly 0 keeps its margin. (Each rounded dot product of length k is off by at most
   γ_k = ku/(1 − ku) times the sum of the absolute terms; Φ is 1-Lipschitz; κ_k ≥ 2γ_{k+8}
   also covers the rounding of S itself.)
3. :func:`mu_upper`: μ̄ = μ̂ + κ_n·(3|μ̂| + 3·max(−min aᵢᵢ, 0) + τ) ≥ μ∞,η(A) (every aᵢᵢ lies in
   [min aᵢᵢ, μ], so the absolute row sums are at most 3(|μ| + max(−min aᵢᵢ, 0))).
4. :func:`error_bound`: e_η = ‖|r̂| + δ‖∞,η / (1 − μ̄⁺), rounded up, ≥ ‖x̂ − x*‖∞,η; +inf when
   μ̄ ≥ 1.
5. :func:`down` / :func:`up` round a float64 result one ulp outward; :func:`narrow_down` /
   :func:`narrow_up` convert to the model's dtype without rounding inward.

The γ_k bound of item 2 holds for every order of summation, but not for convolutions computed by
transforms (FFT, Winograd), which cuDNN may pick on CUDA even in float64: the sound computations
run under :func:`ordinary_sums` (cuDNN off; on the CPU it changes nothing).
"""
from __future__ import annotations

import copy
import functools
import math

import torch
from torch import nn

__all__ = ["float64_model", "unit_roundoff", "slack", "abs_product_bound", "input_scale",
           "residual_bound", "mu_upper", "error_bound", "down", "up", "narrow_down", "narrow_up",
           "attach", "ordinary_sums", "TINY"]

#: Absolute floor τ of every rounding margin (covers underflow to subnormals).
TINY = 1e-300


def ordinary_sums(fn):
    """Decorator: run ``fn`` with cuDNN disabled, so that every convolution is a sum of products
    (the rounding model of item 2), never an FFT or Winograd transform; restored afterwards."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        enabled = torch.backends.cudnn.enabled  # only this flag: the others stay as they are
        torch.backends.cudnn.enabled = False
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.enabled = enabled
    return wrapper


def unit_roundoff(dtype: torch.dtype) -> float:
    """u = 2^-53 for float64, 2^-24 for float32."""
    return torch.finfo(dtype).eps / 2


def slack(k: int, dtype: torch.dtype = torch.float64) -> float:
    """κ_k = 4(k + 10)·u: relative rounding margin of a dot product of length ≤ k (module doc)."""
    return 4.0 * (int(k) + 10) * unit_roundoff(dtype)


def float64_model(model):
    """The model with float64 parameters and buffers (the model itself when already float64).

    A deep copy of an ``nn.Module`` (its last-solve statistics are not copied); another object
    is returned unchanged and the margins then use its own dtype's unit roundoff.
    """
    if not isinstance(model, nn.Module):
        return model
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    if all(t.dtype == torch.float64 for t in tensors):
        return model
    stats = model.__dict__.get("_stats")
    if stats is not None:
        model.__dict__["_stats"] = {}
    try:
        m64 = copy.deepcopy(model)
    finally:
        if stats is not None:
            model.__dict__["_stats"] = stats
    return m64.double()


def abs_product_bound(op, y: torch.Tensor) -> torch.Tensor:
    """An upper bound of |A|y for y ≥ 0 through the protocol: ⌈A⌉y − ⌊A⌋y + 2·max(−min aᵢᵢ, 0)·y.

    (⌈A⌉ − ⌊A⌋ is |A| except on the diagonal, where it keeps aᵢᵢ; |aᵢᵢ| − aᵢᵢ ≤ 2 max(−min aᵢᵢ, 0).)
    """
    upper, lower = op.metzler_split()
    dneg = op.min_diagonal().detach().to(y.dtype).neg().clamp_min(0.0)
    return upper.multiply(y) - lower.multiply(y) + 2.0 * dneg * y


def input_scale(model, m: torch.Tensor) -> torch.Tensor:
    """|B|m + |b| for m ≥ 0 (shape of the state), from ``model.input_bounds(−m, m)``.

    The bounds are (b − |B|m, b + |B|m), and max(|b − |B|m|, |b + |B|m|) = |B|m + |b|.
    """
    lo, hi = model.input_bounds(-m, m)
    return torch.maximum(lo.abs(), hi.abs())


def residual_bound(model, op, x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor,
                   k: int) -> torch.Tensor:
    """|r̂| + δ ≥ |Φ(Ax + w) − x| entrywise (module doc, item 2), x and w in the working dtype.

    ``op``: the operator in the working dtype (an embedded one included); ``scale`` ≥ the
    entrywise |A||x| + |B||u| + |b| (the caller builds it with :func:`abs_product_bound` and
    :func:`input_scale`); ``k`` ≥ the length of every dot product behind x, w and scale.
    """
    r = model.activation.fn(op.multiply(x) + w) - x
    return r.abs() + slack(k, x.dtype) * (scale + x.abs()) + TINY


def mu_upper(op, eta, n: int, dtype: torch.dtype) -> torch.Tensor:
    """μ̄ ≥ μ∞,η(A) (module doc, item 3), a 0-d tensor of ``dtype``."""
    mu = op.mu_inf(eta).detach().to(dtype)
    dneg = op.min_diagonal().detach().to(dtype).neg().clamp_min(0.0)
    return mu + slack(n, dtype) * (3.0 * mu.abs() + 3.0 * dneg + TINY)


def error_bound(op, rbound: torch.Tensor, eta, n: int) -> torch.Tensor:
    """Per-sample e_η ≥ ‖x̂ − x*‖∞,η (docs/math.md §4.5 with the rounding of the module doc), shape (N,).

    ``rbound`` from :func:`residual_bound`; ``eta`` shaped like one state (None: η = 1); ``n``
    the number of state entries summed per row of A. +inf where μ̄⁺ ≥ 1.
    """
    dtype = rbound.dtype
    u = unit_roundoff(dtype)
    mu_plus = mu_upper(op, eta, n, dtype).clamp_min(0.0)
    norm = (rbound if eta is None else rbound / eta).flatten(1).amax(1)
    out = norm * (1 + 8 * u) / (1.0 - mu_plus).clamp_min(TINY) * (1 + 4 * u)
    return torch.where(mu_plus < 1, out, torch.full_like(out, math.inf))


def down(t: torch.Tensor) -> torch.Tensor:
    """One ulp toward −inf (covers the ≤ ½ ulp rounding of the last operation)."""
    return torch.nextafter(t, torch.full_like(t, -math.inf))


def up(t: torch.Tensor) -> torch.Tensor:
    """One ulp toward +inf."""
    return torch.nextafter(t, torch.full_like(t, math.inf))


def narrow_down(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype``, rounded toward −inf (never above t)."""
    s = t.to(dtype)
    if s.dtype == t.dtype:
        return s
    return torch.where(s.to(t.dtype) > t, down(s), s)


def narrow_up(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype``, rounded toward +inf (never below t)."""
    s = t.to(dtype)
    if s.dtype == t.dtype:
        return s
    return torch.where(s.to(t.dtype) < t, up(s), s)


def attach(value: torch.Tensor, graph: torch.Tensor) -> torch.Tensor:
    """``value`` (same dtype and shape as ``graph``) carrying ``graph``'s gradient.

    value + (graph − graph.detach()): the added term is exactly 0 (where graph is finite), so the
    sound value is returned bit for bit while gradients flow as through ``graph``.
    """
    if not graph.requires_grad:
        return value
    zero = graph - graph.detach()
    return value + torch.where(torch.isfinite(graph), zero, torch.zeros_like(zero))
