r"""Well-posedness conditions on A, one registry (docs/design.md §2, docs/math.md §2).

Every condition is built as ``cls(gamma=…, **options)`` and offers the same small interface:

- ``measure(A)``: the condition's own measure (γ bounds it); ``margin(A)`` = γ − measure(A)
  (> 0 inside); ``contains(A)`` (margin ≥ −tol). numpy or torch, (n, n) or batched (..., n, n).
- ``project(A, out=None)``: exact Frobenius projection where the set is convex (``convex``);
  otherwise :class:`NotConvexError`. Feasible A are returned unchanged; the result is feasible
  when measured in float64 (docs/design.md §8).
- ``parameterize(raw)`` / ``init_raw(A)``: raw tensors → A inside the set, and raw tensors for a
  given A (A is first put inside the set). ``norm_weights(raw)``: the weights η of the ∞-norm in
  which the built A is certified (μ∞,η(A) ≤ γ), or None.
- ``training``: how :class:`lipdeq.ImplicitNetwork` keeps A in the set — ``"project"``,
  ``"parameterize"`` or ``"none"``.

| name | set | project | training |
|---|---|---|---|
| mu_inf | μ∞,η(A) ≤ γ (η fixed, default 1) | exact (docs/math.md §7) | project |
| norm_inf | ‖A‖∞ ≤ γ (E1) | exact, row ℓ1 balls (docs/math.md §7.7) | project |
| mu_inf_weighted | ∃η: μ∞,η(A) ≤ γ ⇔ α(M(A)) ≤ γ (N) | not convex | parameterize A = γI + D⁻¹MD − diag(|M|1) |
| pf | ρ(|A|) ≤ γ (E2) | not convex | parameterize A = D⁻¹ND, ‖N‖∞ ≤ γ |
| monotone | μ₂(A) ≤ γ (M; monDEQ margin m = 1 − γ) | exact eigenvalue clip | parameterize A = γI − PᵀP + Q − Qᵀ |
| lben | ∃ diagonal Λ ≻ 0: 2γΛ − ΛA − AᵀΛ ⪰ 0 (L) | only for a fixed Λ (SDP) | parameterize A = γI − Ψ(VᵀV + εI + Sᵀ − S) |
| nemon | the NEMON parameterization (same map and set as mu_inf_weighted) | n/a | parameterize |
| none | unconstrained (measure: μ∞) | identity | none |

With learned weights (D = diag(eᵈ), η = e⁻ᵈ) the images of the two ∞-norm parameterizations
are {∃η: μ∞,η(A) ≤ γ} and {∃η: ‖A‖∞,η ≤ γ}: they contain the open sets α(M(A)) < γ and
ρ(|A|) < γ and lie in the closed ones (the infimum over η need not be attained, docs/math.md §2.2).

The base class :class:`Condition` and :class:`NotConvexError` are defined in
:mod:`lipdeq.conditions_base`, :class:`LBEN` in :mod:`lipdeq.conditions_lben`; all are importable
from here.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..solvers import project_mu_inf, project_norm_inf
from ..solvers.arrays import to_tensor

from .. import geometry
from .base import Condition, NotConvexError, _emit, _eye_like  # noqa: F401 (re-export)
from .lben import LBEN


# ----------------------------------------------------------------------------- polytopes
class MuInf(Condition):
    """μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i}|aᵢⱼ|ηⱼ/ηᵢ) ≤ γ (N0, or Nη with fixed ``weights``), a
    polytope; exact projection (docs/math.md §7)."""
    name = "mu_inf"
    training = "project"
    convex = True

    def __init__(self, gamma: float = 0.95, weights: Any = None):
        super().__init__(gamma)
        self.weights = weights

    def _eta(self):
        """η as one tensor, converted when ``weights`` is set or edited in place (a numpy array or
        tensor is compared by value, so every use of η agrees), not on every call."""
        w = self.weights
        if w is None:
            return None
        # a tensor is compared by its version counter (no device read), anything else by value
        stamp = w._version if isinstance(w, torch.Tensor) else np.array(w, dtype=np.float64)
        cached = self.__dict__.get("_eta_cache")
        if (cached is None or cached[0] is not w
                or not np.array_equal(cached[1], stamp)):
            eta = (w.detach().clone() if isinstance(w, torch.Tensor)
                   else torch.as_tensor(np.array(stamp, copy=True)))
            self._eta_cache = cached = (w, stamp, eta)
        return cached[2]

    def measure(self, A):
        return geometry.mu_inf(A, self._eta())

    def project(self, A, *, out=None):
        return project_mu_inf(A, self.gamma, weights=self._eta(), out=out)

    def norm_weights(self, raw):
        return self._eta()


class NormInf(Condition):
    """‖A‖∞ ≤ γ (El Ghaoui's practical constraint, E1); exact projection onto row ℓ1 balls."""
    name = "norm_inf"
    training = "project"
    convex = True

    def measure(self, A):
        to_tensor(A)  # a condition on A needs a square matrix (‖·‖∞ alone would not)
        return geometry.norm_inf(A)

    def project(self, A, *, out=None):
        return project_norm_inf(A, self.gamma, out=out)


# ----------------------------------------------------------------------------- unions over η
def _scale_rows(M: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """D⁻¹MD with D = diag(eᵈ): entry (i, j) is e^{dⱼ − dᵢ} Mᵢⱼ. Formed from the differences (not
    as e^{−dᵢ}·e^{dⱼ}): A does not change when every dᵢ moves by the same amount, so the gradient
    does not hold d in place, and the two factors overflowed once d drifted (d = 89 in float32)."""
    return torch.exp(d.unsqueeze(-2) - d.unsqueeze(-1)) * M


def _weights_of(d: torch.Tensor) -> torch.Tensor:
    """η = e^{−(d − max d)} ∝ e⁻ᵈ (μ∞,η depends only on the ratios ηⱼ/ηᵢ): in (0, 1], never inf."""
    return torch.exp(-(d - d.amax(-1, keepdim=True)))


class MuInfWeighted(Condition):
    r"""∃η > 0: μ∞,η(A) ≤ γ ⇔ α(M(A)) ≤ γ (NEMON's union over weights, N; not convex).

    ``measure`` = α(M(A)) = inf_η μ∞,η(A). Boundary caveat (docs/math.md §2.2): for reducible M(A) the
    infimum need not be attained, so α(M(A)) = γ need not give a feasible η; α < γ always does.
    Parameterization (docs/math.md §7.8, the authors' code): raw M (n, n), d (n,),
    A = γI + D⁻¹MD − diag(|M|1), D = diag(eᵈ); then μ∞,η(A) = γ + 2 maxᵢ min(Mᵢᵢ, 0) ≤ γ for
    η = e⁻ᵈ (``norm_weights``), and the image is {∃η: μ∞,η(A) ≤ γ}.
    """
    name = "mu_inf_weighted"
    training = "parameterize"

    def measure(self, A):
        return geometry.spectral_abscissa(geometry.metzler_majorant(A))

    def parameterize(self, raw):
        M, d = raw["M"], raw["d"]
        return self.gamma * _eye_like(M) + _scale_rows(M, d) - torch.diag_embed(M.abs().sum(-1))

    def init_raw(self, A):
        """d = 0 and the explicit preimage of the projection of A onto {μ∞ ≤ γ} (docs/math.md §7.8)."""
        A = project_mu_inf(A.detach(), self.gamma)
        off = A - torch.diag_embed(A.diagonal(dim1=-2, dim2=-1))
        r = A.diagonal(dim1=-2, dim2=-1) - self.gamma + off.abs().sum(-1)
        M = off + torch.diag_embed(r.clamp_max(0) / 2)
        return {"M": M, "d": torch.zeros(A.shape[:-1], dtype=A.dtype, device=A.device)}

    def norm_weights(self, raw):
        return None if raw is None else _weights_of(raw["d"])  # differentiable in d


class NEMON(MuInfWeighted):
    """The NEMON parameterization (Jafarpour et al.): the map and set of ``mu_inf_weighted``.

    Kept under its own name for the comparisons; metrics report both the unweighted μ∞(A) and
    the guaranteed μ∞,η(A) with η = e⁻ᵈ (docs/design.md §2)."""
    name = "nemon"


class PF(Condition):
    r"""ρ(|A|) ≤ γ (El Ghaoui's Perron–Frobenius condition, E2; not convex).

    ρ(|A|) = inf_η ‖A‖∞,η (attained at the Perron vector when |A| is irreducible). Parameterization:
    raw M (n, n), d (n,); N = M with each row scaled by min(1, γ/‖Mᵢ‖₁) (so ‖N‖∞ ≤ γ) and
    A = D⁻¹ND, D = diag(eᵈ). Then ‖A‖∞,η = ‖N‖∞ ≤ γ with η = e⁻ᵈ, hence ρ(|A|) ≤ γ and
    μ∞,η(A) ≤ γ (``norm_weights``). Needs γ ≥ 0 (the set is empty otherwise).
    """
    name = "pf"
    training = "parameterize"

    def measure(self, A):
        return geometry.pf_radius(A)

    def _check_gamma(self):
        if self.gamma < 0:
            raise ValueError(f"pf: the set ρ(|A|) ≤ {self.gamma} is empty (ρ ≥ 0); use gamma >= 0")

    def parameterize(self, raw):
        self._check_gamma()
        M, d = raw["M"], raw["d"]
        rows = M.abs().sum(-1, keepdim=True)
        scale = torch.where(rows > self.gamma, self.gamma / rows.clamp_min(1e-300),
                            torch.ones_like(rows))
        return _scale_rows(M * scale, d)

    def init_raw(self, A):
        self._check_gamma()
        M = project_norm_inf(A.detach(), self.gamma)
        return {"M": M, "d": torch.zeros(A.shape[:-1], dtype=A.dtype, device=A.device)}

    def norm_weights(self, raw):
        return None if raw is None else _weights_of(raw["d"])  # differentiable in d


# ----------------------------------------------------------------------------- Euclidean sets
def clip_symmetric(T: torch.Tensor, gamma: float) -> torch.Tensor:
    """Frobenius projection onto {μ₂(X) ≤ γ}: keep the skew part, clip the eigenvalues of the
    symmetric part at γ (in float64). Matrices already inside are returned bit for bit; the others
    are shifted by −δI after rounding to T's dtype until γ − μ₂(X) ≥ 0 holds in float64."""
    T64 = T.double()
    sym = (T64 + T64.transpose(-1, -2)) / 2
    lam, U = torch.linalg.eigh(sym)
    inside = (geometry.mu_2(T64) <= gamma)[..., None, None]  # the same test as the nudge below
    X = (T64 - sym + (U * lam.clamp_max(gamma).unsqueeze(-2)) @ U.transpose(-1, -2)).to(T.dtype)
    eye = _eye_like(X)
    scale = 1.0 + abs(gamma) + float(T64.abs().amax()) if T.numel() else 1.0
    for k in range(64):
        excess = torch.where(inside.squeeze(-1).squeeze(-1), -1.0,
                             geometry.mu_2(X.double()) - gamma)
        if not bool((excess > 0).any()):
            break
        step = excess.clamp_min(0) + (excess > 0) * 2.0 ** k * torch.finfo(T.dtype).eps * scale
        X = X - step.to(X.dtype)[..., None, None] * eye
    return torch.where(inside, T, X)


class Monotone(Condition):
    """μ₂(A) = λ_max((A + Aᵀ)/2) ≤ γ (monDEQ with margin m = 1 − γ, M; convex).

    Projection: :func:`clip_symmetric` (exact; ``solvers.sdp.project_monotone_sdp`` is the SDP
    cross-check). Parameterization (monDEQ): A = γI − PᵀP + Q − Qᵀ, onto {μ₂ ≤ γ} (docs/math.md §2.5).
    """
    name = "monotone"
    training = "parameterize"
    default_solver = "peaceman_rachford"
    convex = True

    def measure(self, A):
        return geometry.mu_2(A)

    def project(self, A, *, out=None):
        T, back = to_tensor(A)
        return _emit(clip_symmetric(T, self.gamma), back, out)

    def parameterize(self, raw):
        P, Q = raw["P"], raw["Q"]
        return self.gamma * _eye_like(P) - P.transpose(-1, -2) @ P + Q - Q.transpose(-1, -2)

    def init_raw(self, A):
        A = clip_symmetric(A.detach(), self.gamma)
        sym = (A + A.transpose(-1, -2)) / 2
        lam, U = torch.linalg.eigh(self.gamma * _eye_like(A) - sym)
        P = lam.clamp_min(0).sqrt().unsqueeze(-1) * U.transpose(-1, -2)
        return {"P": P, "Q": (A - A.transpose(-1, -2)) / 4}


class NoCondition(Condition):
    """Unconstrained A (baseline). ``measure`` reports μ∞(A) for information; contains() is True
    and the projection is the identity."""
    name = "none"
    convex = True

    def measure(self, A):
        return geometry.mu_inf(A)

    def contains(self, A):
        m = self.measure(A)
        return m == m  # always True (measures are finite), elementwise for batches

    def project(self, A, *, out=None):
        T, back = to_tensor(A)
        return _emit(T.clone() if out is None else T, back, out)


CONDITIONS: dict[str, type[Condition]] = {c.name: c for c in
                                          (MuInf, NormInf, MuInfWeighted, PF, Monotone, LBEN,
                                           NEMON, NoCondition)}


def get_condition(name: str, gamma: float = 0.95, **options: Any) -> Condition:
    """Build the registered condition ``name``; ``ValueError`` listing the names otherwise."""
    if not isinstance(name, str) or name not in CONDITIONS:
        raise ValueError(f"condition must be one of {sorted(CONDITIONS)}, got {name!r}")
    return CONDITIONS[name](gamma=gamma, **options)
