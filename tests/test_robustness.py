"""Attacks and certificates of ``lipdeq.robustness`` (docs/math.md §6.3, §12)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lipdeq import ImplicitNetwork
from lipdeq.certify import robustness as R
from lipdeq.geometry import mu_inf
from lipdeq.certify.lipschitz import linf_bound_tensors
from lipdeq.deq.operators import DenseOperator
from helpers import fit_tiny_classifier  # noqa: E402

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(seed, *, p=4, n=7, q=3, activation="tanh", condition="mu_inf",
                 feedthrough=False, scale=4.0, tol=1e-11):
    """A float64 model with a strongly mixed-sign A (μ∞ close to γ) and a tight solver."""
    torch.manual_seed(seed)
    m = ImplicitNetwork(p, n, q, activation=activation, condition=condition, gamma=0.9,
                        tol=tol, max_iter=20000, feedthrough=feedthrough).double()
    with torch.no_grad():
        if condition == "mu_inf":
            m.A.mul_(scale)
            m.project_()
        else:  # nemon: random raw parameters give a non-trivial η = e^{-d}
            m.A_raw["M"].mul_(scale)
            m.A_raw["d"].uniform_(-1.0, 1.0)
        m.B.mul_(2.0)
        m.b.mul_(2.0)
        if feedthrough:
            m.D.normal_(0, 0.3)
    return m


def box_samples(u0, eps, n_random, gen):
    """All corners and random points of the box [u0 − ε, u0 + ε] ∩ [0, 1] (one u0, shape (p,))."""
    lo, hi = (u0 - eps).clamp_min(0), (u0 + eps).clamp_max(1)
    p = u0.shape[0]
    corners = torch.tensor(list(itertools.product([0.0, 1.0], repeat=p)), dtype=DT)
    rand = torch.rand(n_random, p, generator=gen, dtype=DT)
    t = torch.cat([corners, rand])
    return lo + t * (hi - lo), lo, hi


# ----------------------------------------------------------------------------- interval bounds
@pytest.mark.parametrize("activation,condition,feedthrough,seed", [
    ("tanh", "mu_inf", False, 0), ("relu", "mu_inf", False, 1), ("leaky_relu", "mu_inf", True, 2),
    ("relu", "nemon", False, 3), ("tanh", "nemon", True, 4), ("identity", "mu_inf", False, 5)])
def test_interval_bounds_contain_every_fixed_point(activation, condition, feedthrough, seed):
    m = random_model(seed, activation=activation, condition=condition, feedthrough=feedthrough)
    gen = torch.Generator().manual_seed(seed)
    u0 = 0.2 + 0.6 * torch.rand(3, 4, generator=gen, dtype=DT)
    lower, upper = (u0 - 0.15).clamp_min(0), (u0 + 0.15).clamp_max(1)
    for sound in (True, False):
        x_lo, x_hi = R.interval_bounds(m, lower, upper, sound=sound)
        y_lo, y_hi = R.output_bounds(m, lower, upper, sound=sound)
        assert bool((x_lo <= x_hi).all())
        for i in range(u0.shape[0]):
            us, _, _ = box_samples(u0[i], 0.15, 60, gen)
            with torch.no_grad():
                x = m.fixed_point(us)
                y = m(us)
            assert bool((x >= x_lo[i] - 1e-9).all()) and bool((x <= x_hi[i] + 1e-9).all())
            assert bool((y >= y_lo[i] - 1e-9).all()) and bool((y <= y_hi[i] + 1e-9).all())
            # not vacuous: the sampled states spread over a good part of the box
            spread, width = (x.amax(0) - x.amin(0)).sum(), (x_hi[i] - x_lo[i]).detach().sum()
            assert 0 < float(width) < math.inf and float(spread) > 0.05 * float(width)


def test_interval_box_is_exact_at_zero_eps():
    m = random_model(10, activation="relu", feedthrough=True)
    u = torch.rand(6, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    x_lo, x_hi = R.interval_bounds(m, u, u)
    y_lo, y_hi = R.output_bounds(m, u, u)
    with torch.no_grad():
        x, y = m.fixed_point(u), m(u)
    assert torch.allclose(x_lo, x, atol=1e-8, rtol=0) and torch.allclose(x_hi, x, atol=1e-8, rtol=0)
    assert torch.allclose(y_lo, y, atol=1e-8, rtol=0) and torch.allclose(y_hi, y, atol=1e-8, rtol=0)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    z = R.worst_case_logits(m, u, u, labels)
    assert torch.allclose(z, y - y.gather(1, labels[:, None]), atol=1e-8, rtol=0)
    loss = R.interval_loss(m, u, labels, 0.0, kappa=0.3)
    assert abs(float(loss.detach()) - float(F.cross_entropy(y, labels))) < 1e-8
    loss2 = R.interval_loss(m, u, labels, 0.0, kappa=0.3, logits=y)
    assert abs(float(loss2.detach()) - float(loss.detach())) < 1e-9
    # the interval certificate at ε = 0 is exactly "the label is predicted"
    pred = y.argmax(1)
    assert torch.equal(R.certified_interval(m, u, pred, 0.0), torch.ones(6, dtype=torch.bool))
    assert not bool(R.certified_interval(m, u, (pred + 1) % 3, 0.0).any())


def test_embedded_operator_structure():
    m = random_model(11, n=6)
    op = m.operator()
    emb = R.EmbeddedOperator(op)
    M = emb.dense()
    A = op.dense()
    assert torch.equal(M[:6, :6] + M[:6, 6:], A)            # ⌈A⌉ + ⌊A⌋ = A
    assert bool((M[:6, 6:] <= 0).all()) and bool((M.diagonal()[:6] == A.diagonal()).all())
    X = torch.randn(5, 12, dtype=DT)
    Y = torch.randn(5, 12, dtype=DT)
    assert torch.allclose(emb.multiply(X), X @ M.T, atol=1e-13)
    assert torch.allclose(emb.multiply_transpose(Y), Y @ M, atol=1e-13)
    eta = torch.rand(6, dtype=DT) + 0.1
    eta2 = torch.cat([eta, eta])
    for e, e2 in ((None, None), (eta, eta2)):
        assert abs(float(emb.mu_inf(e2)) - float(mu_inf(M.detach(), e2))) < 1e-12
        assert abs(float(emb.mu_inf(e2)) - float(op.mu_inf(e))) < 1e-12
    assert float(emb.min_diagonal()) == float(op.min_diagonal())
    r = emb.resolvent(0.5)
    eye = torch.eye(12, dtype=DT)
    assert torch.allclose(r @ (eye + 0.5 * (eye - M.detach())), eye, atol=1e-10)


def _functional(m, names, fn):
    """Run fn(model) with the model's parameters ``names`` replaced by the given tensors."""
    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, *args):
            return fn(self.m, *args)

    w = Wrap()

    def call(params, *args):
        return torch.func.functional_call(w, {f"m.{k}": v for k, v in zip(names, params)}, args)
    return call


