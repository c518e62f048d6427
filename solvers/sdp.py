r"""CVXPY semidefinite programs for the Euclidean well-posedness sets (monDEQ's M, LBEN's L).

Every function solves one SDP per matrix (cached DPP problems per shape, as in ``solvers.cvx``)
and returns an :class:`SDPCertificate`: the solver's status and optimal value, the certificate
(the diagonal of Λ, a projected matrix X) and ``min_eig``, the smallest eigenvalue of the LMI
**recomputed in float64 from the returned numbers** (≥ 0 ⇔ the certificate verifies; it never
relies on the solver's tolerance). A status other than optimal / optimal_inaccurate, or a
certificate that cannot be made to verify, raises :class:`solvers.SolverError`; an infeasible
problem is raised with ``status="infeasible"``.

    LMI(Λ, A, γ) := 2γΛ − ΛA − AᵀΛ,   Λ = diag(λ) ⪰ 0                        (docs/math.md §2.3, set L)

* :func:`project_monotone_sdp`  min ‖X − A‖_F  s.t.  γI − (X + Xᵀ)/2 ⪰ 0   (cross-check of the
  eigenvalue clip ``conditions.Monotone.project``; the clip is exact, this is the oracle).
* :func:`project_lben_sdp`      min ‖X − A‖_F  s.t.  LMI(Λ, X, γ) ⪰ 0 for one fixed Λ ≻ 0
  (a convex set; the LBEN set is the union over Λ and is not convex).
  Both projections return a matrix that already satisfies the LMI in float64 unchanged (status
  ``"feasible_input"``, no solve) and otherwise shift the solver's X by −δI if rounding left it
  outside, so the result always verifies.
* :func:`lben_margin`            max t  s.t.  LMI(Λ, A, γ) ⪰ tI, λ ≥ 0, Σλ = n   (docs/math.md §9.2).
  ``min_eig`` = λ_min(LMI) at the returned Λ (normalised) is a certified lower bound on t*;
  ``upper`` = n·maxᵢ⟨Z, Mᵢ⟩ / tr Z from the dual matrix Z ⪰ 0 is a certified upper bound
  (Mᵢ = ∂LMI/∂λᵢ). A ∈ L (strictly, at γ) iff t* > 0; docs/math.md §9.2 uses t* > 1e-7.
* :func:`lben_certificate`       Λ with LMI(Λ, A, γ) ≻ margin·I, verified; else SolverError
  ("infeasible" when the dual bound proves that no Λ exists).
* :func:`lben_measure`           γ'(A) = inf{γ : ∃Λ ≻ 0 diagonal, LMI(Λ, A, γ) ⪰ 0}
  = inf_Λ μ₂(Λ^½AΛ^-½) by bisection (a generalized eigenvalue problem). The returned value is
  attained by a verified Λ (an upper bound within ``tol`` of γ'); lower bound α(A) = max Re λ(A).
* :func:`l2_lipschitz_certificate`  min L  s.t.  [[LMI(Λ,A,1), −ΛB, Cᵀ], [−BᵀΛ, L·I, Dᵀ],
  [C, D, L·I]] ⪰ 0: then Lip₂(u ↦ y = Cx + c + Du) ≤ L for every slope-[0, 1] activation (the
  incremental quadratic constraint ⟨Δv − Δx, ΛΔx⟩ ≥ 0 of a diagonal Λ ⪰ 0, LBEN Theorem; with
  ``multiplier="scalar"`` Λ = λI, the monDEQ-type certificate).

Default solver: Clarabel (``solver=`` any installed CVXPY solver that handles PSD cones; an
unknown or non-SDP solver raises ValueError). SCS is much faster for n ≳ 30 (Clarabel's dense
PSD cone at n = 50 takes seconds) at accuracy ~1e-6; certificates are verified either way.
``solvers.cvx.check_solver`` is reused; ``solve_cached`` is not (it rejects optimal_inaccurate
and applies the QP tolerances): here the status is reported and the numbers verified instead.
The result type, the solver check, the solve and the float64 LMI checks shared by every program
are in :mod:`solvers.sdp_base` (re-exported here).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from .arrays import check_scalar, to_tensor
from .errors import SolverError
from .sdp_base import (ACCEPTED, DEFAULT_OPTIONS, DEFAULT_SOLVER,  # noqa: F401 (re-export)
                       SDPCertificate, _matrix, _min_eig, _solve, lben_lmi, sdp_solver,
                       weighted_mu2)

__all__ = ["SDPCertificate", "project_monotone_sdp", "project_lben_sdp", "lben_margin",
           "lben_certificate", "lben_member", "lben_measure", "l2_lipschitz_certificate",
           "lben_lmi", "weighted_mu2", "sdp_solver"]


# ----------------------------------------------------------------------------- helpers
def _shift_inside(X: np.ndarray, lam: np.ndarray, gamma: float,
                  dtype: np.dtype = np.dtype(np.float64)) -> np.ndarray:
    """Shift X by −δI (LMI grows by 2δΛ) until LMI(Λ, X, γ) ⪰ 0 holds in float64 for X as
    stored in ``dtype`` (CONVENTIONS §1: feasible when the stored tensor is evaluated in float64;
    rounding to float32 can move the smallest eigenvalue by ~1e-7). Returns float64 values that
    ``dtype`` represents exactly."""
    scale = 1.0 + np.abs(X).max() + abs(gamma)
    for k in range(80):
        stored = X.astype(dtype).astype(np.float64)
        e = _min_eig(lben_lmi(stored, lam, gamma))
        if e >= 0:
            return stored
        X = X - (-e / (2 * lam.min()) + 2.0 ** k * 1e-15 * scale) * np.eye(X.shape[0])
    raise SolverError("float64", "unverified", "could not shift the solution inside the set")


def _storage_dtype(A: Any, dtype: Any) -> np.dtype:
    """The floating dtype a result is stored in: ``dtype`` (numpy or torch), else A's own
    (a float32 tensor or array stays float32), else float64."""
    if dtype is None:
        dtype = getattr(A, "dtype", None)
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point and dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the SDP projections store float32 or float64, got {dtype}")
        dtype = {torch.float32: np.float32}.get(dtype, np.float64)
    dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float64)
    if dtype == np.float16:
        raise ValueError("the SDP projections store float32 or float64, got float16")
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


# ----------------------------------------------------------------------------- cached problems
@lru_cache(maxsize=32)
def _projection_problem(n: int, kind: str):
    V = cp.Parameter((n, n), name="V")
    g = cp.Parameter(name="gamma")
    lam = cp.Parameter(n, nonneg=True, name="lam")
    glam = cp.Parameter(n, name="gamma_lam")  # γλ as one parameter keeps the problem DPP
    X = cp.Variable((n, n), name="X")
    if kind == "monotone":
        lmi = 2 * g * np.eye(n) - X - X.T
    else:
        L = cp.diag(lam)
        lmi = 2 * cp.diag(glam) - L @ X - X.T @ L
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - V)), [lmi >> 0])
    return prob, V, g, lam, glam, X


@lru_cache(maxsize=32)
def _margin_problem(n: int):
    A = cp.Parameter((n, n), name="A")
    g = cp.Parameter(name="gamma")
    lam = cp.Variable(n, nonneg=True, name="lam")
    t = cp.Variable(name="t")
    L = cp.diag(lam)
    con = (2 * g * L - L @ A - A.T @ L - t * np.eye(n)) >> 0
    return cp.Problem(cp.Maximize(t), [con, cp.sum(lam) == n]), A, g, lam, t, con


@lru_cache(maxsize=32)
def _lipschitz_problem(n: int, p: int, q: int, scalar: bool):
    A, B = cp.Parameter((n, n), name="A"), cp.Parameter((n, p), name="B")
    C, D = cp.Parameter((q, n), name="C"), cp.Parameter((q, p), name="D")
    lam = cp.Variable(1 if scalar else n, nonneg=True, name="lam")
    Lip = cp.Variable(name="L")
    L = lam * np.eye(n) if scalar else cp.diag(lam)
    M = cp.bmat([[2 * L - L @ A - A.T @ L, -L @ B, C.T],
                 [-B.T @ L, Lip * np.eye(p), D.T],
                 [C, D, Lip * np.eye(q)]])
    return cp.Problem(cp.Minimize(Lip), [M >> 0]), A, B, C, D, lam, Lip


# ----------------------------------------------------------------------------- projections
def project_monotone_sdp(A: Any, gamma: float, *, solver: str | None = None, **options: Any
                         ) -> SDPCertificate:
    """Frobenius projection of one matrix onto {μ₂(X) ≤ γ} by SDP (oracle for the clip).

    ``X`` is shifted by −δI if needed so that γ − μ₂(X) ≥ 0 in float64 (μ₂ evaluated as
    ``lipdeq.geometry.mu_2`` does); ``min_eig`` = 2(γ − μ₂(X)) = λ_min(2γI − X − Xᵀ)."""
    V = _matrix(A)
    gamma = check_scalar(gamma, "gamma")
    name = sdp_solver(solver)
    if _mu2_margin(V, gamma) >= 0:  # feasible: its own projection
        return SDPCertificate("monotone_projection", "feasible_input", name, 0.0,
                              np.ones(len(V)), V.copy(), _mu2_margin(V, gamma))
    prob, Vp, g, _, _, X = _projection_problem(V.shape[0], "monotone")
    Vp.value, g.value = V, gamma
    status = _solve(prob, name, options)
    Xv = np.asarray(X.value, dtype=np.float64)
    scale = 1.0 + np.abs(Xv).max() + abs(gamma)
    for k in range(60):
        e = _mu2_margin(Xv, gamma)
        if e >= 0:
            break
        Xv = Xv - (-e / 2 + 2.0 ** k * 1e-15 * scale) * np.eye(len(V))
    return SDPCertificate("monotone_projection", status, name, float(np.linalg.norm(Xv - V)),
                          np.ones(V.shape[0]), Xv, _mu2_margin(Xv, gamma))


def _mu2_margin(X: np.ndarray, gamma: float) -> float:
    """2(γ − μ₂(X)), μ₂ computed exactly as ``lipdeq.geometry.mu_2`` does (torch eigvalsh)."""
    T = torch.from_numpy(X)
    return float(2 * (gamma - torch.linalg.eigvalsh((T + T.T) / 2)[-1]))


def project_lben_sdp(A: Any, gamma: float, Lambda: Any, *, solver: str | None = None,
                     dtype: Any = None, **options: Any) -> SDPCertificate:
    """Frobenius projection of one matrix onto {X : 2γΛ − ΛX − XᵀΛ ⪰ 0} for a fixed Λ ≻ 0.

    ``Lambda``: the diagonal (n,) or a diagonal matrix; it is rescaled to mean 1 (the set does
    not change). X is shifted by −δI if needed so that the LMI holds in float64 once X is
    stored in ``dtype`` (default: A's own floating dtype, float64 otherwise); ``X`` holds
    values that dtype represents exactly."""
    store = _storage_dtype(A, dtype)
    V = _matrix(A)
    gamma = check_scalar(gamma, "gamma")
    lam = _lambda_vector(Lambda, V.shape[0])
    name = sdp_solver(solver)
    if _min_eig(lben_lmi(V, lam, gamma)) >= 0:  # feasible: its own projection
        return SDPCertificate("lben_projection", "feasible_input", name, 0.0, lam, V.copy(),
                              _min_eig(lben_lmi(V, lam, gamma)))
    prob, Vp, _, lp, glp, X = _projection_problem(V.shape[0], "lben")
    Vp.value, lp.value, glp.value = V, lam, gamma * lam
    status = _solve(prob, name, options)
    Xv = _shift_inside(np.asarray(X.value, dtype=np.float64), lam, gamma, store)
    return SDPCertificate("lben_projection", status, name, float(np.linalg.norm(Xv - V)), lam,
                          Xv, _min_eig(lben_lmi(Xv, lam, gamma)))


def _lambda_vector(Lambda: Any, n: int) -> np.ndarray:
    lam = np.asarray(Lambda.detach().cpu() if isinstance(Lambda, torch.Tensor) else Lambda,
                     dtype=np.float64)
    if lam.ndim == 2:
        if lam.shape != (n, n) or np.any(lam != np.diag(np.diag(lam))):
            raise ValueError(f"Lambda must be a diagonal ({n}, {n}) matrix or a vector of length {n}")
        lam = np.diag(lam).copy()
    if lam.shape != (n,) or not np.all(np.isfinite(lam)) or not np.all(lam > 0):
        raise ValueError(f"Lambda must be a positive finite vector of length {n}, got {lam!r}")
    return lam / lam.mean()


# ----------------------------------------------------------------------------- LBEN membership
def lben_margin(A: Any, gamma: float = 1.0, *, solver: str | None = None, **options: Any
                ) -> SDPCertificate:
    """max t s.t. 2γΛ − ΛA − AᵀΛ ⪰ tI, λ ≥ 0, Σλ = n (docs/math.md §9.2), with certified bounds.

    ``value`` = the solver's t; ``min_eig`` ≤ t* ≤ ``upper`` are certified in float64 (the
    returned Λ, normalised, and the dual matrix Z ⪰ 0 projected onto the PSD cone)."""
    M = _matrix(A)
    gamma = check_scalar(gamma, "gamma")
    n = M.shape[0]
    name = sdp_solver(solver)
    prob, Ap, g, lam, t, con = _margin_problem(n)
    Ap.value, g.value = M, gamma
    status = _solve(prob, name, options)
    lv = np.clip(np.asarray(lam.value, dtype=np.float64), 0.0, None)
    lv = lv * (n / lv.sum()) if lv.sum() > 0 else np.ones(n)
    lower = _min_eig(lben_lmi(M, lv, gamma))
    upper = None
    if con.dual_value is not None:
        Z = np.asarray(con.dual_value, dtype=np.float64)
        w, U = np.linalg.eigh((Z + Z.T) / 2)
        Z = (U * np.clip(w, 0, None)) @ U.T
        if np.trace(Z) > 0:
            c = 2 * gamma * np.diag(Z) - 2 * (Z * M).sum(1)
            upper = float(n * c.max() / np.trace(Z))
    return SDPCertificate("lben_margin", status, name, float(t.value), lv, None, lower, upper)


def lben_member(A: Any, gamma: float = 1.0, *, threshold: float = 1e-7,
                solver: str | None = None, fallback: str | None = DEFAULT_SOLVER,
                tiers: list | None = None, **options: Any) -> tuple[bool, bool, float]:
    """Is t*(A, γ) > ``threshold`` (docs/math.md §9.2)? Returns ``(member, certified, t)``.

    ``tiers``: (solver, options) pairs tried in order, default ``[(solver, options),
    (fallback, {})]``. A tier decides when the certified bounds of :func:`lben_margin` lie on one
    side of the threshold (``certified=True``); if none does, the last solver's t decides
    (``certified=False``)."""
    threshold = check_scalar(threshold, "threshold")  # NaN compared False: "not a member"
    if tiers is None:
        tiers = [(solver, options)]
        if fallback is not None and sdp_solver(fallback) != sdp_solver(solver):
            tiers.append((fallback, {}))
    cert = None
    for name, opts in tiers:
        cert = lben_margin(A, gamma, solver=name, **opts)
        if cert.min_eig > threshold:
            return True, True, cert.value
        if cert.upper is not None and cert.upper <= threshold:
            return False, True, cert.value
    return cert.value > threshold, False, cert.value


def lben_certificate(A: Any, gamma: float = 1.0, *, margin: float = 1e-7,
                     solver: str | None = None, **options: Any) -> SDPCertificate:
    """A diagonal Λ ≻ 0 with 2γΛ − ΛA − AᵀΛ ⪰ margin·I (mean λ = 1), verified in float64.

    The default margin is docs/math.md §9.2's membership threshold t > 1e-7 (A strictly inside).

    Raises SolverError with status ``"infeasible"`` when the dual certificate proves that no such
    Λ exists, and ``"inconclusive"`` when the SDP's accuracy cannot decide (A on the boundary)."""
    cert = lben_margin(A, gamma, solver=solver, **options)
    if cert.min_eig > margin:
        return SDPCertificate("lben_certificate", cert.status, cert.solver, cert.value,
                              cert.Lambda / cert.Lambda.mean(), None, cert.min_eig, cert.upper)
    if cert.upper is not None and cert.upper <= margin:
        raise SolverError(cert.solver, "infeasible",
                          f"no diagonal Λ ≻ 0 gives 2γΛ − ΛA − AᵀΛ ⪰ {margin:g}·I at γ={gamma:g} "
                          f"(certified: max t ≤ {cert.upper:.3g})")
    raise SolverError(cert.solver, "inconclusive",
                      f"the LMI margin {cert.min_eig:.3g} ≤ t* ≤ {cert.upper} straddles {margin:g}")


