"""SDP formulations (solvers.sdp): projections, LBEN certificates and measure, ℓ2 Lipschitz."""
import math

import numpy as np
import pytest
import torch

import lipdeq.deq.splittings  # noqa: F401  (registers the splittings used below)
from lipdeq import fixed_point as fp, geometry
from lipdeq.deq.activations import get_activation
from lipdeq.conditions.sets import LBEN, get_condition
from lipdeq.deq.operators import DenseOperator
from lipdeq.solvers import SolverError, sdp

X8 = np.array([[0.0, 4.0], [-1.0, 0.0]])
X9 = np.array([[2.0, 0.0], [0.0, 0.0]])
OUTSIDE = np.array([[2.0, 1.0], [1.0, 2.0]])  # α(A) = 3: no Λ at γ = 1


def lmi_min_eig(A, lam, gamma):
    lam = np.asarray(lam, float)
    LA = lam[:, None] * np.asarray(A, float)
    return np.linalg.eigvalsh(2 * gamma * np.diag(lam) - LA - LA.T)[0]


def l2_lmi(A, B, C, D, lam, L):
    """The ℓ2 Lipschitz LMI written out independently of solvers.sdp."""
    p, q = B.shape[1], C.shape[0]
    Lam = np.diag(lam)
    top = np.hstack([2 * Lam - Lam @ A - A.T @ Lam, -Lam @ B, C.T])
    mid = np.hstack([-B.T @ Lam, L * np.eye(p), D.T])
    bot = np.hstack([C, D, L * np.eye(q)])
    return np.vstack([top, mid, bot])


@pytest.mark.parametrize("n,gamma", [(2, 0.5), (4, 0.9), (6, -0.3)])
def test_monotone_sdp_matches_the_eigenvalue_clip(n, gamma):
    rng = np.random.default_rng(n)
    for _ in range(3):
        A = rng.standard_normal((n, n)) * 2
        cert = sdp.project_monotone_sdp(A, gamma, tol_gap_abs=1e-11, tol_gap_rel=1e-11,
                                        tol_feas=1e-11)
        clip = get_condition("monotone", gamma).project(A)
        assert cert.status in ("optimal", "optimal_inaccurate", "feasible_input")
        assert cert.solver == "CLARABEL"
        np.testing.assert_allclose(cert.X, clip, atol=1e-6)
        assert cert.value == pytest.approx(np.linalg.norm(clip - A), abs=1e-6)
        assert cert.verified and geometry.mu_2(cert.X) <= gamma  # shifted inside in float64


def test_projections_keep_feasible_input():
    A = get_condition("monotone", 0.5).project(np.random.default_rng(0).standard_normal((3, 3)))
    cert = sdp.project_monotone_sdp(A, 0.5)
    assert cert.status == "feasible_input" and np.array_equal(cert.X, A) and cert.value == 0
    cert = sdp.project_lben_sdp(X8, 1.0, [1.0, 4.0])
    assert cert.status == "feasible_input" and np.array_equal(cert.X, X8)


def test_lben_projection_for_fixed_lambda_verifies_and_is_optimal_among_candidates():
    rng = np.random.default_rng(3)
    for _ in range(4):
        A = rng.standard_normal((4, 4)) * 1.5
        lam = np.exp(rng.standard_normal(4))
        cert = sdp.project_lben_sdp(A, 0.7, lam)
        assert cert.verified
        assert lmi_min_eig(cert.X, cert.Lambda, 0.7) >= 0  # independent check
        np.testing.assert_allclose(cert.Lambda * lam.mean() / cert.Lambda.mean(), lam)
        # every other feasible point is farther: the Λ-scaled eigenvalue clip is one
        s = np.sqrt(lam)
        Y = get_condition("monotone", 0.7).project(s[:, None] * A / s[None, :])
        Z = Y * s[None, :] / s[:, None]
        assert lmi_min_eig(Z, lam, 0.7) >= -1e-9
        assert cert.value <= np.linalg.norm(Z - A) + 1e-7
        # variational inequality ⟨A − X, Z − X⟩ ≤ 0
        assert np.sum((A - cert.X) * (Z - cert.X)) <= 1e-5


