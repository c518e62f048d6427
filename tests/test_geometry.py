"""Tests of lipdeq.geometry against independent definitions (docs/math.md §2, §10 items 1–7).

References written here: log-norms as the one-sided limit (‖I + hA‖ − 1)/h with numpy's norms,
eigenvalues from numpy, inf_η μ∞,η by scipy.optimize (a convex program in log η) and by the LP
bisection oracle of docs/math.md §2.2 with scipy.optimize.linprog.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import linprog, minimize

from lipdeq import geometry
from lipdeq.geometry import (metzler_majorant, mu_1, mu_2, mu_inf, norm_1, norm_2, norm_inf,
                             optimal_inf_weights, pf_radius, spectral_abscissa)

H = 1e-8
SPEC_A = np.array([[0.5, -2.0], [1.0, -3.0]])
X5 = np.array([[-1.0, 5.0], [0.1, -2.0]])
ALPHA_X5 = (-3 + math.sqrt(3)) / 2


# ----------------------------------------------------------------------------- references
def weighted(A, eta):
    """[η]^{-1} A [η]."""
    return A * eta[None, :] / eta[:, None]


def quotient(A, ord, eta=None):
    """(‖I + hA‖ − 1)/h at h = 1e-8 (docs/math.md §2.1), with numpy's induced norms."""
    M = np.eye(A.shape[0]) + H * A
    if eta is not None:
        M = weighted(M, eta)
    return (np.linalg.norm(M, ord) - 1.0) / H


def metzler_ref(A):
    M = np.abs(A)
    np.fill_diagonal(M, np.diag(A))
    return M


def alpha_ref(A):
    return float(np.linalg.eigvals(metzler_ref(A)).real.max())


def inf_over_weights_scipy(A):
    """min over y = log η (y_0 = 0) of max_i (m_ii + Σ_j m_ij e^{y_j − y_i}): convex, via SLSQP."""
    M = metzler_ref(A)
    n = M.shape[0]
    off = M * (1 - np.eye(n))

    def rows(y):
        e = np.exp(np.concatenate([[0.0], y]))
        return np.diag(M) + (off @ e) / e

    def jac_rows(y):
        e = np.exp(np.concatenate([[0.0], y]))
        J = off * e[None, :] / e[:, None]  # ∂/∂y_j of row i, j ≠ i
        J = J - np.diag(J.sum(1))          # ∂/∂y_i
        return J[:, 1:]

    x0 = np.concatenate([np.zeros(n - 1), [rows(np.zeros(n - 1)).max() + 1.0]])
    res = minimize(lambda x: x[-1], x0, jac=lambda x: np.eye(n)[-1], method="SLSQP",
                   constraints=[{"type": "ineq", "fun": lambda x: x[-1] - rows(x[:-1]),
                                 "jac": lambda x: np.hstack([-jac_rows(x[:-1]), np.ones((n, 1))])}],
                   options={"ftol": 1e-15, "maxiter": 500})
    # SLSQP may stop with "positive directional derivative" once it is at rounding level;
    # the caller compares the value reached, which is what matters.
    assert res.success or res.status == 8, res.message
    return float(rows(res.x[:-1]).max())


def inf_over_weights_lp(A, tol=1e-11):
    """docs/math.md §2.2 LP oracle: bisection on t with the feasibility LP {η ≥ 1, M(A)η ≤ tη}."""
    M = metzler_ref(A)
    n = M.shape[0]
    lo = float(np.diag(M).max()) - 1.0           # α ≥ max_i m_ii
    hi = float(M.sum(1).max()) + 1.0             # α ≤ μ∞(A) = max row sum of M(A)
    while hi - lo > tol:
        t = 0.5 * (lo + hi)
        res = linprog(np.ones(n), A_ub=M - t * np.eye(n), b_ub=np.zeros(n), bounds=[(1, None)] * n,
                      method="highs", options={"primal_feasibility_tolerance": 1e-10})
        if res.status == 0:
            hi = t
        else:
            assert res.status == 2, res.message  # infeasible
            lo = t
    return hi


