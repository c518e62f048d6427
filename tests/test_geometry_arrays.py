"""Geometry: batches, torch and numpy, dtypes and devices, bad input, public names, optimal weights
on reducible chains."""
import copy
import math

import numpy as np
import pytest
import torch

from lipdeq import geometry
from lipdeq.geometry import metzler_majorant, mu_1, mu_2, mu_inf, norm_1, norm_2, norm_inf, optimal_inf_weights, pf_radius, spectral_abscissa


# ----------------------------------------------------------------------------- batches, torch, dtypes
FUNCS = {
    "mu_inf": mu_inf, "mu_1": mu_1, "mu_2": mu_2, "norm_inf": norm_inf, "norm_1": norm_1,
    "norm_2": norm_2, "metzler_majorant": metzler_majorant, "spectral_abscissa": spectral_abscissa,
    "pf_radius": pf_radius, "optimal_inf_weights": optimal_inf_weights,
}


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_batched_torch_equals_looped_numpy(name):
    f = FUNCS[name]
    rng = np.random.default_rng(11)
    n = 5
    A = rng.standard_normal((3, 2, n, n)) * 2
    Tb = f(torch.from_numpy(A.copy()))
    assert isinstance(Tb, torch.Tensor) and Tb.dtype == torch.float64
    for i in range(3):
        for j in range(2):
            ref = np.asarray(f(A[i, j].copy()))
            assert isinstance(f(A[i, j]), (np.ndarray, np.floating, float))
            np.testing.assert_allclose(Tb[i, j].numpy(), ref, rtol=0, atol=1e-12 * (1 + np.abs(A[i, j]).sum()))
    np.testing.assert_allclose(np.asarray(f(A)), Tb.numpy(), rtol=0, atol=1e-12 * (1 + np.abs(A).sum()))
    # float32 in, float32 out, close to float64
    T32 = f(torch.from_numpy(A.astype(np.float32)))
    assert T32.dtype == torch.float32 and T32.shape == Tb.shape
    np.testing.assert_allclose(T32.double().numpy(), Tb.numpy(), rtol=0, atol=2e-4 * (1 + np.abs(A).max() * n))


def test_weighted_batched_equals_looped():
    rng = np.random.default_rng(12)
    A = rng.standard_normal((4, 6, 6))
    eta = rng.uniform(0.2, 5, 6)
    for f in (mu_inf, norm_inf):
        b = f(torch.from_numpy(A), weights=torch.from_numpy(eta))
        for k in range(4):
            assert float(b[k]) == pytest.approx(float(f(A[k], weights=eta)), abs=1e-13)


def test_inputs_not_modified_and_no_aliasing():
    rng = np.random.default_rng(13)
    A = rng.standard_normal((4, 4))
    A0 = A.copy()
    T = torch.from_numpy(A.copy())
    T0 = T.clone()
    for f in FUNCS.values():
        f(A)
        f(T)
    assert np.array_equal(A, A0) and torch.equal(T, T0)
    M = metzler_majorant(A)
    M[0, 0] = 123.0
    assert A[0, 0] == A0[0, 0]


