"""LBEN's condition (docs/math.md §2.5, §9.2): LMI membership, projections for a fixed Λ and the
heuristic, the Lipschitz parameterization and its wiring into a network."""
import numpy as np
import pytest
import torch

import lipdeq.deq.splittings  # noqa: F401  (registers peaceman_rachford for the wiring test)
from lipdeq import ImplicitNetwork
from lipdeq.conditions.sets import LBEN, get_condition
from lipdeq.solvers import sdp

from helpers import SPEC_TABLE as TABLE  # docs/math.md §2.6 examples
from helpers import assert_close


class _LipschitzLBENNetwork(ImplicitNetwork):
    """The wiring proposed for model.py: A built from the raw tensors *and* the model's B, C."""

    def __init__(self, *args, lipschitz, **kwargs):
        super().__init__(*args, condition="lben", **kwargs)
        self.condition = LBEN(self.gamma, lipschitz=lipschitz)
        with torch.no_grad():
            raw = self.condition.init_raw(self.A_raw["V"].new_zeros(self.hidden, self.hidden),
                                          B=self.B, C=self.C)
            for k, v in raw.items():
                self.A_raw[k].copy_(v)

    def effective_A(self):
        return self.condition.parameterize(dict(self.A_raw.items()), B=self.B, C=self.C)


def test_lben_lipschitz_parameterization_identity():
    c = LBEN(0.9, lipschitz=2.0)
    gen = torch.Generator().manual_seed(8)
    n, p, q = 5, 3, 2
    raw = {"V": torch.randn(n, n, generator=gen, dtype=torch.float64),
           "S": torch.randn(n, n, generator=gen, dtype=torch.float64),
           "psi": torch.randn(n, generator=gen, dtype=torch.float64)}
    B = torch.randn(n, p, generator=gen, dtype=torch.float64)
    C = torch.randn(q, n, generator=gen, dtype=torch.float64)
    with pytest.raises(ValueError, match="B and C"):
        c.parameterize(raw)
    A, B2, C2 = c.build(raw, B, C)
    assert B2 is B and C2 is C
    lam = torch.exp(-raw["psi"])
    LA = lam[:, None] * A
    lmi = 2 * 0.9 * torch.diag(lam) - LA - LA.T
    LB = lam[:, None] * B
    expect = 2 * (raw["V"].T @ raw["V"] + c.epsilon * torch.eye(n, dtype=torch.float64)) \
        + C.T @ C / 2.0 + LB @ LB.T / 2.0
    assert_close(lmi, expect, atol=1e-9, rtol=1e-12)
    # the Lipschitz LMI [[2Λ − ΛA − AᵀΛ − CᵀC/L, −ΛB], [−BᵀΛ, L·I]] ⪰ 0
    big = torch.cat([torch.cat([2 * torch.diag(lam) - LA - LA.T - C.T @ C / 2.0, -LB], 1),
                     torch.cat([-LB.T, 2.0 * torch.eye(p, dtype=torch.float64)], 1)], 0)
    assert float(torch.linalg.eigvalsh(big)[0]) > 0
    raw0 = c.init_raw(A, B=B, C=C)
    assert bool(LBEN(0.9).contains(c.parameterize(raw0, B=B, C=C)))


def test_lben_projection_for_fixed_lambda_and_heuristic():
    A = np.array([[0.5, 3.0, 0.0], [-0.2, 1.4, 0.3], [0.1, 0.0, 0.9]])
    lam = np.array([1.0, 4.0, 0.5])
    c = LBEN(0.8, Lambda=lam)
    assert c.has_projection
    P = c.project(A)
    M = sdp.lben_lmi(P, lam / lam.mean(), 0.8)
    assert np.linalg.eigvalsh(M)[0] >= 0
    np.testing.assert_allclose(c.project(P), P, atol=1e-6)  # (nearly) idempotent
    H = LBEN(0.8).project(A, heuristic=True)
    assert bool(LBEN(0.8).contains(H))
    assert np.linalg.norm(H - A) <= np.linalg.norm(get_condition("monotone", 0.8).project(A) - A) + 1e-6


