"""The implicit layer's backward (docs/math.md §5; §10 items 16–18): gradcheck for every solver and
activation, agreement with unrolled autograd and with the direct adjoint solve, the adjoint's
contraction, constant memory in the iteration count, and CUDA = CPU."""
from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from lipdeq.deq import fixed_point as fp
from lipdeq.deq.activations import get_activation
from lipdeq.deq.implicit import SolverConfig, implicit_fixed_point
from lipdeq.deq.operators import DenseOperator
from lipdeq.solvers import project_mu_inf

DT = torch.float64
SOLVERS = ("average", "picard", "anderson")
ACTIVATIONS = ("relu", "leaky_relu", "tanh")
NAMES = ("u", "A", "B", "b", "C", "c", "D")


pytestmark = pytest.mark.usefixtures("one_thread")


def make_params(n=5, p=3, q=2, N=4, *, mu=0.5, seed=0, picard_ok=True, diag_shift=0.0):
    """(u, A, B, b, C, c, D) in float64. With ``picard_ok`` ‖A‖∞ < 1 as well, so that Picard
    (α = 1) converges and every solver can be compared on the same network."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=DT)  # noqa: E731
    A = project_mu_inf(0.6 * r(n, n) + diag_shift * torch.eye(n, dtype=DT), mu)
    if picard_ok:
        A = A * min(1.0, 0.8 / float(A.abs().sum(1).max()))
    return {"u": r(N, p), "A": A, "B": r(n, p), "b": 0.5 * r(n), "C": r(q, n), "c": r(q),
            "D": r(q, p)}


def forward(params, activation, config, *, eta=None, stats=None):
    """y = C x* + c + D u with x* = Φ(A x* + B u + b) from the implicit layer."""
    u, A, B, b, C, c, D = (params[k] for k in NAMES)
    x = implicit_fixed_point(DenseOperator(A), u @ B.T + b, get_activation(activation), config,
                             eta=eta, stats=stats)
    return x @ C.T + c + u @ D.T


def z_star(params, activation):
    """Pre-activation z* = A x* + B u + b at a tight fixed point (no grad)."""
    with torch.no_grad():
        P = {k: v.detach() for k, v in params.items()}
        cfg = SolverConfig(tol=1e-14, max_iter=100_000, strict=True)
        x = implicit_fixed_point(DenseOperator(P["A"]), P["u"] @ P["B"].T + P["b"],
                                 get_activation(activation), cfg)
        return x, x @ P["A"].T + P["u"] @ P["B"].T + P["b"]


def leaves(params):
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def implicit_grads(params, activation, config, ybar, **kw):
    P = leaves(params)
    y = forward(P, activation, config, **kw)
    return dict(zip(NAMES, torch.autograd.grad((y * ybar).sum(), [P[k] for k in NAMES])))


def unrolled_grads(params, activation, ybar, iterations):
    """Plain autograd through ``iterations`` steps of the average iteration (α*)."""
    P = leaves(params)
    u, A, B, b, C, c, D = (P[k] for k in NAMES)
    phi = get_activation(activation).fn
    alpha = 1.0 / (1.0 - min(float(A.detach().diagonal().min()), 0.0))
    w = u @ B.T + b
    x = torch.zeros_like(w)
    for _ in range(iterations):
        x = (1 - alpha) * x + alpha * phi(x @ A.T + w)
    y = x @ C.T + c + u @ D.T
    return dict(zip(NAMES, torch.autograd.grad((y * ybar).sum(), [P[k] for k in NAMES])))


def direct_grads(params, activation, ybar):
    """docs/math.md §5.2–5.3 with a dense solve: w = (I − GA)⁻ᵀ Cᵀȳ per sample, v = Gw."""
    P = {k: v.detach() for k, v in params.items()}
    x, z = z_star(params, activation)
    G = get_activation(activation).derivative(z)
    n = P["A"].shape[0]
    eye = torch.eye(n, dtype=DT)
    gx = ybar @ P["C"]
    v = torch.stack([G[i] * torch.linalg.solve((eye - G[i][:, None] * P["A"]).T, gx[i])
                     for i in range(x.shape[0])])
    return {"u": v @ P["B"] + ybar @ P["D"], "A": v.T @ x, "B": v.T @ P["u"], "b": v.sum(0),
            "C": ybar.T @ x, "c": ybar.sum(0), "D": ybar.T @ P["u"]}, v


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ACTIVATIONS + ("identity",))
def test_activation_derivative_matches_autograd(name, dtype):
    """Regression: the leaky-ReLU derivative was built in float32 (slope 0.1 rounded, 1.5e-8 off
    in float64), so the adjoint and autograd's step through Φ disagreed."""
    act = get_activation(name)
    z = torch.tensor([-3.0, -0.7, -1e-3, 1e-3, 0.4, 2.5], dtype=dtype, requires_grad=True)
    auto, = torch.autograd.grad(act.fn(z).sum(), z)
    d = act.derivative(z.detach())
    assert d.dtype == dtype and d.shape == z.shape
    eps = torch.finfo(dtype).eps  # tanh: 1 − y² cancels, so absolute ulps
    assert torch.allclose(d, auto, atol=8 * eps, rtol=8 * eps)
    assert bool(((d >= 0) & (d <= 1)).all())  # slopes in [0, 1] (docs/math.md §1.1)
    if name == "relu":
        assert float(act.derivative(torch.zeros(1, dtype=dtype))) == 0.0  # φ'(0) := 0


