"""Interval (IBP) bounds, loss and training for the conv implicit model (issue 16, item 5).

Oracles: the dense input matrix of the (strided) input conv built from basis images (for the
input box), a float64 copy of the stored weights solved to 1e-13 (``exact_twin``) evaluated at
random points, random vertices and PGD points of the box, and finite differences (gradcheck).
"""
import copy
import json
import os

import pytest
import torch

from lipdeq.certify import robustness as R
from lipdeq.deq.conv import ImplicitConvNetwork
from lipdeq.training.loop import PRESETS, TrainConfig, apply_preset, train

pytestmark = pytest.mark.usefixtures("one_thread")

LOOSE = 3e-2
SLACK = 1e-11
SHAPE = (1, 8, 8)
P = 64


def strided_model(seed, *, dtype=torch.float32, tol=LOOSE, backward="jacobian-free"):
    """downsample 2: 8×8 input, 4×4 state; a strongly mixed-sign kernel with μ∞ = γ = 0.9."""
    torch.manual_seed(seed)
    m = ImplicitConvNetwork(SHAPE, channels=2, kernel_size=3, out_features=3, input_kernel_size=3,
                            pool=2, activation="relu", gamma=0.9, tol=tol, max_iter=5000,
                            downsample=2, backward=backward).to(dtype)
    with torch.no_grad():
        m.A.mul_(4.0)
        m.project_()
        m.B.mul_(3.0)
    return m


def exact_twin(model):
    twin = copy.deepcopy(model).double()
    twin.solver_config.tol = 1e-13
    twin.solver_config.max_iter = 200000
    return twin


def box_samples(lo, hi, gen, n=40):
    """n random points and n random vertices of [lo, hi] (float64)."""
    lo, hi = lo.double(), hi.double()
    t = torch.cat([torch.rand(n, lo.numel(), generator=gen, dtype=torch.float64),
                   torch.randint(0, 2, (n, lo.numel()), generator=gen).double()])
    return lo + t * (hi - lo)


def test_strided_input_bounds_equal_the_dense_box_formula():
    m = strided_model(0, dtype=torch.float64, tol=1e-10)
    basis = torch.eye(P, dtype=torch.float64)
    Bd = (m.input_map(basis) - m.input_map(torch.zeros(1, P, dtype=torch.float64))).T  # (n, p)
    assert Bd.shape == (m.hidden, P) and m.hidden == 2 * 4 * 4
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(3, P, generator=gen, dtype=torch.float64)
    lo, hi = (u - 0.1).clamp_min(0), (u + 0.1).clamp_max(1)
    w_lo, w_hi = m.input_bounds(lo, hi)
    w0 = m.input_map(torch.zeros(1, P, dtype=torch.float64))
    exp_lo = lo @ Bd.clamp_min(0).T + hi @ Bd.clamp_max(0).T + w0
    exp_hi = hi @ Bd.clamp_min(0).T + lo @ Bd.clamp_max(0).T + w0
    torch.testing.assert_close(w_lo, exp_lo, rtol=0, atol=1e-12)
    torch.testing.assert_close(w_hi, exp_hi, rtol=0, atol=1e-12)
    assert float((w_hi - w_lo).min().detach()) > 0  # a real box, not a point


@pytest.mark.parametrize("seed", [1, 2])
def test_loose_float32_strided_bounds_contain_the_exact_fixed_points(seed):
    m = strided_model(seed)
    assert m.B.dtype == torch.float32
    twin = exact_twin(m)
    gen = torch.Generator().manual_seed(seed)
    u = 0.2 + 0.6 * torch.rand(2, P, generator=gen)
    with torch.no_grad():
        labels = m(u).argmax(1)
    worst_uncorrected = 0.0
    for eps in (0.0, 0.05, 0.1):
        lower, upper = (u - eps).clamp_min(0), (u + eps).clamp_max(1)
        x_lo, x_hi = R.interval_bounds(m, lower, upper)
        y_lo, y_hi = R.output_bounds(m, lower, upper)
        z = R.worst_case_logits(m, lower, upper, labels)
        raw_lo, raw_hi = R.interval_bounds(m, lower, upper, sound=False)
        attack = R.pgd(m, u, labels, eps, steps=10, seed=seed)
        for i in range(u.shape[0]):
            pts = torch.cat([u[i:i + 1].double(), box_samples(lower[i], upper[i], gen),
                             attack[i:i + 1].double()])
            with torch.no_grad():
                xs, ys = twin.fixed_point(pts), twin(pts)
            assert bool((x_lo[i].double() <= xs + SLACK).all() and (xs <= x_hi[i].double() + SLACK).all())
            assert bool((y_lo[i].double() <= ys + SLACK).all() and (ys <= y_hi[i].double() + SLACK).all())
            assert bool((ys - ys[:, labels[i]:labels[i] + 1] <= z[i].double() + SLACK).all())
            gap = torch.maximum(raw_lo[i].double() - xs, xs - raw_hi[i].double())
            worst_uncorrected = max(worst_uncorrected, float(gap.detach().max()))
    assert worst_uncorrected > 1e-5  # the loose solve is really off: the correction matters