def test_lben_heuristic_projection_of_matrices_outside_the_set_lands_inside():
    """Found by review: the margin SDP of a matrix outside L often returns a Λ with exact zeros;
    the heuristic then raised "Lambda must be a positive finite vector" (a Λ the user never
    gave), and some results with a nearly singular Λ were not re-certified by contains()."""
    c = LBEN(0.9)
    X = c.project(np.array([[2.0, 1.0], [0.0, 0.0]]), heuristic=True)
    assert bool(c.contains(X))
    rng = np.random.default_rng(0)
    outside = [A for A in (rng.standard_normal((3, 3)) * 2 for _ in range(24))
               if not bool(c.contains(A))][:8]
    assert len(outside) == 8
    for A in outside:
        assert bool(c.contains(c.project(A, heuristic=True)))


def test_lben_fixed_lambda_projection_of_float32_is_feasible_in_float64_as_stored():
    """CONVENTIONS §1: the float32 result, evaluated in float64, satisfies the LMI (rounding the
    float64 solution to float32 broke it on 8 of 10 such matrices)."""
    rng = np.random.default_rng(0)
    for _ in range(10):
        A = torch.tensor(rng.standard_normal((6, 6)) * 1.5, dtype=torch.float32)
        lam = np.exp(rng.standard_normal(6))
        c = LBEN(0.8, Lambda=lam)
        P = c.project(A)
        assert P.dtype == torch.float32
        M = sdp.lben_lmi(P.double().numpy(), lam / lam.mean(), 0.8)
        assert np.linalg.eigvalsh(M)[0] >= 0
        out = torch.empty_like(A)  # the in-place form (what a training step uses) as well
        c.project(A, out=out)
        assert np.linalg.eigvalsh(sdp.lben_lmi(out.double().numpy(), lam / lam.mean(), 0.8))[0] >= 0


def test_lben_measure_and_contains_agree_with_the_table():
    c = get_condition("lben", 1.0)
    assert c.measure(np.array(TABLE["X8"][0], float)) == pytest.approx(0.0, abs=1e-5)
    assert c.measure(np.array(TABLE["X1"][0], float)) == pytest.approx(-2.0, abs=1e-9)
    assert not bool(c.contains(np.array(TABLE["X9"][0], float)))  # boundary t* = 0 at λ₁ = 0
    batch = torch.tensor([TABLE["X8"][0], TABLE["X9"][0], TABLE["X7"][0]], dtype=torch.float64)
    assert c.contains(batch).tolist() == [True, False, True]


def test_lben_lipschitz_wiring_bounds_the_network():
    torch.manual_seed(3)
    L = 0.7
    model = _LipschitzLBENNetwork(4, 6, 3, lipschitz=L, gamma=0.9, solver="peaceman_rachford",
                                  tol=1e-9, max_iter=5000).double()
    with torch.no_grad():
        model.B.mul_(2.0)
        model.C.mul_(2.0)
    u1 = torch.rand(64, 4, dtype=torch.float64)
    u2 = u1 + 0.2 * torch.randn(64, 4, dtype=torch.float64)
    y1, y2 = model(u1), model(u2)
    ratio = (y1 - y2).norm(dim=1) / (u1 - u2).norm(dim=1)
    assert L * 0.05 < float(ratio.detach().max()) <= L * (1 + 1e-8)
    (y1.sum() + y2.sum()).backward()
    assert model.B.grad is not None and float(model.A_raw["V"].grad.abs().sum()) > 0
    cert = model.condition.lipschitz_certificate(model.effective_A().detach(), model.B.detach(),
                                                 model.C.detach())
    assert cert.value <= L * (1 + 1e-6)
