"""Tests of solvers.project_mu_inf / project_norm_inf (docs/math.md §7, §10 items 23–29; docs/design.md §8, §5).

Every reference below is written here, independently of the code under test: the row problem is
solved by root-finding on g(λ) (docs/math.md §7.2) with scipy's brentq, the QP/LP oracles are CVXPY
problems built in this file (not through ``solvers.cvx``), and the measures are plain numpy.
"""
from __future__ import annotations

import copy
import math

import cvxpy as cp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import brentq

import lipdeq.solvers as solvers
from lipdeq.geometry import mu_inf, norm_inf
from lipdeq.solvers import SolverError, project_mu_inf, project_norm_inf

EPS64 = np.finfo(np.float64).eps
PROJECTIONS = {"mu": project_mu_inf, "norm": project_norm_inf}


# ----------------------------------------------------------------------------- references
def ratio(eta, n):
    return np.ones((n, n)) if eta is None else np.asarray(eta, float)[None, :] / np.asarray(eta, float)[:, None]


def rows_ref(A, eta=None, kind="mu"):
    """Row values of μ∞,η (signed diagonal) or ‖·‖∞,η, plain numpy in float64."""
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[-1]
    T = np.abs(A) * ratio(eta, n)
    if kind == "mu":
        T = T * (1 - np.eye(n))
        return np.diagonal(A, axis1=-2, axis2=-1) + T.sum(-1)
    return T.sum(-1)


def measure_ref(A, eta=None, kind="mu"):
    return rows_ref(A, eta, kind).max(-1)


def scale_of(V, eta=None):
    """A size for relative tolerances: 1 + the largest weighted row abs-sum."""
    return 1.0 + float(rows_ref(V, eta, "norm").max())


def project_row_ref(v, i, w, gamma, kind="mu"):
    """Row i of the projection by bracketing the root of g(λ) (docs/math.md §7.2 / §7.7), not by sorting."""
    v = np.asarray(v, float)
    w = np.asarray(w, float).copy()
    off = np.arange(v.size) != i
    if kind == "mu":
        def g(lam):
            return v[i] - lam + np.sum(w[off] * np.maximum(np.abs(v[off]) - lam * w[off], 0)) - gamma
    else:
        w[i] = 1.0
        off = np.ones(v.size, bool)

        def g(lam):
            return np.sum(w * np.maximum(np.abs(v) - lam * w, 0)) - gamma
    if g(0.0) <= 0:
        return v.copy()
    hi = 1.0
    while g(hi) > 0:
        hi *= 2
    lam = brentq(g, 0.0, hi, xtol=1e-15, rtol=4 * EPS64, maxiter=500)
    a = np.sign(v) * np.maximum(np.abs(v) - lam * w, 0)
    if kind == "mu":
        a[i] = v[i] - lam
    return a


def project_ref(V, gamma, eta=None, kind="mu"):
    V = np.asarray(V, float)
    n = V.shape[-1]
    W = ratio(eta, n)
    return np.stack([project_row_ref(V[i], i, W[i], gamma, kind) for i in range(n)])


def cvxpy_oracle(V, gamma, eta=None, kind="mu", objective="qp", solver="CLARABEL"):
    """docs/math.md §7.5, written directly (abs() form, not the epigraph used by solvers.cvx)."""
    n = V.shape[0]
    W = ratio(eta, n)
    X = cp.Variable((n, n))
    if kind == "mu":
        rows = cp.diag(X) + cp.sum(cp.multiply(W * (1 - np.eye(n)), cp.abs(X)), axis=1)
    else:
        rows = cp.sum(cp.multiply(W, cp.abs(X)), axis=1)
    obj = cp.sum_squares(X - V) if objective == "qp" else cp.sum(cp.abs(X - V))
    prob = cp.Problem(cp.Minimize(obj), [rows <= gamma])
    if solver == "CLARABEL":
        prob.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    else:
        prob.solve(solver=solver)
    assert prob.status == cp.OPTIMAL
    return X.value, prob.value


# ----------------------------------------------------------------------------- strategies
ELEMENTS = st.one_of(
    st.floats(-5, 5, allow_nan=False, allow_subnormal=False),
    st.sampled_from([0.0, 0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0]),  # ties and zero rows
)


