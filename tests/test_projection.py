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

