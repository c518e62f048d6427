r"""CVXPY formulations of the polytope projections (the oracle and the ``qp``/``lp`` methods).

The polytope {X : s(x_ii) + Σ_{j≠i} W_ij |x_ij| ≤ γ} is written in epigraph form (docs/math.md §7.5):

    T ≥ X,  T ≥ −X,  diag(X) + Σ_j (W∘offmask)_ij T_ij ≤ γ       (signed diagonal, μ∞,η)
    T ≥ X,  T ≥ −X,  Σ_j W_ij T_ij ≤ γ                              (‖·‖∞,η)

    qp:  minimize ‖X − V‖_F²       lp:  minimize Σ_ij |X_ij − V_ij|   (not unique in general)

Each Problem is built once per (kind, n, signed diagonal, η) with V and γ as CVXPY Parameters
(DPP) and W as a constant, cached, and re-solved with new parameter values, so repeated projections skip the
canonicalization. Defaults: Clarabel with tolerances 1e-12 for the QP (docs/math.md §7.5), HiGHS for the LP.
Rows of V that are already feasible are not handed to the solver (they are returned as they are),
QP rows are polished to the exact KKT point when the solver's support passes the KKT checks, and
``solvers.projection`` then nudges the result inside the polytope in float64 (solver
tolerances are not exact feasibility).
"""
from __future__ import annotations

import warnings
from functools import lru_cache

import cvxpy as cp
import numpy as np
import torch

from .errors import SolverError

DEFAULT_SOLVER = {"qp": "CLARABEL", "lp": "HIGHS"}
#: Support thresholds tried by the QP polish, relative to the row scale (a wrong support fails
#: the KKT check, so more candidates only cost time on rows the first ones did not settle).
POLISH_THRESHOLDS = (1e-7, 1e-9, 1e-11, 1e-5, 1e-6, 1e-4, 1e-8, 1e-10, 1e-3, 1e-2)
TIGHT = {"CLARABEL": dict(tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500),
         "OSQP": dict(eps_abs=1e-9, eps_rel=1e-9, max_iter=200000, polishing=True),
         "SCS": dict(eps_abs=1e-9, eps_rel=1e-9, max_iters=200000)}

#: Tolerances of a second attempt when the tight ones make the solver fail numerically (seen with
#: Clarabel at 1e-12 on a 4×4 μ∞ problem whose rows all share one breakpoint); the QP rows are
#: then polished and KKT-checked as usual, so the answer stays exact.
RETRY = {"CLARABEL": dict(tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9, max_iter=500)}


def check_solver(solver: str | None, default: str) -> str:
    """Upper-case CVXPY solver name; ``TypeError``/``ValueError`` if not a string / not installed."""
    if solver is not None and not isinstance(solver, str):
        raise TypeError(f"solver must be a CVXPY solver name (str), got {type(solver).__name__}")
    name = (solver or default).upper()
    if name not in cp.installed_solvers():
        raise ValueError(f"solver {solver!r} is not an installed CVXPY solver "
                         f"(installed: {', '.join(cp.installed_solvers())})")
    return name


def weight_matrix(n: int, eta: np.ndarray | None, signed_diag: bool) -> np.ndarray:
    """W[i, j] = η_j/η_i (ones for η = None), with a zero diagonal when the diagonal is signed."""
    W = np.ones((n, n)) if eta is None else eta[None, :] / eta[:, None]
    return W * (1.0 - np.eye(n)) if signed_diag else W


def polytope_problem(kind: str, n: int, signed_diag: bool, eta: np.ndarray | None = None):
    """The cached DPP Problem and its (V, gamma, X) parameters/variable for one shape and η.

    W enters as a constant: a (n, n) Parameter multiplying the (n, n) variable T would make
    CVXPY's DPP tensor n⁴ large (32 GiB at n = 256). Problems are cached per
    (kind, n, signed diagonal, η) — η by value.
    """
    key = None if eta is None else np.ascontiguousarray(eta, dtype=np.float64).tobytes()
    return _polytope_problem(kind, n, signed_diag, key)


