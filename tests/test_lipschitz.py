"""Lipschitz bounds (docs/math.md §6; §10 items 19–21): the ℓ∞ bound dominates every empirical slope
(local Jacobians, secants, the PGD-style lower bound) on many random "trained-ish" models, is
tight for x = relu(−3x + u), and holds in the weighted case; the ℓ2 comparison bound."""
from __future__ import annotations

import math

import pytest
import torch

from lipdeq import ImplicitNetwork
from lipdeq.certify.lipschitz import empirical_lipschitz, l2_bound, linf_bound, linf_bound_tensors

DT = torch.float64
MUS = (0.95, 0.5, 0.0, -0.5, -3.0)
ACTS = ("relu", "tanh", "leaky_relu")


pytestmark = pytest.mark.usefixtures("one_thread")


def trained_ish(mu, seed, *, activation="relu", p=4, n=8, q=3, feedthrough=False, steps=8):
    """A model after a few projected Adam steps on a random regression task; A starts outside
    the polytope so the projection leaves μ∞(A) = μ exactly (tight rows)."""
    torch.manual_seed(seed)
    m = ImplicitNetwork(p, n, q, gamma=mu, activation=activation, tol=1e-6, max_iter=100_000,
                        feedthrough=feedthrough, strict=True).double()
    with torch.no_grad():
        m.A.copy_(torch.randn(n, n, dtype=DT) * 1.5)
        m.B.copy_(torch.randn(n, p, dtype=DT))
        m.C.copy_(torch.randn(q, n, dtype=DT))
        if feedthrough:
            m.D.copy_(0.3 * torch.randn(q, p, dtype=DT))
    m.project_()
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    u = torch.rand(32, p, dtype=DT)
    target = torch.sin(3 * u @ torch.randn(p, q, dtype=DT))
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(u), target).backward()
        opt.step()
        m.project_()
    # evaluate to round-off (Anderson: same fixed point, fewer iterations)
    m.solver_config.solver, m.solver_config.tol = "anderson", 1e-12
    return m


def local_jacobians(m, u):
    """∂y/∂u = C(I − GA)⁻¹GB + D at each sample (docs/math.md §6.4a), shape (N, q, p)."""
    w = m.weights()
    A, B, C = w["A"], w["B"], w["C"]
    with torch.no_grad():
        x = m.fixed_point(u)
        z = x @ A.T + u @ B.T + w["b"]
        G = m.activation.derivative(z)
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    J = torch.stack([C @ torch.linalg.solve(eye - G[i][:, None] * A, G[i][:, None] * B)
                     for i in range(u.shape[0])])
    return J + w["D"] if "D" in w else J


def linf_op(J):
    return J.abs().sum(-1).amax(-1)  # max row ℓ1 norm: the ℓ∞→ℓ∞ induced norm


@pytest.mark.parametrize("mu", MUS)
def test_bound_dominates_empirical_slopes(mu):
    for seed in range(3):
        act = ACTS[seed]
        m = trained_ish(mu, seed, activation=act, feedthrough=seed == 1)
        A = m.weights()["A"]
        d = linf_bound(m, details=True)
        assert d["mu_inf"] <= mu + 1e-12 and d["mu_inf"] == pytest.approx(mu, abs=1e-9)
        bound = d["bound"]
        assert math.isfinite(bound) and bound > 0
        assert bound <= d["unweighted"] + 1e-12
        # the model's own differentiable bound (η = 1 here) is the unweighted one
        assert float(m.lipschitz_bound().detach()) == pytest.approx(d["unweighted"], rel=1e-12)
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(24, 4, generator=g, dtype=DT)
        # (a) local Jacobians, checked against autograd at one sample
        J = local_jacobians(m, u)
        assert float(linf_op(J).max()) <= bound * (1 + 1e-9)
        Ja = torch.autograd.functional.jacobian(lambda v: m(v[None])[0], u[0])
        assert torch.allclose(Ja, J[0], atol=1e-8, rtol=0)
        # (b) secants: random pairs and nearby pairs
        with torch.no_grad():
            v = torch.rand(24, 4, generator=g, dtype=DT)
            near = u + 1e-3 * (2 * torch.rand(24, 4, generator=g, dtype=DT) - 1)
            for other in (v, near):
                ratio = (m(u) - m(other)).abs().amax(1) / (u - other).abs().amax(1)
                assert float(ratio.max()) <= bound * (1 + 1e-9)
        # (c) sign-gradient ascent lower bound
        emp = empirical_lipschitz(m, u[:8], steps=6)
        assert 0 < emp <= bound * (1 + 1e-9)
        assert emp >= 0.1 * float(linf_op(J).min())  # the ascent finds a real slope


