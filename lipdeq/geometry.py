r"""Matrix measures (log-norms), induced norms and the Metzler/Perron quantities of docs/math.md §2.

Every function takes a numpy array or a torch tensor of shape (..., n, n) (batched over the
leading dims, any device and dtype) and returns the caller's type: a scalar per matrix for the
measures and norms, a vector per matrix for :func:`optimal_inf_weights`.

    μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i} |aᵢⱼ| ηⱼ/ηᵢ)     (rows, diagonal signed)
    μ₁(A)   = maxⱼ (aⱼⱼ + Σ_{i≠j} |aᵢⱼ|)           (columns)
    μ₂(A)   = λ_max((A + Aᵀ)/2)
    ‖A‖∞ = max row abs-sum, ‖A‖₁ = max column abs-sum, ‖A‖₂ = σ_max(A)
    M(A)  = diag(aᵢᵢ) + |offdiag(A)|  (Metzler majorant),   α(M) = max Re λ(M)
    inf_{η>0} μ∞,η(A) = α(M(A)), attained at the right Perron vector of M(A) when irreducible.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .solvers.arrays import ratio_matrix, to_tensor, weight_vector
from .solvers.projection import row_measure

__all__ = ["mu_inf", "mu_1", "mu_2", "norm_inf", "norm_1", "norm_2", "metzler_majorant",
           "spectral_abscissa", "pf_radius", "optimal_inf_weights"]


def mu_inf(A: Any, weights: Any = None) -> Any:
    """One-sided Lipschitz constant μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i} |aᵢⱼ| ηⱼ/ηᵢ); η = 1 by default."""
    T, back = to_tensor(A)
    W = ratio_matrix(weight_vector(weights, T.shape[-1], T), T.shape[-1], T)
    return back(row_measure(T, W, signed_diag=True).amax(-1))


def mu_1(A: Any) -> Any:
    """μ₁(A) = maxⱼ (aⱼⱼ + Σ_{i≠j} |aᵢⱼ|) = μ∞(Aᵀ)."""
    T, back = to_tensor(A)
    return back(row_measure(T.transpose(-1, -2), signed_diag=True).amax(-1))


def mu_2(A: Any) -> Any:
    """μ₂(A) = λ_max((A + Aᵀ)/2)."""
    T, back = to_tensor(A)
    return back(torch.linalg.eigvalsh((T + T.transpose(-1, -2)) / 2)[..., -1])


def norm_inf(A: Any, weights: Any = None) -> Any:
    """Induced ‖A‖∞,η = maxᵢ Σⱼ |aᵢⱼ| ηⱼ/ηᵢ (max row abs-sum for η = 1; A may be (..., m, n)
    then, but weights need a square A)."""
    T, back = to_tensor(A, square=weights is not None, min_ndim=2)
    if weights is None:
        return back(T.abs().sum(-1).amax(-1))
    W = ratio_matrix(weight_vector(weights, T.shape[-1], T), T.shape[-1], T)
    return back(row_measure(T, W, signed_diag=False).amax(-1))


def norm_1(A: Any) -> Any:
    """Induced ‖A‖₁ = max column abs-sum (A may be (..., m, n))."""
    T, back = to_tensor(A, square=False, min_ndim=2)
    return back(T.abs().sum(-2).amax(-1))


def norm_2(A: Any) -> Any:
    """Induced ‖A‖₂ = σ_max(A) (A may be (..., m, n))."""
    T, back = to_tensor(A, square=False, min_ndim=2)
    return back(torch.linalg.matrix_norm(T, ord=2))


def sign_split(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M⁺, M⁻) = (max(M, 0), min(M, 0)) entrywise, so M = M⁺ + M⁻, with a one-sided gradient.

    Each entry's gradient goes to exactly one part: to M⁺ where M ≥ 0, to M⁻ where M < 0.
    (``clamp_min(0)``/``clamp_max(0)`` both pass the gradient at an entry that is exactly 0, so a
    loss through both parts would count it twice: a vector outside the subdifferential. Exact
    zeros are common here: the μ∞ projection soft-thresholds rows.)
    """
    pos = M >= 0
    zero = torch.zeros_like(M)
    return torch.where(pos, M, zero), torch.where(pos, zero, M)


def metzler_majorant(A: Any) -> Any:
    """M(A) = diag(aᵢᵢ) + |offdiag(A)|: the diagonal signed, the rest in absolute value."""
    T, back = to_tensor(A)
    M = T.abs()
    M.diagonal(dim1=-2, dim2=-1).copy_(T.diagonal(dim1=-2, dim2=-1))
    return back(M)


def spectral_abscissa(M: Any) -> Any:
    """α(M) = max Re λ over the eigenvalues of M (the Perron eigenvalue when M is Metzler)."""
    T, back = to_tensor(M, "M")
    return back(_eig(T, vectors=False).real.amax(-1).to(T.dtype))


def pf_radius(A: Any) -> Any:
    """ρ(|A|), the Perron–Frobenius radius of the entrywise absolute value (El Ghaoui's PF condition)."""
    T, back = to_tensor(A)
    return back(_eig(T.abs(), vectors=False).abs().amax(-1).to(T.dtype))


