r"""Well-posedness conditions on A, one registry (CONVENTIONS §2, SPEC §2).

Every condition is built as ``cls(gamma=…, **options)`` and offers the same small interface:

- ``measure(A)``: the condition's own measure (γ bounds it); ``margin(A)`` = γ − measure(A)
  (> 0 inside); ``contains(A)`` (margin ≥ −tol). numpy or torch, (n, n) or batched (..., n, n).
- ``project(A, out=None)``: exact Frobenius projection where the set is convex (``convex``);
  otherwise :class:`NotConvexError`. Feasible A are returned unchanged; the result is feasible
  when measured in float64 (CONVENTIONS §1).
- ``parameterize(raw)`` / ``init_raw(A)``: raw tensors → A inside the set, and raw tensors for a
  given A (A is first put inside the set). ``norm_weights(raw)``: the weights η of the ∞-norm in
  which the built A is certified (μ∞,η(A) ≤ γ), or None.
- ``training``: how :class:`lipdeq.ImplicitNetwork` keeps A in the set — ``"project"``,
  ``"parameterize"`` or ``"none"``.

| name | set | project | training |
|---|---|---|---|
| mu_inf | μ∞,η(A) ≤ γ (η fixed, default 1) | exact (SPEC §7) | project |
| norm_inf | ‖A‖∞ ≤ γ (E1) | exact, row ℓ1 balls (SPEC §7.7) | project |
| mu_inf_weighted | ∃η: μ∞,η(A) ≤ γ ⇔ α(M(A)) ≤ γ (N) | not convex | parameterize A = γI + D⁻¹MD − diag(|M|1) |
| pf | ρ(|A|) ≤ γ (E2) | not convex | parameterize A = D⁻¹ND, ‖N‖∞ ≤ γ |
| monotone | μ₂(A) ≤ γ (M; monDEQ margin m = 1 − γ) | exact eigenvalue clip | parameterize A = γI − PᵀP + Q − Qᵀ |
| lben | ∃ diagonal Λ ≻ 0: 2γΛ − ΛA − AᵀΛ ⪰ 0 (L) | only for a fixed Λ (SDP) | parameterize A = γI − Ψ(VᵀV + εI + Sᵀ − S) |
| nemon | the NEMON parameterization (same map and set as mu_inf_weighted) | n/a | parameterize |
| none | unconstrained (measure: μ∞) | identity | none |

With learned weights (D = diag(eᵈ), η = e⁻ᵈ) the images of the two ∞-norm parameterizations
are {∃η: μ∞,η(A) ≤ γ} and {∃η: ‖A‖∞,η ≤ γ}: they contain the open sets α(M(A)) < γ and
ρ(|A|) < γ and lie in the closed ones (the infimum over η need not be attained, SPEC §2.2).
"""
from __future__ import annotations

from typing import Any

import torch

from solvers import project_mu_inf, project_norm_inf
from solvers._arrays import check_scalar, to_tensor

from . import geometry


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
        return self.gamma - self.measure(A)

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
    if isinstance(out, torch.Tensor):
        with torch.no_grad():
            return out.copy_(X)
    out[...] = back(X)
    return out


def _eye_like(T: torch.Tensor) -> torch.Tensor:
    return torch.eye(T.shape[-1], dtype=T.dtype, device=T.device)


# ----------------------------------------------------------------------------- polytopes
class MuInf(Condition):
    """μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i}|aᵢⱼ|ηⱼ/ηᵢ) ≤ γ (N0, or Nη with fixed ``weights``), a
    polytope; exact projection (SPEC §7)."""
    name = "mu_inf"
    training = "project"
    convex = True

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
    convex = True

    def measure(self, A):
        to_tensor(A)  # a condition on A needs a square matrix (‖·‖∞ alone would not)
        return geometry.norm_inf(A)

    def project(self, A, *, out=None):
        return project_norm_inf(A, self.gamma, out=out)


