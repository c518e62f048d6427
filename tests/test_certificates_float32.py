"""Certificates stay sound for float32 models at loose solver tolerance (§2).

The certificates are claims about the exact fixed point of the stored weights. Oracles: a float64
copy of the same stored weights solved at tol 1e-13 (``exact_twin``), and, for the constructed
cases, the fixed point in exact rational arithmetic (``fractions``) or in closed form.
"""
import copy
import itertools
import math
from fractions import Fraction

import pytest
import torch

from lipdeq import ImplicitNetwork
from lipdeq.certify import robustness as R
from lipdeq.deq.conv import ImplicitConvNetwork

pytestmark = pytest.mark.usefixtures("one_thread")

LOOSE = 3e-2     # the loosest forward tolerance the certificates must survive
ORACLE_TOL = 1e-13
SLACK = 1e-11    # the oracle's own solver error (≪ every widening measured below)


def exact_twin(model):
    """The same stored weights in float64, solved to 1e-13 (the independent oracle)."""
    twin = copy.deepcopy(model).double()
    twin.solver_config.tol = ORACLE_TOL
    twin.solver_config.max_iter = 200000
    return twin


def loose_float32_model(seed, *, activation, condition="mu_inf", feedthrough=False):
    """A float32 model with a strongly mixed-sign A (μ∞ close to γ), solved at tol 3e-2."""
    torch.manual_seed(seed)
    m = ImplicitNetwork(4, 7, 3, activation=activation, condition=condition, gamma=0.9,
                        tol=LOOSE, max_iter=2000, feedthrough=feedthrough)
    with torch.no_grad():
        if condition == "mu_inf":
            m.A.mul_(4.0)
            m.project_()
        else:
            m.A_raw["M"].mul_(4.0)
            m.A_raw["d"].uniform_(-1.0, 1.0)
        m.B.mul_(3.0)
        m.b.mul_(2.0)
        if feedthrough:
            m.D.normal_(0, 0.3)
    assert m.B.dtype == torch.float32
    return m


def box_points(u0, eps, gen, n_random=20):
    """Corners and random points of [u0 − ε, u0 + ε] ∩ [0, 1] (u0 of shape (p,)), float64."""
    lo, hi = (u0 - eps).clamp_min(0), (u0 + eps).clamp_max(1)
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=u0.shape[0])),
                           dtype=torch.float64)
    t = torch.cat([corners, torch.rand(n_random, u0.shape[0], generator=gen, dtype=torch.float64)])
    return lo.double() + t * (hi - lo).double()


def _inside(lo, value, hi):
    return bool((lo.double() <= value + SLACK).all()) and bool((value <= hi.double() + SLACK).all())


# ----------------------------------------------------------------------------- loose float32
@pytest.mark.parametrize("activation,condition,feedthrough,seed", [
    ("tanh", "mu_inf", False, 0), ("relu", "nemon", True, 1), ("leaky_relu", "mu_inf", True, 2)])
def test_loose_float32_bounds_contain_the_exact_fixed_points(activation, condition, feedthrough,
                                                             seed):
    m = loose_float32_model(seed, activation=activation, condition=condition,
                            feedthrough=feedthrough)
    twin = exact_twin(m)
    gen = torch.Generator().manual_seed(seed)
    u = 0.2 + 0.6 * torch.rand(3, 4, generator=gen)
    with torch.no_grad():
        labels = m(u).argmax(1)
    worst_uncorrected = 0.0
    for eps in (0.0, 1e-3, 0.1):
        lower, upper = (u - eps).clamp_min(0), (u + eps).clamp_max(1)
        x_lo, x_hi = R.interval_bounds(m, lower, upper)
        y_lo, y_hi = R.output_bounds(m, lower, upper)
        z = R.worst_case_logits(m, lower, upper, labels)
        raw_lo, raw_hi = R.interval_bounds(m, lower, upper, sound=False)
        assert x_lo.dtype == torch.float32 and z.dtype == torch.float32
        attack = R.pgd(m, u, labels, eps, steps=10, seed=seed)
        for i in range(u.shape[0]):
            pts = torch.cat([box_points(u[i], eps, gen), attack[i:i + 1].double()])
            with torch.no_grad():
                xs = twin.fixed_point(pts)
                ys = twin(pts)
            assert _inside(x_lo[i], xs, x_hi[i]), (eps, i)
            assert _inside(y_lo[i], ys, y_hi[i]), (eps, i)
            diff = ys - ys[:, labels[i]:labels[i] + 1]           # y_j − y_k
            assert bool((diff <= z[i].double() + SLACK).all()), (eps, i)
            gap = torch.maximum(raw_lo[i].double() - xs, xs - raw_hi[i].double())
            worst_uncorrected = max(worst_uncorrected, float(gap.detach().max()))
    # the loose solve really is off: the uncorrected (computed) box misses the exact state
    assert worst_uncorrected > 1e-4


