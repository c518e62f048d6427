r"""Well-posedness conditions on A, one registry (CONVENTIONS §2, SPEC §2).

Every condition is built as ``cls(gamma=…)`` and offers the same small interface:

- ``measure(A)``: the condition's own measure (γ bounds it);
- ``margin(A)`` = γ − measure(A) (> 0 inside), ``contains(A)`` (margin ≥ −tol);
- ``project(A)``: Frobenius projection, only where the set is convex (else ``NotConvexError``);
- ``parameterize(raw)`` / ``init_raw(A)``: where a parameterization is known (raw tensors → A);
- ``norm_weights(raw)``: the weights η of the ∞-norm in which the built A is certified (or None);
- ``training``: how :class:`lipdeq.ImplicitNetwork` keeps A in the set — ``"project"`` (projected
  gradient steps), ``"parameterize"`` (unconstrained raw parameters) or ``"none"``.

| name | set | training |
|---|---|---|
| mu_inf | μ∞,η(A) ≤ γ (η fixed, default 1) | project (exact, SPEC §7) |
| norm_inf | ‖A‖∞ ≤ γ | project (ℓ1 balls, SPEC §7.7) |
| mu_inf_weighted | ∃η: μ∞,η(A) ≤ γ ⇔ α(M(A)) ≤ γ | none (not convex) |
| pf | ρ(|A|) ≤ γ | none (not convex) |
| monotone | μ₂(A) ≤ γ (monDEQ, m = 1 − γ) | parameterize W = γI − PᵀP + Q − Qᵀ; project = eigenvalue clip |
| lben | ∃ diagonal Λ ≻ 0: 2γΛ − ΛA − AᵀΛ ⪰ 0 | parameterize A = γI − Ψ(VᵀV + εI + Sᵀ − S) |
| nemon | A = γI + D⁻¹MD − diag(|M|1), D = diag(eᵈ) (μ∞,η ≤ γ, η = e⁻ᵈ) | parameterize |
| none | unconstrained | none |
"""
from __future__ import annotations

from typing import Any

import torch

from solvers import project_mu_inf, project_norm_inf
from solvers._arrays import check_scalar, to_tensor

from . import geometry


class NotConvexError(ValueError):
    """The condition's set is not convex (or has no projection): there is nothing to project onto."""


class Condition:
    """Base class: subclasses set ``name``, ``training`` and implement ``measure``."""
    name = "condition"
    training = "none"
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
        return self.gamma - self.measure(A)

    def contains(self, A: Any) -> Any:
        m = self.margin(A)
        return m >= -self.tol * (1 + abs(self.gamma))

    def project(self, A: Any, *, out: Any = None) -> Any:
        raise NotConvexError(f"condition {self.name!r} has no projection (its set is not convex "
                             f"or no projection is implemented); use a parameterization instead")

    def parameterize(self, raw: dict) -> torch.Tensor:
        raise NotImplementedError(f"condition {self.name!r} has no parameterization")

    def init_raw(self, A: torch.Tensor) -> dict:
        raise NotImplementedError(f"condition {self.name!r} has no parameterization")

    def norm_weights(self, raw: dict | None) -> torch.Tensor | None:
        return None

    @property
    def has_projection(self) -> bool:
        return type(self).project is not Condition.project


class MuInf(Condition):
    """μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i}|aᵢⱼ|ηⱼ/ηᵢ) ≤ γ, a polytope; exact projection (SPEC §7)."""
    name = "mu_inf"
    training = "project"

    def __init__(self, gamma: float = 0.95, weights: Any = None):
        super().__init__(gamma)
        self.weights = weights

    def measure(self, A):
        return geometry.mu_inf(A, self.weights)

    def project(self, A, *, out=None):
        return project_mu_inf(A, self.gamma, weights=self.weights, out=out)

    def norm_weights(self, raw):
        return None if self.weights is None else torch.as_tensor(self.weights)


class NormInf(Condition):
    """‖A‖∞ ≤ γ (El Ghaoui's practical constraint, E1); exact projection onto row ℓ1 balls."""
    name = "norm_inf"
    training = "project"

    def measure(self, A):
        return geometry.norm_inf(A)

    def project(self, A, *, out=None):
        return project_norm_inf(A, self.gamma, out=out)


class MuInfWeighted(Condition):
    """∃η > 0: μ∞,η(A) ≤ γ ⇔ α(M(A)) ≤ γ (NEMON's union over weights, N; not convex).

    Boundary caveat (SPEC §2.2): for reducible M(A) the infimum over η may not be attained, so
    α(M(A)) = γ exactly need not give a feasible η; inside (α < γ) it always does.
    """
    name = "mu_inf_weighted"

    def measure(self, A):
        return geometry.spectral_abscissa(geometry.metzler_majorant(A))


class PF(Condition):
    """ρ(|A|) ≤ γ (El Ghaoui's Perron–Frobenius condition, E2; not convex)."""
    name = "pf"

    def measure(self, A):
        return geometry.pf_radius(A)