def test_gradcheck_interval_bounds_wrt_parameters():
    m = random_model(12, p=3, n=4, q=3, activation="tanh", tol=1e-13)
    names = ["A", "B", "b"]
    params = [getattr(m, k).detach().clone().requires_grad_(True) for k in names]
    u = torch.rand(2, 3, dtype=DT, generator=torch.Generator().manual_seed(2)) * 0.6 + 0.2
    lower = (u - 0.1).requires_grad_(True)
    upper = (u + 0.1).requires_grad_(True)
    call = _functional(m, names, lambda mm, lo, hi: torch.cat(
        R.interval_bounds(mm, lo, hi, sound=False), 1))

    def f(A, B, b, lo, hi):
        return call((A, B, b), lo, hi)
    assert torch.autograd.gradcheck(f, (*params, lower, upper), eps=1e-6, atol=1e-6, rtol=1e-4)
    # the loss of interval training, w.r.t. A, B, b, C, c
    names2 = ["A", "B", "b", "C", "c"]
    params2 = [getattr(m, k).detach().clone().requires_grad_(True) for k in names2]
    labels = torch.tensor([0, 2])
    call2 = _functional(m, names2, lambda mm: R.interval_loss(mm, u, labels, 0.1, kappa=0.25))
    assert torch.autograd.gradcheck(lambda *ps: call2(ps), tuple(params2), eps=1e-6, atol=1e-6,
                                    rtol=1e-4)