def test_certified_examples_keep_their_label_in_the_exact_network():
    m = strided_model(3)
    with torch.no_grad():
        m.A.mul_(0.3)  # a less expansive model, so that some examples certify
        m.B.mul_(0.3)
    twin = exact_twin(m)
    gen = torch.Generator().manual_seed(3)
    u = torch.rand(40, P, generator=gen)
    with torch.no_grad():
        labels = m(u).argmax(1)
    eps = 0.02
    cert = R.certified_interval(m, u, labels, eps)
    assert 0 < int(cert.sum()) < 40, int(cert.sum())  # the check below has something to check
    adv = R.pgd(m, u, labels, eps, steps=20, seed=3)
    for i in torch.nonzero(cert).flatten().tolist():
        lo, hi = (u[i] - eps).clamp_min(0), (u[i] + eps).clamp_max(1)
        pts = torch.cat([box_samples(lo, hi, gen, n=20), adv[i:i + 1].double()])
        with torch.no_grad():
            assert bool((twin(pts).argmax(1) == labels[i]).all())


def test_interval_loss_gradient_matches_finite_differences():
    m = strided_model(4, dtype=torch.float64, tol=1e-12, backward="implicit")
    with torch.no_grad():  # off the kinks: the projection leaves exact zeros, where a tap moves
        # between ⌈A⌉ and ⌊A⌋ and the embedded system has only one-sided derivatives
        sign = torch.where(torch.rand(m.A.shape, generator=torch.Generator().manual_seed(4)) < 0.5,
                           -1.0, 1.0).double()
        m.A.mul_(0.8)
        m.A.copy_(torch.where(m.A.abs() < 2e-3, 4e-3 * sign, m.A))
    assert float(m.A.detach().abs().min()) > 1e-4 and float(m.mu_inf()) < 1
    names = ["A", "B", "b", "C", "c"]
    params = [getattr(m, k).detach().clone().requires_grad_(True) for k in names]
    gen = torch.Generator().manual_seed(4)
    u = torch.rand(2, P, generator=gen, dtype=torch.float64)
    labels = torch.tensor([0, 2])

    def f(*ps):
        with torch.nn.utils.stateless._reparametrize_module(m, dict(zip(names, ps))):
            return R.interval_loss(m, u, labels, 0.05, kappa=0.3)

    assert torch.autograd.gradcheck(f, tuple(params), eps=1e-6, atol=1e-6, rtol=1e-4,
                                     fast_mode=True)


def test_jacobian_free_interval_loss_gives_finite_gradients_that_descend():
    m = strided_model(5, tol=1e-4)
    gen = torch.Generator().manual_seed(5)
    u, labels = torch.rand(16, P, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = R.interval_loss(m, u, labels, 0.05, kappa=0.3)
        opt.zero_grad()
        loss.backward()
        assert all(bool(torch.isfinite(p.grad).all()) for p in m.parameters())
        opt.step()
        m.project_()
        losses.append(float(loss))
    assert float(m.mu_inf()) <= 0.9 + 1e-12
    assert losses[-1] < 0.8 * losses[0], losses


def test_robust_conv_preset_trains_and_certifies(tmp_path):
    preset = PRESETS["robust-conv"]
    assert preset["model"] == "conv" and preset["robust"] == "interval"
    TrainConfig(**preset).validate()
    # explicit flags override the preset; the rest come from it
    cfg = apply_preset(TrainConfig(preset="robust-conv", epochs=1), {"epochs"})
    assert cfg.epochs == 1 and cfg.model == "conv" and cfg.eps == preset["eps"]
    cfg = TrainConfig(**{**preset, "epochs": 1, "channels": 4, "holdout": 4700, "val": 100})
    rows = train(cfg, str(tmp_path / "run"), progress=False)
    assert len(rows) == 1 and rows[0]["mu_inf"] <= cfg.gamma
    with open(tmp_path / "run" / "config.json") as fh:
        stored = json.load(fh)
    assert stored["robust"] == "interval" and stored["model_config"]["model"] == "conv"
    assert os.path.isfile(tmp_path / "run" / "last.pt")
    # the tuning log the preset's comment points at holds the chosen configuration
    log = os.path.join(os.path.dirname(__file__), "..", "docs", "tuning", "tuning_conv.json")
    with open(log) as fh:
        chosen = json.load(fh)["chosen"]
    assert all(preset[k] == v for k, v in chosen.items())
