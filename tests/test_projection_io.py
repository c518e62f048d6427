"""Projections: torch and numpy, batches, out=, devices, bad input and the public names
(docs/math.md §7)."""
import copy
import math

import numpy as np
import pytest
import torch

import lipdeq.solvers as solvers
from lipdeq.geometry import mu_inf, norm_inf
from lipdeq.solvers import project_mu_inf, project_norm_inf

# shared helpers and fixtures
from test_projection import (KINDS, PROJECTIONS, project_ref, scale_of)  # noqa: F401


# ----------------------------------------------------------------------------- torch, batches, out=
@KINDS
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_equals_numpy(kind, dtype):
    rng = np.random.default_rng(31)
    proj = PROJECTIONS[kind]
    for n in (1, 3, 8):
        V = (rng.standard_normal((n, n)) * 2).astype(dtype)
        eta = rng.uniform(0.2, 5, n)
        for w in (None, eta, torch.tensor(eta)):
            Pn = proj(V, 0.3, weights=w if not isinstance(w, torch.Tensor) else eta)
            Pt = proj(torch.from_numpy(V.copy()), 0.3, weights=w)
            assert isinstance(Pt, torch.Tensor) and Pt.dtype == torch.from_numpy(V).dtype
            np.testing.assert_array_equal(Pt.numpy(), Pn)


def test_empty_batch():
    for proj in PROJECTIONS.values():
        assert proj(np.zeros((0, 3, 3)), 0.5).shape == (0, 3, 3)
        assert proj(torch.zeros(2, 0, 2, 2), 0.5).shape == (2, 0, 2, 2)


def test_list_input_returns_numpy():
    P = project_mu_inf([[1.0, 2.0], [3, 4]], 0.5)
    assert isinstance(P, np.ndarray) and P.dtype == np.float64
    np.testing.assert_allclose(P, project_ref(np.array([[1.0, 2], [3, 4]]), 0.5), atol=1e-14)
    P = project_mu_inf(np.array([[1, 2], [3, 4]]), 0.5)  # integer input is promoted to float64
    assert P.dtype == np.float64


@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("weighted", [False, True])
def test_batched_equals_looped(kind, dtype, weighted):
    g = torch.Generator().manual_seed(5)
    n = 6
    V = torch.randn(2, 3, n, n, generator=g, dtype=torch.float64).to(dtype) * 3
    eta = torch.rand(n, generator=g, dtype=torch.float64) + 0.1 if weighted else None
    gamma = 0.4
    proj = PROJECTIONS[kind]
    Pb = proj(V, gamma, weights=eta)
    assert Pb.shape == V.shape and Pb.dtype == dtype
    for i in range(2):
        for j in range(3):
            Pl = proj(V[i, j], gamma, weights=eta)
            np.testing.assert_array_equal(Pb[i, j].numpy(), Pl.numpy())
            ref = project_ref(V[i, j].double().numpy(), gamma, None if eta is None else eta.numpy(), kind)
            tol = 1e-11 if dtype == torch.float64 else 1e-5
            np.testing.assert_allclose(Pb[i, j].double().numpy(), ref, rtol=0, atol=tol * scale_of(ref))
    Pn = proj(V.numpy(), gamma, weights=eta)  # numpy batch too
    np.testing.assert_array_equal(Pn, Pb.numpy())


def test_batched_qp_equals_exact():
    V = np.random.default_rng(8).standard_normal((3, 4, 4)) * 2
    np.testing.assert_allclose(project_mu_inf(V, 0.1, method="qp"), project_mu_inf(V, 0.1), atol=1e-6)


@KINDS
def test_out_numpy(kind):
    proj = PROJECTIONS[kind]
    V = np.random.default_rng(9).standard_normal((2, 4, 4)) * 2
    expected = proj(V, 0.5)
    out = np.empty_like(V)
    r = proj(V, 0.5, out=out)
    assert r is out
    np.testing.assert_array_equal(out, expected)
    A = V.copy()
    r = proj(A, 0.5, out=A)  # in place
    assert r is A
    np.testing.assert_array_equal(A, expected)
    A = V.copy()
    proj(A, 0.5, out=A, method="qp")
    np.testing.assert_allclose(A, expected, atol=1e-6)


@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_out_torch(kind, dtype):
    proj = PROJECTIONS[kind]
    V = torch.randn(3, 5, 5, dtype=dtype, generator=torch.Generator().manual_seed(4)) * 2
    expected = proj(V, 0.5)
    out = torch.empty_like(V)
    assert proj(V, 0.5, out=out) is out
    assert torch.equal(out, expected)
    A = V.clone()
    assert proj(A, 0.5, out=A) is A
    assert torch.equal(A, expected)
    # a leaf Parameter that requires grad can be projected in place (the projection is no_grad)
    p = torch.nn.Parameter(V[0].clone())
    assert proj(p, 0.5, out=p) is p
    assert torch.equal(p.detach(), expected[0]) and p.requires_grad and p.grad_fn is None
    # a non-contiguous view as out
    big = torch.zeros(5, 10, dtype=dtype)
    view = big[:, ::2]
    proj(V[1], 0.5, out=view)
    assert torch.equal(big[:, ::2], expected[1]) and torch.all(big[:, 1::2] == 0)