def test_interval_gradient_reaches_A_and_is_finite():
    m = random_model(13, activation="relu")
    u = torch.rand(8, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    labels = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(3))
    R.interval_loss(m, u, labels, 0.05).backward()
    for name in ("A", "B", "b", "C", "c"):
        g = getattr(m, name).grad
        assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0


# ----------------------------------------------------------------------------- a trained model
def separable_data(N, seed, p=8, q=3):
    """Noisy copies of q fixed prototypes in [0, 1]^p (the prototypes do not depend on seed)."""
    protos = torch.rand(q, p, generator=torch.Generator().manual_seed(1234), dtype=DT)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N) % q
    u = (protos[labels] + 0.12 * torch.randn(N, p, generator=g, dtype=DT)).clamp(0, 1)
    return u, labels


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    m = ImplicitNetwork(8, 16, 3, activation="relu", gamma=0.8, tol=1e-9, max_iter=5000).double()
    return fit_tiny_classifier(m, separable_data(150, 0), separable_data(60, 1))


def test_accuracy_ordering_and_certificates_sound(trained):
    m, u, labels = trained
    with torch.no_grad():
        clean_ok = m(u).argmax(1) == labels
    some_certified = some_broken = False
    for eps in (0.01, 0.03, 0.08, 0.2):
        fg = R.fgsm(m, u, labels, eps)
        pg = R.pgd(m, u, labels, eps, steps=20, init=fg)
        pg_rand = R.pgd(m, u, labels, eps, steps=20, seed=0)
        with torch.no_grad():
            fg_ok = m(fg).argmax(1) == labels
            pg_ok = m(pg).argmax(1) == labels
            pr_ok = m(pg_rand).argmax(1) == labels
        cert_l = R.certified_lipschitz(m, u, labels, eps)
        cert_i = R.certified_interval(m, u, labels, eps)
        # PGD from the FGSM point breaks every point FGSM breaks; PGD never repairs a point
        assert not bool((~fg_ok & pg_ok).any())
        assert not bool((~clean_ok & (pg_ok | pr_ok)).any())
        # neither certificate ever certifies a point that an attack breaks
        for cert in (cert_l, cert_i):
            assert not bool((cert & ~(pg_ok & pr_ok & fg_ok & clean_ok)).any())
        acc = lambda t: float(t.double().mean())  # noqa: E731
        assert acc(cert_l) <= acc(pg_ok) <= acc(fg_ok) <= acc(clean_ok)
        assert acc(cert_i) <= acc(pr_ok) <= acc(clean_ok)
        assert R.attack_accuracy(m, u, labels, eps, "pgd", steps=20, seed=0) == acc(pr_ok)
        assert R.attack_accuracy(m, u, labels, eps, "fgsm", batch_size=7) == acc(fg_ok)
        some_certified |= bool(cert_l.any()) and bool(cert_i.any())
        some_broken |= bool((~pg_ok & clean_ok).any())
    assert some_certified and some_broken   # the checks above were not vacuous


def test_pairwise_radius_at_least_global(trained):
    m, u, labels = trained
    rad = R.certified_radius_lipschitz(m, u, labels)
    rad_unit = R.certified_radius_lipschitz(m, u, labels, weights="unit")
    glob = R.certified_radius_lipschitz(m, u, labels, pairwise=False)
    with torch.no_grad():
        y = m(u)
    k = y.gather(1, labels[:, None]).squeeze(1)
    other = y.masked_fill(F.one_hot(labels, 3).bool(), -math.inf).amax(1)
    margin = k - other
    L = float(linf_bound_tensors(m.A.detach(), m.B.detach(), m.C.detach()))
    independent = (margin / (2 * L)).clamp_min(0)
    assert bool((rad >= independent - 1e-8).all())
    assert bool((rad >= glob).all()) and bool((rad >= rad_unit).all())
    assert bool((rad_unit > independent * 1.05).any())          # pairwise is really sharper
    # the η = 1 pairwise radius equals the docs/math.md §6.3 formula (solver error ≪ 1e-8 here)
    C, B = m.C.detach(), m.B.detach()
    gain = float(B.abs().sum(1).amax()) / (1 - float(mu_inf(m.A.detach())))
    Lkj = (C[:, None, :] - C[None, :, :]).abs().sum(-1) * gain
    mk = k[:, None] - y
    r = (mk / Lkj[labels]).masked_fill(F.one_hot(labels, 3).bool(), math.inf).amin(1).clamp_min(0)
    assert torch.allclose(rad_unit, r, atol=1e-8, rtol=0)
    assert bool((rad[margin <= 0] == 0).all())


