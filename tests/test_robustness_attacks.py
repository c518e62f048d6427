"""Attacks (FGSM/PGD: box, reproducibility, restarts, margin loss, best point), certificates
through the model protocol only, and bad input."""
import pytest
import torch
import torch.nn.functional as F

from lipdeq import ImplicitNetwork
from lipdeq.certify import robustness as R
from lipdeq.deq.operators import DenseOperator

from test_robustness import (DT, random_model, trained)  # noqa: F401 (shared helpers and fixtures)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- attacks
def test_attacks_stay_in_box_and_are_reproducible():
    m = random_model(15, activation="tanh", tol=1e-5).float()
    u = torch.rand(9, 4, generator=torch.Generator().manual_seed(5))
    u[0] = 0.0
    u[1] = 1.0
    labels = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(5))
    eps = 0.1
    for adv in (R.fgsm(m, u, labels, eps), R.pgd(m, u, labels, eps, seed=3)):
        assert adv.dtype == u.dtype and adv.shape == u.shape and not adv.requires_grad
        assert bool(((adv.double() - u.double()).abs() <= eps).all())  # exactly, in float64
        assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    a1 = R.pgd(m, u, labels, eps, seed=3)
    a2 = R.pgd(m, u, labels, eps, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a1, a2)
    assert torch.equal(R.pgd(m, u, labels, 0.0, seed=3), u)
    assert torch.equal(R.fgsm(m, u, labels, 0.0), u)
    # FGSM moves every coordinate of a correctly classified input by ε where the box allows
    # (and the gradient is non-zero); a misclassified input is returned as it is
    fg = R.fgsm(m, u, labels, eps)
    with torch.no_grad():
        right = (m(u).argmax(-1) == labels).unsqueeze(-1)
    inside = (u > eps) & (u < 1 - eps) & right
    assert 0 < int(right.sum()) < len(u)
    assert bool(((fg - u).abs()[inside] > eps - 1e-6).all())
    assert torch.equal(fg[~right.squeeze(-1)], u[~right.squeeze(-1)])