@st.composite
def problems(draw, kind="mu", max_n=6, weighted=None, n=None, min_radius=0.0):
    n = draw(st.integers(1, max_n)) if n is None else n
    V = draw(hnp.arrays(np.float64, (n, n), elements=ELEMENTS))
    if draw(st.booleans()):  # push the diagonal negative (the signed diagonal matters)
        V = V - draw(st.floats(0, 6)) * np.eye(n)
    if kind == "mu":
        gamma = draw(st.floats(-1, 0.99))
    else:
        gamma = draw(st.one_of(st.floats(min_radius, 3), st.just(0.0)))
    if weighted is None:
        weighted = draw(st.booleans())
    eta = (draw(hnp.arrays(np.float64, (n,), elements=st.one_of(
        st.floats(0.1, 10), st.sampled_from([1.0, 2.0, 0.5])))) if weighted else None)
    return V, gamma, eta


KINDS = pytest.mark.parametrize("kind", ["mu", "norm"])


# ----------------------------------------------------------------------------- feasibility
@KINDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data())
def test_feasible_in_float64(kind, dtype, data):
    V, gamma, eta = data.draw(problems(kind))
    V = V.astype(dtype)
    P = PROJECTIONS[kind](V, gamma, weights=eta)
    assert isinstance(P, np.ndarray) and P.dtype == dtype and P.shape == V.shape
    assert np.isfinite(P).all()
    P64 = P.astype(np.float64)
    measure = mu_inf if kind == "mu" else norm_inf
    n = V.shape[0]
    scale = scale_of(V, eta) + abs(gamma)
    if dtype == np.float64:
        assert measure_ref(P64, eta, kind) <= gamma + 1e-10 * scale
    # docs/design.md §8: feasible when evaluated in float64 on the stored values — exactly.
    assert measure(P64, weights=eta) <= gamma
    # the independent numpy evaluation sums in another order: a few float64 ulps at most
    assert measure_ref(P64, eta, kind) <= gamma + 2 * n * EPS64 * scale
    # float32 weights too (their float64 values are then the η of the float64 evaluation)
    if eta is not None and dtype == np.float32:
        eta32 = eta.astype(np.float32)
        P = PROJECTIONS[kind](V, gamma, weights=eta32)
        assert measure(P.astype(np.float64), weights=eta32.astype(np.float64)) <= gamma


@KINDS
def test_feasible_float32_hard_cases(kind):
    """Many random float32 matrices with large entries and spread weights: 0 float64 violations."""
    rng = np.random.default_rng(7)
    proj = PROJECTIONS[kind]
    measure = mu_inf if kind == "mu" else norm_inf
    violations = 0
    for trial in range(300):
        n = int(rng.integers(2, 9))
        V = (rng.standard_normal((n, n)) * 10 ** rng.uniform(-2, 3)).astype(np.float32)
        eta = rng.uniform(0.01, 100, n) if trial % 2 else None
        gamma = float(rng.uniform(-1, 0.99)) if kind == "mu" else float(rng.uniform(0, 2))
        P = proj(V, gamma, weights=eta)
        violations += int(measure(P.astype(np.float64), weights=eta) > gamma)
        if kind == "mu":
            violations += int(np.any(rows_ref(P, eta, kind) > gamma + 2 * n * EPS64 * (scale_of(P, eta) + 1)))
    assert violations == 0


# ----------------------------------------------------------------------------- projection properties
@KINDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data())
def test_idempotent_bitwise(kind, dtype, data):
    V, gamma, eta = data.draw(problems(kind))
    proj = PROJECTIONS[kind]
    P = proj(V.astype(dtype), gamma, weights=eta)
    PP = proj(P, gamma, weights=eta)
    assert PP.dtype == dtype
    assert np.array_equal(PP, P)  # P(V) is feasible in float64, so it comes back bit for bit


@KINDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data())
def test_feasible_input_unchanged_bitwise(kind, dtype, data):
    V, gamma, eta = data.draw(problems(kind))
    proj = PROJECTIONS[kind]
    # A strictly feasible point: shrink a projection inside (shift the diagonal down for μ∞,
    # scale towards 0 for the norm), and V itself whenever it happens to be feasible.
    P = proj(V, gamma, weights=eta)
    Z = P - 0.25 * np.eye(V.shape[0]) if kind == "mu" else 0.5 * P
    for Y in (Z.astype(dtype), V.astype(dtype)):
        if measure_ref(Y.astype(np.float64), eta, kind) <= gamma:
            Y0 = Y.copy()
            out = proj(Y, gamma, weights=eta)
            assert out is not Y
            assert np.array_equal(out, Y0) and np.array_equal(np.signbit(out), np.signbit(Y0))
            assert np.array_equal(Y, Y0)