def test_pgd_inside_certified_radius_never_flips(trained):
    m, u, labels = trained
    rad = R.certified_radius_lipschitz(m, u, labels)
    keep = rad > 0
    assert int(keep.sum()) >= 10
    u, labels = u[keep], labels[keep]
    rad = R.certified_radius_lipschitz(m, u, labels)   # same batch as below (solver stopping)
    eps = 0.999 * rad
    for adv in (R.pgd(m, u, labels, eps, steps=30, seed=1),
                R.pgd(m, u, labels, eps, steps=30, init=R.fgsm(m, u, labels, eps)),
                R.pgd(m, u, labels, eps, steps=30, random_start=False, step_size=0.5)):
        assert bool(((adv - u).abs() <= eps[:, None] + 1e-15).all())
        with torch.no_grad():
            assert bool((m(adv).argmax(1) == labels).all())
    assert bool(R.certified_lipschitz(m, u, labels, eps).all())
    assert not bool(R.certified_lipschitz(m, u, labels, rad).any())
    # sanity: far outside the radius the same attack does flip predictions
    with torch.no_grad():
        far = m(R.pgd(m, u, labels, (60 * rad).clamp_max(1.0), steps=30, seed=1)).argmax(1)
    assert bool((far != labels).any())


def test_interval_certificate_weighted_model_and_training_flag():
    m = random_model(14, activation="relu", condition="nemon", feedthrough=True, scale=1.0)
    u = torch.rand(12, 4, dtype=DT, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        labels = m(u).argmax(1)
    m.train()
    for eps in (0.0, 0.01, 0.05):
        ci = R.certified_interval(m, u, labels, eps)
        cl = R.certified_lipschitz(m, u, labels, eps)
        pg = R.pgd(m, u, labels, eps, steps=15, seed=0)
        with torch.no_grad():
            ok = m(pg).argmax(1) == labels
        assert not bool((ci & ~ok).any()) and not bool((cl & ~ok).any())
    assert m.training                                  # restored by the attacks
    assert all(p.grad is None for p in m.parameters())  # attacks differentiate w.r.t. inputs only
    assert bool(R.certified_interval(m, u, labels, 0.0).all())


def test_weights_candidates_certify_beyond_unweighted_mu():
    """A = [[−1, 5], [0.1, −2]]: μ∞(A) = 4 (η = 1 certifies nothing) but α(M(A)) = −0.63 (docs/math.md §2.2)."""
    torch.manual_seed(19)
    m = ImplicitNetwork(3, 2, 3, activation="tanh", condition="none", tol=1e-11,
                        max_iter=20000).double()
    with torch.no_grad():
        m.A.copy_(torch.tensor([[-1.0, 5.0], [0.1, -2.0]], dtype=DT))
    u = torch.rand(10, 3, dtype=DT, generator=torch.Generator().manual_seed(8))
    assert bool((R.certified_radius_lipschitz(m, u, weights="unit") == 0).all())
    assert bool((R.certified_radius_lipschitz(m, u, weights="model") == 0).all())
    rad = R.certified_radius_lipschitz(m, u)
    assert bool((rad > 0).all())
    lower, upper = (u - 0.05).clamp_min(0), (u + 0.05).clamp_max(1)
    x_lo, x_hi = R.interval_bounds(m, lower, upper)
    assert bool(torch.isfinite(x_lo).all() and torch.isfinite(x_hi).all())
    us, _, _ = box_samples(u[0], 0.05, 20, torch.Generator().manual_seed(9))
    with torch.no_grad():
        x = m.fixed_point(us)
    assert bool((x >= x_lo[0] - 1e-9).all() and (x <= x_hi[0] + 1e-9).all())