def irreducible_matrices(seed, count, nmax=6):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        n = int(rng.integers(2, nmax + 1))
        yield rng.standard_normal((n, n)) * rng.uniform(0.2, 3)


ELEMENTS = st.floats(-1, 1, allow_nan=False, allow_subnormal=False)


@st.composite
def matrices(draw, nmax=5, elements=ELEMENTS):
    n = draw(st.integers(1, nmax))
    return draw(hnp.arrays(np.float64, (n, n), elements=elements))


@st.composite
def matrices_and_weights(draw, nmax=5):
    A = draw(matrices(nmax))
    eta = draw(hnp.arrays(np.float64, (A.shape[0],), elements=st.floats(0.2, 5)))
    return A, eta


# ----------------------------------------------------------------------------- definitions
@given(matrices())
def test_measures_are_the_limit_of_the_difference_quotient(A):
    assert abs(mu_inf(A) - quotient(A, np.inf)) <= 1e-6
    assert abs(mu_1(A) - quotient(A, 1)) <= 1e-6
    assert abs(mu_2(A) - quotient(A, 2)) <= 1e-6


@given(matrices_and_weights())
def test_weighted_measure_is_the_limit_of_the_difference_quotient(Aeta):
    A, eta = Aeta
    assert abs(mu_inf(A, weights=eta) - quotient(A, np.inf, eta)) <= 1e-6
    assert abs(mu_inf(A, weights=eta) - mu_inf(weighted(A, eta))) <= 1e-12 * (1 + norm_inf(weighted(A, eta)))
    assert abs(norm_inf(A, weights=eta) - np.linalg.norm(weighted(A, eta), np.inf)) <= 1e-12 * (1 + np.abs(A).sum())


@given(matrices(nmax=6, elements=st.floats(-10, 10, allow_nan=False)))
def test_closed_forms(A):
    n = A.shape[0]
    off = np.abs(A) * (1 - np.eye(n))
    tol = 1e-12 * (1 + np.abs(A).sum())
    assert abs(mu_inf(A) - (np.diag(A) + off.sum(1)).max()) <= tol
    assert abs(mu_1(A) - (np.diag(A) + off.sum(0)).max()) <= tol
    assert abs(mu_2(A) - np.linalg.eigvalsh((A + A.T) / 2).max()) <= tol
    assert abs(norm_inf(A) - np.abs(A).sum(1).max()) <= tol
    assert abs(norm_1(A) - np.abs(A).sum(0).max()) <= tol
    assert abs(norm_2(A) - np.linalg.svd(A, compute_uv=False).max()) <= tol
    np.testing.assert_array_equal(metzler_majorant(A), metzler_ref(A))
    assert abs(spectral_abscissa(A) - np.linalg.eigvals(A).real.max()) <= 1e-9 * (1 + np.abs(A).sum())
    assert abs(pf_radius(A) - np.abs(np.linalg.eigvals(np.abs(A))).max()) <= 1e-9 * (1 + np.abs(A).sum())


def test_spec_2_1_example():
    A = SPEC_A
    assert mu_inf(A) == pytest.approx(2.5, abs=1e-12)
    assert mu_1(A) == pytest.approx(1.5, abs=1e-12)
    assert mu_2(A) == pytest.approx(0.5700, abs=5e-5)
    assert mu_2(A) == pytest.approx(-1.25 + math.sqrt(1.75**2 + 0.5**2), abs=1e-12)
    assert norm_inf(A) == pytest.approx(4.0, abs=1e-12)
    assert norm_1(A) == pytest.approx(5.0, abs=1e-12)
    assert norm_2(A) == pytest.approx(3.7726, abs=5e-5)
    ev = np.sort(np.linalg.eigvals(A).real)
    np.testing.assert_allclose(ev, [-2.281, -0.219], atol=5e-4)
    assert spectral_abscissa(A) == pytest.approx(ev[-1], abs=1e-12)
    assert spectral_abscissa(A) == pytest.approx((-2.5 + math.sqrt(2.5**2 - 4 * 0.5)) / 2, abs=1e-12)