@lru_cache(maxsize=32)
def _polytope_problem(kind: str, n: int, signed_diag: bool, eta_key: bytes | None):
    eta = None if eta_key is None else np.frombuffer(eta_key, dtype=np.float64)
    W = weight_matrix(n, eta, signed_diag)
    V = cp.Parameter((n, n), name="V")
    gamma = cp.Parameter(n, name="gamma")  # per row: rows are solved rescaled (project_cvxpy)
    X = cp.Variable((n, n), name="X")
    T = cp.Variable((n, n), name="T")
    rows = cp.sum(cp.multiply(W, T), axis=1)
    if signed_diag:
        rows = cp.diag(X) + rows  # W carries zeros on its diagonal in this case
    constraints = [T >= X, T >= -X, rows <= gamma]
    if kind == "qp":
        objective = cp.Minimize(cp.sum_squares(X - V))
    else:
        objective = cp.Minimize(cp.sum(cp.abs(X - V)))
    return cp.Problem(objective, constraints), V, gamma, X


def clear_cache() -> None:
    """Forget every cached Problem (the next solve pays the canonicalization again)."""
    _polytope_problem.cache_clear()


def solve_cached(problem: cp.Problem, solver: str, options: dict, *,
                 allow_inaccurate: bool = False) -> str:
    """Solve with the given solver and return the status.

    Anything but an optimal status raises SolverError, except ``optimal_inaccurate`` when
    ``allow_inaccurate`` (the caller then certifies the point itself). ``options`` update the
    solver's tight default tolerances (:data:`TIGHT`); when those make the solver fail and the
    caller set no tolerance, it is tried once more with :data:`RETRY`.
    """
    attempts = [{**TIGHT.get(solver, {}), **options}]
    if solver in RETRY and not set(options) & set(RETRY[solver]):
        attempts.append({**RETRY[solver], **options})  # only when the caller set no tolerance
    for i, opts in enumerate(attempts):
        try:
            problem.solve(solver=solver, **opts)
        except cp.error.SolverError as exc:
            if i + 1 < len(attempts):
                continue
            raise SolverError(solver, "solver_error", str(exc)) from None
        break
    status = str(problem.status)
    if status == cp.OPTIMAL or (allow_inaccurate and status == cp.OPTIMAL_INACCURATE):
        return status
    raise SolverError(solver, status)


def row_scales(V: np.ndarray, gamma: float) -> np.ndarray:
    """sᵢ = max(maxⱼ|vᵢⱼ|, |γ|), 1 where that is 0: the factor :func:`project_cvxpy` divides row
    i by before the solve (the cached problem's variable X holds the rescaled rows)."""
    scale = np.maximum(np.abs(V).max(-1), abs(float(gamma)))
    return np.where(scale > 0, scale, 1.0)