# ----------------------------------------------------------------------------- unions over η
def _scale_rows(M: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """D⁻¹MD with D = diag(eᵈ): entry (i, j) is e^{−dᵢ} Mᵢⱼ e^{dⱼ}."""
    return torch.exp(-d).unsqueeze(-1) * M * torch.exp(d).unsqueeze(-2)


class MuInfWeighted(Condition):
    r"""∃η > 0: μ∞,η(A) ≤ γ ⇔ α(M(A)) ≤ γ (NEMON's union over weights, N; not convex).

    ``measure`` = α(M(A)) = inf_η μ∞,η(A). Boundary caveat (SPEC §2.2): for reducible M(A) the
    infimum need not be attained, so α(M(A)) = γ need not give a feasible η; α < γ always does.
    Parameterization (SPEC §7.8, the authors' code): raw M (n, n), d (n,),
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
        """d = 0 and the explicit preimage of the projection of A onto {μ∞ ≤ γ} (SPEC §7.8)."""
        A = project_mu_inf(A.detach(), self.gamma)
        off = A - torch.diag_embed(A.diagonal(dim1=-2, dim2=-1))
        r = A.diagonal(dim1=-2, dim2=-1) - self.gamma + off.abs().sum(-1)
        M = off + torch.diag_embed(r.clamp_max(0) / 2)
        return {"M": M, "d": torch.zeros(A.shape[:-1], dtype=A.dtype, device=A.device)}

    def norm_weights(self, raw):
        return None if raw is None else torch.exp(-raw["d"].detach())


class NEMON(MuInfWeighted):
    """The NEMON parameterization (Jafarpour et al.): the map and set of ``mu_inf_weighted``.

    Kept under its own name for the comparisons; metrics report both the unweighted μ∞(A) and
    the guaranteed μ∞,η(A) with η = e⁻ᵈ (CONVENTIONS §2)."""
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
        return None if raw is None else torch.exp(-raw["d"].detach())


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
    cross-check). Parameterization (monDEQ): A = γI − PᵀP + Q − Qᵀ, onto {μ₂ ≤ γ} (SPEC §2.5).
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


class LBEN(Condition):
    r"""∃ diagonal Λ ≻ 0 with 2γΛ − ΛA − AᵀΛ ⪰ 0 (LBEN, L; a weighted-ℓ2 contraction; not convex).

    ``measure(A)`` = the smallest γ' with a certificate (``solvers.sdp.lben_measure``, one SDP per
    bisection step); ``contains`` solves one SDP per matrix at γ. ``project(A, Lambda=Λ)`` is the
    exact (SDP) projection onto the convex set of one fixed Λ; the union over Λ is not convex, so
    without Λ it raises NotConvexError unless ``heuristic=True`` (Λ := the certificate SDP's best
    Λ for A, then that projection: a feasible nearby point, **not** the projection onto L).

    Parameterization (Ψ = diag(e^ψ), raw V, S (n, n), ψ (n,); certificate Λ = Ψ⁻¹):

        A = γI − Ψ(VᵀV + εI + Sᵀ − S)          ⇒ 2γΛ − ΛA − AᵀΛ = 2(VᵀV + εI) ≻ 0.

    ``lipschitz=L`` (ℓ2 bound, LBEN's Lipschitz-bounded variant) builds A from B (n, p) and
    C (q, n) as well, which stay free parameters:

        A = γI − Ψ(VᵀV + εI + Sᵀ − S + CᵀC/(2L)) − BBᵀΨ⁻¹/(2L)
        ⇒ 2γΛ − ΛA − AᵀΛ = 2(VᵀV + εI) + CᵀC/L + ΛBBᵀΛ/L,

    i.e. (Schur complement) [[2Λ − ΛA − AᵀΛ − CᵀC/L, −ΛB], [−BᵀΛ, L·I]] ≻ 0 for γ ≤ 1, which gives
    ‖C(x(u₁) − x(u₂))‖₂ ≤ L‖u₁ − u₂‖₂ for every activation with slopes in [0, 1] (so
    Lip₂(u ↦ y) ≤ L + ‖D‖₂ with a feedthrough D; the bias b and c play no role). It constrains
    the triple (A, B, C), not A alone: use :meth:`build` / ``parameterize(raw, B=…, C=…)``.
    """
    name = "lben"
    training = "parameterize"
    default_solver = "peaceman_rachford"
    tol = 1e-6  # the SDPs' accuracy

    def __init__(self, gamma: float = 0.95, lipschitz: float | None = None, Lambda: Any = None,
                 epsilon: float = 1e-3, solver: str | None = None):
        super().__init__(gamma)
        if lipschitz is not None:
            lipschitz = check_scalar(lipschitz, "lipschitz")
            if lipschitz <= 0:
                raise ValueError(f"lipschitz must be positive, got {lipschitz}")
        self.lipschitz, self.Lambda, self.solver = lipschitz, Lambda, solver
        self.epsilon = check_scalar(epsilon, "epsilon")

    def __repr__(self) -> str:
        return f"LBEN(gamma={self.gamma}, lipschitz={self.lipschitz})"

    def measure(self, A):
        from solvers.sdp import lben_measure
        return lben_measure(A, solver=self.solver)

    @staticmethod
    def _each(A, fn):
        """(fn(M) for every (n, n) matrix M of A (float64 numpy), stacked as a tensor; back)."""
        T, back = to_tensor(A)
        flat = T.detach().cpu().double().reshape(-1, T.shape[-1], T.shape[-1]).numpy()
        out = torch.stack([torch.as_tensor(fn(M)) for M in flat])
        out = out.reshape(tuple(T.shape[:-2]) + tuple(out.shape[1:])).to(T.device)
        return (out.to(T.dtype) if out.is_floating_point() else out), back

    def contains(self, A):
        """measure(A) ≤ γ + tol·(1 + |γ|) with as few SDPs as possible: α(A) > g ⇒ no,
        μ₂(A) ≤ g ⇒ yes, else one SDP at g (certified bounds), else the bisection (``measure``)."""
        from solvers.sdp import lben_margin, lben_measure
        g = self.gamma + self.tol * (1 + abs(self.gamma))

        def one(M):
            if float(geometry.spectral_abscissa(M)) > g or float(geometry.mu_2(M)) <= g:
                return float(geometry.mu_2(M)) <= g
            cert = lben_margin(M, g, solver=self.solver)
            if cert.min_eig > 0 or (cert.upper is not None and cert.upper <= 0):
                return cert.min_eig > 0
            return float(lben_measure(M, solver=self.solver)) <= g
        res, back = self._each(A, one)
        return back(res)

    def certificate(self, A):
        """``solvers.sdp.lben_certificate(A, γ)``: a verified Λ (SolverError if none exists)."""
        from solvers.sdp import lben_certificate
        return lben_certificate(A, self.gamma, solver=self.solver)

    def project(self, A, *, out=None, Lambda=None, heuristic=False):
        from solvers.sdp import lben_margin, project_lben_sdp
        Lambda = self.Lambda if Lambda is None else Lambda
        if Lambda is None and not heuristic:
            raise NotConvexError("the LBEN set is a union over Λ of convex sets and is not convex: "
                                 "pass Lambda=… (projection onto one Λ's set) or heuristic=True")

        def one(M):
            lam = Lambda if Lambda is not None else lben_margin(M, self.gamma, solver=self.solver).Lambda
            return project_lben_sdp(M, self.gamma, lam, solver=self.solver).X
        return _emit(*self._each(A, one), out)

    def lipschitz_certificate(self, A, B, C, D=None):
        """The SDP ℓ2 Lipschitz bound of (A, B, C, D) (``solvers.sdp.l2_lipschitz_certificate``)."""
        from solvers.sdp import l2_lipschitz_certificate
        return l2_lipschitz_certificate(A, B, C, D, solver=self.solver)

    def _core(self, raw):
        V, S, psi = raw["V"], raw["S"], raw["psi"]
        X = V.transpose(-1, -2) @ V + self.epsilon * _eye_like(V) + S.transpose(-1, -2) - S
        return V, X, psi

    def parameterize(self, raw, B=None, C=None):
        V, X, psi = self._core(raw)
        if self.lipschitz is None:
            return self.gamma * _eye_like(V) - torch.exp(psi).unsqueeze(-1) * X
        B = raw.get("B") if B is None else B
        C = raw.get("C") if C is None else C
        if B is None or C is None:
            raise ValueError("LBEN with lipschitz=L builds A from B and C: call "
                             "parameterize(raw, B=B, C=C) or build(raw, B, C)")
        X = X + C.transpose(-1, -2) @ C / (2 * self.lipschitz)
        BBt = B @ B.transpose(-1, -2) * torch.exp(-psi).unsqueeze(-2) / (2 * self.lipschitz)
        return self.gamma * _eye_like(V) - torch.exp(psi).unsqueeze(-1) * X - BBt

    def build(self, raw, B, C):
        """The constrained triple (A, B, C): A from the raw tensors and the free B and C."""
        return self.parameterize(raw, B=B, C=C), B, C

    def init_raw(self, A, B=None, C=None):
        """Raw tensors (Ψ = I) whose A is the nearest point of the Λ = I set to A (for
        ``lipschitz``: of the set {sym(γI − A − (CᵀC + BBᵀ)/(2L)) ⪰ εI}, so needs B and C)."""
        A = A.detach()
        eye = _eye_like(A)
        X = self.gamma * eye - A
        if self.lipschitz is not None:
            if B is None or C is None:
                raise ValueError("LBEN with lipschitz=L needs init_raw(A, B=B, C=C)")
            X = X - (C.detach().T @ C.detach() + B.detach() @ B.detach().T) / (2 * self.lipschitz)
        sym = (X + X.transpose(-1, -2)) / 2 - self.epsilon * eye
        lam, U = torch.linalg.eigh(sym)
        V = lam.clamp_min(0).sqrt().unsqueeze(-1) * U.transpose(-1, -2)
        return {"V": V, "S": -(X - X.transpose(-1, -2)) / 4,
                "psi": torch.zeros(A.shape[:-1], dtype=A.dtype, device=A.device)}


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
