"""Fixed-point solvers' contract: max_iter and tol honoured, divergence and NaN never silent, bad
arguments, well-posedness from many starts, warning labels."""
import warnings

import pytest
import torch

from lipdeq.deq import fixed_point as fp
from lipdeq.deq.activations import get_activation
from lipdeq.deq.implicit import SolverConfig, implicit_fixed_point
from lipdeq.deq.operators import DenseOperator

# shared helpers and fixtures
from test_fixed_point import (DT, SOLVERS, mu_inf, problem, random_A, reference, stress_A,
                              weighted_example)  # noqa: F401


pytestmark = pytest.mark.usefixtures("one_thread")


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
    u = torch.finfo(DT).eps / 2  # the bound carries the rounding floor 2u‖x‖ (docs/math.md §4.5)
    floor = 2 * u * float(r.x.abs().amax())
    assert r.bound == pytest.approx((r.residual + floor) / (1 - mu), rel=1e-12, abs=0)
    assert r.iterations % check_every == 0
    assert len(rec) == r.iterations and torch.equal(rec[-1], r.x)
    # no earlier checked iterate met the rule: bound_k > tol·max(1, ‖x_k‖)
    checked = range(check_every - 1, r.iterations - 1, check_every)
    assert len(checked) > 0
    for k in checked:
        size_k = float(rec[k].abs().amax())
        assert (float(r.residuals[k]) + 2 * u * size_k) / (1 - mu) > tol * max(1.0, size_k)


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


@pytest.mark.parametrize("name", ["average", "picard", "anderson"])
@pytest.mark.parametrize("mu", [0.999, 0.99])
def test_float32_bound_covers_the_true_error_near_mu_one(name, mu):
    """x = relu(μx + 1), x* = 1/(1 − μ): a float32 residual stagnates at its rounding level while
    the error is 1/(1 − μ) times larger. Without the rounding floor, μ = 0.999 reported
    converged with bound 0 and error 0.03 (3× the tolerance)."""
    A, w = torch.tensor([[mu]]), torch.tensor([[1.0]])
    op = DenseOperator(A)
    from lipdeq.deq.implicit import contraction_data
    mu_plus, alpha = contraction_data(op, None)
    p = fp.FixedPointProblem(F=lambda x: torch.relu(op.multiply(x) + w), x0=torch.zeros_like(w),
                             norm=lambda v: v.abs().amax(-1), mu_plus=mu_plus, alpha_star=alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fp.ConvergenceWarning)
        r = fp.solve(name, p, tol=1e-5, max_iter=20_000)
    error = abs(float(r.x) - 1 / (1 - float(A.double())))
    assert r.bound >= error
    if not r.bound <= 1e-5 * float(r.x.abs().max()):
        assert not r.converged  # never "converged" with a bound above the tolerance


def test_nan_weights_give_nan_outputs_not_the_starting_point():
    """Found by review: under no_grad a NaN in A stopped the solve at x0 = 0 and every output
    was the bias c (finite, plausible); with autograd it was NaN. Now NaN both ways, warned."""
    from lipdeq import ImplicitNetwork
    m = ImplicitNetwork(3, 4, 2)
    with torch.no_grad():
        m.A[0, 1] = float("nan")
    u = torch.rand(2, 3)
    with pytest.warns(fp.ConvergenceWarning):
        with torch.no_grad():
            y = m(u)
    assert bool(torch.isnan(y).all())