def test_lben_margin_bounds_and_independent_certificate():
    rng = np.random.default_rng(4)
    for k in range(8):
        n = 2 + k % 4
        A = rng.standard_normal((n, n)) * 0.8
        cert = sdp.lben_margin(A, 1.0)
        assert cert.min_eig <= cert.value + 1e-7 and cert.value <= cert.upper + 1e-7
        assert cert.Lambda.sum() == pytest.approx(n)
        assert lmi_min_eig(A, cert.Lambda, 1.0) == pytest.approx(cert.min_eig, abs=1e-12)
        assert cert.upper - cert.min_eig < 1e-5  # the SDP is solved, not just bounded


def test_lben_certificate_verifies_and_infeasible_is_reported():
    cert = sdp.lben_certificate(X8)
    assert lmi_min_eig(X8, cert.Lambda, 1.0) > 1e-7 and np.all(cert.Lambda > 0)
    for A in (X9, OUTSIDE):
        with pytest.raises(SolverError) as info:
            sdp.lben_certificate(A)
        assert info.value.status == "infeasible"
    with pytest.raises(SolverError) as info:  # a genuinely infeasible SDP, not only a bound
        sdp.l2_lipschitz_certificate(OUTSIDE, np.ones((2, 1)), np.ones((1, 2)))
    assert info.value.status == "infeasible"


def test_lben_measure_bounds_types_and_batches():
    rng = np.random.default_rng(5)
    A = rng.standard_normal((3, 3, 3)) * 0.7
    got = sdp.lben_measure(A)
    assert isinstance(got, np.ndarray) and got.shape == (3,)
    for M, g in zip(A, got):
        alpha = np.linalg.eigvals(M).real.max()
        assert alpha - 1e-9 <= g <= geometry.mu_2(M) + 1e-12
        assert g <= geometry.spectral_abscissa(geometry.metzler_majorant(M)) + 1e-5  # N ⊂ L
        # γ' is attained (up to tol) by a certificate: at γ' + 1e-4 one exists
        assert sdp.lben_member(M, g + 1e-4, threshold=0.0)[0]
        assert not sdp.lben_member(M, g - 1e-3, threshold=0.0)[0]
    t = sdp.lben_measure(torch.from_numpy(A[0]))
    assert isinstance(t, torch.Tensor) and t.shape == () and float(t) == pytest.approx(got[0])
    assert float(sdp.lben_measure(X8)) == pytest.approx(0.0, abs=1e-6)
    assert float(sdp.lben_measure(X9)) == pytest.approx(2.0)


def test_lben_membership_matches_the_2x2_closed_form():
    """A = [[a, b], [c, d]] ∈ L ⇔ a < 1, d < 1 and (bc < 0 or (1 − a)(1 − d) > bc)."""
    rng = np.random.default_rng(6)
    checked = 0
    while checked < 40:
        a, b, c, d = rng.standard_normal(4) * 1.5
        g = min(1 - a, 1 - d, 1.0 if b * c < 0 else (1 - a) * (1 - d) - b * c)
        if abs(g) < 1e-2:
            continue
        checked += 1
        member, certified, _ = sdp.lben_member(np.array([[a, b], [c, d]]))
        assert certified and member == (g > 0), (a, b, c, d)


def test_l2_lipschitz_certificate_verifies_and_bounds_the_network():
    rng = np.random.default_rng(7)
    n, p, q = 5, 3, 2
    A = get_condition("monotone", 0.6).project(rng.standard_normal((n, n)))
    B, C, D = rng.standard_normal((n, p)), rng.standard_normal((q, n)), 0.1 * rng.standard_normal((q, p))
    diag = sdp.l2_lipschitz_certificate(A, B, C, D)
    scalar = sdp.l2_lipschitz_certificate(A, B, C, D, multiplier="scalar")
    for cert in (diag, scalar):
        assert np.linalg.eigvalsh(l2_lmi(A, B, C, D, cert.Lambda, cert.value))[0] >= 0
    assert np.allclose(scalar.Lambda, scalar.Lambda[0])
    assert diag.value <= scalar.value * (1 + 1e-6)
    monDEQ = np.linalg.norm(C, 2) * np.linalg.norm(B, 2) / (1 - geometry.mu_2(A)) + np.linalg.norm(D, 2)
    assert scalar.value <= monDEQ * (1 + 1e-6)
    # empirical secant ratios of the network never exceed the certificate
    u = rng.standard_normal((40, p))
    u2 = u + 0.3 * rng.standard_normal((40, p))
    y1, y2 = network_outputs(A, B, C, D, u), network_outputs(A, B, C, D, u2)
    ratio = np.linalg.norm(y1 - y2, axis=1) / np.linalg.norm(u - u2, axis=1)
    assert ratio.max() <= diag.value * (1 + 1e-6)
    assert ratio.max() > 0.05 * diag.value  # the check is not vacuous
    assert y1.shape == (40, q)


