"""What every SDP of :mod:`solvers.sdp` shares: result type, solver, solve, float64 checks.

* :class:`SDPCertificate` — status, value and certificate of one SDP, with ``min_eig`` recomputed
  in float64 (≥ 0: verified).
* :func:`sdp_solver` — an installed CVXPY solver that handles PSD cones (default Clarabel);
  ``_solve`` runs a problem with its default options (SCS: eps 1e-7) and raises
  :class:`solvers.SolverError` unless the status is optimal or optimal_inaccurate.
* :func:`lben_lmi` (2γΛ − ΛA − AᵀΛ), :func:`weighted_mu2` and ``_min_eig``: the float64
  evaluations that verify a certificate independently of the solver's tolerance.

Everything public here is re-exported by :mod:`solvers.sdp`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cvxpy as cp
import numpy as np

from .arrays import to_tensor
from .cvx import check_solver
from .errors import SolverError

DEFAULT_SOLVER = "CLARABEL"
ACCEPTED = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
#: SCS defaults to eps 1e-4 (too coarse for a 1e-7 membership threshold).
DEFAULT_OPTIONS = {"SCS": dict(eps=1e-7, max_iters=100000)}


@dataclass
class SDPCertificate:
    """Result of one SDP. ``value``: the solver's optimum (distance ‖X − A‖_F, t, L or γ');
    ``Lambda``: diagonal of Λ (shape (n,)), ``X``: the projected matrix (float64), ``min_eig``:
    λ_min of the LMI recomputed in float64 with the returned numbers (≥ 0: verified; for
    :func:`solvers.sdp.lben_margin` it is the certified lower bound on t*), ``upper``: certified
    upper bound on t* (:func:`solvers.sdp.lben_margin` only)."""
    kind: str
    status: str
    solver: str
    value: float
    Lambda: np.ndarray | None = None
    X: np.ndarray | None = None
    min_eig: float = math.nan
    upper: float | None = None

    @property
    def verified(self) -> bool:
        return bool(self.min_eig >= 0)


# ----------------------------------------------------------------------------- helpers
def sdp_solver(solver: str | None) -> str:
    """Installed CVXPY solver name that handles PSD cones (ValueError otherwise)."""
    if solver is not None and not isinstance(solver, str):
        raise TypeError(f"solver must be a CVXPY solver name (str), got {type(solver).__name__}")
    return _sdp_solver(solver)


@lru_cache(maxsize=None)
def _sdp_solver(solver: str | None) -> str:  # installed_solvers() takes milliseconds: cache
    name = check_solver(solver, DEFAULT_SOLVER)
    from cvxpy.reductions.solvers.defines import SOLVER_MAP_CONIC
    cls = SOLVER_MAP_CONIC.get(name)
    if cls is None or not any("PSD" in c.__name__ for c in cls.SUPPORTED_CONSTRAINTS):
        ok = [s for s in cp.installed_solvers() if s in SOLVER_MAP_CONIC and any(
            "PSD" in c.__name__ for c in SOLVER_MAP_CONIC[s].SUPPORTED_CONSTRAINTS)]
        raise ValueError(f"solver {solver!r} cannot solve semidefinite programs "
                         f"(installed SDP solvers: {', '.join(ok)})")
    return name


def _matrix(A: Any, name: str = "A") -> np.ndarray:
    T, _ = to_tensor(A, name, allow_batch=False)
    return T.detach().cpu().double().numpy()


def _solve(problem: cp.Problem, solver: str, options: dict) -> str:
    opts = {**DEFAULT_OPTIONS.get(solver, {}), **options}
    try:
        with warnings.catch_warnings():  # inaccurate solutions are reported by their status
            warnings.filterwarnings("ignore", message="Solution may be inaccurate")
            problem.solve(solver=solver, **opts)
    except cp.error.SolverError as exc:
        raise SolverError(solver, "solver_error", str(exc)) from None
    status = str(problem.status)
    if status not in ACCEPTED:
        raise SolverError(solver, status.replace("_inaccurate", ""),
                          "no feasible point exists" if "infeasible" in status else "")
    return status


def lben_lmi(A: np.ndarray, lam: np.ndarray, gamma: float) -> np.ndarray:
    """2γΛ − ΛA − AᵀΛ for Λ = diag(lam), in float64."""
    LA = lam[:, None] * A
    return 2 * gamma * np.diag(lam) - LA - LA.T


def _min_eig(M: np.ndarray) -> float:
    return float(np.linalg.eigvalsh((M + M.T) / 2)[0])


def weighted_mu2(A: np.ndarray, lam: np.ndarray) -> float:
    """μ₂ in the Λ-weighted norm: the least γ with LMI(Λ, A, γ) ⪰ 0, i.e.
    λ_max(Λ^-½ sym(ΛA) Λ^-½); +inf unless λ > 0."""
    if not np.all(lam > 0):
        return math.inf
    s = 1 / np.sqrt(lam)
    LA = lam[:, None] * A
    return float(np.linalg.eigvalsh(s[:, None] * ((LA + LA.T) / 2) * s[None, :])[-1])

