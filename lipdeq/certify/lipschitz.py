r"""Input–output Lipschitz bounds of implicit networks and an empirical lower bound (docs/math.md §6).

ℓ∞ (input ‖·‖∞ → output ‖·‖∞, state ‖·‖∞,η), valid whenever μ = μ∞,η(A) < 1:

    Lip∞(u ↦ y) ≤ L_η = ‖C[η]‖∞ · ‖[η]⁻¹B‖∞ / (1 − μ∞,η(A)) + ‖D‖∞.

:func:`linf_bound` reports the smaller of η = 1 and η = the optimal weights of
``geometry.optimal_inf_weights`` (which attain α(M(A)) = inf_η μ∞,η(A)).
ℓ2 (comparison only): μ₂(A) < 1 ⇒ Lip₂ ≤ ‖C‖₂‖B‖₂/(1 − μ₂(A)) + ‖D‖₂ (monDEQ, docs/math.md §6.2).
"""
from __future__ import annotations

import torch

from .. import geometry


__all__ = ["linf_bound_tensors", "linf_bound", "l2_bound", "empirical_lipschitz"]


def linf_bound_tensors(A, B, C, D=None, eta=None) -> torch.Tensor:
    """L_η as a differentiable tensor (+inf when μ∞,η(A) ≥ 1)."""
    from ..solvers.projection import row_measure
    W = None if eta is None else eta.unsqueeze(-2) / eta.unsqueeze(-1)
    mu = row_measure(A, W, signed_diag=True).amax(-1)
    Ce = C if eta is None else C * eta
    Be = B if eta is None else B / eta.unsqueeze(-1)
    num = Ce.abs().sum(-1).amax(-1) * Be.abs().sum(-1).amax(-1)
    ok = mu < 1
    # Double where: the masked branch must stay finite, or its zero gradient times an infinite
    # local derivative makes every gradient NaN when μ ≥ 1 (e.g. an unconstrained model).
    denom = torch.where(ok, 1 - mu, torch.ones_like(mu))
    bound = torch.where(ok, num / denom, torch.full_like(num, float("inf")))
    if D is not None:
        bound = bound + D.abs().sum(-1).amax(-1)
    return bound


@torch.no_grad()
def linf_bound(model, *, details: bool = False):
    """The ℓ∞ Lipschitz bound L_η of a model with ``weights()``, at the best of three η: η = 1,
    the μ-optimal η of :func:`lipdeq.geometry.optimal_inf_weights`, and the model's own certified
    weights (``model.norm_weights()``, for ``nemon``/``mu_inf_weighted``/``pf``/fixed weights).
    Every L_η is a valid bound, so the minimum is one; the model's own η can be far tighter than
    the μ-optimal one (which minimises μ, not L).

    With ``details=True`` returns a dict with each value and the μ's.
    """
    w = _dense_weights(model, "linf_bound", "model.lipschitz_bound()")
    A, B, C, D = w["A"].double(), w["B"].double(), w["C"].double(), w.get("D")
    D = None if D is None else D.double()
    plain = float(linf_bound_tensors(A, B, C, D))
    eta = geometry.optimal_inf_weights(A)
    weighted = float(linf_bound_tensors(A, B, C, D, eta))
    own_eta = model.norm_weights() if hasattr(model, "norm_weights") else None
    own = (float(linf_bound_tensors(A, B, C, D, own_eta.detach().double().to(A.device)))
           if own_eta is not None else float("inf"))
    best = min(plain, weighted, own)
    if details:
        return {"bound": best, "unweighted": plain, "weighted": weighted,
                "model_weights": own if own_eta is not None else None,
                "mu_inf": float(geometry.mu_inf(A)), "mu_inf_optimal": float(geometry.mu_inf(A, eta))}
    return best


def _dense_weights(model, name: str, instead: str) -> dict:
    """``model.weights()`` when they are dense matrices; ``TypeError`` otherwise (a conv model
    stores its 4-D kernels there: the formulas would silently run over kernel slices)."""
    w = model.weights()
    if w["A"].ndim != 2 or w["B"].ndim != 2:
        raise TypeError(f"{name} needs a dense model (A of shape (n, n), B of shape (n, p)); "
                        f"{type(model).__name__} stores kernels of shapes {tuple(w['A'].shape)} "
                        f"and {tuple(w['B'].shape)} ({instead})")
    return w


@torch.no_grad()
def l2_bound(model) -> float:
    """‖C‖₂‖B‖₂/(1 − μ₂(A)) + ‖D‖₂ when μ₂(A) < 1 (a Euclidean condition holds), else +inf."""
    w = _dense_weights(model, "l2_bound", "no l2 bound for conv models")
    A, B, C = w["A"].double(), w["B"].double(), w["C"].double()
    mu2 = float(geometry.mu_2(A))
    if mu2 >= 1:
        return float("inf")
    bound = float(geometry.norm_2(C) * geometry.norm_2(B)) / (1 - mu2)
    if "D" in w:
        bound += float(geometry.norm_2(w["D"].double()))
    return bound


def empirical_lipschitz(model, inputs: torch.Tensor, norm: str = "inf", *, steps: int = 20,
                        radius: float = 0.05, step_size: float = 0.01, seed: int = 0) -> float:
    """A lower bound on Lip∞ by sign-gradient ascent on secant ratios of input pairs (docs/math.md §6.4c).

    For each input u, δ starts random in the ℓ∞ ball of ``radius`` and ascends
    ‖y(u+δ) − y(u)‖∞ / ‖δ‖∞; the best ratio seen over all steps and inputs is returned.
    """
    if norm != "inf":
        raise ValueError(f"norm must be 'inf', got {norm!r}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = inputs.detach()
    with torch.no_grad():
        y0 = model(u)
    delta = ((torch.rand(u.shape, generator=gen, dtype=u.dtype) * 2 - 1) * radius).to(u.device)
    best = 0.0
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        y = model(u + delta)
        ratio = ((y - y0).flatten(1).abs().amax(1)
                 / delta.flatten(1).abs().amax(1).clamp_min(1e-12))
        best = max(best, float(ratio.detach().max()))
        grad, = torch.autograd.grad(ratio.sum(), delta)
        with torch.no_grad():
            delta = (delta + step_size * grad.sign()).clamp(-radius, radius)
    return best
