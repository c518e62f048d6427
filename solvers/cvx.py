r"""CVXPY formulations of the polytope projections (the oracle and the ``qp``/``lp`` methods).

The polytope {X : s(x_ii) + Σ_{j≠i} W_ij |x_ij| ≤ γ} is written in epigraph form (SPEC §7.5):

    T ≥ X,  T ≥ −X,  diag(X) + Σ_j (W∘offmask)_ij T_ij ≤ γ       (signed diagonal, μ∞,η)
    T ≥ X,  T ≥ −X,  Σ_j W_ij T_ij ≤ γ                              (‖·‖∞,η)

    qp:  minimize ‖X − V‖_F²       lp:  minimize Σ_ij |X_ij − V_ij|   (not unique in general)

Each Problem is built once per (kind, n, signed diagonal) with V, W and γ as CVXPY Parameters
(DPP), cached, and re-solved with new parameter values, so repeated projections skip the
canonicalization. Defaults: Clarabel with tolerances 1e-10 for the QP, HiGHS for the LP.
``solvers.projection`` then returns feasible rows of V unchanged and nudges the solver's result
inside the polytope in float64 (solver tolerances are not exact feasibility).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from .errors import SolverError

DEFAULT_SOLVER = {"qp": "CLARABEL", "lp": "HIGHS"}
TIGHT = {"CLARABEL": dict(tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10, max_iter=500),
         "OSQP": dict(eps_abs=1e-9, eps_rel=1e-9, max_iter=200000, polishing=True),
         "SCS": dict(eps_abs=1e-9, eps_rel=1e-9, max_iters=200000)}


def check_solver(solver: str | None, default: str) -> str:
    """Upper-case CVXPY solver name; ``TypeError``/``ValueError`` if not a string / not installed."""
    if solver is not None and not isinstance(solver, str):
        raise TypeError(f"solver must be a CVXPY solver name (str), got {type(solver).__name__}")
    name = (solver or default).upper()
    if name not in cp.installed_solvers():
        raise ValueError(f"solver {solver!r} is not an installed CVXPY solver "
                         f"(installed: {', '.join(cp.installed_solvers())})")
    return name


@lru_cache(maxsize=32)
def polytope_problem(kind: str, n: int, signed_diag: bool):
    """The cached DPP Problem and its (V, W, gamma, X) parameters/variable for one shape."""
    V = cp.Parameter((n, n), name="V")
    W = cp.Parameter((n, n), nonneg=True, name="W")
    gamma = cp.Parameter(name="gamma")
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
    return cp.Problem(objective, constraints), V, W, gamma, X


def solve_cached(problem: cp.Problem, solver: str, options: dict) -> None:
    """Solve with the given solver; anything but an optimal status raises SolverError.

    ``options`` update the solver's tight default tolerances (:data:`TIGHT`).
    """
    opts = {**TIGHT.get(solver, {}), **options}
    try:
        problem.solve(solver=solver, **opts)
    except cp.error.SolverError as exc:
        raise SolverError(solver, "solver_error", str(exc)) from None
    if problem.status != cp.OPTIMAL:
        raise SolverError(solver, str(problem.status))


def project_cvxpy(V: torch.Tensor, gamma: float, eta: torch.Tensor | None, *, kind: str,
                  signed_diag: bool, solver: str | None, options: dict) -> torch.Tensor:
    """Project each matrix of the batch V through the cached CVXPY problem (numpy in float64)."""
    name = check_solver(solver, DEFAULT_SOLVER[kind])
    n = V.shape[-1]
    problem, Vp, Wp, gp, X = polytope_problem(kind, n, signed_diag)
    Wnp = np.ones((n, n)) if eta is None else (eta[None, :] / eta[:, None]).double().cpu().numpy()
    if signed_diag:
        Wnp = Wnp * (1.0 - np.eye(n))
    Wp.value = Wnp
    gp.value = float(gamma)
    flat = V.detach().double().cpu().reshape(-1, n, n).numpy()
    result = np.empty_like(flat)
    for k, Vk in enumerate(flat):
        Vp.value = Vk
        solve_cached(problem, name, options)
        result[k] = X.value
    return torch.from_numpy(result.reshape(V.shape)).to(device=V.device, dtype=V.dtype)