# ----------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("solver", SOLVERS)
def test_gradcheck_all_inputs_and_parameters(solver, activation):
    params = make_params(seed=3)
    if activation == "relu":  # away from the kinks: every |z*_i| well above the FD step
        assert float(z_star(params, activation)[1].abs().min()) > 0.02
    cfg = SolverConfig(solver=solver, tol=1e-13, max_iter=20_000, strict=True)

    def f(*tensors):
        return forward(dict(zip(NAMES, tensors)), activation, cfg)

    inputs = tuple(params[k].clone().requires_grad_(True) for k in NAMES)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_weighted_norm_only():
    """μ∞,η(A) < 1 < μ∞(A): the backward solves in ‖·‖₁,η and stays exact."""
    params = make_params(n=6, seed=5, picard_ok=False)
    g = torch.Generator().manual_seed(1)
    eta = torch.exp(2.0 * torch.rand(6, generator=g, dtype=DT))
    params["A"] = eta[:, None] * params["A"] / eta[None, :]
    assert float(DenseOperator(params["A"]).mu_inf()) > 1 > float(DenseOperator(params["A"]).mu_inf(eta))
    cfg = SolverConfig(tol=1e-13, max_iter=50_000, strict=True)

    def f(*tensors):
        return forward(dict(zip(NAMES, tensors)), "tanh", cfg, eta=eta)

    inputs = tuple(params[k].clone().requires_grad_(True) for k in NAMES)
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- exact values
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("solver,backward_solver", [("average", None), ("anderson", None),
                                                    ("picard", None), ("average", "anderson")])
def test_gradients_equal_unrolled_and_direct_solve(solver, backward_solver, activation):
    """docs/math.md §5.5 / §10 item 17–18: implicit = unrolled autograd (6000 steps) = (I − GA)⁻ᵀ solve."""
    params = make_params(n=6, p=3, q=2, N=4, seed=11, mu=0.3)
    if activation == "relu":
        assert float(z_star(params, activation)[1].abs().min()) > 1e-3
    ybar = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    cfg = SolverConfig(solver=solver, backward_solver=backward_solver, tol=1e-14,
                       max_iter=20_000, strict=True)
    imp = implicit_grads(params, activation, cfg, ybar)
    unr = unrolled_grads(params, activation, ybar, 6000 if solver == "average" else 400)
    dirc, _ = direct_grads(params, activation, ybar)
    for k in NAMES:
        scale = max(1.0, float(dirc[k].abs().max()))
        assert float((imp[k] - unr[k]).abs().max()) <= 1e-9 * scale, k
        assert float((imp[k] - dirc[k]).abs().max()) <= 1e-10 * scale, k


def test_adjoint_equals_direct_solve_and_contracts():
    """docs/math.md §5.4 / §10 item 18: the adjoint iterate's residuals fall by ≤ 1 − α(1 − μ⁺) per step,
    and the gradient w.r.t. z (= w = Bu + b) equals G(I − GA)⁻ᵀCᵀȳ to 1e-10."""
    params = make_params(n=8, p=3, q=3, N=5, seed=2, mu=0.9, picard_ok=False, diag_shift=-2.0)
    ybar = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    P = leaves(params)
    w = (P["u"] @ P["B"].T + P["b"]).detach().requires_grad_(True)
    stats = {}
    cfg = SolverConfig(tol=1e-13, max_iter=50_000, strict=True)
    x = implicit_fixed_point(DenseOperator(P["A"]), w, get_activation("tanh"), cfg, stats=stats)
    ((x @ P["C"].T) * ybar).sum().backward()
    _, v = direct_grads(params, "tanh", ybar)
    assert float((w.grad - v).abs().max()) <= 1e-10 * max(1.0, float(v.abs().max()))
    back = stats["backward"]
    assert back.converged and back.iterations > 20
    mu = float(DenseOperator(params["A"]).mu_inf())
    rho = 1 - back.alpha * (1 - max(mu, 0.0))
    assert back.rate == pytest.approx(rho)
    r = back.residuals
    keep = r[:-1] > 1e-11
    assert float((r[1:][keep] / r[:-1][keep]).max()) <= rho + 1e-9
    assert stats["forward"].converged