def network_outputs(A, B, C, D, u):
    """y = Cx* + Du with x* = relu(Ax* + Bu), solved by Peaceman–Rachford (A is monotone)."""
    At = torch.from_numpy(A)
    op = DenseOperator(At)
    w = torch.from_numpy(u @ B.T)
    mu = op.mu_inf().clamp_min(0)
    prob = fp.FixedPointProblem(F=lambda x: torch.relu(x @ At.T + w), x0=torch.zeros_like(w),
                                norm=lambda x: x.abs().amax(1), mu_plus=mu,
                                alpha_star=1 / (1 - op.min_diagonal().clamp_max(0)), operator=op,
                                extra={"w": w, "activation": get_activation("relu")})
    res = fp.solve("peaceman_rachford", prob, tol=1e-11, max_iter=5000, strict=True)
    return res.x.numpy() @ C.T + u @ D.T


def test_lben_lipschitz_parameterization_is_certified_by_the_sdp():
    gen = torch.Generator().manual_seed(1)
    n, p, q, L = 4, 3, 2, 1.5
    c = LBEN(0.95, lipschitz=L)
    raw = {"V": torch.randn(n, n, generator=gen, dtype=torch.float64) * 0.5,
           "S": torch.randn(n, n, generator=gen, dtype=torch.float64),
           "psi": torch.randn(n, generator=gen, dtype=torch.float64) * 0.5}
    B = torch.randn(n, p, generator=gen, dtype=torch.float64) * 2
    C = torch.randn(q, n, generator=gen, dtype=torch.float64) * 2
    A, _, _ = c.build(raw, B, C)
    cert = c.lipschitz_certificate(A, B, C)
    assert cert.value <= L * (1 + 1e-6)
    assert bool(LBEN(0.95).contains(A))


def test_solver_choice_and_bad_input():
    A = np.random.default_rng(8).standard_normal((3, 3)) * 0.5
    t_c = sdp.lben_margin(A, 1.0).value
    t_s = sdp.lben_margin(A, 1.0, solver="scs").value
    assert t_s == pytest.approx(t_c, abs=1e-5)
    with pytest.raises(ValueError, match="not an installed"):
        sdp.lben_margin(A, solver="NO_SUCH_SOLVER")
    with pytest.raises(ValueError, match="semidefinite"):
        sdp.lben_margin(A, solver="OSQP")
    with pytest.raises(TypeError):
        sdp.lben_margin(A, solver=3)
    with pytest.raises(ValueError, match="square"):
        sdp.lben_margin(np.ones((2, 3)))
    with pytest.raises(ValueError, match="NaN or Inf"):
        sdp.project_monotone_sdp(np.array([[np.nan, 0], [0, 0]]), 0.5)
    with pytest.raises(ValueError, match="Lambda"):
        sdp.project_lben_sdp(A, 0.5, [1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="single"):
        sdp.project_monotone_sdp(np.zeros((2, 3, 3)), 0.5)
    with pytest.raises(ValueError, match="B must be"):
        sdp.l2_lipschitz_certificate(A, np.ones((2, 1)), np.ones((1, 3)))
    with pytest.raises(ValueError):
        sdp.lben_margin(A, gamma=math.inf)
    for bad in (0, -1, 2.5, True):  # 0 returned the loose start bound μ₂(A) without a solve
        with pytest.raises(ValueError, match="max_solves"):
            sdp.lben_measure(A, max_solves=bad)
    with pytest.raises(ValueError, match="tol"):
        sdp.lben_measure(A, tol=0.0)
    with pytest.raises(ValueError, match="float32 or float64"):  # not checked as stored
        sdp.project_lben_sdp(torch.eye(3, dtype=torch.bfloat16), 0.5, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="threshold"):  # NaN answered "not a member"
        sdp.lben_member(A, 1.0, threshold=math.nan)
