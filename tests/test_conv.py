"""Tests of the convolutional implicit layer (lipdeq.deq.conv; docs/math.md §2.1, §5, §6, §7, §12).

The references are explicit dense matrices built here by applying the convolution (conv2d, the
operator under test is not used for them) to basis images, and the dense routines
``lipdeq.geometry.mu_inf`` / ``norm_inf`` and ``solvers.project_mu_inf``.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from lipdeq.training.checkpoint import build_model
from lipdeq.deq.conv import ConvOperator, ImplicitConvNetwork, kernel_mu_inf, project_kernel
from lipdeq.geometry import mu_inf, norm_inf
from lipdeq.certify.lipschitz import empirical_lipschitz
from lipdeq.deq.model import IllPosedError
from lipdeq.solvers import project_mu_inf

D64 = torch.float64
# (channels, kernel, H, W): k = 1, non-square images, image as small as the kernel.
SHAPES = [(1, 3, 4, 4), (2, 3, 5, 4), (3, 1, 3, 3), (2, 5, 5, 7), (3, 3, 6, 5)]


def dense_conv(K, H, W):
    """Explicit (n, n) matrix of the zero-padded 'same' conv: column j = conv2d(e_j)."""
    c, k = K.shape[0], K.shape[-1]
    n = c * H * W
    basis = torch.eye(n, dtype=K.dtype).view(n, c, H, W)
    return F.conv2d(basis, K, padding=k // 2).reshape(n, n).T


def dense_input(Bk, H, W):
    ci, k = Bk.shape[1], Bk.shape[-1]
    p = ci * H * W
    basis = torch.eye(p, dtype=Bk.dtype).view(p, ci, H, W)
    return F.conv2d(basis, Bk, padding=k // 2).reshape(p, -1).T


def interior_rows(c, k, H, W):
    r = k // 2
    return [o * H * W + y * W + x for o in range(c) for y in range(r, H - r) for x in range(r, W - r)]


def random_kernel(c, k, seed, dtype=D64, scale=0.5):
    g = torch.Generator().manual_seed(seed)
    K = torch.randn(c, c, k, k, generator=g, dtype=dtype) * scale
    K[:, :, k // 2, k // 2] += torch.eye(c, dtype=dtype) * torch.randn(c, generator=g, dtype=dtype) * 2
    return K


def tiny_model(dtype=D64, activation="tanh", gamma=0.5, seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(in_shape=(1, 6, 6), channels=2, kernel_size=3, out_features=3, input_kernel_size=3,
                pool=2, activation=activation, gamma=gamma, solver="average", tol=1e-12,
                max_iter=5000)
    opts.update(kw)
    return ImplicitConvNetwork(**opts).to(dtype)


# --------------------------------------------------------------------------- operator
@pytest.mark.parametrize("c,k,H,W", SHAPES)
def test_mu_inf_kernel_formula_equals_dense(c, k, H, W):
    for seed in range(3):
        K = random_kernel(c, k, seed)
        A = dense_conv(K, H, W)
        op = ConvOperator(K, (H, W))
        assert torch.allclose(op.dense(), A, atol=0, rtol=0)
        assert float(op.mu_inf()) == pytest.approx(float(mu_inf(A)), abs=1e-12)
        assert float(kernel_mu_inf(K)) == pytest.approx(float(mu_inf(A)), abs=1e-12)
        assert float(op.min_diagonal()) == float(A.diagonal().min())
        # weighted: per-pixel and per-channel η, against the dense weighted measure
        g = torch.Generator().manual_seed(seed)
        eta = torch.rand(c * H * W, generator=g, dtype=D64) + 0.2
        assert float(op.mu_inf(eta)) == pytest.approx(float(mu_inf(A, eta)), abs=1e-12)
        eta_c = torch.rand(c, generator=g, dtype=D64) + 0.2
        full = eta_c.repeat_interleave(H * W)
        assert float(op.mu_inf(eta_c)) == pytest.approx(float(mu_inf(A, full)), abs=1e-12)


@pytest.mark.parametrize("c,k,H,W", SHAPES)
def test_adjoint_and_transpose(c, k, H, W):
    K = random_kernel(c, k, 1)
    op = ConvOperator(K, (H, W))
    g = torch.Generator().manual_seed(2)
    x, y = (torch.randn(4, op.n, generator=g, dtype=D64) for _ in range(2))
    lhs = (y * op.multiply(x)).sum(1)
    rhs = (x * op.multiply_transpose(y)).sum(1)
    assert torch.allclose(lhs, rhs, atol=1e-12, rtol=1e-12)
    # also the whole matrix, and the (N, c, H, W) layout
    A = dense_conv(K, H, W)
    assert torch.allclose(op.multiply_transpose(torch.eye(op.n, dtype=D64)), A, atol=1e-13)
    x4 = x.view(4, c, H, W)
    assert torch.allclose(op.multiply(x4).reshape(4, -1), x @ A.T, atol=1e-12)


def test_metzler_split_matches_dense():
    c, k, H, W = 3, 3, 5, 5
    K = random_kernel(c, k, 3)
    up, low = ConvOperator(K, (H, W)).metzler_split()
    A = dense_conv(K, H, W)
    eye = torch.eye(A.shape[0], dtype=torch.bool)
    assert torch.equal(up.dense(), torch.where(eye, A, A.clamp_min(0)))
    assert torch.equal(low.dense(), torch.where(eye, torch.zeros_like(A), A.clamp_max(0)))
    # the embedded system has the same row sums as μ∞ (docs/math.md §12.2)
    assert float(up.mu_inf()) <= float(mu_inf(A)) + 1e-12


def test_interval_parts_pass_each_zero_tap_gradient_once():
    # the kernel split and the input-box split see exact zeros (the projection makes them):
    # the sum of the two parts is the identity, so its gradient must be exactly one per tap
    K = random_kernel(3, 3, 4)
    K[0, 1, 0, 0] = K[1, 2, 1, 1] = K[2, 0, 2, 1] = 0.0
    K.requires_grad_(True)
    up, low = ConvOperator(K, (5, 5)).metzler_split()
    (up.K + low.K).sum().backward()
    assert torch.equal(K.grad, torch.ones_like(K))
    model = ImplicitConvNetwork(in_shape=(1, 6, 6), channels=2, kernel_size=3, input_kernel_size=3,
                                pool=3).double()
    with torch.no_grad():
        model.B[0, 0, 0, 0] = 0.0
    u = torch.full((1, 36), 0.5, dtype=D64)
    lo, hi = model.input_bounds(u, u)  # a degenerate box: both bounds equal B ⋆ u + b
    (lo.sum() + hi.sum()).backward()
    g = model.B.grad.clone()
    model.zero_grad()
    (2 * model.input_map(u).sum()).backward()
    assert torch.allclose(g, model.B.grad, atol=1e-12)


# --------------------------------------------------------------------------- projection
@pytest.mark.parametrize("c,k,H,W", SHAPES)
@pytest.mark.parametrize("gamma", [-0.5, 0.0, 0.5, 0.95])
def test_projection_feasible_and_dense_rows(c, k, H, W, gamma):
    for seed in range(2):
        K = random_kernel(c, k, seed)
        P = project_kernel(K, gamma)
        A_P = dense_conv(P, H, W)
        assert float(mu_inf(A_P)) <= gamma                       # feasible in float64
        if float(kernel_mu_inf(K)) > gamma:                      # and tight if K was outside
            assert float(mu_inf(A_P)) >= gamma - 1e-9
        else:
            assert torch.equal(P, K)
        # interior rows equal the dense Frobenius projection of the dense operator's rows
        rows = interior_rows(c, k, H, W)
        dense_proj = project_mu_inf(dense_conv(K, H, W), gamma)
        assert torch.allclose(A_P[rows], dense_proj[rows], atol=1e-12, rtol=0)
        # projecting again changes nothing (rows already feasible are kept bit for bit)
        assert torch.equal(project_kernel(P, gamma), P)


def test_projection_is_nearest_kernel():
    """Variational inequality ⟨K − P, Z − P⟩ ≤ 0 for feasible kernels Z (docs/math.md §7, kernel space)."""
    gamma = 0.3
    for seed in range(5):
        K = random_kernel(3, 3, seed)
        P = project_kernel(K, gamma)
        for t in range(20):
            Z = project_kernel(random_kernel(3, 3, 100 + 20 * seed + t, scale=0.3), gamma)
            assert float(((K - P) * (Z - P)).sum()) <= 1e-10
            assert float((K - P).norm()) <= float((K - Z).norm()) + 1e-12


def test_projection_float32_feasible_in_float64_and_in_place():
    K = random_kernel(8, 3, 4, dtype=torch.float32, scale=2.0)
    out = K.clone()
    res = project_kernel(out, 0.95, out=out)
    assert res is out
    assert float(mu_inf(dense_conv(out.double(), 5, 5))) <= 0.95
    assert float(kernel_mu_inf(out.double())) <= 0.95


# --------------------------------------------------------------------------- model
def test_model_dense_equivalents_and_bounds():
    m = tiny_model(gamma=0.8)
    H = W = 6
    A = dense_conv(m.A.detach(), H, W)
    Bd = dense_input(m.B.detach(), H, W)
    C_eff, c, D = m.readout_matrices()
    assert D is None and C_eff.shape == (3, m.hidden)
    assert float(m.mu_inf()) == pytest.approx(float(mu_inf(A)), abs=1e-12) and float(m.mu_inf()) <= 0.8
    assert float(m.input_gain_inf().detach()) == pytest.approx(float(norm_inf(Bd)), abs=1e-12)
    eta = torch.rand(m.hidden, dtype=D64) + 0.5
    gain = float(m.input_gain_inf(eta).detach())
    assert gain == pytest.approx(float(norm_inf(Bd / eta[:, None])), abs=1e-12)
    L = float(norm_inf(C_eff.detach())) * float(norm_inf(Bd)) / (1 - float(mu_inf(A)))
    assert float(m.lipschitz_bound().detach()) == pytest.approx(L, rel=1e-12)
    u = torch.rand(5, 36, dtype=D64)
    w = m.input_map(u)
    assert torch.allclose(w, u @ Bd.T + m.b.repeat_interleave(36), atol=1e-13)
    x = m.fixed_point(u)
    assert torch.allclose(x, torch.tanh(x @ A.T + w), atol=1e-10)   # the dense fixed point
    assert torch.allclose(m(u), x @ C_eff.T + c, atol=1e-12)
    assert m.last_forward.converged
    # box bounds of the input map contain it
    lo, hi = (u - 0.1).clamp(0, 1), (u + 0.1).clamp(0, 1)
    wl, wu = m.input_bounds(lo, hi)
    for s in range(20):
        v = lo + (hi - lo) * torch.rand(u.shape, dtype=D64, generator=torch.Generator().manual_seed(s))
        wv = m.input_map(v)
        assert bool((wl <= wv + 1e-12).all() and (wv <= wu + 1e-12).all())
    wts = m.weights()
    assert wts["A"].shape == (2, 2, 3, 3) and wts["B"].shape == (2, 1, 3, 3)
    assert wts["C"].shape == (3, m.hidden) and wts["b"].shape == (2,) and wts["c"].shape == (3,)


def test_gradcheck_implicit_backward():
    m = tiny_model()
    names = ["A", "B", "b", "C", "c"]
    params = [getattr(m, k).detach().clone().requires_grad_(True) for k in names]
    u = torch.rand(1, 36, dtype=D64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

    def f(u, *ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (u,))

    # fast mode checks vᵀJw for random v, w (one perturbation per tensor): any wrong term fails
    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)
    assert torch.autograd.gradcheck(lambda u: f(u, *params), (u,), eps=1e-6, atol=1e-6, rtol=1e-4)
    f(u, *params).sum().backward()
    assert m.last_backward is not None and m.last_backward.converged


def test_lipschitz_bound_above_empirical():
    torch.manual_seed(1)
    m = ImplicitConvNetwork(in_shape=(1, 8, 8), channels=3, kernel_size=3, out_features=4,
                            input_kernel_size=3, pool=2, activation="relu", gamma=0.9,
                            tol=1e-8, max_iter=3000).double()
    with torch.no_grad():  # a strongly coupled kernel, then back onto the polytope
        m.A.mul_(20.0)
        m.project_()
    bound = float(m.lipschitz_bound().detach())
    u = torch.rand(6, 64, dtype=D64, generator=torch.Generator().manual_seed(3))
    emp = empirical_lipschitz(m, u, steps=8, radius=0.05, step_size=0.01)
    # secant ratios on random and nearby pairs (docs/math.md §6.4b)
    with torch.no_grad():
        v = u + 1e-3 * torch.randn(u.shape, dtype=D64, generator=torch.Generator().manual_seed(4))
        for a, b in ((u, v), (u, u.flip(0))):
            ratio = (m(a) - m(b)).abs().amax(1) / (a - b).abs().amax(1)
            emp = max(emp, float(ratio.max()))
    assert 0 < emp <= bound
    g = torch.autograd.grad(m.lipschitz_bound(), [m.A, m.B, m.C])
    assert all(bool(torch.isfinite(t).all()) and float(t.abs().sum()) > 0 for t in g)


def test_lipschitz_bound_linear_model_exact_constant():
    """Identity activation: y is affine, Lip∞ = ‖C_eff (I − A)⁻¹ B‖∞ exactly (dense reference);
    the bound must dominate it and sign-gradient ascent must find it."""
    m = tiny_model(activation="identity", gamma=0.7, seed=2, tol=1e-12)
    with torch.no_grad():
        m.A.abs_().mul_(10.0)   # non-negative taps: (I − A)⁻¹ ≥ 0, the bound is nearly tight
        m.project_()
    A = dense_conv(m.A.detach(), 6, 6)
    Bd = dense_input(m.B.detach(), 6, 6)
    C_eff = m.readout_matrices()[0].detach()
    M = C_eff @ torch.linalg.solve(torch.eye(A.shape[0], dtype=D64) - A, Bd)
    exact = float(norm_inf(M))
    bound = float(m.lipschitz_bound().detach())
    assert exact <= bound * (1 + 1e-12)
    u = torch.rand(3, 36, dtype=D64, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.25
    # the worst direction of the linear map, δ = r·sign(M[i*]), attains the constant
    delta = 0.05 * M[M.abs().sum(1).argmax()].sign()
    with torch.no_grad():
        ratio = float((m(u + delta) - m(u)).abs().amax() / 0.05)
    assert ratio == pytest.approx(exact, rel=1e-8)
    emp = empirical_lipschitz(m, u, steps=12, radius=0.05, step_size=0.01)
    assert 0.5 * exact <= emp <= exact * (1 + 1e-8)


def test_config_roundtrip_and_training_step_stays_feasible():
    m = tiny_model(activation="relu", gamma=0.9, tol=1e-6)
    cfg = m.config()
    assert cfg["model"] == "conv" and m.condition.name == "mu_inf"
    m2 = ImplicitConvNetwork(**json.loads(json.dumps(cfg))).double()
    m3 = build_model(json.loads(json.dumps(cfg))).double()   # the checkpoint loader's path
    assert type(m3) is ImplicitConvNetwork and m3.config() == cfg
    m2.load_state_dict(m.state_dict())
    u = torch.rand(4, 36, dtype=D64)
    assert torch.allclose(m(u), m2(u), atol=1e-12)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    for _ in range(3):
        loss = F.cross_entropy(m(u), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.project_()
        assert float(mu_inf(dense_conv(m.A.detach(), 6, 6))) <= 0.9


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,match", [
    (dict(kernel_size=4), "odd"),
    (dict(input_kernel_size=2), "odd"),
    (dict(kernel_size=7, in_shape=(1, 6, 6)), "exceeds"),
    (dict(pool=4), "divide"),
    (dict(channels=0), "positive integer"),
    (dict(in_shape=(6, 6)), "in_shape"),
    (dict(condition="nemon"), "mu_inf"),
    (dict(activation="sigmoid"), "activation"),
    (dict(solver="newton"), "solver"),
])
def test_bad_constructor_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        tiny_model(**kw)


def test_gamma_guard():
    for g in (1.0, 1.5):
        with pytest.raises(IllPosedError, match="allow_ill_posed"):
            tiny_model(gamma=g)
    m = tiny_model(gamma=1.5, allow_ill_posed=True)
    with torch.no_grad():
        m.A.mul_(50.0)
        m.project_()
    assert 1 < float(m.mu_inf()) <= 1.5
    L = m.lipschitz_bound()
    assert L.item() == float("inf")
    L.backward()  # no certificate, but finite (zero) gradients, not NaN
    assert bool(torch.isfinite(m.A.grad).all())
    with pytest.raises(ValueError, match="finite"):
        tiny_model(gamma=float("nan"))


def test_bad_kernels_and_inputs():
    with pytest.raises(ValueError, match="square channel map"):
        ConvOperator(torch.zeros(2, 3, 3, 3), (5, 5))
    with pytest.raises(ValueError, match="square channel map"):
        project_kernel(torch.zeros(2, 3, 3, 3), 0.5)
    with pytest.raises(ValueError, match="odd"):
        ConvOperator(torch.zeros(2, 2, 2, 2), (5, 5))
    with pytest.raises(ValueError, match="odd"):
        ConvOperator(torch.zeros(2, 2, 3, 5), (5, 5))
    with pytest.raises(ValueError, match="at least the kernel"):
        ConvOperator(torch.zeros(2, 2, 5, 5), (4, 5))
    with pytest.raises(ValueError, match="positive"):
        ConvOperator(torch.zeros(2, 2, 3, 3), (5, 5)).mu_inf(torch.zeros(2))
    with pytest.raises(NotImplementedError):
        ConvOperator(torch.zeros(2, 2, 3, 3), (5, 5)).resolvent(0.5)
    m = tiny_model()
    bad = [torch.rand(2, 35, dtype=D64), torch.rand(2, 1, 6, 6, dtype=D64), torch.rand(36, dtype=D64),
           torch.full((2, 36), float("nan"), dtype=D64)]
    for u in bad:
        with pytest.raises(ValueError):
            m(u)
    with pytest.raises(TypeError):
        m([[0.0] * 36])



def test_batch_projection_of_the_kernel_is_not_the_conv_projection_so_qp_lp_are_refused():
    """§4: ``project_mu_inf`` on the (c, c, k, k) kernel projects c·c separate k×k
    matrices, which does not bound the conv operator's μ∞ (the old ``--projection qp|lp`` route:
    μ∞ ≈ 5 at γ = 0.5). ``project_kernel`` does; training refuses qp/lp with a conv model."""
    from lipdeq.errors import OptionConflict
    from lipdeq.training.loop import TrainConfig
    from solvers import project_mu_inf
    g = torch.Generator().manual_seed(0)
    K = torch.randn(4, 4, 3, 3, generator=g, dtype=torch.float64)
    gamma = 0.5
    batch = project_mu_inf(K, gamma)
    assert float(kernel_mu_inf(batch)) > 2.0  # far outside: the defect
    assert float(kernel_mu_inf(project_kernel(K, gamma))) <= gamma
    for method in ("qp", "lp"):
        with pytest.raises(OptionConflict, match="projection"):
            TrainConfig(model="conv", projection=method).validate()


@pytest.mark.parametrize("kw", [dict(solver="peaceman_rachford"), dict(solver="forward_backward"),
                                dict(backward_solver="peaceman_rachford")])
def test_splitting_solvers_are_refused_for_the_conv_operator(kw):
    """ConvOperator has no resolvent (peaceman_rachford stopped after one step with a wrong
    state, the NotImplementedError swallowed) and its dense form is n×n (forward_backward
    built it on every forward): refused at construction, naming the solver."""
    with pytest.raises(ValueError, match=kw.get("solver", kw.get("backward_solver"))):
        ImplicitConvNetwork((1, 6, 6), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=3, **kw)
