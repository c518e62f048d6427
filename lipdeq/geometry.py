r"""Matrix measures (log-norms), induced norms and the Metzler/Perron quantities of SPEC §2.

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

import torch

from solvers._arrays import ratio_matrix, to_tensor, weight_vector
from solvers.projection import row_measure

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
    """Induced ‖A‖∞,η = maxᵢ Σⱼ |aᵢⱼ| ηⱼ/ηᵢ (max row abs-sum for η = 1)."""
    T, back = to_tensor(A, square=False)
    if weights is None:
        return back(T.abs().sum(-1).amax(-1))
    W = ratio_matrix(weight_vector(weights, T.shape[-1], T), T.shape[-1], T)
    return back(row_measure(T, W, signed_diag=False).amax(-1))


def norm_1(A: Any) -> Any:
    """Induced ‖A‖₁ = max column abs-sum."""
    T, back = to_tensor(A, square=False)
    return back(T.abs().sum(-2).amax(-1))


def norm_2(A: Any) -> Any:
    """Induced ‖A‖₂ = σ_max(A)."""
    T, back = to_tensor(A, square=False)
    return back(torch.linalg.matrix_norm(T, ord=2))


def metzler_majorant(A: Any) -> Any:
    """M(A) = diag(aᵢᵢ) + |offdiag(A)|: the diagonal signed, the rest in absolute value."""
    T, back = to_tensor(A)
    M = T.abs()
    M.diagonal(dim1=-2, dim2=-1).copy_(T.diagonal(dim1=-2, dim2=-1))
    return back(M)


def spectral_abscissa(M: Any) -> Any:
    """α(M) = max Re λ over the eigenvalues of M (the Perron eigenvalue when M is Metzler)."""
    T, back = to_tensor(M, "M")
    return back(torch.linalg.eigvals(T).real.amax(-1).to(T.dtype))


def pf_radius(A: Any) -> Any:
    """ρ(|A|), the Perron–Frobenius radius of the entrywise absolute value (El Ghaoui's PF condition)."""
    T, back = to_tensor(A)
    return back(torch.linalg.eigvals(T.abs()).abs().amax(-1).to(T.dtype))


def optimal_inf_weights(A: Any, *, floor: float = 1e-12) -> Any:
    r"""Weights η > 0 (max entry 1) with μ∞,η(A) = α(M(A)) = inf_η μ∞,η(A) (SPEC §2.2).

    η is the right Perron vector of the Metzler majorant M(A). When M(A) is irreducible this
    attains the infimum exactly. When it is reducible the infimum may not be attained
    (e.g. [[−1, 5], [0, −2]]): entries of the Perron vector can be zero, and they are raised to
    ``floor`` so η stays positive; μ∞,η is then close to, but above, α(M(A)).
    """
    T, back = to_tensor(A)
    M = T.abs()
    M.diagonal(dim1=-2, dim2=-1).copy_(T.diagonal(dim1=-2, dim2=-1))
    vals, vecs = torch.linalg.eig(M)
    k = vals.real.argmax(-1)
    idx = k[..., None, None].expand(*vecs.shape[:-1], 1)
    v = torch.gather(vecs, -1, idx).squeeze(-1).real.to(T.dtype)
    v = v * torch.where(v.sum(-1, keepdim=True) < 0, -1.0, 1.0).to(T.dtype)
    v = v.clamp_min(0.0)
    v = v / v.amax(-1, keepdim=True)
    return back(v.clamp_min(floor))
