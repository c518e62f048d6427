"""``ImplicitNetwork`` end to end: gradients through the module (incl. feedthrough D and the
NEMON parameterization), weighted well-posedness, bad input, the γ guard, non-convergence
reporting and CUDA = CPU (docs/math.md §1, §3, §5; §10 items 8, 16, 36)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.func import functional_call

from lipdeq import IllPosedError, ImplicitNetwork
from lipdeq.deq import fixed_point as fp
from lipdeq.deq.implicit import SolverConfig, implicit_fixed_point

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0, *, p=3, n=5, q=2, gamma=0.5, **kw):
    torch.manual_seed(seed)
    kw.setdefault("tol", 1e-13)
    kw.setdefault("max_iter", 50_000)
    kw.setdefault("strict", True)
    m = ImplicitNetwork(p, n, q, gamma=gamma, **kw).double()
    if getattr(m, "feedthrough", False):
        with torch.no_grad():
            m.D.normal_()
    return m


def gradcheck_module(m, u):
    names = [k for k, _ in m.named_parameters()]
    params = tuple(v.detach().clone().requires_grad_(True) for _, v in m.named_parameters())

    def f(u, *ps):
        return functional_call(m, dict(zip(names, ps)), (u,))

    return torch.autograd.gradcheck(f, (u.clone().requires_grad_(True), *params), eps=1e-6,
                                    atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("solver,activation,condition", [
    ("average", "tanh", "mu_inf"),
    ("anderson", "leaky_relu", "mu_inf"),
    ("picard", "tanh", "norm_inf"),
    ("average", "tanh", "nemon"),
])
def test_module_gradcheck_with_feedthrough(solver, activation, condition):
    m = make_model(1, solver=solver, activation=activation, condition=condition,
                   feedthrough=True)
    if condition == "nemon":
        with torch.no_grad():  # away from the kinks of |M| (the projection leaves exact zeros)
            m.A_raw["M"].copy_(0.4 * torch.randn(5, 5, dtype=DT))
            m.A_raw["d"].normal_()  # weighted norm η = e^{-d} ≠ 1
    u = torch.randn(3, 3, dtype=DT, generator=torch.Generator().manual_seed(0))
    assert gradcheck_module(m, u)
    y = m(u)
    y.sum().backward()
    assert m.D.grad is not None and torch.count_nonzero(m.D.grad) > 0
    assert m.last_forward.converged and m.last_backward.converged


def test_feedthrough_readout():
    m = make_model(2, feedthrough=True)
    u = torch.randn(4, 3, dtype=DT)
    x = m.fixed_point(u)
    assert torch.allclose(m(u), x @ m.C.T + m.c + u @ m.D.T, atol=1e-14, rtol=0)
    assert torch.allclose(x, torch.relu(x @ m.A.T + u @ m.B.T + m.b), atol=1e-12, rtol=0)
    assert "D" in m.weights() and "D" not in make_model(2).weights()


# ----------------------------------------------------------------------------- well-posedness
def test_nemon_weighted_well_posedness_twenty_starts():
    """NEMON parameterization with spread weights: μ∞,η(A) ≤ γ < 1 < μ∞(A); the model's solve is
    certified in ‖·‖∞,η and 20 random starts reach one fixed point."""
    m = make_model(3, n=10, gamma=0.8, condition="nemon", activation="tanh")
    with torch.no_grad():
        m.A_raw["M"].mul_(4.0)
        m.A_raw["d"].copy_(2.5 * torch.randn(10, dtype=DT))
    A, eta = m.effective_A().detach(), m.norm_weights().detach()
    assert float(m.mu_inf()) > 1.0
    assert float(m.mu_inf(weighted=True)) <= 0.8 + 1e-12
    u = torch.randn(4, 3, dtype=DT)
    m(u)
    assert m.last_forward.converged and math.isfinite(m.last_forward.bound)
    cfg = SolverConfig(tol=1e-13, max_iter=50_000, strict=True)
    g = torch.Generator().manual_seed(1)
    w = m.input_map(u).detach()
    sols = torch.stack([
        implicit_fixed_point(m.operator(), w, m.activation, cfg, eta=eta,
                             x0=30 * torch.randn(4, 10, generator=g, dtype=DT)).detach()
        for _ in range(20)])
    assert float((sols.amax(0) - sols.amin(0)).max()) < 1e-10
    assert torch.allclose(sols[0], m.fixed_point(u).detach(), atol=1e-10, rtol=0)
    assert float((torch.tanh(sols[0] @ A.T + w) - sols[0]).abs().max()) < 1e-12


# ----------------------------------------------------------------------------- bad input
def test_bad_input_shapes_and_values():
    m = make_model(0)
    for bad in (torch.randn(4, 2, dtype=DT), torch.randn(4, 4, dtype=DT), torch.randn(3, dtype=DT),
                torch.randn(2, 4, 3, dtype=DT)):
        with pytest.raises(ValueError, match="input"):
            m(bad)
    for v in (float("nan"), float("inf"), -float("inf")):
        u = torch.zeros(2, 3, dtype=DT)
        u[1, 0] = v
        with pytest.raises(ValueError, match="input.*(NaN|Inf)"):
            m(u)
    with pytest.raises(TypeError, match="input"):
        m([[0.0, 0.0, 0.0]])
    # a float32 or uint8 batch into a float64 model: named, not torch's "m1 and m2" error
    for dtype in (torch.float32, torch.uint8):
        with pytest.raises(TypeError, match="input dtype"):
            m(torch.zeros(2, 3, dtype=dtype))


def test_conv_input_of_another_dtype_is_named():
    from lipdeq import ImplicitConvNetwork
    m = ImplicitConvNetwork((1, 6, 6), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=3)
    with pytest.raises(TypeError, match="input dtype"):
        m(torch.zeros(2, 36, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"flattened \(1, 6, 6\) images"):
        m(torch.zeros(2, 35))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_input_on_another_device_is_named():
    m = make_model(0)
    with pytest.raises(ValueError, match="model on cpu"):
        m(torch.zeros(2, 3, dtype=DT, device="cuda"))


@pytest.mark.parametrize("kw,arg", [
    (dict(solver="newton"), "solver"),
    (dict(backward_solver="newton"), "solver"),
    (dict(activation="sigmoidal"), "activation"),
    (dict(condition="spectral"), "condition"),
    (dict(hidden=0), "hidden"),
    (dict(in_features=2.5), "in_features"),
    (dict(tol=0.0), "tol"),
    (dict(tol=float("nan")), "tol"),
    (dict(max_iter=0), "max_iter"),
    (dict(alpha=-1.0), "alpha"),
    (dict(gamma=float("nan")), "gamma"),
])
def test_bad_constructor_arguments(kw, arg):
    args = dict(in_features=3, hidden=4, out_features=2)
    args.update(kw)
    with pytest.raises(ValueError, match=arg):
        ImplicitNetwork(**args)


@pytest.mark.parametrize("condition", ["mu_inf", "norm_inf", "nemon", "monotone"])
@pytest.mark.parametrize("gamma", [1.0, 1.5])
def test_gamma_guard(condition, gamma):
    with pytest.raises(IllPosedError, match="gamma") as info:
        ImplicitNetwork(3, 4, 2, gamma=gamma, condition=condition)
    assert isinstance(info.value, ValueError) and "allow_ill_posed" in str(info.value)
    m = ImplicitNetwork(3, 4, 2, gamma=gamma, condition=condition, allow_ill_posed=True)
    y = m(torch.rand(5, 3))
    assert y.shape == (5, 2) and torch.isfinite(y).all()
    # the guard is re-checked when projecting
    m2 = ImplicitNetwork(3, 4, 2, gamma=0.5, condition=condition)
    m2.condition.gamma = gamma
    with pytest.raises(IllPosedError):
        m2.project_()


def test_nonconverged_forward_and_backward_never_silent():
    torch.manual_seed(0)
    m = ImplicitNetwork(3, 20, 2, gamma=0.99, max_iter=2, tol=1e-12, activation="tanh")
    u = torch.rand(4, 3)
    with pytest.warns(fp.ConvergenceWarning):
        y = m(u)
    assert not m.last_forward.converged and m.last_forward.iterations == 2
    with pytest.warns(fp.ConvergenceWarning):
        y.sum().backward()
    assert not m.last_backward.converged
    strict = ImplicitNetwork(3, 20, 2, gamma=0.99, max_iter=2, tol=1e-12, strict=True)
    with pytest.raises(fp.ConvergenceError):
        strict(u)
    ok = ImplicitNetwork(3, 20, 2, gamma=0.5, tol=1e-6, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok(u).sum().backward()
    assert ok.last_forward.converged and ok.last_backward.converged


def test_float32_model_meets_its_tolerance():
    torch.manual_seed(0)
    m = ImplicitNetwork(6, 30, 3, gamma=0.9, tol=1e-5, max_iter=2000, strict=True)
    u = torch.rand(16, 6)
    with torch.no_grad():
        y = m(u)
        x = m.fixed_point(u)
    assert y.dtype == torch.float32
    r = m.last_forward
    assert r.converged and r.bound <= 1e-5 * max(1.0, float(x.abs().max()))


# ----------------------------------------------------------------------------- config
def test_config_rebuilds_the_same_model():
    eta = [1.0, 2.0, 0.5, 1.0]
    m = ImplicitNetwork(3, 4, 2, gamma=0.5, strict=True, condition_options={"weights": eta})
    m2 = ImplicitNetwork(**m.config())
    assert m2.solver_config.strict == m.solver_config.strict
    assert m2.norm_weights() is not None
    assert torch.allclose(m2.norm_weights(), m.norm_weights())


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["average", "anderson"])
def test_model_cuda_matches_cpu(solver):
    m = make_model(5, n=12, solver=solver, feedthrough=True, activation="tanh")
    u = torch.randn(8, 3, dtype=DT)
    out = {}
    for dev in ("cpu", "cuda"):
        m.zero_grad()
        m.to(dev)
        y = m(u.to(dev))
        (y ** 2).sum().backward()
        out[dev] = (y.detach().cpu(), {k: p.grad.detach().cpu() for k, p in m.named_parameters()})
    assert torch.allclose(out["cpu"][0], out["cuda"][0], atol=1e-10, rtol=0)
    for k in out["cpu"][1]:
        assert torch.allclose(out["cpu"][1][k], out["cuda"][1][k], atol=1e-9, rtol=0), k


# ----------------------------------------------------------------------------- review defects
@pytest.mark.parametrize("condition", ["nemon", "mu_inf_weighted", "pf"])
def test_lipschitz_regularizer_gradient_in_d_matches_finite_differences(condition):
    """§4: the bound ‖C[η]‖∞‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) with η = e⁻ᵈ used a detached η,
    so ∂bound/∂d missed the η terms (and kept a spurious μ term): wrong sign in places. Autograd
    must equal central differences of the bound in every raw tensor (float64)."""
    m = make_model(7, n=6, gamma=0.8, condition=condition)
    with torch.no_grad():
        m.A_raw["d"].copy_(torch.randn(6, dtype=DT, generator=torch.Generator().manual_seed(2)))
    params = {"d": m.A_raw["d"], "M": m.A_raw["M"], "B": m.B, "C": m.C}
    L = m.lipschitz_bound()
    assert math.isfinite(float(L.detach()))
    grads = dict(zip(params, torch.autograd.grad(L, list(params.values()))))
    h = 1e-6
    for name, p in params.items():
        fd = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                old = p.view(-1)[i].item()
                p.view(-1)[i] = old + h
                up = float(m.lipschitz_bound())
                p.view(-1)[i] = old - h
                down = float(m.lipschitz_bound())
                p.view(-1)[i] = old
            fd.view(-1)[i] = (up - down) / (2 * h)
        assert torch.allclose(grads[name], fd, atol=1e-6, rtol=1e-5), (name, grads[name], fd)
    assert float(grads["d"].abs().max()) > 1e-3  # d matters: the comparison is not vacuous
    # the model's solve still sees a constant η (no graph through the norm)
    assert not m.norm_weights().requires_grad and m.norm_weights(differentiable=True).requires_grad


def test_fixed_weights_are_converted_once_and_replacements_are_seen():
    """Found by review: fixed η (mu_inf with weights) was rebuilt as a CPU tensor and copied to
    the model's device on every forward (a blocking copy per call on CUDA)."""
    from lipdeq import ImplicitNetwork
    model = ImplicitNetwork(4, 3, 2, condition_options={"weights": [1.0, 2.0, 4.0]})
    first = model.norm_weights()
    assert model.norm_weights() is first  # cached
    assert torch.equal(first, torch.tensor([1.0, 2.0, 4.0]))
    model.condition.weights = [1.0, 1.0, 3.0]  # replaced: converted again
    assert torch.equal(model.norm_weights(), torch.tensor([1.0, 1.0, 3.0]))
    model.double()
    assert model.norm_weights().dtype == torch.float64  # follows the model's dtype
    # edited in place (found by review: the cache went stale while project/measure saw the edit)
    w = np.array([1.0, 2.0, 4.0])
    model = ImplicitNetwork(4, 3, 2, condition_options={"weights": w})
    model.norm_weights()
    w[2] = 8.0
    assert torch.equal(model.norm_weights(), torch.tensor([1.0, 2.0, 8.0]))
    assert torch.equal(model.condition.norm_weights(None), torch.tensor([1.0, 2.0, 8.0],
                                                                        dtype=torch.float64))
