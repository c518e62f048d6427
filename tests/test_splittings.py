"""monDEQ operator splittings registered as fixed-point solvers (lipdeq.splittings)."""
import math
import warnings

import numpy as np
import pytest
import torch

import lipdeq.deq.splittings as sp
from lipdeq import ImplicitNetwork, geometry
from lipdeq.deq import fixed_point as fp
from lipdeq.deq.activations import Activation, get_activation
from lipdeq.conditions.sets import clip_symmetric
from lipdeq.deq.implicit import SolverConfig, implicit_fixed_point
from lipdeq.deq.operators import DenseOperator

SPLITTINGS = ("forward_backward", "peaceman_rachford")
ACTS = ("relu", "tanh", "leaky_relu", "identity")


def monotone_matrix(n, gamma, seed, scale=1.0):
    """A with μ₂(A) ≤ γ (eigenvalue clip of a random matrix)."""
    gen = torch.Generator().manual_seed(seed)
    return clip_symmetric(scale * torch.randn(n, n, generator=gen, dtype=torch.float64), gamma)


def solve(A, w, act, solver, tol=1e-11, max_iter=20000, **kw):
    stats = {}
    x = implicit_fixed_point(DenseOperator(A), w, get_activation(act),
                             SolverConfig(solver=solver, tol=tol, max_iter=max_iter, **kw), stats=stats)
    return x, stats["forward"]


def test_registered():
    for name in SPLITTINGS:
        assert name in fp.SOLVERS
        fp.check_solver_name(name)


@pytest.mark.parametrize("act", ACTS)
def test_same_fixed_point_as_average_on_m_and_n0(act):
    """On the intersection of the monotone set and μ∞ < 1 all three solvers are guaranteed."""
    gen = torch.Generator().manual_seed(1)
    A = 0.06 * torch.randn(8, 8, generator=gen, dtype=torch.float64) - 0.2 * torch.eye(8, dtype=torch.float64)
    assert geometry.mu_2(A) <= 0.5 and geometry.mu_inf(A) < 1
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref, r0 = solve(A, w, act, "average")
    assert r0.converged
    for name in SPLITTINGS:
        x, r = solve(A, w, act, name)
        assert r.converged and r.rate < 1, name
        assert float((x - ref).abs().max()) < 1e-9, name
        assert r.bound < 1e-9 and r.residuals.numel() == r.iterations