def test_attack_increases_loss():
    m = random_model(16, activation="relu")
    u = torch.rand(20, 4, dtype=DT, generator=torch.Generator().manual_seed(6))
    labels = torch.randint(0, 3, (20,), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        l0 = F.cross_entropy(m(u), labels, reduction="none")
        lf = F.cross_entropy(m(R.fgsm(m, u, labels, 0.05)), labels, reduction="none")
        lp = F.cross_entropy(m(R.pgd(m, u, labels, 0.05, seed=0)), labels, reduction="none")
    assert float(lf.mean()) > float(l0.mean())
    # PGD keeps its best point: never below the clean loss, unless it found a misclassification
    assert float(lp.mean()) >= float(lf.mean()) - 1e-9 and bool((lp >= l0 - 1e-9).all())


class _Bowl(torch.nn.Module):
    """A plain 1-D classifier, logits (g(v), 0) with g(v) = (v − 0.35)² − 0.01: class 0 on the
    right of 0.45, wrong on [0.25, 0.45]; sign-ascent of CE from 0.3 with a long step jumps to the
    correctly classified corner 0.7."""

    def __init__(self):
        super().__init__()
        self.seen_training = []

    def forward(self, v):
        self.seen_training.append(self.training)
        g = (v[:, 0] - 0.35) ** 2 - 0.01
        return torch.stack([g, torch.zeros_like(g)], 1)


def test_pgd_keeps_its_best_point_on_any_module():
    model = _Bowl().train()
    u = torch.tensor([[0.5], [0.5]], dtype=DT)
    labels = torch.tensor([0, 0])
    start = torch.tensor([[0.3], [0.5]], dtype=DT)
    assert model(start).argmax(1).tolist() == [1, 0] and model(u).argmax(1).tolist() == [0, 0]
    for steps in (1, 2, 5):
        model.seen_training.clear()
        adv = R.pgd(model, u, labels, 0.2, steps=steps, step_size=0.4, init=start)
        assert model.training and set(model.seen_training) == {False}   # eval inside, restored
        # the iterates bounce between 0.7 and 0.3; the misclassified start is kept
        assert model(adv).argmax(1)[0].item() == 1 and abs(adv[0, 0].item() - 0.3) < 1e-12
    assert R.attack_accuracy(model, u[:1], labels[:1], 0.2, "pgd", steps=3, step_size=0.4,
                             random_start=False) == 0.0


# ----------------------------------------------------------------------------- protocol only
class _Reshaped:
    """A dense operator on states of shape (N, 2, n/2) (stands in for a convolution)."""

    def __init__(self, A, shape):
        self.op, self.shape = DenseOperator(A), shape

    n = property(lambda self: self.op.n)
    requires_grad = property(lambda self: self.op.requires_grad)

    def multiply(self, x):
        return self.op.multiply(x.flatten(1)).view(x.shape)

    def multiply_transpose(self, y):
        return self.op.multiply_transpose(y.flatten(1)).view(y.shape)

    def mu_inf(self, eta=None):
        return self.op.mu_inf(None if eta is None else eta.flatten())

    def min_diagonal(self):
        return self.op.min_diagonal()

    def metzler_split(self):
        up, lo = self.op.metzler_split()
        return _Reshaped(up.A, self.shape), _Reshaped(lo.A, self.shape)


class _ProtocolModel(torch.nn.Module):
    """Exposes only the certification protocol (no A, no B) with a (N, 2, n/2) state."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.shape = (2, net.hidden // 2)
        self.activation, self.solver_config = net.activation, net.solver_config

    def operator(self):
        return _Reshaped(self.net.effective_A(), self.shape)

    def input_map(self, u):
        return self.net.input_map(u).view(-1, *self.shape)

    def input_bounds(self, lower, upper):
        lo, hi = self.net.input_bounds(lower, upper)
        return lo.view(-1, *self.shape), hi.view(-1, *self.shape)

    def readout_matrices(self):
        return self.net.readout_matrices()

    def norm_weights(self):
        eta = self.net.norm_weights()
        return None if eta is None else eta.view(self.shape)

    def input_gain_inf(self, eta):
        rows = self.net.B.detach().abs().sum(1)
        return (rows if eta is None else rows / eta.flatten()).amax()

    def forward(self, u):
        return self.net(u)


def test_certificates_use_only_the_model_protocol():
    net = random_model(17, n=8, activation="relu", condition="nemon", feedthrough=True, scale=1.0)
    pm = _ProtocolModel(net)
    u = torch.rand(7, 4, dtype=DT, generator=torch.Generator().manual_seed(7))
    lower, upper = (u - 0.05).clamp_min(0), (u + 0.05).clamp_max(1)
    a_lo, a_hi = R.interval_bounds(net, lower, upper)
    b_lo, b_hi = R.interval_bounds(pm, lower, upper)
    assert b_lo.shape == (7, 2, 4)
    # the protocol model has no dense(): no optimal η, so its padding may differ by ~tol only
    assert torch.allclose(a_lo, b_lo.flatten(1), atol=1e-9) and torch.allclose(a_hi, b_hi.flatten(1), atol=1e-9)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    za = R.worst_case_logits(net, lower, upper, labels)
    zb = R.worst_case_logits(pm, lower, upper, labels)
    assert torch.allclose(za, zb, atol=1e-8)
    ra = R.certified_radius_lipschitz(net, u, weights="model")
    rb = R.certified_radius_lipschitz(pm, u, weights="model")
    assert torch.allclose(ra, rb, atol=1e-10) and bool((ra > 0).any())
    assert torch.equal(R.certified_interval(net, u, labels, 0.02), R.certified_interval(pm, u, labels, 0.02))


# ----------------------------------------------------------------------------- bad input
def _outcome(m, x, labels, loss):
    """(misclassified, loss value) at x, computed independently of the attack code."""
    with torch.no_grad():
        z = m(x)
    true = z.gather(1, labels[:, None])[:, 0]
    if loss == "margin":
        other = torch.stack([torch.cat([z[i, :k], z[i, k + 1:]]).max()
                             for i, k in enumerate(labels.tolist())])
        value = other - true
    else:
        value = torch.logsumexp(z, 1) - true
    return z.argmax(1) != labels, value


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_pgd_restarts_never_worse_than_the_first_start(trained, loss):
    m, u, labels = trained
    for eps in (0.05, 0.12):
        one = R.pgd(m, u, labels, eps, steps=5, seed=7, loss=loss)
        many = R.pgd(m, u, labels, eps, steps=5, seed=7, loss=loss, restarts=4)
        w1, l1 = _outcome(m, one, labels, loss)
        wk, lk = _outcome(m, many, labels, loss)
        # per sample, lexicographically (misclassified, loss) never decreases
        assert not bool((w1 & ~wk).any())
        same = w1 == wk
        assert bool((lk[same] >= l1[same] - 1e-12).all())
        assert bool(((many - u).abs() <= eps + 1e-12).all())   # the box is fl(u ± ε)


def test_pgd_margin_loss():
    # the margin loss oracle: max over the other logits minus the true logit
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.5]], dtype=DT)
    from lipdeq.certify.attacks import _margin_loss
    assert _margin_loss(z, torch.tensor([1, 0])).tolist() == [1.0 - 2.0, 0.5 - 5.0]
    assert _margin_loss(z, torch.tensor([0, 2])).tolist() == [3.0 - 1.0, 5.0 - 0.5]
    m = random_model(17, activation="relu")
    u = torch.rand(30, 4, dtype=DT, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        labels = m(u).argmax(1)                           # every sample correct when clean
    w0, m0 = _outcome(m, u, labels, "margin")
    adv = R.pgd(m, u, labels, 0.3, steps=10, seed=0, loss="margin")
    w, marg = _outcome(m, adv, labels, "margin")
    assert not bool(w0.any()) and bool(w.any())           # it breaks some
    assert bool((marg >= m0 - 1e-12).all())               # never below the clean margin
    assert torch.equal(w, marg > 0)                       # misclassified ⇔ margin > 0 (no ties)
    acc = R.attack_accuracy(m, u, labels, 0.3, "pgd", steps=10, seed=0, loss="margin")
    assert acc == float((~w).double().mean())


def test_bad_inputs_raise_value_error_naming_the_argument():
    m = random_model(18)
    u = torch.rand(4, 4, dtype=DT)
    labels = torch.tensor([0, 1, 2, 0])
    calls = [
        lambda e, uu, ll: R.fgsm(m, uu, ll, e),
        lambda e, uu, ll: R.pgd(m, uu, ll, e, steps=2),
        lambda e, uu, ll: R.attack_accuracy(m, uu, ll, e, steps=2),
        lambda e, uu, ll: R.certified_lipschitz(m, uu, ll, e),
        lambda e, uu, ll: R.certified_interval(m, uu, ll, e),
        lambda e, uu, ll: R.interval_loss(m, uu, ll, e),
    ]
    bad_u = u.clone()
    bad_u[0, 0] = 1.5
    for call in calls:
        for e in (-0.1, float("nan"), float("inf"), "big", torch.tensor([0.1, -0.1, 0.1, 0.1])):
            with pytest.raises(ValueError, match="eps"):
                call(e, u, labels)
        with pytest.raises(ValueError, match="u must lie in"):
            call(0.1, bad_u, labels)
        with pytest.raises(ValueError, match="u must lie in"):
            call(0.1, -u, labels)
        for bad_labels in (labels[:, None], labels[:3], labels.double(), torch.tensor([0, 1, 2, 3])):
            with pytest.raises(ValueError, match="labels"):
                call(0.1, u, bad_labels)
    with pytest.raises(ValueError, match="attack"):
        R.attack_accuracy(m, u, labels, 0.1, attack="cw")
    with pytest.raises(ValueError, match="steps"):
        R.pgd(m, u, labels, 0.1, steps=0)
    with pytest.raises(ValueError, match="step_size"):
        R.pgd(m, u, labels, 0.1, step_size=-1.0)
    with pytest.raises(ValueError, match="init"):
        R.pgd(m, u, labels, 0.1, init=u[:2])
    with pytest.raises(ValueError, match="restarts"):
        R.pgd(m, u, labels, 0.1, restarts=0)
    with pytest.raises(ValueError, match="random_start"):
        R.pgd(m, u, labels, 0.1, restarts=2, random_start=False)
    with pytest.raises(ValueError, match="loss"):
        R.pgd(m, u, labels, 0.1, loss="dlr")
    with pytest.raises(ValueError, match="logits"):
        R.interval_loss(m, u, labels, 0.1, logits=torch.zeros(4, 2, dtype=DT))
    with pytest.raises(ValueError, match="kappa"):
        R.interval_loss(m, u, labels, 0.1, kappa=1.5)
    with pytest.raises(ValueError, match="weights"):
        R.certified_lipschitz(m, u, labels, 0.1, weights="optimal!")
    with pytest.raises(ValueError, match="upper"):
        R.interval_bounds(m, u, u - 0.1)
    with pytest.raises(ValueError, match="lower and upper"):
        R.interval_bounds(m, u, u[:2])
    with pytest.raises(ValueError, match="lower"):
        R.interval_bounds(m, u * float("nan"), u)


# ----------------------------------------------------------------------------- found by review (session 7)
def test_float32_attacks_stay_in_the_exact_eps_box():
    """ε = 0.1 is 0.10000000149 in float32 and u ± ε rounds: every attack's points must still
    satisfy |u' − u| ≤ 0.1 and 0 ≤ u' ≤ 1 in float64 (they reached 0.10000002 before)."""
    from lipdeq.certify.apgd import apgd
    from lipdeq.certify.square import square
    m = random_model(15, p=16, activation="relu", tol=1e-5).float()
    u = torch.rand(12, 16, generator=torch.Generator().manual_seed(2))
    labels = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))
    eps = 0.1
    for adv in (R.fgsm(m, u, labels, eps), R.pgd(m, u, labels, eps, seed=1, steps=5),
                apgd(m, u, labels, eps, steps=5, seed=1),
                square(m, u, labels, eps, image_shape=(1, 4, 4), queries=20, seed=1)):
        d = (adv.double() - u.double()).abs()
        assert float(d.max()) <= eps and float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_fgsm_never_counts_a_misclassified_input_as_robust():
    """Found by review: the FGSM step could move a clean-misclassified input to a correctly
    classified point, so attack accuracy exceeded clean accuracy on a model that is always
    wrong. Per example: correct after the attack ⇒ correct before it."""
    torch.manual_seed(16)
    m = ImplicitNetwork(3, 4, 3, gamma=0.9)
    with torch.no_grad():  # the reviewer's model: strong input gain, so a step can cross back
        m.A.copy_(torch.randn(4, 4) * 0.6)
        m.project_()
        m.B.mul_(3.0)
        m.b.copy_(torch.randn(4) * 0.3)
        m.C.copy_(torch.randn(3, 4))
    u = torch.rand(200, 3, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        clean = m(u).argmax(-1)
    for labels in (clean, (clean + 1) % 3):  # every input right, then every input wrong
        adv = R.fgsm(m, u, labels, 0.3)
        with torch.no_grad():
            after = m(adv).argmax(-1) == labels
        assert bool((after <= (clean == labels)).all())
    assert R.attack_accuracy(m, u, (clean + 1) % 3, 0.3, "fgsm") == 0.0


def test_attack_accuracy_builds_the_box_from_the_callers_eps(monkeypatch):
    """Found by review: attack_accuracy passed ε rounded to float32 (0.10000000149), so the
    points it scored sat 1.5e-9 outside the 0.1 box."""
    import lipdeq.certify.attacks as A
    m = random_model(15, activation="relu", tol=1e-5).float()
    u = torch.rand(10, 4, generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(4))
    seen = []
    real = A.pgd

    def recording_pgd(model, ub, lb, eb, **kw):
        adv = real(model, ub, lb, eb, **kw)
        seen.append(float((adv.double() - ub.double()).abs().max()))
        return adv

    monkeypatch.setattr(A, "pgd", recording_pgd)
    A.attack_accuracy(m, u, labels, 0.1, "pgd", batch_size=4, steps=5, seed=0)
    assert len(seen) == 3 and max(seen) <= 0.1