def lben_measure(A: Any, *, tol: float = 1e-6, solver: str | None = None,
                 max_solves: int = 60, **options: Any) -> Any:
    """γ'(A) = smallest γ with a diagonal Λ ≻ 0 such that 2γΛ − ΛA − AᵀΛ ⪰ 0 (docs/math.md §2.3, L).

    A numpy array or torch tensor of shape (n, n) or (..., n, n); returns the caller's type (a
    float per matrix). Bisection on γ between α(A) = max Re λ(A) (a lower bound) and the best
    verified Λ (start: Λ = I, μ₂(A)); each step solves :func:`lben_margin`. The value returned
    is attained by a verified Λ: an upper bound within ``tol``·(1 + |γ'|) of γ' (up to the
    SDP's accuracy when the bisection's infeasible side is decided by the solver)."""
    if isinstance(max_solves, bool) or not isinstance(max_solves, int) or max_solves < 1:
        raise ValueError(f"max_solves must be a positive integer, got {max_solves!r}")
    if not check_scalar(tol, "tol") > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    T, back = to_tensor(A)
    flat = T.detach().cpu().double().reshape(-1, T.shape[-1], T.shape[-1]).numpy()
    vals = np.array([_measure_one(M, tol, solver, max_solves, options) for M in flat])
    return back(torch.from_numpy(vals.reshape(T.shape[:-2])).to(dtype=T.dtype, device=T.device))