def _eig(T: torch.Tensor, *, vectors: bool):
    """torch.linalg.eig/eigvals, falling back to numpy's LAPACK when torch's does not converge.

    (torch's CPU eigensolver fails on some badly scaled matrices, e.g. entries 1 and 1e-300,
    that numpy's handles.) Results are on T's device, in T's complex dtype.
    """
    try:
        return torch.linalg.eig(T) if vectors else torch.linalg.eigvals(T)
    except torch.linalg.LinAlgError:
        A = T.detach().cpu().numpy()
        try:
            if vectors:
                w, v = np.linalg.eig(A)
                return (torch.from_numpy(w).to(T.device).to(_complex(T.dtype)),
                        torch.from_numpy(v).to(T.device).to(_complex(T.dtype)))
            return torch.from_numpy(np.linalg.eigvals(A)).to(T.device).to(_complex(T.dtype))
        except np.linalg.LinAlgError as exc:
            raise ValueError(f"eigenvalues did not converge (torch and numpy LAPACK): {exc}") from None


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def optimal_inf_weights(A: Any, *, floor: float = 1e-12) -> Any:
    r"""Weights η > 0 (max entry 1) with μ∞,η(A) = α(M(A)) = inf_η μ∞,η(A) (docs/math.md §2.2).

    Candidates, of which the one with the smallest μ∞,η(A) is returned (computed in float64;
    among ties, the one whose smallest entry is largest):

    * η = 1, and the right Perron vector v of the Metzler majorant M = M(A) (entries below ``floor`` are
      raised to it). When M is irreducible v > 0 attains the infimum exactly (up to rounding).
    * η_t = (tI − M)⁻¹1 for t = α(M) + δ·‖M‖∞, δ ∈ {1e-12, 1e-9, 1e-6, 1e-3, 1e-2, 0.1, 1}:
      tI − M is then a nonsingular M-matrix, so η_t > 0 and Mη_t = tη_t − 1 < tη_t, i.e.
      μ∞,η_t(A) < t — as long as η_t's entries span less than 1/``floor`` (clamped entries
      lose the guarantee).

    When M is reducible the infimum may not be attained (e.g. [[−1, 5], [0, −2]]) and the
    Perron vector alone can be far off (for blockdiag(1, [[−1, 5], [0.1, −2]]) it gives 4 against
    α = 1). Small δ then give η_t spanning many orders of magnitude (a nilpotent n×n shift:
    about δ^{−(n−1)}), which the floor clamps; the larger δ keep η_t within range at the price of
    t. The result is μ∞,η(A) ≤ α(M(A)) + δ·‖M‖∞ for the smallest δ whose η_t fits the floor.
    """
    T, back = to_tensor(A)
    M = T.double().abs()
    M.diagonal(dim1=-2, dim2=-1).copy_(T.double().diagonal(dim1=-2, dim2=-1))
    n = M.shape[-1]
    vals, vecs = _eig(M, vectors=True)
    k = vals.real.argmax(-1)
    alpha = torch.gather(vals.real, -1, k.unsqueeze(-1)).squeeze(-1)
    idx = k[..., None, None].expand(*vecs.shape[:-1], 1)
    v = torch.gather(vecs, -1, idx).squeeze(-1).real
    v = v * torch.where(v.sum(-1, keepdim=True) < 0, -1.0, 1.0).to(v.dtype)
    candidates = [torch.ones_like(v), v.clamp_min(0.0)]
    scale = M.abs().sum(-1).amax(-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    eye = torch.eye(n, dtype=M.dtype, device=M.device)
    ones = torch.ones(*M.shape[:-1], 1, dtype=M.dtype, device=M.device)
    for delta in (1e-12, 1e-9, 1e-6, 1e-3, 1e-2, 1e-1, 1.0):
        t = (alpha + delta * scale)[..., None, None]
        eta, _ = torch.linalg.solve_ex(t * eye - M, ones)
        candidates.append(eta.squeeze(-1))
    etas = torch.stack(candidates)                                  # (k, ..., n)
    usable = torch.isfinite(etas).all(-1, keepdim=True) & (etas.amax(-1, keepdim=True) > 0)
    etas = torch.where(usable, etas, torch.ones_like(etas))         # η = 1 is always valid
    etas = (etas / etas.amax(-1, keepdim=True)).clamp_min(floor)
    W = etas.unsqueeze(-2) / etas.unsqueeze(-1)
    mus = row_measure(M.expand_as(W), W, signed_diag=True).amax(-1)  # μ∞,η(A) = μ∞,η(M(A))
    # Among the (near-)minimizers prefer the best-balanced η (largest smallest entry).
    near = mus <= mus.amin(0) + 1e-13 * scale
    best = torch.where(near, etas.amin(-1), torch.full_like(mus, -1.0)).argmax(0)
    eta = torch.gather(etas, 0, best[None, ..., None].expand(1, *etas.shape[1:])).squeeze(0)
    return back(eta.to(T.dtype).clamp_min(floor))
