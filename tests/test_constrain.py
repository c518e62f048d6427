"""lipdeq.constrain: constrain() / ProjectedStep on any square weight of any module."""
from __future__ import annotations

import copy
import gc
import importlib
import textwrap
import warnings

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from lipdeq import geometry
from lipdeq.solvers import project_mu_inf, project_norm_inf

# ``lipdeq.constrain`` may be re-exported as the function of the same name by lipdeq/__init__:
# import the module itself through importlib (``import lipdeq.constrain as m`` would get the function).
C = importlib.import_module("lipdeq.training.constrain")
GAMMA = 0.9


pytestmark = pytest.mark.usefixtures("one_thread")


def readme_snippet() -> str:
    """The indented block after 'Example (README)::' in lipdeq/constrain.py's docstring."""
    doc = C.__doc__
    marker = "Example (README)::"
    assert doc.count(marker) == 1
    block = []
    for line in doc[doc.index(marker):].splitlines()[1:]:
        if line.strip() and not line.startswith("    "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def big_linear(n=8, seed=0, dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(seed)
    lin = nn.Linear(n, n, bias=False).to(dtype)
    with torch.no_grad():
        lin.weight.mul_(10.0)  # well outside every set with gamma < 1
    return lin


def mu(W):
    return float(geometry.mu_inf(W.detach().double()))


class NoHostSync(TorchDispatchMode):
    """Fails on any read of a tensor value back to Python (item/bool/float: _local_scalar_dense)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host sync (_local_scalar_dense)")
        return func(*args, **(kwargs or {}))


# ----------------------------------------------------------------------------- README example
def test_readme_snippet_runs():
    code = readme_snippet()
    assert "constrain(layer.A" in code and "ProjectedStep(" in code and len(code.splitlines()) <= 30
    exec(compile(code, "<README snippet>", "exec"), {"__name__": "readme_snippet"})


# ----------------------------------------------------------------------------- registration
def test_constrain_projects_once_and_keeps_leaf_parameter():
    lin = big_linear()
    w = lin.weight
    keys = list(lin.state_dict())
    expected = project_mu_inf(w.detach().clone(), GAMMA)
    assert C.constrain(lin, "weight", condition="mu_inf", gamma=GAMMA) is lin
    assert lin.weight is w and isinstance(w, nn.Parameter) and w.is_leaf and w.requires_grad
    assert not torch.nn.utils.parametrize.is_parametrized(lin)
    assert list(lin.state_dict()) == keys
    assert torch.equal(w.detach(), expected)
    assert mu(w) <= GAMMA
    c = C.constraint_of(w)
    assert c.condition.name == "mu_inf" and c.gamma == GAMMA and c.n == 8 and c.fast


CASES = [("mu_inf", {}), ("mu_inf", {"weights": "eta"}), ("norm_inf", {}), ("monotone", {})]


def _reference(cond, W, gamma, eta):
    if cond == "mu_inf":
        return project_mu_inf(W, gamma, weights=eta)
    if cond == "norm_inf":
        return project_norm_inf(W, gamma)
    from lipdeq.conditions.sets import get_condition
    return get_condition(cond, gamma).project(W)


@pytest.mark.parametrize("cond,opts", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_projected_step_matches_step_then_projection(cond, opts, dtype):
    torch.manual_seed(1)
    n = 6
    eta = torch.rand(n, dtype=torch.float64) + 0.5
    opts = {k: (eta if v == "eta" else v) for k, v in opts.items()}
    net = nn.Sequential(nn.Linear(3, n), nn.Linear(n, n), nn.Linear(n, 2)).to(dtype)
    ref = copy.deepcopy(net)  # not registered: deepcopy makes new Parameters
    C.constrain(net[1], condition=cond, gamma=GAMMA, **opts)
    with torch.no_grad():
        ref[1].weight.copy_(net[1].weight)
    assert C.constraint_of(ref[1].weight) is None
    opt = C.ProjectedStep(torch.optim.Adam(net.parameters(), lr=0.5))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.5)
    u = torch.randn(16, 3, dtype=dtype)
    for _ in range(5):
        for model, o in ((net, opt), (ref, ref_opt)):
            o.zero_grad()
            model(u).square().sum().backward()
            o.step()
        with torch.no_grad():  # the reference: the plain step, then the library projection
            ref[1].weight.copy_(_reference(cond, ref[1].weight.detach().clone(), GAMMA,
                                           opts.get("weights")))
        for (name, p), q in zip(net.named_parameters(), ref.parameters()):
            assert torch.equal(p, q), name  # bit for bit, constrained and free parameters
    W = net[1].weight.detach()
    assert W.dtype == dtype
    measure = {"mu_inf": lambda A: geometry.mu_inf(A.double(), opts.get("weights")),
               "norm_inf": lambda A: geometry.norm_inf(A.double()),
               "monotone": lambda A: geometry.mu_2(A.double())}[cond]
    assert float(measure(W)) <= GAMMA


def test_only_registered_weights_of_this_optimizer_are_projected():
    a, b = big_linear(seed=1), big_linear(seed=2)
    C.constrain(a, gamma=GAMMA)
    C.constrain(b, gamma=GAMMA)
    with torch.no_grad():
        b.weight.mul_(10)  # b infeasible again, but b is not in the optimizer
    before = b.weight.detach().clone()
    opt = C.ProjectedStep(torch.optim.SGD(a.parameters(), lr=1.0))
    a(torch.randn(4, 8)).sum().mul(100).backward()
    opt.step()
    assert mu(a.weight) <= GAMMA
    assert torch.equal(b.weight.detach(), before)
    assert C.project_registered(opt.param_groups) == 1
    assert C.project_registered([a.weight, b.weight, a.weight]) == 2 and mu(b.weight) <= GAMMA


def test_unconstrain_and_reconstrain():
    lin = big_linear()
    C.constrain(lin, gamma=GAMMA)
    C.constrain(lin, gamma=0.5)  # replaces
    assert mu(lin.weight) <= 0.5 and C.constraint_of(lin.weight).gamma == 0.5
    C.unconstrain(lin)
    assert C.constraint_of(lin.weight) is None
    opt = C.ProjectedStep(torch.optim.SGD(lin.parameters(), lr=1.0))
    with torch.no_grad():
        lin.weight.mul_(10)
    assert C.project_registered(opt.param_groups) == 0 and mu(lin.weight) > 0.5
    with pytest.raises(ValueError, match="not constrained"):
        C.unconstrain(lin)


def test_registry_is_weak_and_survives_to_dtype():
    gc.collect()
    n = len(C._REGISTRY)
    lin = big_linear()
    C.constrain(lin, gamma=GAMMA)
    assert len(C._REGISTRY) == n + 1
    w = lin.weight
    lin.double()  # Module._apply keeps the Parameter object: still registered
    assert lin.weight is w and lin.weight.dtype == torch.float64
    opt = C.ProjectedStep(torch.optim.SGD(lin.parameters(), lr=10.0))
    lin(torch.randn(4, 8, dtype=torch.float64)).sum().backward()
    opt.step()
    assert mu(lin.weight) <= GAMMA
    del lin, w, opt
    gc.collect()
    assert len(C._REGISTRY) == n


def test_no_host_sync_in_projected_step():
    torch.manual_seed(0)
    n = 7
    mods = [big_linear(n, seed=s) for s in range(3)]
    C.constrain(mods[0], condition="mu_inf", gamma=GAMMA)
    C.constrain(mods[1], condition="mu_inf", gamma=GAMMA, weights=torch.rand(n) + 0.5)
    C.constrain(mods[2], condition="norm_inf", gamma=GAMMA)
    params = [p for m in mods for p in m.parameters()]
    opt = C.ProjectedStep(torch.optim.SGD(params, lr=10.0))
    sum(m(torch.randn(4, n)).sum() for m in mods).backward()
    with NoHostSync():
        opt.step()  # SGD step + three projections
    assert mu(mods[0].weight) <= GAMMA and float(geometry.norm_inf(mods[2].weight.detach().double())) <= GAMMA
    eta = C.constraint_of(mods[1].weight).eta64
    assert float(geometry.mu_inf(mods[1].weight.detach().double(), eta)) <= GAMMA
    # positive control: the public projection validates its input (one host read)
    with pytest.raises(AssertionError, match="host sync"), NoHostSync():
        project_mu_inf(mods[0].weight.detach() * 10, GAMMA)
    # and it runs on the meta device, where any value read back would fail
    for m in mods:
        c = C.constraint_of(m.weight)
        c.project_(torch.empty(n, n, device="meta"))


def test_optimizer_proxy():
    lin = big_linear()
    C.constrain(lin, gamma=GAMMA)
    inner = torch.optim.Adam(lin.parameters(), lr=0.1)
    opt = C.ProjectedStep(inner)
    assert opt is inner and C.ProjectedStep(inner) is inner  # the same optimizer, hooked once
    assert len(inner._optimizer_step_post_hooks) == 1
    lin(torch.randn(4, 8)).sum().backward()
    opt.step()
    assert all(p.grad is not None for p in lin.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in lin.parameters())
    sd = opt.state_dict()
    assert sd["state"] and sd == inner.state_dict()
    other = C.ProjectedStep(torch.optim.Adam(lin.parameters(), lr=0.5))
    other.load_state_dict(sd)
    assert other.param_groups[0]["lr"] == 0.1
    assert torch.equal(other.state[lin.weight]["exp_avg"], inner.state[lin.weight]["exp_avg"])
    # closures, LR schedulers and step hooks
    calls = []
    opt.register_step_post_hook(lambda o, a, k: calls.append(o))
    x = torch.randn(4, 8)

    def closure():
        opt.zero_grad()
        loss = lin(x).square().sum() * 100
        loss.backward()
        return loss

    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "scheduler.step() before optimizer.step()" warning
        loss = opt.step(closure)
        sched.step()
    assert isinstance(loss, torch.Tensor) and calls == [inner]
    assert opt.param_groups[0]["lr"] < 0.1 and mu(lin.weight) <= GAMMA
    lbfgs = C.ProjectedStep(torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=3))
    lbfgs.step(closure)
    assert mu(lin.weight) <= GAMMA
    with pytest.raises(TypeError, match="Optimizer"):
        C.ProjectedStep([lin.weight])


def test_remove_projection():
    lin = big_linear()
    C.constrain(lin, gamma=GAMMA)
    opt = C.ProjectedStep(torch.optim.SGD(lin.parameters(), lr=10.0))
    assert C.remove_projection(opt) and not C.remove_projection(opt)
    lin(torch.randn(4, 8)).sum().mul(100).backward()
    opt.step()  # a plain step now: the weight leaves the set
    assert mu(lin.weight) > GAMMA


# ----------------------------------------------------------------------------- bad input
def test_bad_input_value_errors():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match=r"square.*\(3, 4\)"):
        C.constrain(lin)
    with pytest.raises(ValueError, match="no attribute 'weigth'.*weight"):
        C.constrain(nn.Linear(3, 3), "weigth")
    sq = nn.Linear(3, 3)
    for name in ("pf", "nemon", "mu_inf_weighted", "lben"):
        with pytest.raises(ValueError, match=f"'{name}' has no projection"):
            C.constrain(sq, condition=name)
    with pytest.raises(ValueError, match="condition must be one of"):
        C.constrain(sq, condition="nope")
    with pytest.raises(ValueError, match="gamma"):
        C.constrain(sq, gamma=1.0)
    with pytest.raises(ValueError, match="gamma"):
        C.constrain(sq, gamma=float("nan"))
    C.constrain(sq, gamma=1.5, allow_ill_posed=True)
    with pytest.raises(ValueError, match="weights"):
        C.constrain(sq, weights=torch.ones(4))
    with pytest.raises(ValueError, match="weights"):
        C.constrain(sq, weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="does not take weights"):
        C.constrain(sq, condition="norm_inf", weights=torch.ones(3))
    m = nn.Module()
    m.register_buffer("A", torch.zeros(3, 3))
    with pytest.raises(ValueError, match="must be an nn.Parameter"):
        C.constrain(m, "A")
    bad = nn.Linear(3, 3)
    with torch.no_grad():
        bad.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        C.constrain(bad)
    p = nn.Linear(3, 3)
    torch.nn.utils.parametrize.register_parametrization(p, "weight", nn.Identity())
    with pytest.raises(ValueError, match="parametrized"):
        C.constrain(p)
    with pytest.raises(TypeError):
        C.constrain(torch.zeros(3, 3))
    assert C.constraint_of(sq.weight).gamma == 1.5  # failed calls left the registration alone


def test_condition_instance_and_none():
    from lipdeq.conditions.sets import get_condition
    lin = big_linear()
    C.constrain(lin, condition=get_condition("norm_inf", 0.7))
    assert float(geometry.norm_inf(lin.weight.detach().double())) <= 0.7
    with pytest.raises(ValueError, match="Condition instance"):
        C.constrain(lin, condition=get_condition("norm_inf", 0.7), gamma=0.5)
    before = lin.weight.detach().clone() * 3
    with torch.no_grad():
        lin.weight.copy_(before)
    C.constrain(lin, condition="none")  # the identity projection
    assert torch.equal(lin.weight.detach(), before)