def test_boundary_input_unchanged():
    # rows exactly on the boundary (measure == γ) are feasible and must not move
    V = np.array([[0.5, 0.0, 0.0], [0.25, 0.0, -0.25], [-1.0, 0.5, 1.0]])
    for eta in (None, np.array([1.0, 2.0, 4.0])):
        g = float(measure_ref(V, eta))
        assert np.array_equal(project_mu_inf(V, g, weights=eta), V)
        g = float(measure_ref(V, eta, "norm"))
        assert np.array_equal(project_norm_inf(V, g, weights=eta), V)


@KINDS
@given(data=st.data())
def test_nonexpansive(kind, data):
    V1, gamma, eta = data.draw(problems(kind))
    V2 = data.draw(hnp.arrays(np.float64, V1.shape, elements=ELEMENTS))
    proj = PROJECTIONS[kind]
    d_out = np.linalg.norm(proj(V1, gamma, weights=eta) - proj(V2, gamma, weights=eta))
    d_in = np.linalg.norm(V1 - V2)
    assert d_out <= d_in + 1e-12 * (scale_of(V1) + scale_of(V2))


@KINDS
@given(data=st.data())
def test_variational_inequality(kind, data):
    V, gamma, eta = data.draw(problems(kind))
    proj = PROJECTIONS[kind]
    P = proj(V, gamma, weights=eta)
    n = V.shape[0]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    Zs = [proj(4 * rng.standard_normal((n, n)), gamma, weights=eta) for _ in range(4)]
    Zs += [0.5 * (Zs[0] + Zs[1]), np.zeros((n, n)) if gamma >= 0 else Zs[2]]
    if kind == "mu":
        Zs.append(Zs[3] - 3 * np.eye(n))
    for Z in Zs:
        assert measure_ref(Z, eta, kind) <= gamma + 1e-12 * scale_of(Z)
        assert np.sum((V - P) * (Z - P)) <= 1e-9 * max(1.0, scale_of(V) * scale_of(Z))


@given(data=st.data())
def test_kkt_mu_inf(data):
    """docs/math.md §10 item 26."""
    V, gamma, eta = data.draw(problems("mu"))
    P = project_mu_inf(V, gamma, weights=eta)
    n = V.shape[0]
    W = ratio(eta, n)
    R = V - P
    tol = 1e-10 * (scale_of(V, eta) + abs(gamma))
    lam = np.diagonal(R)
    rows = rows_ref(P, eta)
    assert np.all(lam >= -tol)
    assert np.all(rows <= gamma + tol)
    assert np.all(np.abs(lam * (gamma - rows)) <= tol * (1 + np.abs(lam)))  # complementary slackness
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if P[i, j] != 0:
                assert abs(R[i, j] - lam[i] * W[i, j] * np.sign(P[i, j])) <= tol * (1 + W[i, j])
            else:
                assert abs(R[i, j]) <= lam[i] * W[i, j] + tol * (1 + W[i, j])


@given(data=st.data())
def test_kkt_norm_inf(data):
    V, gamma, eta = data.draw(problems("norm"))
    P = project_norm_inf(V, gamma, weights=eta)
    n = V.shape[0]
    W = ratio(eta, n)
    R = V - P
    tol = 1e-10 * (scale_of(V, eta) + gamma)
    rows = rows_ref(P, eta, "norm")
    assert np.all(rows <= gamma + tol)
    for i in range(n):
        nz = P[i] != 0
        # multiplier from the support (or, with an empty support, the largest |v_j|/w_j)
        lam = (np.median(np.abs(R[i, nz]) / W[i, nz]) if nz.any() else np.max(np.abs(V[i]) / W[i]))
        assert lam >= -tol
        assert abs(lam * (gamma - rows[i])) <= tol * (1 + lam) or not nz.any()
        assert np.allclose(R[i, nz], lam * W[i, nz] * np.sign(P[i, nz]), rtol=0, atol=tol * (1 + W[i].max()))
        assert np.all(np.abs(R[i, ~nz]) <= lam * W[i, ~nz] + tol * (1 + W[i].max()))


@KINDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@given(data=st.data())
def test_matches_rowwise_root_finding(kind, dtype, data):
    V, gamma, eta = data.draw(problems(kind))
    V = V.astype(dtype)
    P = PROJECTIONS[kind](V, gamma, weights=eta)
    ref = project_ref(V.astype(np.float64), gamma, eta, kind)
    tol = (1e-11 if dtype == np.float64 else 2e-6) * (scale_of(V, eta) + abs(gamma))
    np.testing.assert_allclose(P.astype(np.float64), ref, rtol=0, atol=tol)


def test_zero_rows_and_ties():
    V = np.array([[0.0, 0.0, 0.0, 0.0],
                  [1.0, 1.0, 1.0, 1.0],      # ties everywhere
                  [2.0, -2.0, 2.0, -2.0],
                  [0.0, 0.0, 0.0, 3.0]])
    for g in (-1.0, 0.0, 0.3, 0.99):
        P = project_mu_inf(V, g)
        np.testing.assert_allclose(P, project_ref(V, g), atol=1e-14)
        assert measure_ref(P) <= g
    P = project_norm_inf(V, 0.0)
    assert np.array_equal(P, np.zeros_like(V))
    P = project_mu_inf(np.zeros((3, 3)), -1.0)
    np.testing.assert_allclose(P, -np.eye(3), rtol=0, atol=1e-14)  # (nudged inside by ulps)
    assert mu_inf(P) <= -1.0


# ----------------------------------------------------------------------------- worked examples (docs/math.md §7.4, §7.7)
def example_matrix():
    V = np.array([[0.5, 1.0, -0.4], [0.0, -1.0, 0.0], [0.0, 0.0, -1.0]])
    return V