# ----------------------------------------------------------------------------- properties (docs/math.md §2.1, §10 items 2–3)
@given(matrices_and_weights(nmax=6), st.floats(-3, 3), st.floats(0, 5))
def test_measure_properties(Aeta, c, s):
    A, eta = Aeta
    n = A.shape[0]
    B = np.roll(A, 1, axis=0) - 0.3 * A.T
    re = np.linalg.eigvals(A).real.max()
    tol = 1e-12
    pairs = [(mu_inf(A), norm_inf(A), lambda X: mu_inf(X)),
             (mu_1(A), norm_1(A), lambda X: mu_1(X)),
             (mu_2(A), norm_2(A), lambda X: mu_2(X)),
             (mu_inf(A, weights=eta), norm_inf(A, weights=eta), lambda X: mu_inf(X, weights=eta))]
    for mu, nrm, f in pairs:
        assert -nrm - tol <= mu <= nrm + tol
        assert re <= mu + 1e-10  # eigenvalues of a general matrix: a little more slack
        assert abs(f(A + c * np.eye(n)) - (mu + c)) <= 1e-12 * (1 + abs(c) + nrm)
        assert abs(f(s * A) - s * mu) <= 1e-12 * (1 + s) * (1 + nrm)
        assert f(A + B) <= mu + f(B) + 1e-12 * (1 + nrm + norm_inf(B) * 10)
    assert mu_1(A.T) == pytest.approx(mu_inf(A), abs=1e-14)
    assert mu_1(A) == pytest.approx(mu_inf(A.T), abs=1e-14)
    assert norm_1(A.T) == pytest.approx(norm_inf(A), abs=1e-14)
    # μ∞,η is convex in A for fixed η
    assert mu_inf(0.5 * (A + B), weights=eta) <= 0.5 * (mu_inf(A, weights=eta) + mu_inf(B, weights=eta)) + 1e-12


def test_diagonal_enters_signed():
    A = np.array([[-5.0, 1.0], [2.0, -1.0]])
    assert mu_inf(A) == 1.0 and norm_inf(A) == 6.0 and mu_1(A) == 0.0 and norm_1(A) == 7.0
    assert mu_inf(-A) == 6.0 and mu_1(-A) == 7.0


# ----------------------------------------------------------------------------- Metzler / Perron (docs/math.md §2.2)
def test_alpha_is_inf_over_weights_scipy():
    for A in irreducible_matrices(1, 8, nmax=5):
        a = float(spectral_abscissa(metzler_majorant(A)))
        assert a == pytest.approx(alpha_ref(A), abs=1e-12 * (1 + np.abs(A).sum()))
        assert abs(inf_over_weights_scipy(A) - a) <= 1e-7 * (1 + abs(a))


def test_alpha_is_inf_over_weights_lp_oracle():
    for A in irreducible_matrices(2, 5, nmax=4):
        a = float(spectral_abscissa(metzler_majorant(A)))
        assert abs(inf_over_weights_lp(A) - a) <= 1e-8 * (1 + abs(a))


def test_no_weights_beat_alpha():
    rng = np.random.default_rng(3)
    for A in irreducible_matrices(4, 10):
        n = A.shape[0]
        a = float(spectral_abscissa(metzler_majorant(A)))
        assert mu_inf(A) >= a - 1e-12
        for eta in np.exp(rng.uniform(-4, 4, (200, n))):
            assert mu_inf(A, weights=eta) >= a - 1e-12 * (1 + np.abs(A).sum())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_optimal_inf_weights_attain_alpha(dtype):
    for A in irreducible_matrices(5, 30, nmax=8):
        A = A.astype(dtype)
        eta = optimal_inf_weights(A)
        assert eta.dtype == dtype and eta.shape == (A.shape[0],)
        assert np.all(eta > 0) and eta.max() == pytest.approx(1.0, abs=1e-6)
        a = alpha_ref(A.astype(np.float64))
        got = mu_inf(A.astype(np.float64), weights=eta.astype(np.float64))
        tol = 1e-9 if dtype == np.float64 else 1e-4
        assert abs(got - a) <= tol * (1 + np.abs(A).sum())


