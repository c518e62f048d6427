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


# ----------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", SOLVERS)
def test_max_iter_honoured_and_never_silent(name):
    A = random_A(10, 0.9, seed=1, diag_shift=-1.0)
    A = A / (A.abs().sum(1).max() / 0.95)  # ‖A‖∞ < 1: Picard converges too (slowly)
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), dtype=DT)
    for max_iter in (1, 2, 7):
        with pytest.warns(fp.ConvergenceWarning, match="did not reach"):
            r = fp.solve(name, problem(A, w), tol=1e-14, max_iter=max_iter)
        assert not r.converged
        assert r.iterations == max_iter and r.residuals.numel() == max_iter
    with pytest.raises(fp.ConvergenceError):
        fp.solve(name, problem(A, w), tol=1e-14, max_iter=3, strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no warning at all
        r = fp.solve(name, problem(A, w), tol=1e-6, max_iter=10_000)
    assert r.converged and r.iterations <= 10_000


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("check_every", [1, 4])
def test_tol_honoured_exactly(name, check_every):
    """The solve stops at the first checked iterate whose bound is ≤ tol·max(1, ‖x‖)."""
    A = random_A(10, 0.5, seed=3, diag_shift=-0.5)
    A = A / (A.abs().sum(1).max() / 0.9)  # Picard converges too
    w = torch.randn(3, 10, generator=torch.Generator().manual_seed(0), dtype=DT) * 3
    tol = 1e-7
    rec = []
    r = fp.solve(name, problem(A, w, record=rec), tol=tol, max_iter=10_000,
                 check_every=check_every)
    mu = max(mu_inf(A), 0.0)
    scale = max(1.0, float(r.x.abs().amax()))
    assert r.converged and r.bound <= tol * scale
    assert r.bound == pytest.approx(r.residual / (1 - mu), rel=1e-12)
    assert r.iterations % check_every == 0
    assert len(rec) == r.iterations and torch.equal(rec[-1], r.x)
    # no earlier checked iterate met the rule: bound_k > tol·max(1, ‖x_k‖)
    checked = range(check_every - 1, r.iterations - 1, check_every)
    assert len(checked) > 0
    for k in checked:
        scale_k = max(1.0, float(rec[k].abs().amax()))
        assert float(r.residuals[k]) / (1 - mu) > tol * scale_k


def test_diverging_solve_stops_early_and_warns():
    A = stress_A()
    w = 5.0 * torch.randn(2, 50, generator=torch.Generator().manual_seed(1), dtype=DT)
    with pytest.warns(fp.ConvergenceWarning, match="diverged"):
        r = fp.solve("picard", problem(A, w), tol=1e-8, max_iter=100_000)
    assert r.iterations < 5_000 and not r.converged
    with pytest.raises(fp.ConvergenceError):
        fp.solve("picard", problem(A, w), tol=1e-8, max_iter=100_000, strict=True)


def test_nan_input_is_not_silent():
    A = random_A(4, 0.5, seed=0)
    w = torch.zeros(2, 4, dtype=DT)
    w[1, 2] = float("nan")
    with pytest.warns(fp.ConvergenceWarning):
        r = fp.solve("average", problem(A, w), tol=1e-8, max_iter=1000)
    assert not r.converged and r.iterations < 1000


def test_anderson_sample_already_at_fixed_point():
    """Regression: a batch row whose residuals are exactly 0 (e.g. a zero cotangent in the
    adjoint) made Anderson's least-squares system singular and the whole batch NaN."""
    A = random_A(5, 0.5, seed=0)
    w = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), dtype=DT)
    w[1] = 0.0  # relu(A·0 + 0) = 0: x0 = 0 is this sample's fixed point
    r = fp.solve("anderson", problem(A, w), tol=1e-12, max_iter=500, strict=True)
    assert torch.isfinite(r.x).all() and torch.equal(r.x[1], torch.zeros(5, dtype=DT))
    assert float((r.x - reference(A, w)).abs().max()) < 1e-10