class Monotone(Condition):
    """μ₂(A) = λ_max((A + Aᵀ)/2) ≤ γ (monDEQ with margin m = 1 − γ, M).

    Projection: keep the skew part, clip the eigenvalues of the symmetric part at γ (exact
    Frobenius projection). Parameterization (monDEQ): A = γI − PᵀP + Q − Qᵀ.
    """
    name = "monotone"
    training = "parameterize"

    def measure(self, A):
        return geometry.mu_2(A)

    def project(self, A, *, out=None):
        T, back = to_tensor(A)
        sym = (T + T.transpose(-1, -2)) / 2
        lam, U = torch.linalg.eigh(sym)
        X = T - sym + (U * lam.clamp_max(self.gamma).unsqueeze(-2)) @ U.transpose(-1, -2)
        if out is None:
            return back(X)
        if isinstance(out, torch.Tensor):
            return out.copy_(X)
        out[...] = back(X)
        return out

    def parameterize(self, raw):
        P, Q = raw["P"], raw["Q"]
        eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
        return self.gamma * eye - P.transpose(-1, -2) @ P + Q - Q.transpose(-1, -2)

    def init_raw(self, A):
        A = self.project(A.detach())
        sym = (A + A.T) / 2
        lam, U = torch.linalg.eigh(self.gamma * torch.eye(A.shape[0], dtype=A.dtype) - sym)
        P = lam.clamp_min(0).sqrt().unsqueeze(-1) * U.T
        return {"P": P, "Q": (A - A.T) / 4}


class LBEN(Condition):
    """∃ diagonal Λ ≻ 0 with 2γΛ − ΛA − AᵀΛ ⪰ 0 (LBEN, L; weighted-ℓ2 contraction).

    ``measure`` is the smallest γ' for which an LMI certificate exists (an SDP, ``solvers.sdp``).
    Parameterization: A = γI − Ψ(VᵀV + εI + Sᵀ − S), Ψ = diag(e^ψ), certified by Λ = Ψ⁻¹.
    """
    name = "lben"
    training = "parameterize"
    epsilon = 1e-3

    def measure(self, A):
        from solvers.sdp import lben_measure  # SDP side, imported when needed
        return lben_measure(A)

    def parameterize(self, raw):
        V, S, psi = raw["V"], raw["S"], raw["psi"]
        n = V.shape[-1]
        eye = torch.eye(n, dtype=V.dtype, device=V.device)
        X = V.transpose(-1, -2) @ V + self.epsilon * eye + S.transpose(-1, -2) - S
        return self.gamma * eye - torch.exp(psi).unsqueeze(-1) * X

    def init_raw(self, A):
        # Ψ = I: X = γI − A must have symmetric part VᵀV + εI ⪰ εI; use the monotone projection.
        A = Monotone(self.gamma - self.epsilon).project(A.detach())
        n = A.shape[0]
        eye = torch.eye(n, dtype=A.dtype)
        X = self.gamma * eye - A
        sym = (X + X.T) / 2 - self.epsilon * eye
        lam, U = torch.linalg.eigh(sym)
        V = lam.clamp_min(0).sqrt().unsqueeze(-1) * U.T
        return {"V": V, "S": -(X - X.T) / 4, "psi": torch.zeros(n, dtype=A.dtype)}


class NEMON(Condition):
    """The NEMON parameterization A = γI + D⁻¹MD − diag(|M|1), D = diag(eᵈ) (SPEC §7.8).

    μ∞,η(A) = γ + 2 maxᵢ min(Mᵢᵢ, 0) ≤ γ with η = e⁻ᵈ, for every raw (M, d). ``measure`` of a bare
    A is α(M(A)) = inf_η μ∞,η(A), the quantity the parameterization certifies.
    """
    name = "nemon"
    training = "parameterize"

    def measure(self, A):
        return geometry.spectral_abscissa(geometry.metzler_majorant(A))

    def parameterize(self, raw):
        M, d = raw["M"], raw["d"]
        n = M.shape[-1]
        eye = torch.eye(n, dtype=M.dtype, device=M.device)
        scaled = torch.exp(-d).unsqueeze(-1) * M * torch.exp(d).unsqueeze(-2)
        return self.gamma * eye + scaled - torch.diag_embed(M.abs().sum(-1))

    def init_raw(self, A):
        A = project_mu_inf(A.detach(), self.gamma)
        off = A - torch.diag_embed(A.diagonal())
        r = A.diagonal() - self.gamma + off.abs().sum(-1)
        M = off + torch.diag_embed(r.clamp_max(0) / 2)
        return {"M": M, "d": torch.zeros(A.shape[0], dtype=A.dtype)}

    def norm_weights(self, raw):
        return None if raw is None else torch.exp(-raw["d"].detach())


class NoCondition(Condition):
    """Unconstrained A (baseline). ``measure`` reports μ∞(A) for information; contains() is True."""
    name = "none"

    def measure(self, A):
        return geometry.mu_inf(A)

    def contains(self, A):
        m = self.measure(A)
        return m == m  # always True, elementwise for batches


CONDITIONS: dict[str, type[Condition]] = {c.name: c for c in
                                          (MuInf, NormInf, MuInfWeighted, PF, Monotone, LBEN,
                                           NEMON, NoCondition)}


def get_condition(name: str, gamma: float = 0.95, **options: Any) -> Condition:
    """Build the registered condition ``name``; ``ValueError`` listing the names otherwise."""
    if name not in CONDITIONS:
        raise ValueError(f"condition must be one of {sorted(CONDITIONS)}, got {name!r}")
    return CONDITIONS[name](gamma=gamma, **options)