def _measure_one(M: np.ndarray, tol: float, solver, max_solves: int, options: dict) -> float:
    n = M.shape[0]
    lo = float(np.linalg.eigvals(M).real.max())
    hi = weighted_mu2(M, np.ones(n))
    for _ in range(max_solves):
        if hi - lo <= tol * (1 + abs(hi)):
            break
        g = (lo + hi) / 2
        cert = lben_margin(M, g, solver=solver, **options)
        hi = min(hi, weighted_mu2(M, cert.Lambda))
        if hi > g:  # no certificate at g: infeasible there (certified or by the solver's t)
            lo = g
    return hi


# ----------------------------------------------------------------------------- ℓ2 Lipschitz
def l2_lipschitz_certificate(A: Any, B: Any, C: Any, D: Any = None, *, multiplier: str = "diagonal",
                             solver: str | None = None, **options: Any) -> SDPCertificate:
    r"""Smallest L with [[2Λ − ΛA − AᵀΛ, −ΛB, Cᵀ], [−BᵀΛ, L·I, Dᵀ], [C, D, L·I]] ⪰ 0.

    Then ‖y(u₁) − y(u₂)‖₂ ≤ L‖u₁ − u₂‖₂ for x = Φ(Ax + Bu + b), y = Cx + c + Du and every
    activation with slopes in [0, 1] (Schur complement of the IQC argument of LBEN). ``value`` is
    L after a float64 check: the solver's L is raised by the smallest relative step in
    1e-12 … 1e-2 that makes the LMI verify (``min_eig`` ≥ 0); SolverError ``"unverified"`` if
    none does, ``"infeasible"`` if no Λ exists (A not strictly inside the LBEN set at γ = 1)."""
    if multiplier not in ("diagonal", "scalar"):
        raise ValueError(f"multiplier must be 'diagonal' or 'scalar', got {multiplier!r}")
    Am = _matrix(A)
    n = Am.shape[0]
    Bm = to_tensor(B, "B", square=False, min_ndim=2)[0].double().cpu().numpy()
    Cm = to_tensor(C, "C", square=False, min_ndim=2)[0].double().cpu().numpy()
    if Bm.ndim != 2 or Bm.shape[0] != n or Cm.ndim != 2 or Cm.shape[1] != n:
        raise ValueError(f"B must be ({n}, p) and C (q, {n}); got {Bm.shape} and {Cm.shape}")
    p, q = Bm.shape[1], Cm.shape[0]
    Dm = np.zeros((q, p)) if D is None else to_tensor(D, "D", square=False, min_ndim=2)[0].double().cpu().numpy()
    if Dm.shape != (q, p):
        raise ValueError(f"D must be ({q}, {p}), got {Dm.shape}")
    name = sdp_solver(solver)
    prob, Ap, Bp, Cp, Dp, lam, Lip = _lipschitz_problem(n, p, q, multiplier == "scalar")
    Ap.value, Bp.value, Cp.value, Dp.value = Am, Bm, Cm, Dm
    try:
        status = _solve(prob, name, options)
    except SolverError:
        # Outside L the problem is (often only weakly) infeasible and solvers fail to say so.
        cert = lben_margin(Am, 1.0, solver=name)
        if cert.upper is not None and cert.upper <= 0:
            raise SolverError(name, "infeasible", "A is not strictly inside the LBEN set at γ = 1 "
                              f"(certified: max t ≤ {cert.upper:.3g}), so no ℓ2 certificate exists"
                              ) from None
        raise
    lv = np.clip(np.asarray(lam.value, dtype=np.float64).reshape(-1), 0.0, None)
    lv = np.full(n, lv[0]) if multiplier == "scalar" else lv
    L0 = float(Lip.value)
    for step in [0.0] + [10.0 ** -k for k in range(12, 1, -1)]:
        L = L0 * (1 + step) + step
        e = _min_eig(_lipschitz_lmi(Am, Bm, Cm, Dm, lv, L))
        if e >= 0:
            return SDPCertificate("l2_lipschitz", status, name, L, lv, None, e)
    raise SolverError(name, "unverified", f"the LMI at L={L0:.6g} has eigenvalue {e:.3g} < 0")


def _lipschitz_lmi(A, B, C, D, lam, L):
    p, q = B.shape[1], C.shape[0]
    LB = lam[:, None] * B
    return np.block([[lben_lmi(A, lam, 1.0), -LB, C.T],
                     [-LB.T, L * np.eye(p), D.T],
                     [C, D, L * np.eye(q)]])