@pytest.mark.parametrize("activation,condition,seed", [("tanh", "mu_inf", 3), ("relu", "nemon", 4)])
def test_loose_float32_lipschitz_margins_and_radius_hold_for_the_exact_network(activation,
                                                                                condition, seed):
    m = loose_float32_model(seed, activation=activation, condition=condition)
    twin = exact_twin(m)
    gen = torch.Generator().manual_seed(seed)
    u = 0.2 + 0.6 * torch.rand(8, 4, generator=gen)
    with torch.no_grad():
        labels = m(u).argmax(1)
        ys = twin(u.double())
    exact = ys.gather(1, labels[:, None]) - ys                     # y*_k − y*_j
    bound = R.certified_margins(m, u, labels)
    own = torch.nn.functional.one_hot(labels, 3).bool()
    assert bound.dtype == torch.float64 and bool(torch.isinf(bound[own]).all())
    assert bool((bound[~own] <= exact[~own] + SLACK).all())
    # the computed (uncorrected) margins claim more than the exact network has somewhere
    with torch.no_grad():
        y = m(u).double()
    computed = y.gather(1, labels[:, None]) - y
    assert float((computed - exact).max()) > 1e-4
    # the exact network keeps the label at every corner of the certified ball
    rad = R.certified_radius_lipschitz(m, u, labels)
    for i in torch.nonzero(rad > 0).flatten().tolist():
        pts = box_points(u[i], float(rad[i]) * 0.999, gen, n_random=5)
        with torch.no_grad():
            assert bool((twin(pts).argmax(1) == labels[i]).all())


def test_loose_float32_conv_bounds_contain_the_exact_fixed_points():
    torch.manual_seed(5)
    m = ImplicitConvNetwork((1, 6, 6), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=3, activation="relu", gamma=0.9,
                            tol=LOOSE, max_iter=2000)
    with torch.no_grad():
        m.A.mul_(4.0)
        m.project_()
        m.B.mul_(3.0)
    twin = exact_twin(m)
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(2, 36, generator=gen)
    with torch.no_grad():
        labels = m(u).argmax(1)
    for eps in (0.0, 0.05):
        lower, upper = (u - eps).clamp_min(0), (u + eps).clamp_max(1)
        x_lo, x_hi = R.interval_bounds(m, lower, upper)
        z = R.worst_case_logits(m, lower, upper, labels)
        for i in range(2):
            pts = lower[i].double() + torch.rand(10, 36, generator=gen, dtype=torch.float64) \
                * (upper[i] - lower[i]).double()
            pts = torch.cat([u[i:i + 1].double(), pts])
            with torch.no_grad():
                xs, ys = twin.fixed_point(pts), twin(pts)
            assert _inside(x_lo[i], xs, x_hi[i])
            assert bool((ys - ys[:, labels[i]:labels[i] + 1] <= z[i].double() + SLACK).all())
    with torch.no_grad():
        y, ys = m(u).double(), twin(u.double())
    exact = ys.gather(1, labels[:, None]) - ys
    own = torch.nn.functional.one_hot(labels, 3).bool()
    assert bool((R.certified_margins(m, u, labels)[~own] <= exact[~own] + SLACK).all())