def test_list_and_integer_input():
    assert mu_inf([[1, -2], [3, 4]]) == pytest.approx(7.0)
    assert mu_inf(np.array([[1, -2], [3, 4]], dtype=np.int64)) == pytest.approx(7.0)
    assert norm_inf([[1, -2, 3]]) == 6.0  # norms accept non-square matrices
    assert norm_1([[1, -2, 3]]) == 3.0
    assert norm_2(np.ones((2, 3))) == pytest.approx(math.sqrt(6))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_cuda_matches_cpu(name):
    f = FUNCS[name]
    A = torch.randn(3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    r = f(A.cuda())
    assert r.is_cuda
    torch.testing.assert_close(r.cpu(), f(A), rtol=0, atol=1e-10)


# ----------------------------------------------------------------------------- bad input
GOOD = np.array([[1.0, 2.0], [3.0, -4.0]])
NAN = np.array([[1.0, np.nan], [3.0, -4.0]])
INF = np.array([[1.0, 2.0], [np.inf, -4.0]])
SQUARE_ONLY = [mu_inf, mu_1, mu_2, metzler_majorant, spectral_abscissa, pf_radius, optimal_inf_weights]
ALL = SQUARE_ONLY + [norm_inf, norm_1, norm_2]


def _bad_geometry_cases():
    cases = []
    for f in SQUARE_ONLY:
        word = "M" if f is spectral_abscissa else "A"
        cases.append((f"{f.__name__}-nonsquare", f, np.ones((2, 3)), {}, ValueError, word))
        cases.append((f"{f.__name__}-vector", f, np.ones(3), {}, ValueError, word))
    for f in ALL:
        word = "M" if f is spectral_abscissa else "A"
        cases.append((f"{f.__name__}-nan", f, NAN, {}, ValueError, word))
        cases.append((f"{f.__name__}-inf", f, torch.from_numpy(INF), {}, ValueError, word))
        cases.append((f"{f.__name__}-ragged", f, [[1.0, 2.0], [3.0]], {}, ValueError, word))
        cases.append((f"{f.__name__}-complex", f, GOOD.astype(complex), {}, TypeError, word))
        cases.append((f"{f.__name__}-empty", f, np.zeros((0, 0)), {}, ValueError, word))
    for f in (norm_inf, norm_1, norm_2):
        cases.append((f"{f.__name__}-vector", f, np.ones(3), {}, ValueError, "A"))
        cases.append((f"{f.__name__}-scalar", f, 3.0, {}, ValueError, "A"))
        cases.append((f"{f.__name__}-no-columns", f, np.zeros((3, 0)), {}, ValueError, "A"))
    for f in (mu_inf, norm_inf):
        cases += [
            (f"{f.__name__}-weights-length", f, GOOD, {"weights": [1.0, 2.0, 3.0]}, ValueError, "weights"),
            (f"{f.__name__}-weights-zero", f, GOOD, {"weights": [0.0, 1.0]}, ValueError, "weights"),
            (f"{f.__name__}-weights-negative", f, GOOD, {"weights": [1.0, -1.0]}, ValueError, "weights"),
            (f"{f.__name__}-weights-nan", f, GOOD, {"weights": [1.0, np.nan]}, ValueError, "weights"),
            (f"{f.__name__}-weights-2d", f, GOOD, {"weights": np.ones((1, 2))}, ValueError, "weights"),
        ]
    cases.append(("norm_inf-weights-nonsquare", norm_inf, np.ones((2, 3)), {"weights": [1.0, 1.0, 1.0]},
                  ValueError, "A"))
    return cases


BAD = _bad_geometry_cases()


def _same(x, y):
    if isinstance(x, torch.Tensor):
        return torch.equal(x.nan_to_num(), y.nan_to_num())
    if isinstance(x, np.ndarray):
        return x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")
    return x == y


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input(case):
    _, f, A, kwargs, exc, word = case
    before = A.clone() if isinstance(A, torch.Tensor) else copy.deepcopy(A)
    kw_before = copy.deepcopy(kwargs)
    with pytest.raises(exc) as info:
        f(A, **kwargs)
    assert word in str(info.value)
    assert _same(A, before)
    for k in kwargs:
        assert _same(kwargs[k], kw_before[k])


def test_public_names():
    assert set(geometry.__all__) == set(FUNCS)


def test_optimal_weights_stay_near_the_infimum_for_reducible_chains():
    """Found by review: for a nilpotent shift (α(M) = 0) every candidate η spanned more than the
    1e-12 floor allows and the result was η = 1 with μ∞,η = 1; 0.5I + shift gave 0.70 (α = 0.5)."""
    from lipdeq.geometry import mu_inf, optimal_inf_weights
    for n in (6, 8):
        N = torch.diag(torch.ones(n - 1, dtype=torch.float64), 1)
        assert float(mu_inf(N, optimal_inf_weights(N))) <= 0.1 + 1e-9
        A = 0.5 * torch.eye(n, dtype=torch.float64) + N
        assert float(mu_inf(A, optimal_inf_weights(A))) <= 0.6 + 1e-9