def test_input_not_modified():
    V = np.random.default_rng(10).standard_normal((4, 4)) * 3
    V0 = V.copy()
    T = torch.from_numpy(V.copy())
    T0 = T.clone()
    for kind in PROJECTIONS.values():
        for method in ("exact", "qp", "lp"):
            kind(V, 0.2, method=method)
            kind(T, 0.2, method=method)
    assert np.array_equal(V, V0) and torch.equal(T, T0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@KINDS
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(kind, dtype):
    proj = PROJECTIONS[kind]
    g = torch.Generator().manual_seed(6)
    V = (torch.randn(4, 16, 16, generator=g, dtype=torch.float64) * 3).to(dtype)
    eta = torch.rand(16, generator=g, dtype=torch.float64) + 0.1
    for w in (None, eta):
        Pc = proj(V.cuda(), 0.3, weights=None if w is None else w.cuda())
        assert Pc.is_cuda and Pc.dtype == dtype
        Pcpu = proj(V, 0.3, weights=w)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(Pc.cpu(), Pcpu, rtol=0, atol=tol * 50)
        measure = mu_inf if kind == "mu" else norm_inf
        assert bool((measure(Pc.double(), weights=w) <= 0.3).all())
        out = Pc.clone()
        assert proj(out, 0.3, weights=w, out=out) is out and torch.equal(out, Pc)


# ----------------------------------------------------------------------------- bad input
GOOD = np.array([[1.0, 2.0], [3.0, -4.0]])


def _bad_cases():
    nan = GOOD.copy()
    nan[0, 1] = np.nan
    inf = GOOD.copy()
    inf[1, 0] = -np.inf
    return [
        # (id, function, A, kwargs, exception, word the message must contain)
        ("non-square", project_mu_inf, np.ones((2, 3)), {}, ValueError, "A"),
        ("vector", project_mu_inf, np.ones(3), {}, ValueError, "A"),
        ("empty", project_mu_inf, np.ones((0, 0)), {}, ValueError, "A"),
        ("empty-batch-of-empty", project_norm_inf, np.ones((3, 0, 0)), {}, ValueError, "A"),
        ("ragged", project_mu_inf, [[1.0, 2.0], [3.0]], {}, ValueError, "A"),
        ("nan", project_mu_inf, nan, {}, ValueError, "A"),
        ("inf", project_norm_inf, inf, {}, ValueError, "A"),
        ("complex", project_mu_inf, GOOD.astype(complex), {}, TypeError, "A"),
        ("strings", project_mu_inf, [["a", "b"], ["c", "d"]], {}, TypeError, "A"),
        ("nan-torch", project_mu_inf, torch.from_numpy(nan), {}, ValueError, "A"),
        ("gamma-nan", project_mu_inf, GOOD, {"gamma": float("nan")}, ValueError, "gamma"),
        ("gamma-inf", project_mu_inf, GOOD, {"gamma": float("inf")}, ValueError, "gamma"),
        ("gamma-str", project_mu_inf, GOOD, {"gamma": "0.5x"}, TypeError, "gamma"),
        ("gamma-None", project_mu_inf, GOOD, {"gamma": None}, TypeError, "gamma"),
        ("gamma-negative-norm", project_norm_inf, GOOD, {"gamma": -0.1}, ValueError, "gamma"),
        # found by review: below float32's range the diagonal overflowed to -inf, returned silently
        ("gamma-below-float32", project_mu_inf, GOOD.astype(np.float32), {"gamma": -1e39},
         ValueError, "gamma"),
        ("weights-length", project_mu_inf, GOOD, {"weights": [1.0, 2.0, 3.0]}, ValueError, "weights"),
        ("weights-2d", project_mu_inf, GOOD, {"weights": np.ones((2, 2))}, ValueError, "weights"),
        ("weights-zero", project_mu_inf, GOOD, {"weights": [1.0, 0.0]}, ValueError, "weights"),
        ("weights-negative", project_norm_inf, GOOD, {"weights": [1.0, -2.0]}, ValueError, "weights"),
        ("weights-nan", project_mu_inf, GOOD, {"weights": [1.0, np.nan]}, ValueError, "weights"),
        ("weights-inf", project_mu_inf, GOOD, {"weights": [1.0, np.inf]}, ValueError, "weights"),
        ("weights-underflow-f32", project_mu_inf, GOOD.astype(np.float32), {"weights": [1.0, 1e-60]},
         ValueError, "weights"),
        ("method", project_mu_inf, GOOD, {"method": "bisect"}, ValueError, "method"),
        ("solver-unknown", project_mu_inf, GOOD, {"method": "qp", "solver": "NOPE"}, ValueError, "solver"),
        ("solver-unknown-lp", project_norm_inf, GOOD, {"method": "lp", "solver": "NOPE"}, ValueError, "solver"),
        ("solver-not-str", project_mu_inf, GOOD, {"method": "qp", "solver": 3}, TypeError, "solver"),
        ("solver-with-exact", project_mu_inf, GOOD, {"solver": "OSQP"}, ValueError, "solver"),
        ("options-with-exact", project_mu_inf, GOOD, {"max_iters": 5}, ValueError, "solver"),
        ("device-kwarg", project_mu_inf, GOOD, {"device": "cpu"}, ValueError,
         "unexpected keyword argument(s) device"),
        ("out-shape", project_mu_inf, GOOD, {"out": np.zeros((3, 3))}, ValueError, "out"),
        ("out-shape-batch", project_mu_inf, GOOD, {"out": np.zeros((1, 2, 2))}, ValueError, "out"),
        ("out-dtype", project_mu_inf, GOOD, {"out": np.zeros((2, 2), np.float32)}, ValueError, "out"),
        ("out-type", project_mu_inf, GOOD, {"out": [[0.0, 0.0], [0.0, 0.0]]}, TypeError, "out"),
        ("out-torch-for-numpy", project_mu_inf, GOOD, {"out": torch.zeros(2, 2, dtype=torch.float64)},
         TypeError, "out"),
        ("out-numpy-for-torch", project_mu_inf, torch.from_numpy(GOOD.copy()), {"out": np.zeros((2, 2))},
         TypeError, "out"),
        ("out-torch-dtype", project_mu_inf, torch.from_numpy(GOOD.copy()),
         {"out": torch.zeros(2, 2, dtype=torch.float32)}, ValueError, "out"),
        ("out-torch-shape", project_norm_inf, torch.from_numpy(GOOD.copy()),
         {"out": torch.zeros(3, 2, dtype=torch.float64)}, ValueError, "out"),
    ]


BAD = _bad_cases()


def _snapshot(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.clone()
    return copy.deepcopy(x)


def _same(x, y):
    if x is None:
        return y is None
    if isinstance(x, torch.Tensor):
        return torch.equal(x.nan_to_num(), y.nan_to_num()) and x.dtype == y.dtype
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
    return x == y


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises_and_modifies_nothing(case):
    _, fn, A, kwargs, exc, word = case
    kwargs = dict(kwargs)
    gamma = kwargs.pop("gamma", 0.5)
    A_before, kw_before = _snapshot(A), {k: _snapshot(v) for k, v in kwargs.items()}
    with pytest.raises(exc) as info:
        fn(A, gamma, **kwargs)
    assert word in str(info.value)
    assert _same(A, A_before)
    for k, v in kwargs.items():
        assert _same(v, kw_before[k])


def test_bad_out_in_place_leaves_A_untouched():
    A = GOOD.copy()
    with pytest.raises(ValueError, match="weights"):
        project_mu_inf(A, 0.1, weights=[1.0, -1.0], out=A)
    assert np.array_equal(A, GOOD)
    T = torch.from_numpy(GOOD.copy())
    with pytest.raises(ValueError, match="solver"):
        project_mu_inf(T, 0.1, method="qp", solver="NOPE", out=T)
    assert torch.equal(T, torch.from_numpy(GOOD))


def test_public_names():
    assert solvers.project_mu_inf is project_mu_inf and solvers.project_norm_inf is project_norm_inf
    assert issubclass(solvers.SolverError, RuntimeError)
    assert math.isfinite(float(mu_inf(project_mu_inf(GOOD, 0.0))))


# ----------------------------------------------------------------------------- item 9
def test_requires_grad_and_integer_input_behave_as_documented():
    """The result never requires grad (A's graph untouched); integer/bool input comes back as
    float (numpy: float64, torch: the default dtype) — and the docstring says both."""
    doc = " ".join(project_mu_inf.__doc__.split())
    assert "never requires grad" in doc and "integer and bool input" in doc
    A = torch.tensor([[0.5, 2.0], [-1.0, 0.3]], dtype=torch.float64, requires_grad=True)
    X = project_mu_inf(A, 0.5)
    assert not X.requires_grad and X.grad_fn is None and A.requires_grad
    assert X.dtype == torch.float64
    rows = (X.diagonal() + X.abs().sum(1) - X.diagonal().abs())
    assert float(rows.max()) <= 0.5 + 1e-12
    Ai = np.array([[2, 3], [1, 0]])
    assert project_mu_inf(Ai, 0.5).dtype == np.float64
    assert project_mu_inf(Ai.astype(bool), 0.5).dtype == np.float64
    Ti = torch.tensor([[2, 3], [1, 0]])
    assert project_mu_inf(Ti, 0.5).dtype == torch.get_default_dtype()
    assert torch.allclose(project_mu_inf(Ti, 0.5).double(), project_mu_inf(Ti.double(), 0.5),
                          atol=1e-6)
