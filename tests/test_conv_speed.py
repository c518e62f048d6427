"""speed options: Jacobian-free backward (bias bound), safeguarded Anderson, the
stride-2 injection's exact μ∞ and ‖B‖∞, and the config/CLI plumbing. Oracles are dense linear
algebra in float64, independent of the solvers."""
from __future__ import annotations

import pytest
import torch

from lipdeq.deq import fixed_point as fp
from lipdeq.deq.activations import get_activation
from lipdeq.deq.conv import ConvOperator, ImplicitConvNetwork, kernel_mu_inf, project_kernel
from lipdeq.deq.implicit import SolverConfig, contraction_data, implicit_fixed_point, linf_norm
from lipdeq.deq.model import ImplicitNetwork
from lipdeq.deq.operators import DenseOperator
from lipdeq.geometry import mu_inf
from lipdeq.solvers import project_mu_inf
from lipdeq.training.checkpoint import build_model
from lipdeq.training.loop import TrainConfig

D = torch.float64


def _grads(op, A_dense, w0, g, backward):
    """∂ℓ/∂w for ℓ = Σ g·x*(w), with the given backward; plus G = φ'(z*) at the fixed point."""
    w = w0.clone().requires_grad_(True)
    cfg = SolverConfig(solver="average", tol=1e-13, max_iter=20_000, strict=True,
                       backward=backward)
    x = implicit_fixed_point(op, w, get_activation("relu"), cfg)
    (x * g).sum().backward()
    G = (x.detach() @ A_dense.T + w0 > 0).to(D)
    return w.grad, G