@pytest.mark.parametrize("act", ACTS)
def test_monotone_but_not_contracting_in_inf_norm(act):
    """μ₂(A) ≤ 0.5 but μ∞(A) ≫ 1: the splittings still reach the (unique) fixed point."""
    A = monotone_matrix(12, 0.5, seed=3, scale=0.6)
    assert geometry.mu_2(A) <= 0.5 and geometry.mu_inf(A) > 1.5
    w = torch.randn(4, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    xs = []
    for name in SPLITTINGS:
        x, r = solve(A, w, act, name)
        assert r.converged and r.bound == math.inf and 0 < r.rate < 1, name
        phi = get_activation(act).fn
        assert float((phi(x @ A.T + w) - x).abs().max()) <= 1e-10 * max(1, float(x.abs().max()))
        xs.append(x)
    assert float((xs[0] - xs[1]).abs().max()) < 1e-8
    if act == "identity":  # x = (I − A)⁻¹ w
        direct = torch.linalg.solve(torch.eye(12, dtype=A.dtype) - A, w.T).T
        assert float((xs[1] - direct).abs().max()) < 1e-8


def test_default_steps_and_guaranteed_rates():
    A = monotone_matrix(10, 0.3, seed=5, scale=1.0)
    op = DenseOperator(A)
    m, L = sp.monotone_constants(op)
    assert m == pytest.approx(0.7, abs=1e-12)
    G = torch.eye(10, dtype=A.dtype) - A
    assert L == pytest.approx(float(torch.linalg.matrix_norm(G, 2)))
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, r_pr = solve(A, w, "relu", "peaceman_rachford")
    assert r_pr.alpha == pytest.approx(1 / L) and r_pr.rate == pytest.approx(math.sqrt((L - m) / (L + m)))
    _, r_fb = solve(A, w, "relu", "forward_backward")
    assert r_fb.alpha == pytest.approx(m / L ** 2) and r_fb.rate == pytest.approx(math.sqrt(1 - m * m / L ** 2))
    # the rates bound the linear parts: ‖I − αG‖₂ and the reflected resolvent (I − αG)(I + αG)⁻¹
    for a in (0.05, 1 / L, 0.9):
        eye = torch.eye(10, dtype=A.dtype)
        fb = float(torch.linalg.matrix_norm(eye - a * G, 2))
        pr = float(torch.linalg.matrix_norm((eye - a * G) @ torch.linalg.inv(eye + a * G), 2))
        assert pr <= math.sqrt(1 - 4 * a * m / (1 + 2 * a * m + a * a * L * L)) + 1e-12
        if 1 - 2 * a * m + a * a * L * L < 1:
            assert fb <= math.sqrt(1 - 2 * a * m + a * a * L * L) + 1e-12
    # with μ∞ < 1 and a better ∞-norm factor, forward–backward takes α* instead
    B = torch.diag(torch.tensor([-3.0, -2.0, -4.0], dtype=torch.float64))
    B[0, 1] = 0.5
    _, r = solve(B, torch.ones(1, 3, dtype=torch.float64), "tanh", "forward_backward")
    assert r.alpha == pytest.approx(1 / 5) and r.rate == pytest.approx(1 - (1 - 0) / 5)


def test_prox_closed_forms_and_generic():
    z = torch.linspace(-3, 3, 101, dtype=torch.float64)
    for a in (0.3, 1.0, 2.5):
        assert torch.equal(sp.prox(get_activation("relu"), a)(z), torch.relu(z))
        leaky = get_activation("leaky_relu")
        generic = Activation("custom_leaky", leaky.fn, leaky.derivative)
        assert float((sp.prox(leaky, a)(z) - sp.prox(generic, a)(z)).abs().max()) < 1e-12
        x = sp.prox(get_activation("tanh"), a)(z)  # solves (1 − α)x + α artanh(x) = z
        assert float(((1 - a) * x + a * torch.atanh(x) - z).abs().max()) < 1e-10


@pytest.mark.parametrize("solver", SPLITTINGS)
def test_backward_by_the_same_splitting(solver):
    """Gradients through a monotone model (μ∞ ≫ 1) equal the direct adjoint solve."""
    torch.manual_seed(0)
    model = ImplicitNetwork(3, 7, 2, condition="monotone", gamma=0.5, solver=solver, tol=1e-12,
                            max_iter=20000, activation="tanh").double()
    with torch.no_grad():
        model.A_raw["Q"].mul_(8.0)  # a large skew part: μ∞(A) > 1, μ₂(A) ≤ 0.5
    A = model.effective_A().detach()
    assert float(geometry.mu_inf(A)) > 1
    u = torch.rand(4, 3, dtype=torch.float64)
    y = model(u)
    loss = (y ** 2).sum()
    loss.backward()
    assert model.last_backward.converged and model.last_backward.iterations > 1
    # reference: v = (I − GA)⁻ᵀ... per sample, dℓ/dB = Σ v uᵀ with v = G w, w = (I − AᵀG)⁻¹ Cᵀȳ
    with torch.no_grad():
        x = model.fixed_point(u)
        z = x @ A.T + u @ model.B.T + model.b
        G = 1 - torch.tanh(z) ** 2
        ybar = 2 * (x @ model.C.T + model.c)
        gB = torch.zeros_like(model.B)
        for i in range(4):
            M = torch.eye(7, dtype=A.dtype) - A.T * G[i][None, :]
            wv = torch.linalg.solve(M, model.C.T @ ybar[i])
            gB += torch.outer(G[i] * wv, u[i])
    assert float((model.B.grad - gB).abs().max()) < 1e-8


def test_adjoint_without_operator_is_refused_clearly():
    g = torch.ones(2, 3, dtype=torch.float64)
    prob = fp.FixedPointProblem(F=lambda v: v, x0=g, norm=lambda v: v.abs().sum(1),
                                mu_plus=torch.tensor(0.5), alpha_star=torch.tensor(1.0),
                                operator=None, extra={"G": g, "g": g})
    for name in SPLITTINGS:
        with pytest.raises(ValueError, match="backward_solver='average'"):
            fp.solve(name, prob)


def test_outside_the_monotone_set_divergence_is_reported():
    A = torch.tensor([[1.5, 0.3], [-0.2, 1.2]], dtype=torch.float64)  # μ₂ > 1, μ∞ > 1
    w = torch.ones(2, 2, dtype=torch.float64)
    for name in SPLITTINGS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, r = solve(A, w, "relu", name, tol=1e-8, max_iter=400)
        assert not r.converged and math.isnan(r.rate)
        assert any(issubclass(c.category, fp.ConvergenceWarning) for c in caught), name
        with pytest.raises(fp.ConvergenceError):
            solve(A, w, "relu", name, tol=1e-8, max_iter=400, strict=True)


def test_singular_resolvent_is_reported_not_raised():
    A = torch.tensor([[1.5, 0.0], [0.0, 1.5]], dtype=torch.float64)  # α = 1/L = 2: I + 2(I − A) = 0
    with pytest.raises(fp.ConvergenceError):
        solve(A, torch.ones(1, 2, dtype=torch.float64), "relu", "peaceman_rachford", strict=True)


def test_float32_and_warm_start():
    A = monotone_matrix(6, 0.4, seed=9).float()
    w = torch.randn(3, 6, generator=torch.Generator().manual_seed(10))
    x, r = solve(A, w, "relu", "peaceman_rachford", tol=1e-5, max_iter=500)
    assert r.converged and x.dtype == torch.float32
    stats = {}
    x2 = implicit_fixed_point(DenseOperator(A), w, get_activation("relu"),
                              SolverConfig(solver="forward_backward", tol=1e-5, max_iter=500),
                              x0=x, stats=stats)
    assert stats["forward"].iterations <= 3 and float((x2 - x).abs().max()) < 1e-4
    assert np.isfinite(stats["forward"].residual)
