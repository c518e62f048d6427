"""The conditions registry (docs/design.md §2, docs/math.md §2): measures, projections, parameterizations."""
import numpy as np
import pytest
import torch

import lipdeq.deq.splittings  # noqa: F401  (registers peaceman_rachford for the wiring test)
from lipdeq import ImplicitNetwork, geometry
from lipdeq.conditions.sets import CONDITIONS, LBEN, NotConvexError, clip_symmetric, get_condition
from lipdeq.solvers import sdp

from helpers import SPEC_TABLE as TABLE  # docs/math.md §2.6: A, memberships E1 E2 N0 N M L
from helpers import assert_close

NAMES = {"mu_inf", "norm_inf", "mu_inf_weighted", "pf", "monotone", "lben", "nemon", "none"}
CONVEX = ["mu_inf", "norm_inf", "monotone", "none"]
NONCONVEX = ["mu_inf_weighted", "pf", "nemon", "lben"]
PARAMETERIZED = ["mu_inf_weighted", "pf", "monotone", "lben", "nemon"]
CHEAP = ("norm_inf", "pf", "mu_inf", "mu_inf_weighted", "monotone")


def random_matrices(count, n, seed, scales=(0.1, 0.5, 1.0, 3.0)):
    rng = np.random.default_rng(seed)
    s = rng.choice(scales, size=(count, 1, 1))
    A = s * rng.standard_normal((count, n, n))
    A += rng.choice([0.0, -1.0, 0.5], size=(count, 1, 1)) * np.eye(n)
    return A


def test_registry_names_and_interface():
    assert set(CONDITIONS) == NAMES
    for name, cls in CONDITIONS.items():
        c = get_condition(name, 0.9)
        assert isinstance(c, cls) and c.name == name and c.gamma == 0.9
        assert c.training in ("project", "parameterize", "none")
        assert c.has_projection == (name in CONVEX or name == "lben")
        assert c.convex == (name in CONVEX)