# ----------------------------------------------------------------------------- constructed cases
def test_uncorrected_certificate_is_provably_wrong_at_loose_tolerance():
    """x = relu(0.9x + 0.01u + 1), y = (−x, −t): x* = w/(1 − a) exactly; the tol-3e-2 solve stops
    ≈ 0.25 short of x*, and t lies between the computed and the exact state."""
    m = ImplicitNetwork(1, 1, 2, activation="relu", gamma=0.95, tol=LOOSE, max_iter=1000)
    with torch.no_grad():
        m.A.fill_(0.9)
        m.B.fill_(0.01)
        m.b.fill_(1.0)
        m.C.copy_(torch.tensor([[-1.0], [0.0]]))
        m.c.zero_()
    u = torch.tensor([[0.5]])
    a, B, b = (Fraction(float(t.detach())) for t in (m.A, m.B, m.b))
    x_star = (B * Fraction(0.5) + b) / (1 - a)                        # exact rational fixed point
    with torch.no_grad():
        x_hat = float(m.fixed_point(u))
    assert x_star - Fraction(x_hat) > Fraction(1, 10)                 # the loose solve is far off
    t = torch.tensor((x_hat + float(x_star)) / 2)
    with torch.no_grad():
        m.c[1] = -t
    label = torch.tensor([0])
    exact_margin = Fraction(float(t)) - x_star                        # y*_0 − y*_1
    assert exact_margin < 0                                           # the exact network says 1
    with torch.no_grad():
        assert int(m(u).argmax()) == 0                                # the loose forward says 0
    # uncorrected: the computed box excludes x*, and it "certifies" the wrong label
    raw_lo, raw_hi = R.interval_bounds(m, u, u, sound=False)
    assert Fraction(float(raw_hi.detach())) < x_star
    assert float(R.worst_case_logits(m, u, u, label, sound=False)[0, 1].detach()) < 0
    # corrected: encloses x*, bounds the margin from below, certifies nothing
    lo, hi = R.interval_bounds(m, u, u)
    assert Fraction(float(lo.detach())) <= x_star <= Fraction(float(hi.detach()))
    assert Fraction(float(R.worst_case_logits(m, u, u, label)[0, 1].detach())) >= -exact_margin
    assert Fraction(float(R.certified_margins(m, u, label)[0, 1])) <= exact_margin
    assert float(R.certified_radius_lipschitz(m, u, label)) == 0.0
    assert not bool(R.certified_interval(m, u, label, 0.0).any())
    assert not bool(R.certified_lipschitz(m, u, label, 0.0).any())