def test_x5_example():
    assert mu_inf(X5) == pytest.approx(4.0, abs=1e-15)
    assert norm_inf(X5) == 6.0
    assert spectral_abscissa(metzler_majorant(X5)) == pytest.approx(ALPHA_X5, abs=1e-12)
    assert ALPHA_X5 == pytest.approx(-0.633975, abs=1e-6)
    v = optimal_inf_weights(X5)
    np.testing.assert_allclose(v / v.sum(), [0.93179, 0.06821], atol=5e-6)
    assert mu_inf(X5, weights=v) == pytest.approx(ALPHA_X5, abs=1e-12)
    xi = optimal_inf_weights(X5.T)  # left Perron vector: μ_{1,ξ}(X5) = μ_{∞,ξ}(X5ᵀ)
    np.testing.assert_allclose(xi / xi.sum(), [0.21458, 0.78542], atol=5e-6)
    assert mu_inf(X5.T, weights=xi) == pytest.approx(ALPHA_X5, abs=1e-12)
    # §2.6: X5 is in N but not in N0 ∪ E2
    assert mu_inf(X5) >= 1 and pf_radius(X5) >= 1 and spectral_abscissa(metzler_majorant(X5)) < 1


@pytest.mark.parametrize("A", [
    np.array([[-1.0, 5.0], [0.0, -2.0]]),                                 # docs/math.md §2.2, inf not attained
    np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 5.0], [0.0, 0.1, -2.0]]),      # blockdiag(1, X5)
    np.array([[-1.0, 5.0, 0.0], [0.1, -2.0, 0.0], [3.0, 0.0, 0.5]]),      # lower block triangular
    np.array([[0.0, 1.0], [0.0, 0.0]]),                                   # nilpotent
    np.zeros((3, 3)), np.eye(4), -np.eye(2),
])
def test_optimal_inf_weights_reducible(A):
    eta = optimal_inf_weights(A)
    a = alpha_ref(A)
    scale = 1 + np.abs(A).sum()
    assert np.all(eta > 0) and np.all(np.isfinite(eta))
    got = mu_inf(A, weights=eta)
    assert a - 1e-12 * scale <= got <= a + 1e-6 * scale


def test_alpha_at_most_pf_radius():
    rng = np.random.default_rng(6)
    A = torch.from_numpy(rng.standard_normal((500, 5, 5)))
    a = spectral_abscissa(metzler_majorant(A))
    r = pf_radius(A)
    assert bool((a <= r + 1e-12 * (1 + r.abs())).all())
    # α(M(A)) ≤ μ∞(A) and α(M(A)) ≥ max Re λ(A)
    assert bool((a <= mu_inf(A) + 1e-12).all())
    assert bool((spectral_abscissa(A) <= a + 1e-10).all())


