"""Forward fixed-point solvers (docs/math.md §3, §4; §10 items 8–15): convergence where Picard fails,
the guaranteed rate, the a-posteriori bound, the stopping rule and the solver contract."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from lipdeq.deq import fixed_point as fp
from lipdeq.deq.activations import get_activation
from lipdeq.deq.implicit import SolverConfig, contraction_data, implicit_fixed_point, linf_norm
from lipdeq.deq.operators import DenseOperator
from lipdeq.solvers import project_mu_inf

DT = torch.float64
SOLVERS = ("average", "picard", "anderson")
X1 = [[-3.0, 1.0], [1.0, -3.0]]


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers
def problem(A, w, activation="relu", *, eta=None, x0=None, record=None):
    """FixedPointProblem for x = Φ(Ax + w); ``record`` (a list) receives every x given to F."""
    op = DenseOperator(A)
    phi = get_activation(activation).fn
    mu_plus, alpha_star = contraction_data(op, eta)

    def F(x):
        if record is not None:
            record.append(x.clone())
        return phi(op.multiply(x) + w)

    return fp.FixedPointProblem(F=F, x0=torch.zeros_like(w) if x0 is None else x0,
                                norm=linf_norm(eta), mu_plus=mu_plus, alpha_star=alpha_star,
                                operator=op)


def reference(A, w, activation="relu", eta=None, tol=1e-13):
    """x* to round-off: the average iteration at a tight tol (strict), checked by its residual
    (its a-posteriori bound guarantees ‖x − x*‖ ≤ tol·max(1, ‖x‖))."""
    res = fp.solve("average", problem(A, w, activation, eta=eta), tol=tol, max_iter=200_000,
                   strict=True)
    phi = get_activation(activation).fn
    assert float((phi(res.x @ A.T + w) - res.x).abs().max()) < 1e-12
    return res.x


def random_A(n, mu, seed, *, diag_shift=0.0, scale=1.0):
    """A random A (mixed signs) projected onto μ∞ ≤ mu; the projection makes the bound tight."""
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(n, n, generator=g, dtype=DT) * scale + diag_shift * torch.eye(n, dtype=DT)
    return project_mu_inf(V, mu)


def stress_A(n=50, mu=0.9, seed=0):
    """docs/math.md §4.4 stress case: strongly negative diagonal (≈ −40…−46), tight rows, μ∞ = mu."""
    g = torch.Generator().manual_seed(seed)
    d = -40.0 - 6.0 * torch.rand(n, generator=g, dtype=DT)
    off = torch.randn(n, n, generator=g, dtype=DT)
    off.fill_diagonal_(0.0)
    off = off / off.abs().sum(1, keepdim=True) * (mu - d)[:, None]
    return off + torch.diag(d)


def mu_inf(A, eta=None):
    return float(DenseOperator(A).mu_inf(eta))


def weighted_example(n=12, mu=0.8, seed=0):
    """A with μ∞,η(A) = mu < 1 but unweighted μ∞(A) > 1: A = [η] A0 [η]⁻¹ with μ∞(A0) = mu."""
    g = torch.Generator().manual_seed(seed)
    A0 = random_A(n, mu, seed, scale=0.6)
    eta = torch.exp(2.0 * torch.rand(n, generator=g, dtype=DT))
    A = eta[:, None] * A0 / eta[None, :]
    return A, eta


def quiet_solve(*args, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fp.ConvergenceWarning)
        return fp.solve(*args, **kw)


# ----------------------------------------------------------------------------- docs/math.md §4.4 X1
def test_x1_picard_cycles_average_converges():
    A = torch.tensor(X1, dtype=DT)
    w = torch.tensor([[4.0, 4.0]], dtype=DT)
    rec = []
    with pytest.warns(fp.ConvergenceWarning):
        pic = fp.solve("picard", problem(A, w, record=rec), tol=1e-10, max_iter=40)
    assert not pic.converged and pic.iterations == 40
    # the 2-cycle (0,0) -> (4,4) -> (0,0) ...
    for k, x in enumerate(rec):
        assert torch.equal(x, torch.zeros_like(w) if k % 2 == 0 else torch.full_like(w, 4.0))
    assert torch.allclose(pic.residuals, torch.full_like(pic.residuals, 4.0))

    rec = []
    avg = fp.solve("average", problem(A, w, record=rec), tol=1e-12, max_iter=200, strict=True)
    assert avg.alpha == 0.25 and avg.rate == pytest.approx(0.75)
    assert torch.allclose(avg.x, torch.full_like(w, 4.0 / 3.0), atol=1e-11, rtol=0)
    errs = [float((x - 4.0 / 3.0).abs().max()) for x in rec]
    ratios = [b / a for a, b in zip(errs, errs[1:]) if a > 1e-12]
    assert len(ratios) > 10
    assert max(ratios) <= 0.75 + 1e-12           # the guaranteed factor
    assert max(ratios[1:]) == pytest.approx(0.25, abs=1e-6)  # SPEC: observed 0.25 (after step 1)


def test_x1_identity_activation_picard_diverges_and_stops():
    """With Φ = id, Picard's matrix has eigenvalues −2, −4: it blows up; the solver stops on the
    non-finite residual (not silently, well before max_iter), the average iteration converges."""
    A = torch.tensor(X1, dtype=DT)
    w = torch.tensor([[4.0, 4.0]], dtype=DT)
    with pytest.warns(fp.ConvergenceWarning, match="diverged"):
        pic = fp.solve("picard", problem(A, w, "identity"), tol=1e-10, max_iter=100_000)
    assert not pic.converged and pic.iterations < 2000
    avg = fp.solve("average", problem(A, w, "identity"), tol=1e-12, max_iter=500, strict=True)
    # identity: x = Ax + w  =>  x = (I − A)⁻¹ w
    exact = torch.linalg.solve(torch.eye(2, dtype=DT) - A, w[0])
    assert torch.allclose(avg.x[0], exact, atol=1e-11, rtol=0)


# ----------------------------------------------------------------------------- stress case
def test_stress_case_average_converges_picard_fails():
    A = stress_A()
    assert mu_inf(A) == pytest.approx(0.9, abs=1e-12)
    mu_plus, alpha_star = contraction_data(DenseOperator(A), None)
    assert float(alpha_star) == pytest.approx(1.0 / (1.0 - float(A.diagonal().min())))
    assert float(alpha_star) < 0.025
    w = 5.0 * torch.randn(6, 50, generator=torch.Generator().manual_seed(1), dtype=DT)
    with pytest.warns(fp.ConvergenceWarning):
        pic = fp.solve("picard", problem(A, w), tol=1e-8, max_iter=5000)
    assert not pic.converged
    assert not math.isfinite(pic.residual) or pic.residual > 1e3

    rec = []
    avg = fp.solve("average", problem(A, w, record=rec), tol=1e-10, max_iter=20_000, strict=True)
    rho = 1 - float(alpha_star) * (1 - 0.9)
    assert avg.rate == pytest.approx(rho)
    xs = reference(A, w, tol=1e-12)
    errs = torch.stack([(x - xs).abs().amax(1) for x in rec])  # (k, N) per-sample ∞-norms
    e0, e1 = errs[:-1], errs[1:]
    keep = e0 > 1e-8
    assert int(keep.sum()) > 100
    assert float((e1[keep] / e0[keep]).max()) <= rho + 1e-9
    # the residual trace falls at least as fast (T_α contracts its own residual by ρ)
    r = avg.residuals
    keep = r[:-1] > 1e-8
    assert float((r[1:][keep] / r[:-1][keep]).max()) <= rho + 1e-9
    assert float(avg.bound) >= float((avg.x - xs).abs().max())
    # Anderson reaches the same fixed point
    and_ = fp.solve("anderson", problem(A, w), tol=1e-12, max_iter=20_000, strict=True)
    assert float((and_.x - xs).abs().max()) < 1e-10


# ----------------------------------------------------------------------------- rate and bounds
@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh"])
@pytest.mark.parametrize("mu,shift", [(0.5, 0.0), (0.9, -3.0), (-0.5, 0.0), (0.95, 1.0)])
def test_average_rate_and_bound(activation, mu, shift):
    """docs/math.md §10 items 9, 11: error ratios ≤ 1 − α*(1 − μ⁺) above round-off, bound ≥ true error."""
    A = random_A(8, mu, seed=int(100 * mu) + 7, diag_shift=shift)
    assert mu_inf(A) == pytest.approx(mu, abs=1e-12)
    w = torch.randn(5, 8, generator=torch.Generator().manual_seed(3), dtype=DT) * 2
    xs = reference(A, w, activation)
    rec = []
    res = fp.solve("average", problem(A, w, activation, record=rec), tol=1e-13, max_iter=50_000,
                   strict=True)
    rho = 1 - res.alpha * (1 - max(mu, 0.0))
    assert res.rate == pytest.approx(rho)
    errs = torch.stack([(x - xs).abs().amax(1) for x in rec])
    keep = errs[:-1] > 1e-11
    assert int(keep.sum()) >= 5
    assert float((errs[1:][keep] / errs[:-1][keep]).max()) <= rho + 1e-9
    for tol in (1e-2, 1e-5, 1e-9):
        r = fp.solve("average", problem(A, w, activation), tol=tol, max_iter=50_000, strict=True)
        true_err = float((r.x - xs).abs().max())
        assert r.bound >= true_err
        assert r.bound <= tol * max(1.0, float(r.x.abs().amax()))  # met the stopping rule
        # the residual reported is that of the returned x
        phi = get_activation(activation).fn
        assert r.residual == pytest.approx(float((phi(r.x @ A.T + w) - r.x).abs().amax(1).max()),
                                           rel=1e-9, abs=1e-15)


def test_weighted_rate_and_bound():
    """The same guarantees in ‖·‖∞,η where only the weighted measure is < 1."""
    A, eta = weighted_example()
    assert mu_inf(A, eta) < 1 < mu_inf(A)
    w = torch.randn(4, A.shape[0], generator=torch.Generator().manual_seed(5), dtype=DT)
    xs = reference(A, w, "tanh", eta)
    rec = []
    res = fp.solve("average", problem(A, w, "tanh", eta=eta, record=rec), tol=1e-13,
                   max_iter=50_000, strict=True)
    rho = res.rate
    assert rho == pytest.approx(1 - res.alpha * (1 - max(mu_inf(A, eta), 0)))
    errs = torch.stack([((x - xs).abs() / eta).amax(1) for x in rec])
    keep = errs[:-1] > 1e-11
    assert float((errs[1:][keep] / errs[:-1][keep]).max()) <= rho + 1e-9
    r = fp.solve("average", problem(A, w, "tanh", eta=eta), tol=1e-6, max_iter=50_000)
    assert r.bound >= float(((r.x - xs).abs() / eta).max())


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_every_solver_reaches_the_same_fixed_point(activation):
    # ‖A‖∞ < 1 so that Picard converges too
    A = project_mu_inf(torch.randn(10, 10, generator=torch.Generator().manual_seed(2),
                                   dtype=DT), 0.0)
    A = A / (A.abs().sum(1).max() / 0.7)
    w = torch.randn(7, 10, generator=torch.Generator().manual_seed(4), dtype=DT)
    xs = reference(A, w, activation)
    for name in SOLVERS:
        r = fp.solve(name, problem(A, w, activation), tol=1e-13, max_iter=10_000, strict=True)
        assert r.converged and r.iterations <= 10_000
        assert float((r.x - xs).abs().max()) < 1e-11, name
        loose = fp.solve(name, problem(A, w, activation), tol=1e-5, max_iter=10_000, strict=True)
        assert loose.bound >= float((loose.x - xs).abs().max()), name


def test_anderson_is_faster_than_average_on_slow_problem():
    A = random_A(30, 0.99, seed=11, diag_shift=-2.0)
    w = torch.randn(4, 30, generator=torch.Generator().manual_seed(1), dtype=DT)
    avg = fp.solve("average", problem(A, w), tol=1e-8, max_iter=100_000, strict=True)
    and_ = fp.solve("anderson", problem(A, w), tol=1e-8, max_iter=100_000, strict=True)
    assert and_.iterations < avg.iterations
    assert float((avg.x - and_.x).abs().max()) < 1e-6


# ----------------------------------------------------------------------------- step cap α*
def test_alpha_star_uses_min_with_zero():
    """docs/math.md §10 item 13: A = diag(0.5) gives α* = 1 (not 2); α = 2 has factor 1 on the ReLU-off
    region (T₂x = −x) and is not certified."""
    A = 0.5 * torch.eye(3, dtype=DT)
    mu_plus, alpha_star = contraction_data(DenseOperator(A), None)
    assert float(alpha_star) == 1.0 and float(mu_plus) == 0.5
    w = torch.full((1, 3), -10.0, dtype=DT)
    x0 = torch.ones(1, 3, dtype=DT)
    rec = []
    with pytest.warns(fp.ConvergenceWarning):
        r2 = fp.solve("average", problem(A, w, x0=x0, record=rec), alpha=2.0, tol=1e-8,
                      max_iter=20)
    assert math.isnan(r2.rate) and not r2.converged
    # x -> -x: ‖T₂x − T₂y‖ = ‖x − y‖, the factor is exactly 1
    assert torch.equal(rec[1], -rec[0]) and torch.equal(rec[2], rec[0])
    r1 = fp.solve("average", problem(A, w, x0=x0), tol=1e-12, max_iter=20, strict=True)
    assert r1.alpha == 1.0 and r1.rate == 0.5 and torch.equal(r1.x, torch.zeros_like(w))
    # negative diagonal: α* = 1/(1 − d_min)
    B = torch.tensor([[-3.0, 0.5], [0.2, 0.4]], dtype=DT)
    assert float(contraction_data(DenseOperator(B), None)[1]) == pytest.approx(0.25)


def test_rate_nan_when_alpha_exceeds_alpha_star_or_no_certificate():
    A = torch.tensor(X1, dtype=DT)
    w = torch.tensor([[4.0, 4.0]], dtype=DT)
    r = quiet_solve("average", problem(A, w), alpha=0.3, tol=1e-10, max_iter=2000)
    assert math.isnan(r.rate)  # 0.3 > α* = 0.25: no guaranteed factor
    # no certificate (μ ≥ 1): bound inf, plain residual rule
    A2 = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=DT)
    r = fp.solve("average", problem(A2, torch.tensor([[-1.0, 1.0]], dtype=DT)), tol=1e-10,
                 max_iter=100)
    assert r.converged and r.bound == math.inf and math.isnan(r.rate)