def test_bad_names_options_and_inputs():
    with pytest.raises(ValueError, match="condition must be one of"):
        get_condition("spectral")
    with pytest.raises(ValueError):
        get_condition(None)
    with pytest.raises(TypeError, match="unexpected options"):
        get_condition("norm_inf", 0.9, weights=[1, 2])
    with pytest.raises(ValueError):
        get_condition("mu_inf", float("nan"))
    for name in NAMES:
        c = get_condition(name, 0.9)
        with pytest.raises(ValueError, match="square"):
            c.measure(np.ones((2, 3)))
        with pytest.raises(ValueError, match="NaN or Inf"):
            c.measure(np.array([[0.0, np.nan], [0.0, 0.0]]))
        if c.has_projection and name != "lben":
            with pytest.raises(ValueError, match="square"):
                c.project(np.ones((3, 2)))
            with pytest.raises(ValueError, match="NaN or Inf"):
                c.project(np.array([[np.inf, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="lipschitz"):
        LBEN(0.9, lipschitz=-1.0)
    with pytest.raises(ValueError, match="empty"):
        get_condition("pf", -0.1).init_raw(torch.zeros(2, 2))
    # the Lipschitz-bounded LBEN needs B and C: calling its parameterization without them fails
    lben_l = LBEN(0.9, lipschitz=2.0)
    raw = lben_l.init_raw(torch.zeros(4, 4), B=torch.zeros(4, 3), C=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="B=B, C=C"):
        lben_l.parameterize(raw)
    # ... and ImplicitNetwork wires them: A is built from (raw, B, C)
    m = ImplicitNetwork(3, 4, 2, condition="lben", condition_options={"lipschitz": 2.0})
    raw_m = dict(m.A_raw.items())
    with torch.no_grad():
        m.B.mul_(2.0)  # A must follow B (the coupling), so scaling B changes A
        assert torch.equal(m.effective_A(), m.condition.parameterize(raw_m, B=m.B, C=m.C))
        assert not torch.equal(m.effective_A(), m.condition.parameterize(raw_m, B=m.B / 2, C=m.C))


@pytest.mark.parametrize("name", NONCONVEX)
def test_nonconvex_sets_refuse_to_project(name):
    with pytest.raises(NotConvexError, match="not convex"):
        get_condition(name, 0.9).project(np.eye(2))


@pytest.mark.parametrize("name", CONVEX)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_projection_lands_inside_and_is_idempotent(name, dtype):
    c = get_condition(name, 0.7)
    A = torch.from_numpy(random_matrices(60, 6, seed=1)).to(dtype)
    P = c.project(A)
    assert P.dtype == dtype and P.shape == A.shape
    assert bool(c.contains(P.double()).all())
    if name != "none":
        assert float(c.measure(P.double()).max()) <= c.gamma  # exact feasibility in float64
    assert torch.equal(c.project(P), P)  # feasible input comes back bit for bit
    inside = c.contains(A.double())
    assert torch.equal(P[inside], A[inside])
    # numpy in, numpy out; out= writes in place
    Pn = c.project(A.double().numpy())
    assert isinstance(Pn, np.ndarray)
    np.testing.assert_allclose(Pn, P.double().numpy(), atol=1e-5 if dtype == torch.float32 else 0)
    buf = A.clone()
    assert c.project(buf, out=buf) is buf and torch.equal(buf, P)


def test_monotone_clip_is_the_frobenius_projection():
    """Variational inequality ⟨V − P, Z − P⟩ ≤ 0 for feasible Z, and non-expansiveness."""
    c = get_condition("monotone", 0.3)
    rng = np.random.default_rng(2)
    for _ in range(30):
        V1, V2 = rng.standard_normal((2, 5, 5)) * 2
        P1, P2 = c.project(V1), c.project(V2)
        Z = c.project(rng.standard_normal((5, 5)) * 3)
        assert np.sum((V1 - P1) * (Z - P1)) <= 1e-9
        assert np.linalg.norm(P1 - P2) <= np.linalg.norm(V1 - V2) + 1e-12
        np.testing.assert_allclose(P1 - P1.T, V1 - V1.T, atol=1e-12)  # skew part kept


def test_mu_inf_with_fixed_weights():
    eta = np.array([1.0, 0.2, 3.0])
    c = get_condition("mu_inf", 0.5, weights=eta)
    A = random_matrices(40, 3, seed=3)
    P = c.project(A)
    assert np.all(geometry.mu_inf(P, eta) <= 0.5)
    np.testing.assert_array_equal(c.norm_weights(None).numpy(), eta)


def test_spec_table_2_6_reproduces_exactly():
    for key, (A, expected) in TABLE.items():
        A = np.array(A, dtype=float)
        got = [int(CONDITIONS[name](gamma=1.0).measure(A) < 1.0) for name in CHEAP]
        got.insert(1, got.pop(1))  # order E1 E2 N0 N M
        member, certified, _ = sdp.lben_member(A, 1.0)
        got.append(int(member))
        assert certified, key
        assert tuple(got) == expected, key


def test_spec_2_1_example_and_margins():
    A = np.array([[0.5, -2], [1, -3]])
    assert get_condition("mu_inf", 1.0).measure(A) == pytest.approx(2.5)
    assert get_condition("norm_inf", 1.0).measure(A) == pytest.approx(4.0)
    assert get_condition("monotone", 1.0).measure(A) == pytest.approx(0.5700, abs=1e-4)
    c = get_condition("mu_inf", 3.0)
    assert c.margin(A) == pytest.approx(0.5) and bool(c.contains(A))
    assert not bool(get_condition("mu_inf", 2.4).contains(A))
    assert bool(get_condition("none", -5).contains(A))


def test_proven_inclusions_on_thousands_of_matrices():
    """docs/math.md §2.4 for the closed-form sets at γ = 1: E1 ⊂ N0, E1 ⊂ E2, E2 ⊂ N, N0 ⊂ N."""
    total = 0
    for n in (2, 3, 5, 8):
        A = torch.from_numpy(random_matrices(800, n, seed=n))
        m = {name: CONDITIONS[name](gamma=1.0).measure(A) < 1 for name in CHEAP}
        for sub, sup in (("norm_inf", "mu_inf"), ("norm_inf", "pf"), ("pf", "mu_inf_weighted"),
                         ("mu_inf", "mu_inf_weighted")):
            assert not bool((m[sub] & ~m[sup]).any()), (n, sub, sup)
            total += int(m[sub].sum())
        # quantitative forms: μ∞ ≤ ‖·‖∞, α(M(A)) ≤ ρ(|A|), α(M(A)) ≤ μ∞(A)
        mu, nrm = geometry.mu_inf(A), geometry.norm_inf(A)
        alpha, rho = geometry.spectral_abscissa(geometry.metzler_majorant(A)), geometry.pf_radius(A)
        assert bool((mu <= nrm + 1e-12).all()) and bool((alpha <= rho + 1e-9).all())
        assert bool((alpha <= mu + 1e-9).all())
    assert total > 1000


def test_lben_inclusions_m_and_n_in_l():
    """M ⊂ L and N ⊂ L (docs/math.md §2.4) by the SDP on random 3×3 matrices in M ∪ N."""
    A = random_matrices(400, 3, seed=11, scales=(0.3, 0.8))
    # positive diagonal similarities keep α(M(A)) (so N) but move μ₂: many of these leave M
    d = np.exp(1.5 * np.random.default_rng(12).standard_normal((400, 3)))
    A = np.concatenate([A, A * d[:, None, :] / d[:, :, None]])
    inM = geometry.mu_2(A) < 1
    inN = geometry.spectral_abscissa(geometry.metzler_majorant(A)) < 1
    idx = np.concatenate([np.flatnonzero(inM)[:50], np.flatnonzero(inN & ~inM)[:50]])
    assert len(idx) == 100
    for i in idx:
        member, _, _ = sdp.lben_member(A[i], 1.0)
        assert member, A[i]


# ----------------------------------------------------------------------------- parameterizations


def _raw(name, n, gen):
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 2  # noqa: E731
    if name in ("mu_inf_weighted", "nemon", "pf"):
        return {"M": r(n, n), "d": r(n)}
    if name == "monotone":
        return {"P": r(n, n), "Q": r(n, n)}
    return {"V": r(n, n), "S": r(n, n), "psi": r(n)}


@pytest.mark.parametrize("name", PARAMETERIZED)
def test_parameterizations_always_land_inside(name):
    gen = torch.Generator().manual_seed(5)
    gamma = 0.8
    c = get_condition(name, gamma)
    for trial in range(60):
        n = 2 + trial % 5
        raw = _raw(name, n, gen)
        A = c.parameterize(raw)
        eta = c.norm_weights(raw)
        if name in ("mu_inf_weighted", "nemon"):
            mu = float(geometry.mu_inf(A, eta))
            expect = gamma + 2 * float(raw["M"].diagonal().clamp_max(0).max())
            assert mu == pytest.approx(expect, abs=1e-9) and mu <= gamma + 1e-12  # docs/math.md §7.8
            assert float(c.measure(A)) <= gamma + 1e-9
        elif name == "pf":
            assert float(geometry.norm_inf(A, eta)) <= gamma * (1 + 1e-12)
            assert float(geometry.pf_radius(A)) <= gamma * (1 + 1e-9)
            assert float(geometry.mu_inf(A, eta)) <= gamma * (1 + 1e-12)
        elif name == "monotone":
            assert float(geometry.mu_2(A)) <= gamma + 1e-12
        else:  # LBEN: Λ = Ψ⁻¹ gives 2γΛ − ΛA − AᵀΛ = 2(VᵀV + εI)
            lam = torch.exp(-raw["psi"])
            LA = lam[:, None] * A
            lmi = 2 * gamma * torch.diag(lam) - LA - LA.T
            V = raw["V"]
            expect = 2 * (V.T @ V + c.epsilon * torch.eye(n, dtype=V.dtype))
            assert_close(lmi, expect, atol=1e-9 * (1 + float(expect.abs().max())))
            assert float(torch.linalg.eigvalsh(lmi)[0]) > 0


@pytest.mark.parametrize("name", ["mu_inf_weighted", "nemon", "pf", "monotone", "lben"])
def test_init_raw_reproduces_matrices_inside_the_set(name):
    c = get_condition(name, 0.9)
    gen = torch.Generator().manual_seed(7)
    A = torch.randn(5, 5, generator=gen, dtype=torch.float64) * 0.1  # inside every set
    assert bool(c.contains(A))
    assert_close(c.parameterize(c.init_raw(A)), A, atol=1e-12)
    B = torch.randn(5, 5, generator=gen, dtype=torch.float64) * 3  # far outside
    assert bool(c.contains(c.parameterize(c.init_raw(B))))


def test_clip_symmetric_float32_feasible_in_float64():
    gen = torch.Generator().manual_seed(9)
    for gamma in (0.95, 0.0, -2.0):
        A = torch.randn(20, 7, 7, generator=gen) * 10
        X = clip_symmetric(A, gamma)
        assert X.dtype == torch.float32
        assert float(geometry.mu_2(X.double()).max()) <= gamma


@pytest.mark.parametrize("name", sorted(NAMES))
def test_implicit_network_forward_backward_for_every_condition(name):
    torch.manual_seed(0)
    model = ImplicitNetwork(4, 6, 3, condition=name, gamma=0.9, tol=1e-6, max_iter=2000)
    u = torch.rand(5, 4)
    y = model(u)
    assert y.shape == (5, 3) and bool(torch.isfinite(y).all())
    y.square().sum().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    assert len(params) >= 5 and all(bool(torch.isfinite(p.grad).all()) for p in params)
    A = model.effective_A().detach().double()
    cond = model.condition
    if name != "none":
        assert bool(cond.contains(A)), name
    assert model.last_forward.converged and model.last_backward.converged


@pytest.mark.parametrize("name", ["mu_inf", "norm_inf", "monotone", "pf", "mu_inf_weighted"])
def test_contains_judges_float32_matrices_by_their_exact_values(name):
    """Found by review: contains() measured a float32 A in float32 arithmetic, so matrices whose
    stored values are outside the set by up to 2e-6 were accepted (CONVENTIONS §1: feasibility is
    evaluated in float64 on the stored tensor)."""
    from lipdeq.conditions import CONDITIONS
    cond = CONDITIONS[name](gamma=0.9)
    rng = np.random.default_rng(1)
    for _ in range(40):
        A = rng.standard_normal((200, 200)).astype(np.float32)
        A = (A * np.float32(0.9 / float(cond.measure(A)))).astype(np.float32)  # at γ in float32
        exact = float(cond.measure(A.astype(np.float64)))
        assert bool(cond.contains(A)) == (exact <= 0.9 + cond.tol * 1.9)


@pytest.mark.parametrize("name", ["mu_inf_weighted", "nemon", "pf"])
@pytest.mark.parametrize("dtype,shift", [(torch.float32, 89.0), (torch.float32, -104.0),
                                         (torch.float64, 710.0)])
def test_weighted_parameterizations_ignore_a_common_shift_of_d(name, dtype, shift):
    """Found by review: D⁻¹MD was formed as e^{−dᵢ}·e^{dⱼ}, which overflowed to inf/NaN when all
    of d drifted together (A itself does not depend on that drift)."""
    from lipdeq.conditions import CONDITIONS
    cond = CONDITIONS[name](gamma=0.9)
    g = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=g, dtype=dtype)
    d = torch.randn(5, generator=g, dtype=dtype)
    A0, eta0 = cond.parameterize({"M": M, "d": d}), cond.norm_weights({"M": M, "d": d})
    A1, eta1 = cond.parameterize({"M": M, "d": d + shift}), cond.norm_weights({"M": M, "d": d + shift})
    assert torch.isfinite(A1).all() and torch.isfinite(eta1).all() and (eta1 > 0).all()
    tol = 1e-4 if dtype == torch.float32 else 1e-12
    assert torch.allclose(A1, A0, rtol=tol, atol=tol)
    assert torch.allclose(eta1 / eta1.max(), eta0 / eta0.max(), rtol=tol)


# found by review (session 7)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64])
def test_project_into_an_out_of_another_dtype_is_refused(dtype):
    """A cast into ``out`` put monotone's projection outside its set in 187 of 200 cases (float32
    +1.8e-8, bfloat16 +4.8e-3): refused, as mu_inf/norm_inf refuse it."""
    c = CONDITIONS["monotone"](gamma=0.5)
    A = 3 * torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = torch.zeros(6, 6, dtype=dtype)
    with pytest.raises(ValueError, match="a cast could break feasibility"):
        c.project(A, out=out)
    assert bool((out == 0).all())
    with pytest.raises(ValueError, match="shape"):
        c.project(A, out=torch.zeros(5, 5, dtype=torch.float64))
    good = torch.zeros(6, 6, dtype=torch.float64)
    assert c.project(A, out=good) is good and c.contains(good)