def test_gradient_only_when_needed():
    params = make_params()
    cfg = SolverConfig(tol=1e-10)
    op = DenseOperator(params["A"])
    x = implicit_fixed_point(op, params["u"] @ params["B"].T, get_activation("tanh"), cfg)
    assert not x.requires_grad
    with torch.no_grad():
        P = leaves(params)
        x = implicit_fixed_point(DenseOperator(P["A"]), P["u"] @ P["B"].T,
                                 get_activation("tanh"), cfg)
    assert not x.requires_grad
    # only A requires grad: the hook still runs and the gradient is right
    A = params["A"].clone().requires_grad_(True)
    ybar = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=DT)
    cfg = SolverConfig(tol=1e-14, max_iter=10_000)
    x = implicit_fixed_point(DenseOperator(A), params["u"] @ params["B"].T + params["b"],
                             get_activation("tanh"), cfg)
    gA, = torch.autograd.grad(((x @ params["C"].T) * ybar).sum(), A)
    assert torch.allclose(gA, direct_grads(params, "tanh", ybar)[0]["A"], atol=1e-11, rtol=0)


# ----------------------------------------------------------------------------- memory
def _saved_bytes(fn):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


def test_backward_memory_does_not_grow_with_iterations():
    """Bytes autograd saves during forward are the same for max_iter 50 and 500 (all iterations
    run: the tolerance cannot be met); unrolling the same iterations saves ~10× more."""
    params = make_params(n=64, p=16, q=4, N=32, seed=0, mu=0.99, picard_ok=False,
                         diag_shift=-3.0)
    P = leaves(params)
    saved, iters = {}, {}
    for max_iter in (50, 500):
        stats = {}
        cfg = SolverConfig(tol=1e-300, max_iter=max_iter)
        with pytest.warns(fp.ConvergenceWarning):
            saved[max_iter], y = _saved_bytes(
                lambda: forward(P, "relu", cfg, stats=stats))
        iters[max_iter] = stats["forward"].iterations
        with pytest.warns(fp.ConvergenceWarning):  # the adjoint cannot meet tol either
            y.sum().backward()
        assert torch.isfinite(P["A"].grad).all()
        assert stats["backward"].iterations == max_iter
    assert iters == {50: 50, 500: 500}
    assert saved[50] == saved[500] > 0

    def unrolled(k):
        x = torch.zeros(32, 64, dtype=DT)
        w = P["u"] @ P["B"].T + P["b"]
        for _ in range(k):
            x = 0.5 * x + 0.5 * torch.relu(x @ P["A"].T + w)
        return x

    assert _saved_bytes(lambda: unrolled(500))[0] > 5 * _saved_bytes(lambda: unrolled(50))[0]


