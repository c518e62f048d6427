"""lipdeq's own APGD and Square (lipdeq.certify.apgd, lipdeq.certify.square), the torch backend of
AutoAttack.

Oracle: a linear classifier f(u) = Wu + b, whose exact robust accuracy on the box
{‖u' − u‖∞ ≤ ε} ∩ [0, 1] is a closed form (the worst case of each class pair is a corner chosen
coordinate by coordinate). The attacks may never beat it (they would have left the box) and
APGD-T should reach it.
"""
import math

import pytest
import torch

from torch import nn

from lipdeq import ImplicitNetwork
from lipdeq.certify.apgd import apgd, apgd_checkpoints
from lipdeq.certify.autoattack import autoattack
from lipdeq.certify.square import square, square_fraction

pytestmark = pytest.mark.usefixtures("one_thread")
DT = torch.float64
SHAPE = (1, 6, 6)


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    p, q, n = 36, 5, 200
    model = nn.Linear(p, q).double()
    with torch.no_grad():
        model.weight.mul_(3.0)
    u = torch.rand(n, p, dtype=DT, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(u).argmax(-1)
    return model, u, labels


def exact_robust(model, u, labels, eps):
    """Per example: no input of the ε-box ∩ [0, 1] changes the linear model's decision."""
    lo, hi = (u - eps).clamp_min(0), (u + eps).clamp_max(1)
    W, b = model.weight.detach(), model.bias.detach()
    d = W[labels][:, None, :] - W[None]                      # (N, q, p): w_y − w_j
    worst = torch.minimum(d * lo[:, None], d * hi[:, None]).sum(-1) + (b[labels][:, None] - b[None])
    worst.scatter_(1, labels[:, None], math.inf)
    return worst.amin(1) > 0


def in_box(adv, u, eps):
    d = (adv.double() - u.double()).abs()
    return bool((d <= eps + 1e-12).all()) and bool((adv >= 0).all()) and bool((adv <= 1).all())


def robust_after(model, adv, labels):
    with torch.no_grad():
        return model(adv).argmax(-1) == labels


def test_checkpoints_and_square_schedule_follow_the_papers():
    # p: 0, .22, .41, .57, .70, .80, .87, .93, .99 (Croce & Hein 2020, §3.2)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]
    assert square_fraction(0.8, 0, 5000) == 0.8
    assert square_fraction(0.8, 6, 5000) == 0.4            # 12/10,000 of the budget > 10
    assert square_fraction(0.8, 4999, 5000) == 0.8 / 2 ** 9
    assert square_fraction(0.8, 500, 1000) == 0.8 / 2 ** 7  # 5,000/10,000: past 10 … 4000


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_attacks_never_beat_the_exact_robust_accuracy_and_apgd_t_reaches_it(linear, eps):
    model, u, labels = linear
    exact = exact_robust(model, u, labels, eps)
    assert 0 < int(exact.sum()) < len(u)                    # not vacuous
    for loss in ("ce", "dlr"):
        adv = apgd(model, u, labels, eps, loss=loss, steps=50, seed=0)
        assert in_box(adv, u, eps)
        assert not bool((exact & ~robust_after(model, adv, labels)).any())   # sound
    robust = robust_after(model, u, labels)
    order = model(u).detach().scatter(1, labels[:, None], -math.inf).argsort(-1, descending=True)
    for k in range(4):
        adv = apgd(model, u, labels, eps, loss="dlr-targeted", targets=order[:, k], steps=50, seed=k)
        assert in_box(adv, u, eps)
        robust &= robust_after(model, adv, labels)
    assert torch.equal(robust, exact)                       # the exact robust set, no more
    adv = square(model, u, labels, eps, image_shape=SHAPE, queries=1000, seed=0)
    assert in_box(adv, u, eps)
    after = robust_after(model, adv, labels)
    assert not bool((exact & ~after).any())
    assert int(after.sum()) <= int(exact.sum()) + 0.05 * len(u)   # random search gets close


def test_autoattack_torch_backend_reaches_the_exact_robust_accuracy(linear):
    model, u, labels = linear
    r = autoattack(model, u, labels, 0.1, backend="torch", image_shape=SHAPE, apgd_steps=50,
                   square_queries=300)
    assert r.settings["backend"] == "torch" and "torch" in r.settings["library"]
    assert torch.equal(r.robust, exact_robust(model, u, labels, 0.1))


class Counting(nn.Module):
    """Counts forward passes and whether each one recorded a graph (a gradient evaluation)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x):
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        return self.model(x)


def test_one_model_evaluation_per_step_and_per_query(linear):
    model, u, labels = linear
    counted = Counting(model)
    apgd(counted, u[:10], labels[:10], 0.1, steps=20)
    grads = [c for c in counted.calls if c[1]]
    assert len(grads) == 21 and len(counted.calls) == 22     # start + 20 steps, + 1 class count
    counted.calls.clear()
    square(counted, u[:10], labels[:10], 0.01, image_shape=SHAPE, queries=40)
    assert not any(g for _, g in counted.calls) and len(counted.calls) <= 40
    assert sum(n for n, _ in counted.calls) <= 10 * 40       # only still-robust examples


class Recording(nn.Module):
    """Keeps the logits of every gradient evaluation (every iterate APGD looks at)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        out = self.model(x)
        if torch.is_grad_enabled():
            self.seen.append(out.detach())
        return out


def test_apgd_returns_the_largest_loss_iterate_and_repeats_with_a_seed(linear):
    model, u, labels = linear
    rec = Recording(model)
    a = apgd(rec, u, labels, 0.03, steps=30, seed=5)
    assert torch.equal(a, apgd(model, u, labels, 0.03, steps=30, seed=5))
    ce = torch.stack([nn.functional.cross_entropy(z, labels, reduction="none") for z in rec.seen])
    never_wrong = torch.stack([z.argmax(-1) == labels for z in rec.seen]).all(0)
    assert 0 < int(never_wrong.sum()) < len(u)
    with torch.no_grad():
        got = nn.functional.cross_entropy(model(a), labels, reduction="none")
    # never misclassified: the iterate of largest loss; else: a misclassified iterate
    assert torch.allclose(got[never_wrong], ce.amax(0)[never_wrong])
    assert not bool(robust_after(model, a, labels)[~never_wrong].any())


def test_implicit_model_keeps_its_training_state_and_parameter_grads(linear):
    torch.manual_seed(0)
    m = ImplicitNetwork(36, 8, 5, tol=1e-8, max_iter=2000, backward="jacobian-free").double().train()
    _, u, labels = linear
    adv = apgd(m, u[:20], labels[:20], 0.1, loss="dlr", steps=5)
    adv2 = square(m, u[:20], labels[:20], 0.1, image_shape=SHAPE, queries=5)
    assert in_box(adv, u[:20], 0.1) and in_box(adv2, u[:20], 0.1)
    assert m.training and m.solver_config.backward == "jacobian-free"
    assert all(p.grad is None for p in m.parameters())


@pytest.mark.parametrize("call,match", [
    (lambda m, u, t: apgd(m, u, t, 0.1, loss="cw"), "loss"),
    (lambda m, u, t: apgd(m, u, t, 0.1, loss="dlr-targeted"), "targets"),
    (lambda m, u, t: apgd(m, u, t, 0.1, targets=(t + 1) % 5), "targets"),
    (lambda m, u, t: apgd(m, u, t, 0.1, loss="dlr-targeted", targets=t), "differ"),
    (lambda m, u, t: apgd(m, u, t, 0.1, loss="dlr-targeted", targets=t + 9), "labels"),
    (lambda m, u, t: apgd(m, u, t, 0.1, steps=0), "steps"),
    (lambda m, u, t: apgd(m, u, t, math.nan), "eps"),
    (lambda m, u, t: square(m, u, t, 0.1, image_shape=(1, 5, 5)), "image_shape"),
    (lambda m, u, t: square(m, u, t, 0.1, image_shape=SHAPE, p_init=0), "p_init"),
    (lambda m, u, t: square(m, u, t, 0.1, image_shape=SHAPE, queries=0), "queries"),
    (lambda m, u, t: autoattack(m, u, t, 0.1, backend="foolbox"), "backend"),
])
def test_bad_input_raises_value_error(linear, call, match):
    model, u, labels = linear
    with pytest.raises(ValueError, match=match):
        call(model, u[:4], labels[:4])


def test_dlr_needs_three_classes():
    m = nn.Linear(36, 2).double()
    u = torch.rand(4, 36, dtype=DT)
    with pytest.raises(ValueError, match="3 classes"):
        apgd(m, u, torch.zeros(4, dtype=torch.long), 0.1, loss="dlr")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_the_box_and_the_oracle(linear):
    model, u, labels = linear
    dev = torch.device("cuda")
    r = autoattack(model.to(dev), u.to(dev), labels.to(dev), 0.1, backend="torch",
                   image_shape=SHAPE, apgd_steps=50, square_queries=100)
    model.cpu()
    assert r.adversarial.device.type == "cuda"
    assert torch.equal(r.robust.cpu(), exact_robust(model, u, labels, 0.1))