def test_relu_minus_three_is_tight():
    """x = relu(−3x + u), y = x: slope exactly 1/(1 − μ) = 1/4 = the bound (docs/math.md §6.1)."""
    m = ImplicitNetwork(1, 1, 1, gamma=-3.0, tol=1e-14, max_iter=1000, strict=True).double()
    with torch.no_grad():
        m.A.fill_(-3.0)
        m.B.fill_(1.0)
        m.b.zero_()
        m.C.fill_(1.0)
        m.c.zero_()
    m.project_()
    assert float(m.A.detach()) == -3.0
    d = linf_bound(m, details=True)
    assert d["bound"] == pytest.approx(0.25, abs=1e-12)
    assert d["unweighted"] == pytest.approx(0.25, abs=1e-12)
    # the (1 − μ⁺) denominator would give 1: the (1 − μ) form is 4× tighter and still valid
    assert d["bound"] <= 1.0 / (1 - max(d["mu_inf"], 0.0))
    u = torch.tensor([[1.0], [2.0], [5.0]], dtype=DT)
    with torch.no_grad():
        y = m(u)
        assert torch.allclose(y, u / 4, atol=1e-13, rtol=0)
        slope = float((m(u + 0.5) - y).abs().max() / 0.5)
    assert slope == pytest.approx(0.25, abs=1e-9)
    assert empirical_lipschitz(m, u, steps=5, radius=0.1) == pytest.approx(0.25, abs=1e-9)
    assert float(linf_op(local_jacobians(m, u)).max()) == pytest.approx(0.25, abs=1e-12)
    # negative inputs: relu off, slope 0 ≤ bound
    assert float(linf_op(local_jacobians(m, -u)).max()) == 0.0


def test_weighted_bound_where_unweighted_mu_exceeds_one():
    """docs/math.md §10 item 21: NEMON weights; μ∞(A) ≥ 1, so only the weighted bound is finite."""
    torch.manual_seed(4)
    m = ImplicitNetwork(4, 8, 3, gamma=0.7, condition="nemon", activation="tanh", tol=1e-12,
                        max_iter=100_000, strict=True).double()
    with torch.no_grad():
        m.A_raw["M"].copy_(2.0 * torch.randn(8, 8, dtype=DT))
        m.A_raw["d"].copy_(2.0 * torch.randn(8, dtype=DT))
        m.B.copy_(torch.randn(8, 4, dtype=DT))
    d = linf_bound(m, details=True)
    assert d["mu_inf"] >= 1 and d["unweighted"] == math.inf
    assert d["mu_inf_optimal"] < 1 and math.isfinite(d["bound"])
    # the model's own bound uses its certified η = e^{-d}: finite, and ≥ the optimal-η bound
    assert d["bound"] <= float(m.lipschitz_bound().detach()) * (1 + 1e-12) < math.inf
    u = torch.rand(16, 4, dtype=DT)
    assert float(linf_op(local_jacobians(m, u)).max()) <= d["bound"] * (1 + 1e-9)
    assert empirical_lipschitz(m, u[:6], steps=10) <= d["bound"] * (1 + 1e-9)