def test_worked_example_unweighted():
    P = project_mu_inf(example_matrix(), 0.5)
    np.testing.assert_allclose(P[0], [0.0, 0.5, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(P[1:], example_matrix()[1:])
    assert abs(measure_ref(P) - 0.5) <= 1e-12
    # the row's λ_k: 0, 0.5, 0.4667 → λ = 0.5 = V00 − P00
    assert abs((0.5 - P[0, 0]) - 0.5) <= 1e-12


def test_worked_example_weighted():
    eta = np.array([1.0, 2.0, 0.5])  # w = η_j/η_0 = (2, 0.5) on row 0's off-diagonals
    P = project_mu_inf(example_matrix(), 0.5, weights=eta)
    lam = 2.2 / 5.25
    exact = [0.5 - lam, 1.0 - 2 * lam, -(0.4 - 0.5 * lam)]
    np.testing.assert_allclose(P[0], exact, rtol=0, atol=1e-12)
    np.testing.assert_allclose(P[0], [0.080952, 0.161905, -0.190476], rtol=0, atol=1e-6)
    assert abs(lam - 0.419048) < 1e-6
    assert abs(P[0, 0] + 2 * abs(P[0, 1]) + 0.5 * abs(P[0, 2]) - 0.5) <= 1e-12
    np.testing.assert_array_equal(P[1:], example_matrix()[1:])


def test_worked_example_l1_ball():
    # docs/math.md §7.7: sorted |v| = (1, .5, .4): λ = max((1−.5)/1, (1.5−.5)/2, (1.9−.5)/3) = 0.5
    V = np.array([[0.5, 1.0, -0.4], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]])
    P = project_norm_inf(V, 0.5)
    np.testing.assert_allclose(P[0], [0.0, 0.5, 0.0], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(P[1:], V[1:])


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


# ----------------------------------------------------------------------------- torch, batches, out=
@KINDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_equals_numpy(kind, dtype):
    rng = np.random.default_rng(31)
    proj = PROJECTIONS[kind]
    for n in (1, 3, 8):
        V = (rng.standard_normal((n, n)) * 2).astype(dtype)
        eta = rng.uniform(0.2, 5, n)
        for w in (None, eta, torch.tensor(eta)):
            Pn = proj(V, 0.3, weights=w if not isinstance(w, torch.Tensor) else eta)
            Pt = proj(torch.from_numpy(V.copy()), 0.3, weights=w)
            assert isinstance(Pt, torch.Tensor) and Pt.dtype == torch.from_numpy(V).dtype
            np.testing.assert_array_equal(Pt.numpy(), Pn)


def test_empty_batch():
    for proj in PROJECTIONS.values():
        assert proj(np.zeros((0, 3, 3)), 0.5).shape == (0, 3, 3)
        assert proj(torch.zeros(2, 0, 2, 2), 0.5).shape == (2, 0, 2, 2)


def test_list_input_returns_numpy():
    P = project_mu_inf([[1.0, 2.0], [3, 4]], 0.5)
    assert isinstance(P, np.ndarray) and P.dtype == np.float64
    np.testing.assert_allclose(P, project_ref(np.array([[1.0, 2], [3, 4]]), 0.5), atol=1e-14)
    P = project_mu_inf(np.array([[1, 2], [3, 4]]), 0.5)  # integer input is promoted to float64
    assert P.dtype == np.float64


@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_batched_equals_looped(kind, dtype, weighted):
    g = torch.Generator().manual_seed(5)
    n = 6
    V = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64).to(dtype) * 3
    eta = torch.rand(n, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    gamma = 0.4
    proj = PROJECTIONS[kind]
    Pb = proj(V, gamma, weights=eta)
    assert Pb.shape == V.shape and Pb.dtype == dtype
    for i in range(2):
        for j in range(3):
            Pl = proj(V[i, j], gamma, weights=eta)
            np.testing.assert_array_equal(Pb[i, j].numpy(), Pl.numpy())
            ref = project_ref(V[i, j].double().numpy(), gamma, None if eta is None else eta.numpy(), kind)
            tol = 1e-11 if dtype == torch.float64 else 1e-5
            np.testing.assert_allclose(Pb[i, j].double().numpy(), ref, rtol=0, atol=tol * scale_of(ref))
    Pn = proj(V.numpy(), gamma, weights=eta)  # numpy batch too
    np.testing.assert_array_equal(Pn, Pb.numpy())


def test_batched_qp_equals_exact():
    V = np.random.default_rng(8).standard_normal((3, 4, 4)) * 2
    np.testing.assert_allclose(project_mu_inf(V, 0.1, method="qp"), project_mu_inf(V, 0.1), atol=1e-6)


@KINDS
def test_out_numpy(kind):
    proj = PROJECTIONS[kind]
    V = np.random.default_rng(9).standard_normal((2, 4, 4)) * 2
    expected = proj(V, 0.5)
    out = np.empty_like(V)
    r = proj(V, 0.5, out=out)
    assert r is out
    np.testing.assert_array_equal(out, expected)
    A = V.copy()
    r = proj(A, 0.5, out=A)  # in place
    assert r is A
    np.testing.assert_array_equal(A, expected)
    A = V.copy()
    proj(A, 0.5, out=A, method="qp")
    np.testing.assert_allclose(A, expected, atol=1e-6)


@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_out_torch(kind, dtype):
    proj = PROJECTIONS[kind]
    V = torch.randn(3, 5, 5, dtype=dtype, generator=torch.Generator().manual_seed(4)) * 2
    expected = proj(V, 0.5)
    out = torch.empty_like(V)
    assert proj(V, 0.5, out=out) is out
    assert torch.equal(out, expected)
    A = V.clone()
    assert proj(A, 0.5, out=A) is A
    assert torch.equal(A, expected)
    # a leaf Parameter that requires grad can be projected in place (the projection is no_grad)
    p = torch.nn.Parameter(V[0].clone())
    assert proj(p, 0.5, out=p) is p
    assert torch.equal(p.detach(), expected[0]) and p.requires_grad and p.grad_fn is None
    # a non-contiguous view as out
    big = torch.zeros(5, 10, dtype=dtype)
    view = big[:, ::2]
    proj(V[1], 0.5, out=view)
    assert torch.equal(big[:, ::2], expected[1]) and torch.all(big[:, 1::2] == 0)


def test_input_not_modified():
    V = np.random.default_rng(10).standard_normal((4, 4)) * 3
    V0 = V.copy()
    T = torch.from_numpy(V.copy())
    T0 = T.clone()
    for kind in PROJECTIONS.values():
        for method in ("exact", "qp", "lp"):
            kind(V, 0.2, method=method)
            kind(T, 0.2, method=method)
    assert np.array_equal(V, V0) and torch.equal(T, T0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(kind, dtype):
    proj = PROJECTIONS[kind]
    g = torch.Generator().manual_seed(6)
    V = (torch.randn(4, 16, 16, generator=g, dtype=torch.float64) * 3).to(dtype)
    eta = torch.rand(16, generator=g, dtype=torch.float64) + 0.1
    for w in (None, eta):
        Pc = proj(V.cuda(), 0.3, weights=None if w is None else w.cuda())
        assert Pc.is_cuda and Pc.dtype == dtype
        Pcpu = proj(V, 0.3, weights=w)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(Pc.cpu(), Pcpu, rtol=0, atol=tol * 50)
        measure = mu_inf if kind == "mu" else norm_inf
        assert bool((measure(Pc.double(), weights=w) <= 0.3).all())
        out = Pc.clone()
        assert proj(out, 0.3, weights=w, out=out) is out and torch.equal(out, Pc)


# ----------------------------------------------------------------------------- bad input
GOOD = np.array([[1.0, 2.0], [3.0, -4.0]])


def _bad_cases():
    nan = GOOD.copy()
    nan[0, 1] = np.nan
    inf = GOOD.copy()
    inf[1, 0] = -np.inf
    return [
        # (id, function, A, kwargs, exception, word the message must contain)
        ("non-square", project_mu_inf, np.ones((2, 3)), {}, ValueError, "A"),
        ("vector", project_mu_inf, np.ones(3), {}, ValueError, "A"),
        ("empty", project_mu_inf, np.ones((0, 0)), {}, ValueError, "A"),
        ("empty-batch-of-empty", project_norm_inf, np.ones((3, 0, 0)), {}, ValueError, "A"),
        ("ragged", project_mu_inf, [[1.0, 2.0], [3.0]], {}, ValueError, "A"),
        ("nan", project_mu_inf, nan, {}, ValueError, "A"),
        ("inf", project_norm_inf, inf, {}, ValueError, "A"),
        ("complex", project_mu_inf, GOOD.astype(complex), {}, TypeError, "A"),
        ("strings", project_mu_inf, [["a", "b"], ["c", "d"]], {}, TypeError, "A"),
        ("nan-torch", project_mu_inf, torch.from_numpy(nan), {}, ValueError, "A"),
        ("gamma-nan", project_mu_inf, GOOD, {"gamma": float("nan")}, ValueError, "gamma"),
        ("gamma-inf", project_mu_inf, GOOD, {"gamma": float("inf")}, ValueError, "gamma"),
        ("gamma-str", project_mu_inf, GOOD, {"gamma": "0.5x"}, TypeError, "gamma"),
        ("gamma-None", project_mu_inf, GOOD, {"gamma": None}, TypeError, "gamma"),
        ("gamma-negative-norm", project_norm_inf, GOOD, {"gamma": -0.1}, ValueError, "gamma"),
        # found by review: below float32's range the diagonal overflowed to -inf, returned silently
        ("gamma-below-float32", project_mu_inf, GOOD.astype(np.float32), {"gamma": -1e39},
         ValueError, "gamma"),
        ("weights-length", project_mu_inf, GOOD, {"weights": [1.0, 2.0, 3.0]}, ValueError, "weights"),
        ("weights-2d", project_mu_inf, GOOD, {"weights": np.ones((2, 2))}, ValueError, "weights"),
        ("weights-zero", project_mu_inf, GOOD, {"weights": [1.0, 0.0]}, ValueError, "weights"),
        ("weights-negative", project_norm_inf, GOOD, {"weights": [1.0, -2.0]}, ValueError, "weights"),
        ("weights-nan", project_mu_inf, GOOD, {"weights": [1.0, np.nan]}, ValueError, "weights"),
        ("weights-inf", project_mu_inf, GOOD, {"weights": [1.0, np.inf]}, ValueError, "weights"),
        ("weights-underflow-f32", project_mu_inf, GOOD.astype(np.float32), {"weights": [1.0, 1e-60]},
         ValueError, "weights"),
        ("method", project_mu_inf, GOOD, {"method": "bisect"}, ValueError, "method"),
        ("solver-unknown", project_mu_inf, GOOD, {"method": "qp", "solver": "NOPE"}, ValueError, "solver"),
        ("solver-unknown-lp", project_norm_inf, GOOD, {"method": "lp", "solver": "NOPE"}, ValueError, "solver"),
        ("solver-not-str", project_mu_inf, GOOD, {"method": "qp", "solver": 3}, TypeError, "solver"),
        ("solver-with-exact", project_mu_inf, GOOD, {"solver": "OSQP"}, ValueError, "solver"),
        ("options-with-exact", project_mu_inf, GOOD, {"max_iters": 5}, ValueError, "solver"),
        ("device-kwarg", project_mu_inf, GOOD, {"device": "cpu"}, ValueError,
         "unexpected keyword argument(s) device"),
        ("out-shape", project_mu_inf, GOOD, {"out": np.zeros((3, 3))}, ValueError, "out"),
        ("out-shape-batch", project_mu_inf, GOOD, {"out": np.zeros((1, 2, 2))}, ValueError, "out"),
        ("out-dtype", project_mu_inf, GOOD, {"out": np.zeros((2, 2), np.float32)}, ValueError, "out"),
        ("out-type", project_mu_inf, GOOD, {"out": [[0.0, 0.0], [0.0, 0.0]]}, TypeError, "out"),
        ("out-torch-for-numpy", project_mu_inf, GOOD, {"out": torch.zeros(2, 2, dtype=torch.float64)},
         TypeError, "out"),
        ("out-numpy-for-torch", project_mu_inf, torch.from_numpy(GOOD.copy()), {"out": np.zeros((2, 2))},
         TypeError, "out"),
        ("out-torch-dtype", project_mu_inf, torch.from_numpy(GOOD.copy()),
         {"out": torch.zeros(2, 2, dtype=torch.float32)}, ValueError, "out"),
        ("out-torch-shape", project_norm_inf, torch.from_numpy(GOOD.copy()),
         {"out": torch.zeros(3, 2, dtype=torch.float64)}, ValueError, "out"),
    ]


BAD = _bad_cases()


def _snapshot(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.clone()
    return copy.deepcopy(x)


def _same(x, y):
    if x is None:
        return y is None
    if isinstance(x, torch.Tensor):
        return torch.equal(x.nan_to_num(), y.nan_to_num()) and x.dtype == y.dtype
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
    return x == y


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises_and_modifies_nothing(case):
    _, fn, A, kwargs, exc, word = case
    kwargs = dict(kwargs)
    gamma = kwargs.pop("gamma", 0.5)
    A_before, kw_before = _snapshot(A), {k: _snapshot(v) for k, v in kwargs.items()}
    with pytest.raises(exc) as info:
        fn(A, gamma, **kwargs)
    assert word in str(info.value)
    assert _same(A, A_before)
    for k, v in kwargs.items():
        assert _same(v, kw_before[k])


def test_bad_out_in_place_leaves_A_untouched():
    A = GOOD.copy()
    with pytest.raises(ValueError, match="weights"):
        project_mu_inf(A, 0.1, weights=[1.0, -1.0], out=A)
    assert np.array_equal(A, GOOD)
    T = torch.from_numpy(GOOD.copy())
    with pytest.raises(ValueError, match="solver"):
        project_mu_inf(T, 0.1, method="qp", solver="NOPE", out=T)
    assert torch.equal(T, torch.from_numpy(GOOD))


def test_public_names():
    assert solvers.project_mu_inf is project_mu_inf and solvers.project_norm_inf is project_norm_inf
    assert issubclass(solvers.SolverError, RuntimeError)
    assert math.isfinite(float(mu_inf(project_mu_inf(GOOD, 0.0))))


# ----------------------------------------------------------------------------- item 9
def test_requires_grad_and_integer_input_behave_as_documented():
    """The result never requires grad (A's graph untouched); integer/bool input comes back as
    float (numpy: float64, torch: the default dtype) — and the docstring says both."""
    doc = " ".join(project_mu_inf.__doc__.split())
    assert "never requires grad" in doc and "integer and bool input" in doc
    A = torch.tensor([[0.5, 2.0], [-1.0, 0.3]], dtype=torch.float64, requires_grad=True)
    X = project_mu_inf(A, 0.5)
    assert not X.requires_grad and X.grad_fn is None and A.requires_grad
    assert X.dtype == torch.float64
    rows = (X.diagonal() + X.abs().sum(1) - X.diagonal().abs())
    assert float(rows.max()) <= 0.5 + 1e-12
    Ai = np.array([[2, 3], [1, 0]])
    assert project_mu_inf(Ai, 0.5).dtype == np.float64
    assert project_mu_inf(Ai.astype(bool), 0.5).dtype == np.float64
    Ti = torch.tensor([[2, 3], [1, 0]])
    assert project_mu_inf(Ti, 0.5).dtype == torch.get_default_dtype()
    assert torch.allclose(project_mu_inf(Ti, 0.5).double(), project_mu_inf(Ti.double(), 0.5),
                          atol=1e-6)