def test_residual_that_rounds_to_zero_keeps_its_rounding_margin():
    """x₁ = tanh(20), x₂ = tanh(2⁻¹⁰x₁ − 2⁻¹⁰): float32 and float64 both round tanh(20) to 1, so
    the residual at the computed (1, 0) is exactly 0 in both, while x₂* = −tanh(2⁻⁹/(e⁴⁰ + 1)) < 0.
    With y₀ − y₁ = x₂ + 2⁻¹⁰⁰ the computed margin is +2⁻¹⁰⁰ but the exact one is ≈ −8.3e-21."""
    m = ImplicitNetwork(1, 2, 2, activation="tanh", gamma=0.5, tol=1e-6)
    with torch.no_grad():
        m.A.copy_(torch.tensor([[0.0, 0.0], [2.0 ** -10, 0.0]]))
        m.B.zero_()
        m.b.copy_(torch.tensor([20.0, -2.0 ** -10]))
        m.C.copy_(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        m.c.copy_(torch.tensor([2.0 ** -100, 0.0]))
    u = torch.tensor([[0.5]])
    with torch.no_grad():
        x_hat = m.fixed_point(u)
        m64 = copy.deepcopy(m).double()
        z = m64.operator().multiply(x_hat.double()) + m64.input_map(u.double())
        residual64 = torch.tanh(z) - x_hat.double()
    assert x_hat.tolist() == [[1.0, 0.0]]
    assert bool((residual64 == 0).all())                              # rounds to exactly 0
    x2_star = -math.tanh(2.0 ** -9 / (math.exp(40) + 1))              # ≈ −8.3e-21
    assert -1e-20 < x2_star < -5e-21
    lo, hi = R.interval_bounds(m, u, u)
    assert float(lo[0, 1].detach()) <= x2_star * (1 + 1e-6)
    assert float(hi[0, 0].detach()) >= 1.0 and float(lo[0, 0].detach()) < 1.0
    label = torch.tensor([0])
    assert float(R.certified_margins(m, u, label)[0, 1]) <= x2_star + 2.0 ** -100
    assert float(R.worst_case_logits(m, u, u, label)[0, 1].detach()) >= -(x2_star + 2.0 ** -100)
    assert not bool(R.certified_lipschitz(m, u, label, 0.1).any())   # B = 0: L = 0, radius inf
    assert not bool(R.certified_interval(m, u, label, 0.1).any())    # if the margin were trusted


class _OffForward(torch.nn.Module):
    """The certification protocol of ``net``, but a forward pass that stops after one iteration
    (a user-visible model(u) that can disagree with the exact network)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.activation, self.solver_config = net.activation, net.solver_config

    def operator(self):
        return self.net.operator()

    def input_map(self, u):
        return self.net.input_map(u)

    def input_bounds(self, lower, upper):
        return self.net.input_bounds(lower, upper)

    def readout_matrices(self):
        return self.net.readout_matrices()

    def norm_weights(self):
        return self.net.norm_weights()

    def input_gain_inf(self, eta):
        rows = self.net.B.detach().abs().sum(1)
        return (rows if eta is None else rows / eta.flatten()).amax()

    def forward(self, u):
        x = self.net.activation.fn(self.net.input_map(u))           # one step from x = 0
        return self.net.readout(x, u)


def test_certified_requires_the_forward_pass_prediction():
    torch.manual_seed(6)
    net = ImplicitNetwork(4, 6, 3, activation="tanh", gamma=0.5, tol=1e-10,
                          max_iter=5000).double()
    u = torch.rand(40, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    off = _OffForward(net)
    with torch.no_grad():
        labels = net(u).argmax(1)
        fwd_ok = off(u).argmax(1) == labels
    assert bool(fwd_ok.any()) and not bool(fwd_ok.all())
    for eps in (0.0, 1e-3):
        ci_net, ci_off = R.certified_interval(net, u, labels, eps), R.certified_interval(off, u, labels, eps)
        cl_net, cl_off = R.certified_lipschitz(net, u, labels, eps), R.certified_lipschitz(off, u, labels, eps)
        assert bool(ci_net[~fwd_ok].any())                  # the exact network is certified there
        assert torch.equal(ci_off, ci_net & fwd_ok)
        assert torch.equal(cl_off, cl_net & fwd_ok)


def test_sound_computations_run_with_cudnn_off_and_restore_it(monkeypatch):
    """The float64 rounding margins assume sums of products; cuDNN may pick FFT/Winograd
    convolutions on CUDA, so the sound pieces run with cuDNN disabled (and restore the flag)."""
    from lipdeq.certify import sound as sd
    seen = []
    real = sd.residual_bound

    def spy(*args, **kwargs):
        seen.append(torch.backends.cudnn.enabled)
        return real(*args, **kwargs)

    monkeypatch.setattr(sd, "residual_bound", spy)
    torch.manual_seed(0)
    m = ImplicitConvNetwork((1, 6, 6), channels=2, kernel_size=3, out_features=3,
                            input_kernel_size=3, pool=3, gamma=0.9)
    u = torch.rand(2, 36)
    before = torch.backends.cudnn.enabled
    R.interval_bounds(m, (u - 0.05).clamp_min(0), (u + 0.05).clamp_max(1))  # sound_states
    R.certified_margins(m, u, m(u).argmax(1))                                # lipschitz64
    assert len(seen) >= 2 and not any(seen)
    assert torch.backends.cudnn.enabled == before