# ----------------------------------------------------------------------------- never silent
def test_nonconverged_backward_warns_or_raises():
    params = make_params(n=8, seed=1, mu=0.9, picard_ok=False, diag_shift=-2.0)
    P = leaves(params)
    cfg = SolverConfig(tol=1e-8, max_iter=5_000, backward_tol=1e-300)
    y = forward(P, "tanh", cfg)
    with pytest.warns(fp.ConvergenceWarning):
        y.sum().backward()
    P = leaves(params)
    y = forward(P, "tanh", SolverConfig(tol=1e-8, max_iter=5_000, backward_tol=1e-300,
                                         strict=True))
    with pytest.raises(fp.ConvergenceError):
        y.sum().backward()
    with pytest.raises(fp.ConvergenceError):
        forward(P, "tanh", SolverConfig(tol=1e-12, max_iter=3, strict=True))
    with pytest.warns(fp.ConvergenceWarning):
        forward(P, "tanh", SolverConfig(tol=1e-12, max_iter=3))


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", SOLVERS)
def test_cuda_matches_cpu(solver):
    params = make_params(n=16, p=5, q=3, N=8, seed=4)
    ybar = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    cfg = SolverConfig(solver=solver, tol=1e-13, max_iter=20_000, strict=True)
    out = {}
    for dev in ("cpu", "cuda"):
        P = {k: v.to(dev).requires_grad_(True) for k, v in params.items()}
        stats = {}
        y = forward(P, "tanh", cfg, stats=stats)
        grads = torch.autograd.grad((y * ybar.to(dev)).sum(), [P[k] for k in NAMES])
        out[dev] = (y.detach().cpu(), [g.cpu() for g in grads])
        assert stats["forward"].converged and stats["backward"].converged
    assert torch.allclose(out["cpu"][0], out["cuda"][0], atol=1e-10, rtol=0)
    for gc, gg in zip(out["cpu"][1], out["cuda"][1]):
        assert torch.allclose(gc, gg, atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- review defects
@pytest.mark.parametrize("solver", ["average", "anderson"])
def test_adjoint_accuracy_does_not_depend_on_loss_scale(solver):
    """§4: the adjoint's stopping rule was tol·max(1, ‖w‖), so scaling the loss by
    1e-3 (e.g. ``mean`` instead of ``sum``) made the gradient's relative error up to 1000×
    larger. With the relative rule the relative error vs the direct solve (I − GA)⁻ᵀ is the same
    for loss·1e-3, loss·1 and loss·1000."""
    params = make_params(n=8, p=3, q=3, N=5, seed=2, mu=0.9, picard_ok=False, diag_shift=-2.0)
    ybar = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    cfg = SolverConfig(solver=solver, tol=1e-13, backward_tol=1e-4, max_iter=50_000)
    exact, _ = direct_grads(params, "tanh", ybar)
    errors = {}
    for s in (1e-3, 1.0, 1e3):
        imp = implicit_grads(params, "tanh", cfg, s * ybar)
        errors[s] = max(float((imp[k] - s * exact[k]).norm() / (s * exact[k]).norm())
                        for k in ("u", "A", "B", "b"))
    assert max(errors.values()) <= 1e-3, errors          # the tolerance is met, relatively
    assert max(errors.values()) <= 3 * min(errors.values()), errors  # and scale-free
    assert min(errors.values()) > 0, errors  # a loose solve: the comparison is not vacuous


def test_adjoint_zero_cotangent_converges_at_once():
    """A zero incoming gradient: the relative rule's tiny floor avoids 0/0 (no NaN, no loop)."""
    params = make_params()
    P = leaves(params)
    stats = {}
    x = implicit_fixed_point(DenseOperator(P["A"]), P["u"] @ P["B"].T + P["b"],
                             get_activation("tanh"), SolverConfig(tol=1e-10, strict=True),
                             stats=stats)
    gA, = torch.autograd.grad((x * 0.0).sum(), P["A"])
    assert float(gA.abs().max()) == 0.0 and stats["backward"].iterations == 1


def _hvp_setup():
    params = make_params(n=5, p=3, q=2, N=3, seed=4, mu=0.5)
    cfg = SolverConfig(tol=1e-13, max_iter=20_000, strict=True)
    ybar = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=DT)
    return params, cfg, ybar


def test_double_backward_raises_instead_of_wrong_hessian():
    """§4: a Hessian-vector product through the layer used to return numbers that
    differ from finite differences of the gradient (the adjoint was a constant). Now the
    second backward raises; the first-order gradient under create_graph=True is unchanged."""
    from lipdeq.deq.implicit import DoubleBackwardError
    params, cfg, ybar = _hvp_setup()
    ref = implicit_grads(params, "tanh", cfg, ybar)
    P = leaves(params)
    y = forward(P, "tanh", cfg)
    grads = torch.autograd.grad((y * ybar).sum(), [P[k] for k in NAMES], create_graph=True)
    for k, g in zip(NAMES, grads):
        assert torch.equal(g.detach(), ref[k]), k
    # Hessian-vector product w.r.t. u (gradient-penalty style: differentiate ∂ℓ/∂u again)
    v = torch.randn_like(P["u"])
    with pytest.raises(DoubleBackwardError, match="differentiable once"):
        torch.autograd.grad((grads[0] * v).sum(), [P["u"], P["A"]])
    # first-order use stays as before, and so does gradcheck
    P2 = leaves(params)
    g_again, = torch.autograd.grad((forward(P2, "tanh", cfg) * ybar).sum(), P2["A"])
    assert torch.equal(g_again, ref["A"])


def test_hessian_vector_product_would_need_the_adjoint_graph():
    """The oracle behind the test above: the true HVP (central differences of the exact
    gradient) is not what the graph without the adjoint's dependence gives, so silently
    returning it was wrong (a regression guard if the layer is ever made twice-differentiable:
    it must then match finite differences)."""
    params, cfg, ybar = _hvp_setup()
    v = torch.randn(params["u"].shape, generator=torch.Generator().manual_seed(9), dtype=DT)

    def grad_u(u):
        q = dict(params, u=u)
        return direct_grads(q, "tanh", ybar)[0]["u"]

    h = 1e-5
    fd = (grad_u(params["u"] + h * v) - grad_u(params["u"] - h * v)) / (2 * h)
    P = leaves(params)
    y = forward(P, "tanh", cfg)
    gu, = torch.autograd.grad((y * ybar).sum(), P["u"], create_graph=True)
    try:
        hvp, = torch.autograd.grad((gu * v).sum(), P["u"])
    except RuntimeError:
        return  # refused: correct behaviour for a first-order layer
    assert torch.allclose(hvp, fd, atol=1e-6, rtol=1e-5)