def test_linf_bound_uses_the_models_own_weights_when_they_are_tighter():
    """A = ½I certified with η ∝ (1, 100): L_η = 400 is the true constant (y = 400u for u > 0),
    while η = 1 and the μ-optimal η (which minimises μ, not L) give 20,200."""
    m = ImplicitNetwork(1, 2, 1, condition="nemon", gamma=0.5, tol=1e-12, max_iter=10_000).double()
    with torch.no_grad():
        m.A_raw["M"].zero_()
        m.A_raw["d"].copy_(torch.tensor([0.0, -math.log(100.0)], dtype=DT))
        m.B.copy_(torch.tensor([[1.0], [100.0]], dtype=DT))
        m.b.zero_()
        m.C.copy_(torch.tensor([[100.0, 1.0]], dtype=DT))
        m.c.zero_()
    d = linf_bound(m, details=True)
    assert d["unweighted"] == pytest.approx(20200.0) and d["weighted"] >= 20200.0 * (1 - 1e-9)
    assert d["model_weights"] == pytest.approx(400.0) and d["bound"] == pytest.approx(400.0)
    u = torch.tensor([[0.2], [0.7]], dtype=DT)
    slope = float((m(u[1:]) - m(u[:1])).abs().max() / 0.5)
    assert slope == pytest.approx(400.0, rel=1e-6)  # the bound is attained


def test_l2_bound():
    torch.manual_seed(0)
    m = ImplicitNetwork(4, 8, 3, gamma=0.6, condition="monotone", activation="tanh", tol=1e-12,
                        max_iter=100_000, strict=True).double()
    L2 = l2_bound(m)
    assert math.isfinite(L2)
    u = torch.rand(16, 4, dtype=DT)
    J = local_jacobians(m, u)
    assert float(torch.linalg.matrix_norm(J, ord=2).max()) <= L2 * (1 + 1e-9)
    # μ₂(A) ≥ 1: no ℓ2 certificate
    m2 = trained_ish(0.95, 0, steps=0)
    with torch.no_grad():
        m2.A.copy_(torch.diag(torch.full((8,), 0.9, dtype=DT)) + 0.5 * (torch.ones(8, 8, dtype=DT)
                                                                        - torch.eye(8, dtype=DT)))
    assert l2_bound(m2) == math.inf


def test_bound_gradient_finite_when_ill_posed():
    """Regression: for μ ≥ 1 the bound is +inf and its gradient must not be NaN (the masked
    branch's 1/(1 − μ) used to poison every gradient through torch.where)."""
    A = torch.tensor([[1.5, 0.2], [0.1, 0.3]], dtype=DT, requires_grad=True)
    B = torch.randn(2, 3, dtype=DT, requires_grad=True)
    C = torch.randn(2, 2, dtype=DT, requires_grad=True)
    L = linf_bound_tensors(A, B, C)
    assert L == math.inf
    L.backward()
    for t in (A, B, C):
        assert torch.isfinite(t.grad).all()
    # the certified case still differentiates: d/dμ [K/(1 − μ)] = K/(1 − μ)²
    A2 = torch.tensor([[0.5, 0.1], [0.0, -1.0]], dtype=DT, requires_grad=True)
    B2, C2 = torch.eye(2, dtype=DT), torch.eye(2, dtype=DT)
    L2 = linf_bound_tensors(A2, B2, C2)
    L2.backward()
    assert float(L2.detach()) == pytest.approx(1 / (1 - 0.6))
    assert float(A2.grad[0, 0]) == pytest.approx(1 / (1 - 0.6) ** 2)
    assert float(A2.grad[0, 1]) == pytest.approx(1 / (1 - 0.6) ** 2)


def test_dense_bounds_refuse_a_conv_model_instead_of_reading_kernel_slices():
    """weights()["A"] of a conv model is its 4-D kernel: l2_bound returned 0.056 for a model
    whose local gradient norm was 0.21 (a "bound" below a measured slope)."""
    from lipdeq import ImplicitConvNetwork
    from lipdeq.certify.lipschitz import l2_bound, linf_bound
    torch.manual_seed(0)
    m = ImplicitConvNetwork((1, 6, 6), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=3)
    for fn in (l2_bound, linf_bound):
        with pytest.raises(TypeError, match="dense model"):
            fn(m)
    assert math.isfinite(float(m.lipschitz_bound()))  # the conv model's own bound
