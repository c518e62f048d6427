r"""The LBEN condition (set L of docs/math.md §2.3): a diagonal Λ ≻ 0 with 2γΛ − ΛA − AᵀΛ ⪰ 0.

The one condition whose measure, membership and projection need semidefinite programs
(``solvers.sdp``, imported when first used), with LBEN's ℓ2 Lipschitz-bounded variant
(``lipschitz=L``). Registered as ``"lben"`` in :data:`lipdeq.conditions.CONDITIONS`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..solvers.arrays import check_scalar, to_tensor

from .. import geometry
from .base import Condition, NotConvexError, _emit, _eye_like


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
        from ..solvers.sdp import lben_measure
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
        from ..solvers.sdp import lben_margin, lben_measure
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
        from ..solvers.sdp import lben_certificate
        return lben_certificate(A, self.gamma, solver=self.solver)

    def project(self, A, *, out=None, Lambda=None, heuristic=False):
        from ..solvers.sdp import lben_margin, project_lben_sdp
        Lambda = self.Lambda if Lambda is None else Lambda
        if Lambda is None and not heuristic:
            raise NotConvexError("the LBEN set is a union over Λ of convex sets and is not convex: "
                                 "pass Lambda=… (projection onto one Λ's set) or heuristic=True")

        store = to_tensor(A)[0].dtype  # feasible in float64 as stored (CONVENTIONS §1)

        def one(M):
            lam = Lambda if Lambda is not None else _positive(
                lben_margin(M, self.gamma, solver=self.solver).Lambda)
            return project_lben_sdp(M, self.gamma, lam, solver=self.solver, dtype=store).X
        return _emit(*self._each(A, one), out)

    def lipschitz_certificate(self, A, B, C, D=None):
        """The SDP ℓ2 Lipschitz bound of (A, B, C, D) (``solvers.sdp.l2_lipschitz_certificate``)."""
        from ..solvers.sdp import l2_lipschitz_certificate
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


#: smallest Λ entry the heuristic keeps, relative to the mean: the margin SDP of a matrix outside
#: the set often puts exact zeros in Λ, which is not Λ ≻ 0 (found by review: ValueError naming a
#: Λ the user never gave, and projections whose Λ was too close to singular to be re-certified)
LAMBDA_FLOOR = 1e-2


def _positive(lam) -> np.ndarray:
    """Λ with every entry raised to at least ``LAMBDA_FLOOR``·mean(Λ): still a valid Λ ≻ 0, and
    the projection onto its convex set lies in the LBEN set (any Λ ≻ 0 certifies)."""
    lam = np.asarray(lam, dtype=np.float64)
    return np.maximum(lam, LAMBDA_FLOOR * max(float(lam.mean()), np.finfo(np.float64).tiny))