def _check_jfb_bound(op, A, w0, g):
    exact, G = _grads(op, A, w0, g, "implicit")
    jfb, _ = _grads(op, A, w0, g, "jacobian-free")
    n = A.shape[0]
    mu_plus = max(float(mu_inf(A)), 0.0)
    for i in range(w0.shape[0]):
        Gi = torch.diag(G[i])
        # oracle: ∂ℓ/∂w = G (I − AᵀG)⁻¹ g (exact), G g (Jacobian-free)
        w_adj = torch.linalg.solve(torch.eye(n, dtype=D) - A.T @ Gi, g[i])
        torch.testing.assert_close(exact[i], Gi @ w_adj, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(jfb[i], Gi @ g[i], rtol=1e-12, atol=1e-12)
        err = float((exact[i] - jfb[i]).abs().sum())
        post = float((A.T @ Gi @ g[i]).abs().sum()) / (1 - mu_plus)   # ‖Jᵀg‖₁/(1 − μ⁺)
        coarse = float(A.abs().sum(1).amax()) * float(g[i].abs().sum()) / (1 - mu_plus)
        assert 0 < err <= post * (1 + 1e-9) <= coarse * (1 + 1e-9)
        assert float((w_adj - g[i]).abs().sum()) <= post * (1 + 1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_jacobian_free_gradient_within_mu_inf_bound_dense(seed):
    gen = torch.Generator().manual_seed(seed)
    n, N = 7, 5
    A = project_mu_inf(torch.randn(n, n, generator=gen, dtype=D), 0.8)
    w0 = torch.randn(N, n, generator=gen, dtype=D)
    g = torch.randn(N, n, generator=gen, dtype=D)
    _check_jfb_bound(DenseOperator(A), A, w0, g)


def test_jacobian_free_gradient_within_mu_inf_bound_conv():
    gen = torch.Generator().manual_seed(3)
    K = project_kernel(torch.randn(2, 2, 3, 3, generator=gen, dtype=D) * 0.3, 0.7)
    op = ConvOperator(K, (5, 5))
    A = op.dense()
    w0 = torch.randn(3, op.n, generator=gen, dtype=D)
    g = torch.randn(3, op.n, generator=gen, dtype=D)
    _check_jfb_bound(op, A, w0, g)


def test_jacobian_free_models_config_round_trip_and_no_adjoint_solve():
    torch.manual_seed(0)
    dense = ImplicitNetwork(6, 5, 3, backward="jacobian-free")
    conv = ImplicitConvNetwork(in_shape=(1, 8, 8), channels=2, pool=2, input_kernel_size=3,
                               downsample=2, backward="jacobian-free")
    for m in (dense, conv):
        assert m.config()["backward"] == "jacobian-free"
        again = build_model(m.config())
        assert again.solver_config.backward == "jacobian-free"
        m(torch.rand(2, m.in_features)).sum().backward()
        assert m.last_backward is None and m.A.grad is not None
    with pytest.raises(ValueError, match="backward"):
        ImplicitNetwork(6, 5, 3, backward="jfb")


def _input_grad(model, u, t):
    u = u.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(model(u), t).backward()
    return u.grad


def test_attacks_use_the_exact_gradient_on_a_jacobian_free_model():
    from lipdeq.certify.attacks import fgsm
    from lipdeq.deq.implicit import exact_backward
    torch.manual_seed(3)
    jfb = ImplicitNetwork(6, 12, 3, backward="jacobian-free").double()
    with torch.no_grad():  # a strongly coupled A (μ∞ near γ): the JFB bias is large
        jfb.A.copy_(project_mu_inf(torch.randn(12, 12, dtype=torch.float64) * 2, 0.95))
    exact = build_model({**jfb.config(), "backward": "implicit"}).double()
    exact.load_state_dict(jfb.state_dict())
    u, t = torch.rand(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    g_exact, g_jfb = _input_grad(exact, u, t), _input_grad(jfb, u, t)
    assert bool((g_exact.sign() != g_jfb.sign()).any())  # the case can tell them apart
    with exact_backward(jfb):
        assert torch.allclose(_input_grad(jfb, u, t), g_exact, atol=1e-6)
    assert jfb.solver_config.backward == "jacobian-free"  # restored
    assert torch.equal(fgsm(jfb, u, t, 0.1), fgsm(exact, u, t, 0.1))
    assert jfb.solver_config.backward == "jacobian-free"
    # found by review: a wrapped model (nn.Sequential, DDP, ...) kept its biased gradient
    wrapped = torch.nn.Sequential(torch.nn.Identity(), jfb)
    with exact_backward(wrapped):
        assert torch.allclose(_input_grad(wrapped, u, t), g_exact, atol=1e-6)
    assert jfb.solver_config.backward == "jacobian-free"


def test_empty_batches_go_through_forward_and_backward():
    """Found by review: a batch of 0 samples crashed in amax() of the residual (no iteration is
    needed: the empty state is its own fixed point)."""
    from lipdeq.deq.conv import ImplicitConvNetwork
    cases = [(ImplicitNetwork(6, 12, 3), 6, 3),
             (ImplicitNetwork(6, 12, 3, solver="anderson"), 6, 3),
             (ImplicitConvNetwork(in_shape=(1, 8, 8), channels=2, pool=4, input_kernel_size=3),
              64, 10)]
    for model, p, q in cases:
        y = model(torch.zeros((0, p)))
        assert y.shape == (0, q)
        y.sum().backward()
        assert model.last_forward.iterations == 0 and model.last_forward.converged


# --------------------------------------------------------------------------- Anderson safeguard
def _relu_problem(A, w):
    op = DenseOperator(A)
    mu, al = contraction_data(op, None)
    return fp.FixedPointProblem(F=lambda x: torch.relu(x @ A.T + w), x0=torch.zeros_like(w),
                                norm=linf_norm(None), mu_plus=mu, alpha_star=al)


def test_anderson_safeguard_triggers_and_converges_to_the_same_fixed_point():
    # x₁ creeps to 27 (factor 0.9) while x₂ = relu(1.35x₁ − 0.45x₂ − 1.2) sits at its kink:
    # the linear model Anderson fits while x₂ = 0 extrapolates across the kink.
    A = torch.tensor([[0.9, 0.0], [1.35, -0.45]], dtype=D)
    w = torch.tensor([[2.7, -1.2]], dtype=D)
    x_true = torch.tensor([[27.0, (1.35 * 27 - 1.2) / 1.45]], dtype=D)  # analytic
    raw = fp.solve("anderson", _relu_problem(A, w), tol=1e-11, max_iter=500, safeguard=False)
    r = raw.residuals
    assert bool((r[1:] > r[:-1]).any())  # unguarded, the residual does go up on this case
    safe = fp.solve("anderson", _relu_problem(A, w), tol=1e-11, max_iter=500, strict=True)
    avg = fp.solve("average", _relu_problem(A, w), tol=1e-11, max_iter=5000, strict=True)
    assert safe.safeguards >= 1
    torch.testing.assert_close(safe.x, x_true, rtol=0, atol=1e-8)
    torch.testing.assert_close(safe.x, avg.x, rtol=0, atol=1e-8)
    assert safe.iterations < avg.iterations


def test_anderson_safeguard_on_conv_matches_average():
    torch.manual_seed(1)
    m = ImplicitConvNetwork(in_shape=(1, 12, 12), channels=3, pool=3, input_kernel_size=5,
                            downsample=2, tol=1e-10, max_iter=2000, strict=True).double()
    u = torch.rand(4, 144, dtype=D)
    with torch.no_grad():
        x_avg = m.fixed_point(u)
        m.solver_config.solver = "anderson"
        x_and = m.fixed_point(u)
    torch.testing.assert_close(x_and, x_avg, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- downsampled injection
def _dense_of(fn, shape):
    """The matrix of a linear map on images of ``shape`` (columns = fn(basis images))."""
    n = torch.Size(shape).numel()
    return fn(torch.eye(n, dtype=D).reshape(n, *shape)).reshape(n, -1).T


@pytest.mark.parametrize("k", [3, 5])
def test_downsampled_state_operator_exact_mu_inf_and_projection(k):
    torch.manual_seed(k)
    m = ImplicitConvNetwork(in_shape=(1, 28, 28), channels=2, kernel_size=k, pool=7,
                            downsample=2).double()
    assert m.state_shape == (2, 14, 14) and m.hidden == 2 * 14 * 14
    with torch.no_grad():
        m.A.mul_(4.0).add_(torch.randn_like(m.A))
    pad = k // 2
    dense = _dense_of(lambda e: torch.nn.functional.conv2d(e, m.A.detach(), padding=pad),
                      m.state_shape)
    torch.testing.assert_close(dense, m.operator().dense(), rtol=0, atol=0)
    assert float(mu_inf(dense)) == pytest.approx(float(kernel_mu_inf(m.A.detach())), abs=1e-12)
    m.project_()
    dense = m.operator().dense().detach()
    assert float(mu_inf(dense)) == pytest.approx(float(m.mu_inf()), abs=1e-12)
    assert float(mu_inf(dense)) <= 0.95 + 1e-12


def test_downsampled_injection_norm_and_bounds():
    torch.manual_seed(0)
    m = ImplicitConvNetwork(in_shape=(1, 28, 28), channels=2, pool=7, downsample=2).double()
    B = _dense_of(lambda e: m._conv_in(e.reshape(e.shape[0], -1), m.B.detach()), m.in_shape)
    assert B.shape == (m.hidden, 784)
    assert float(m.input_gain_inf().detach()) == pytest.approx(float(B.abs().sum(1).amax()), rel=1e-12)
    u = torch.rand(3, 784, dtype=D)
    torch.testing.assert_close(m.input_map(u).detach(),
                               u @ B.T + m.b.detach().repeat_interleave(196), rtol=1e-10, atol=1e-12)
    lo, hi = m.input_bounds((u - 0.1).clamp(0, 1), (u + 0.1).clamp(0, 1))
    Bp, Bm = B.clamp_min(0), B.clamp_max(0)
    bias = m.b.detach().repeat_interleave(196)
    torch.testing.assert_close(lo.detach(), (u - 0.1).clamp(0, 1) @ Bp.T + (u + 0.1).clamp(0, 1) @ Bm.T
                               + bias, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hi.detach(), (u + 0.1).clamp(0, 1) @ Bp.T + (u - 0.1).clamp(0, 1) @ Bm.T
                               + bias, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw,match", [(dict(downsample=3), "divide"), (dict(downsample=0), "positive"),
                                      (dict(downsample=2, pool=14, in_shape=(1, 28, 28), kernel_size=3), None)])
def test_downsample_arguments(kw, match):
    if match is None:
        assert ImplicitConvNetwork(**kw).state_shape[1:] == (14, 14)
    else:
        with pytest.raises(ValueError, match=match):
            ImplicitConvNetwork(**kw)


def test_train_config_conv_speed_settings():
    from lipdeq.training.loop import CONV_DEFAULTS
    conv = TrainConfig(model="conv").validate()
    mc = conv.model_config(784, 10)
    model_keys = [k for k in CONV_DEFAULTS if k != "batch_size"]
    assert {k: mc[k] for k in model_keys} == {k: CONV_DEFAULTS[k] for k in model_keys}
    assert conv.resolved_batch_size() == CONV_DEFAULTS["batch_size"]
    assert TrainConfig().resolved_batch_size() == 100  # dense
    assert TrainConfig(model="conv", batch_size=7).resolved_batch_size() == 7
    old = TrainConfig(model="conv", solver="average", backward="implicit", downsample=1)
    mc = old.validate().model_config(784, 10)
    assert (mc["solver"], mc["backward"], mc["downsample"]) == ("average", "implicit", 1)
    assert build_model(mc).state_shape == (32, 28, 28)
    assert TrainConfig(backward="jacobian-free").model_config(784, 10)["backward"] == "jacobian-free"
    for bad in (dict(backward="x"), dict(downsample=2), dict(model="conv", downsample=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad).validate()
