"""Projections through CVXPY (qp/lp methods) against the exact closed form and independent oracles
(docs/math.md §7)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lipdeq.geometry import mu_inf, norm_inf
from lipdeq.solvers import SolverError, project_mu_inf, project_norm_inf

# shared helpers and fixtures
from test_projection import (KINDS, PROJECTIONS, cvxpy_oracle, problems, scale_of)  # noqa: F401


# ----------------------------------------------------------------------------- CVXPY oracles and methods
QP_CASES = [  # (n, weighted, gamma, seed)
    (1, False, -1.0, 0), (2, True, 0.5, 1), (5, False, 0.0, 2), (5, True, -0.7, 3),
    (12, True, 0.99, 4), (20, False, 0.3, 5), (20, True, -1.0, 6),
]


def structured_matrix(n, seed):
    """Random, plus negative diagonal, a zero row, ties and a feasible row."""
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((n, n)) * 2
    V -= np.diag(rng.uniform(0, 4, n))
    if n >= 3:
        V[1] = 0.0
        V[2] = np.round(V[2])  # ties
    if n >= 4:
        V[3] = 0.01 * V[3] - 10 * np.eye(n)[3]  # feasible for every γ ≥ −1 in μ∞
    return V


@KINDS
@pytest.mark.parametrize("n,weighted,gamma,seed", QP_CASES)
def test_qp_method_matches_exact(kind, n, weighted, gamma, seed):
    V = structured_matrix(n, seed)
    eta = np.random.default_rng(seed + 100).uniform(0.2, 5, n) if weighted else None
    if kind == "norm":
        gamma = abs(gamma)
    proj = PROJECTIONS[kind]
    Pe = proj(V, gamma, weights=eta)
    Pq = proj(V, gamma, weights=eta, method="qp")
    np.testing.assert_allclose(Pq, Pe, rtol=0, atol=1e-6)
    measure = mu_inf if kind == "mu" else norm_inf
    assert measure(Pq, weights=eta) <= gamma  # the qp result is feasible in float64 too
    if n >= 4 and kind == "mu":
        np.testing.assert_array_equal(Pq[3], V[3])  # feasible rows come back bit for bit


@KINDS
@given(data=st.data())
@settings(max_examples=max(15, settings.default.max_examples // 3))  # CVXPY solves: fewer
def test_qp_method_matches_exact_hypothesis(kind, data):
    # ℓ1 balls of radius in (0, 1e-3) have almost no interior: interior-point solvers then
    # report optimal_inaccurate (a SolverError), which is right but not what is tested here.
    V, gamma, eta = data.draw(problems(kind, max_n=5, min_radius=1e-3))
    proj = PROJECTIONS[kind]
    np.testing.assert_allclose(proj(V, gamma, weights=eta, method="qp"),
                               proj(V, gamma, weights=eta), rtol=0, atol=1e-6 * scale_of(V))


def test_qp_survives_a_numerical_failure_at_tight_tolerance():
    """Found by hypothesis: Clarabel fails ('solver_error') at the 1e-12 tolerances on this input;
    the qp method retries at 1e-9 and still returns the exact projection (rows are polished)."""
    V = np.ones((4, 4)) - np.eye(4)
    eta = np.array([1.0, 1.0, 2.0, 2.0])
    exact = project_mu_inf(V, -0.5, weights=eta)
    np.testing.assert_allclose(project_mu_inf(V, -0.5, weights=eta, method="qp"), exact,
                               rtol=0, atol=1e-9)


@KINDS
@pytest.mark.parametrize("scale", [1e-4, 1e-3, 1e3])
def test_qp_is_exact_at_any_scale(kind, scale):
    """Found by review: at entries near 1e-3 Clarabel's absolute tolerances ended most solves
    'optimal_inaccurate' (errors as large as the entries) and the qp method raised SolverError.
    Each matrix is now solved rescaled, P_γ(V) = s·P_{γ/s}(V/s)."""
    rng = np.random.default_rng(7)
    proj = PROJECTIONS[kind]
    for gamma in (0.0, 0.5):
        for _ in range(8):
            V = rng.normal(size=(6, 6)) * scale
            np.testing.assert_allclose(proj(V, gamma * scale, method="qp"),
                                       proj(V, gamma * scale), rtol=0, atol=1e-9 * scale)



@KINDS
def test_qp_is_exact_for_rows_of_very_different_sizes(kind):
    """Found by review: one scale per matrix left rows 1e6 smaller than the largest one at the
    solver's absolute tolerances (errors of 20% of their entries, status 'optimal'): each row is
    now rescaled by its own size."""
    proj = PROJECTIONS[kind]
    for seed in range(4):
        V = np.random.default_rng(seed).normal(size=(5, 5)) * 1e-3
        V[0] *= 1e6
        err = np.abs(proj(V, 3e-4, method="qp") - proj(V, 3e-4)).max(1)
        assert (err <= 1e-9 * np.abs(V).max(1)).all(), err


@KINDS
@pytest.mark.parametrize("weighted", [False, True])
def test_exact_matches_independent_cvxpy_oracle(kind, weighted):
    n = 7
    V = structured_matrix(n, 11)
    eta = np.random.default_rng(12).uniform(0.2, 5, n) if weighted else None
    gamma = -0.4 if kind == "mu" else 0.8
    X, _ = cvxpy_oracle(V, gamma, eta, kind)
    np.testing.assert_allclose(PROJECTIONS[kind](V, gamma, weights=eta), X, rtol=0, atol=1e-6)


@KINDS
@pytest.mark.parametrize("n,weighted,gamma,seed", QP_CASES[1:6])
def test_lp_method_optimal_value(kind, n, weighted, gamma, seed):
    V = structured_matrix(n, seed)
    eta = np.random.default_rng(seed + 100).uniform(0.2, 5, n) if weighted else None
    if kind == "norm":
        gamma = abs(gamma)
    P = PROJECTIONS[kind](V, gamma, weights=eta, method="lp")
    measure = mu_inf if kind == "mu" else norm_inf
    assert measure(P, weights=eta) <= gamma
    _, opt = cvxpy_oracle(V, gamma, eta, kind, objective="lp")
    assert abs(np.abs(P - V).sum() - opt) <= 1e-6 * max(1.0, opt)
    if n >= 4 and kind == "mu":
        np.testing.assert_array_equal(P[3], V[3])  # a feasible row is its own ℓ1-nearest point


@KINDS
@given(data=st.data())
@settings(max_examples=max(10, settings.default.max_examples // 4))
def test_lp_method_optimal_value_hypothesis(kind, data):
    V, gamma, eta = data.draw(problems(kind, max_n=4))
    P = PROJECTIONS[kind](V, gamma, weights=eta, method="lp")
    assert (mu_inf if kind == "mu" else norm_inf)(P, weights=eta) <= gamma
    _, opt = cvxpy_oracle(V, gamma, eta, kind, objective="lp", solver="HIGHS")
    assert abs(np.abs(P - V).sum() - opt) <= 1e-6 * max(1.0, opt)


@pytest.mark.parametrize("solver", ["OSQP", "SCS", "osqp", "CLARABEL"])
def test_qp_other_solvers(solver):
    V = structured_matrix(5, 21)
    eta = np.array([1.0, 2.0, 0.5, 1.0, 3.0])
    Pe = project_mu_inf(V, 0.2, weights=eta)
    Pq = project_mu_inf(V, 0.2, weights=eta, method="qp", solver=solver)
    np.testing.assert_allclose(Pq, Pe, rtol=0, atol=1e-5)
    assert mu_inf(Pq, weights=eta) <= 0.2


def test_lp_other_solver():
    V = structured_matrix(4, 22)
    P = project_norm_inf(V, 0.7, method="lp", solver="CLARABEL")
    _, opt = cvxpy_oracle(V, 0.7, None, "norm", objective="lp")
    assert norm_inf(P) <= 0.7 and abs(np.abs(P - V).sum() - opt) <= 1e-6 * max(1, opt)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
@pytest.mark.parametrize("method", ["qp", "lp"])
def test_solver_error_names_solver_and_status(method):
    V = np.random.default_rng(3).standard_normal((4, 4)) * 3
    out = np.full_like(V, 7.0)
    with pytest.raises(SolverError) as info:
        project_mu_inf(V, 0.1, method=method, solver="SCS", max_iters=1, out=out)
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.solver == "SCS" and err.status not in ("optimal", "")
    assert "SCS" in str(err) and err.status in str(err)
    assert np.all(out == 7.0)  # nothing written