def test_bad_arguments():
    A = random_A(3, 0.5, seed=0)
    w = torch.zeros(1, 3, dtype=DT)
    with pytest.raises(ValueError, match="solver"):
        fp.solve("newton", problem(A, w))
    with pytest.raises(ValueError, match="solver"):
        SolverConfig(solver="nope").validate()
    with pytest.raises(ValueError, match="solver"):
        SolverConfig(backward_solver="nope").validate()
    for tol in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tol"):
            fp.solve("average", problem(A, w), tol=tol)
    for max_iter in (0, -3, 2.5, float("inf"), float("nan"), "10", True):
        with pytest.raises(ValueError, match="max_iter"):
            fp.solve("average", problem(A, w), max_iter=max_iter)
    for check_every in (0, -1, 1.5):
        with pytest.raises(ValueError, match="check_every"):
            fp.solve("average", problem(A, w), check_every=check_every)
    with pytest.raises(ValueError, match="tol"):
        fp.solve("average", problem(A, w), tol="1e-3")
    # Anderson's options: memory 0 was a ZeroDivisionError, regularization NaN silently plain
    # averaging
    for memory in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="memory"):
            fp.solve("anderson", problem(A, w), memory=memory)
    for reg in (float("nan"), -5.0, float("inf"), "1e-6"):
        with pytest.raises(ValueError, match="regularization"):
            fp.solve("anderson", problem(A, w), regularization=reg)
    for bad in (dict(tol=0.0), dict(backward_tol=-1.0), dict(max_iter=0), dict(alpha=0.0),
                dict(check_every=0), dict(solver="picard", alpha=0.5)):
        name = "alpha" if "alpha" in bad else next(iter(bad))
        with pytest.raises(ValueError, match=name):
            SolverConfig(**bad).validate()
    assert SolverConfig(solver="picard", alpha=1.0, max_iter=10.0).validate().max_iter == 10.0
    for alpha in (0.0, -0.5, float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            fp.solve("average", problem(A, w), alpha=alpha)
    with pytest.raises(ValueError, match="alpha"):
        fp.solve("picard", problem(A, w), alpha=0.5)
    assert set(SOLVERS) <= set(fp.SOLVERS)


# ----------------------------------------------------------------------------- well-posedness
@pytest.mark.parametrize("activation", ["relu", "tanh", "leaky_relu"])
def test_weighted_well_posedness_twenty_starts(activation):
    """docs/math.md §10 item 8: μ∞,η(A) < 1 < μ∞(A); 20 random starts reach one fixed point."""
    A, eta = weighted_example(n=12, mu=0.8, seed=4)
    assert mu_inf(A, eta) == pytest.approx(0.8, abs=1e-12) and mu_inf(A) > 1.5
    act = get_activation(activation)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(3, 12, generator=g, dtype=DT)
    cfg = SolverConfig(tol=1e-13, max_iter=20_000, strict=True)
    sols = []
    for _ in range(20):
        x0 = 20.0 * torch.randn(3, 12, generator=g, dtype=DT)
        stats = {}
        x = implicit_fixed_point(DenseOperator(A), w, act, cfg, eta=eta, x0=x0, stats=stats)
        assert stats["forward"].converged
        sols.append(x)
    S = torch.stack(sols)
    assert float((S.amax(0) - S.amin(0)).max()) < 1e-10
    assert float((act.fn(S[0] @ A.T + w) - S[0]).abs().max()) < 1e-12


def test_x2_tanh_twenty_starts():
    """docs/math.md §3.3: X2 (μ∞ = 0.9, μ₂ = 3.16) with tanh reaches one x* from 20 starts."""
    A = torch.tensor([[0.9, 0.0], [10.9, -10.0]], dtype=DT)
    g = torch.Generator().manual_seed(0)
    w = torch.tensor([[0.3, -0.2]], dtype=DT).expand(20, 2)
    x0 = 10 * torch.randn(20, 2, generator=g, dtype=DT)  # one start per row
    S = fp.solve("average", problem(A, w, "tanh", x0=x0), tol=1e-14, max_iter=100_000,
                 strict=True).x
    assert float((S.amax(0) - S.amin(0)).max()) < 1e-12


def test_convergence_warnings_say_whether_the_forward_or_the_adjoint_solve_missed():
    """Found by review: both read "fixed-point solver 'average' did not reach ..."."""
    import warnings

    from lipdeq import ImplicitNetwork
    torch.manual_seed(0)
    model = ImplicitNetwork(5, 8, 3, max_iter=1, tol=1e-12).double()
    u = torch.rand(4, 5, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(u).sum().backward()
    texts = [str(w.message) for w in caught if issubclass(w.category, fp.ConvergenceWarning)]
    assert any(t.startswith("forward fixed-point solver") for t in texts), texts
    assert any(t.startswith("adjoint fixed-point solver") for t in texts), texts