# ----------------------------------------------------------------------------- containments (docs/math.md §2.4, §10 item 7)
def test_containments_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    counts = dict(E1=0, E2=0, N0=0, N=0)
    violations = dict(E1_N0=0, E1_E2=0, E2_N=0, N0_N=0)
    witnesses = dict(N0_not_E1=0, N_not_N0=0, N_not_E2=0, E2_not_N0=0, N0_not_E2=0)
    total = 0
    for n in (2, 3, 5, 8):
        for sigma in (0.05, 0.15, 0.3, 0.6, 1.0):
            Z = torch.randn(120, n, n, generator=g, dtype=torch.float64) * sigma
            if n >= 3:
                Z[:40] -= 2 * sigma * torch.eye(n, dtype=torch.float64)  # negative diagonals too
            E1 = norm_inf(Z) < 1
            E2 = pf_radius(Z) < 1
            N0 = mu_inf(Z) < 1
            N = spectral_abscissa(metzler_majorant(Z)) < 1
            total += Z.shape[0]
            for k, s in dict(E1=E1, E2=E2, N0=N0, N=N).items():
                counts[k] += int(s.sum())
            violations["E1_N0"] += int((E1 & ~N0).sum())
            violations["E1_E2"] += int((E1 & ~E2).sum())
            violations["E2_N"] += int((E2 & ~N).sum())
            violations["N0_N"] += int((N0 & ~N).sum())
            witnesses["N0_not_E1"] += int((N0 & ~E1).sum())
            witnesses["N_not_N0"] += int((N & ~N0).sum())
            witnesses["N_not_E2"] += int((N & ~E2).sum())
            witnesses["E2_not_N0"] += int((E2 & ~N0).sum())
            witnesses["N0_not_E2"] += int((N0 & ~E2).sum())
    assert total >= 2000
    assert violations == dict(E1_N0=0, E1_E2=0, E2_N=0, N0_N=0)
    assert all(c > 50 for c in counts.values()), counts
    assert all(c > 0 for c in witnesses.values()), witnesses  # the inclusions are strict


TABLE_2_6 = {  # A: (E1, E2, N0, N, M)
    "X1": ([[-3, 1], [1, -3]], (0, 0, 1, 1, 1)),
    "X2": ([[0.9, 0], [10.9, -10]], (0, 0, 1, 1, 0)),
    "X3": ([[0.9, 0], [0.9, 0]], (1, 1, 1, 1, 0)),
    "X4": ([[0, 10], [0.01, 0]], (0, 1, 0, 1, 0)),
    "X5": ([[-1, 5], [0.1, -2]], (0, 0, 0, 1, 0)),
    "X6": ([[0, 0], [3, 0]], (0, 1, 0, 1, 0)),
    "X7": ([[0, 2], [-2, 0]], (0, 0, 0, 0, 1)),
    "X8": ([[0, 4], [-1, 0]], (0, 0, 0, 0, 0)),
    "X9": ([[2, 0], [0, 0]], (0, 0, 0, 0, 0)),
}


@pytest.mark.parametrize("name", sorted(TABLE_2_6))
def test_spec_2_6_table(name):
    A, expected = TABLE_2_6[name]
    A = np.array(A, dtype=float)
    got = (norm_inf(A) < 1, pf_radius(A) < 1, mu_inf(A) < 1,
           spectral_abscissa(metzler_majorant(A)) < 1, mu_2(A) < 1)
    assert tuple(int(x) for x in got) == expected


def test_spec_2_6_numbers():
    assert mu_inf(TABLE_2_6["X1"][0]) == -2 and norm_inf(TABLE_2_6["X1"][0]) == 4
    assert mu_2(np.array(TABLE_2_6["X2"][0])) == pytest.approx(3.16, abs=5e-3)
    assert mu_2(np.array(TABLE_2_6["X3"][0])) == pytest.approx(1.086, abs=5e-4)
    assert pf_radius(np.array(TABLE_2_6["X4"][0])) == pytest.approx(math.sqrt(0.1), abs=1e-12)
    assert mu_2(np.array(TABLE_2_6["X6"][0])) == pytest.approx(1.5, abs=1e-12)
    assert spectral_abscissa(metzler_majorant(np.array(TABLE_2_6["X7"][0]))) == pytest.approx(2, abs=1e-12)
    # N is not convex (§2.4): A1, A1ᵀ ∈ N, their midpoint is not
    A1 = np.array([[0.0, 4.0], [0.0, 0.0]])
    assert spectral_abscissa(metzler_majorant(A1)) < 1 and spectral_abscissa(metzler_majorant(A1.T)) < 1
    assert spectral_abscissa(metzler_majorant((A1 + A1.T) / 2)) == pytest.approx(2, abs=1e-12)