def project_cvxpy(V: torch.Tensor, gamma: float, eta: torch.Tensor | None, *, kind: str,
                  signed_diag: bool, solver: str | None, options: dict,
                  feasible: torch.Tensor | None = None) -> torch.Tensor:
    """Project each matrix of the batch V through the cached CVXPY problem (numpy in float64).

    ``feasible`` (shape (..., n), optional) marks rows of V already inside the polytope: their
    projection is themselves, so they are replaced by a strictly interior row for the solve (a
    row on the boundary makes the interior-point problem degenerate), matrices with no
    infeasible row are not solved at all, and V's rows are put back. For ``kind="qp"``
    each solved row is then polished: with the support S the solver found, the multiplier
    λ_S = (v_ii − γ + Σ_S w|v|)/(1 + Σ_S w²) (for ‖·‖∞: (Σ_S w|v| − γ)/Σ_S w²) is kept if it
    satisfies the KKT conditions of docs/math.md §7.2 (then it is the exact optimum, up to rounding),
    otherwise the solver's row is kept (interior-point accuracy is about 1e-7 on such rows).
    An ``optimal_inaccurate`` QP status is accepted only when every solved row passes that
    check; any other non-optimal status raises :class:`SolverError`.

    Each row is solved rescaled: with sᵢ = max(maxⱼ|vᵢⱼ|, |γ|) (1 when both are 0), row i of
    P_γ(V) is sᵢ·(row i of the projection of V's row/sᵢ onto the row set of radius γ/sᵢ): exact,
    since both objectives separate by rows and each row's problem is homogeneous in (x, γ).
    The solvers' tolerances are absolute, so without it rows with entries near 1e-3 (a whole
    small matrix, or small rows next to large ones) came back inexact or raised.
    """
    name = check_solver(solver, DEFAULT_SOLVER[kind])
    n = V.shape[-1]
    eta_np = None if eta is None else eta.detach().double().cpu().numpy()
    problem, Vp, gp, X = polytope_problem(kind, n, signed_diag, eta_np)
    Wnp = weight_matrix(n, eta_np, signed_diag)
    flat = V.detach().double().cpu().reshape(-1, n, n).numpy()
    feas = (np.zeros(flat.shape[:2], dtype=bool) if feasible is None
            else feasible.detach().cpu().reshape(-1, n).numpy())
    result = flat.copy()
    for k, Vk in enumerate(flat):
        if feas[k].all():
            continue
        if not signed_diag and gamma == 0.0:  # every row's ball is {0}: no interior point
            result[k] = np.where(feas[k][:, None], Vk, 0.0)
            continue
        scale = row_scales(Vk, gamma)
        g = float(gamma) / scale
        Vs = Vk / scale[:, None]
        if feas[k].any():
            inside = np.zeros((n, n))
            if signed_diag:
                np.fill_diagonal(inside, g - 1.0)
            Vs[feas[k]] = inside[feas[k]]
        Vp.value, gp.value = Vs, g
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            status = solve_cached(problem, name, options, allow_inaccurate=kind == "qp")
        if X.value is None:
            raise SolverError(name, status, "no solution returned")
        Xk = np.asarray(X.value, dtype=np.float64)
        if kind == "qp":
            Xk, ok = _polish_rows(Vk / scale[:, None], Xk, Wnp, g, signed_diag)
            if status != cp.OPTIMAL and not ok[~feas[k]].all():
                raise SolverError(name, status, "and the KKT conditions could not be verified")
        Xk = Xk * scale[:, None]
        Xk[feas[k]] = Vk[feas[k]]
        result[k] = Xk
    return torch.from_numpy(result.reshape(V.shape)).to(device=V.device, dtype=V.dtype)


def _polish_rows(V: np.ndarray, X: np.ndarray, W: np.ndarray, gamma: float, signed_diag: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Active-set polish of a QP solution X (see :func:`project_cvxpy`), row by row.

    The support S = {j : |x_ij| > τ} is read off X for each τ of :data:`POLISH_THRESHOLDS` (relative to the
    row's size); a row is replaced by the KKT point of the first S whose multiplier passes the
    KKT checks to 1e-12 (relative). Returns the polished matrix and the rows that passed.
    """
    n = V.shape[0]
    absV = np.abs(V)
    off = ~np.eye(n, dtype=bool) if signed_diag else np.ones((n, n), dtype=bool)
    scale = 1.0 + (absV * np.where(off, W, 1.0)).sum(1) + np.abs(gamma)
    eps = 1e-12 * scale
    result, done = X.copy(), np.zeros(n, dtype=bool)
    for rel in POLISH_THRESHOLDS:
        S = (np.abs(X) > rel * scale[:, None]) & off
        c1 = np.where(S, W * absV, 0.0).sum(1)
        c2 = np.where(S, W * W, 0.0).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = ((np.diagonal(V) - gamma + c1) / (1.0 + c2) if signed_diag
                   else (c1 - gamma) / c2)
        ok = np.isfinite(lam) & (lam >= -eps)
        lam = np.where(ok, np.maximum(lam, 0.0), 0.0)
        resid = absV - lam[:, None] * W
        ok &= (np.all(~S | (resid >= -eps[:, None]), axis=1)
               & np.all(S | ~off | (resid <= eps[:, None]), axis=1))
        P = np.sign(V) * np.maximum(resid, 0.0)
        if signed_diag:
            np.fill_diagonal(P, np.diagonal(V) - lam)
        new = ok & ~done
        result[new] = P[new]
        done |= ok
        if done.all():
            break
    return result, done
