"""Projection rounding at the edges (found by review, session 7): weighted rows with wide weight
spreads, rounding excess taken where the weight is, half precision, dtype range."""
import numpy as np
import pytest
import torch

from lipdeq.geometry import mu_inf
from lipdeq.solvers import project_mu_inf

from test_projection import measure_ref, project_ref, scale_of  # noqa: F401 (shared oracles)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
def test_weighted_exact_projection_stays_exact_for_wide_weight_spreads(dtype, tol):
    """Weighted rows keep |vᵢⱼ| − λwᵢⱼ; in float32 that cancellation, times a weight ratio of
    1e6, moved a diagonal by 0.04 (a feasible point, but not the projection)."""
    rng = np.random.default_rng(7)
    V2, eta2 = np.array([[0.0, 0.7], [0.3, 0.0]]), np.array([1.0, 1e6])
    X = project_mu_inf(torch.tensor(V2, dtype=dtype), 0.5, weights=eta2).double().numpy()
    assert np.abs(X - project_ref(V2, 0.5, eta2)).max() <= tol
    for _ in range(10):
        V, eta = rng.normal(size=(5, 5)), np.exp(rng.uniform(0, np.log(1e6), 5))
        X = project_mu_inf(torch.tensor(V, dtype=dtype), 0.5, weights=eta).double().numpy()
        assert measure_ref(X, eta) <= 0.5
        assert np.abs(X - project_ref(V, 0.5, eta)).max() <= tol * scale_of(V)


def test_weighted_rounding_excess_is_taken_where_the_weight_is():
    """η spanning 1e60: the 1e30-weighted entry's rounding residue (2e-16) measures 2e14; it is
    removed from that entry, not from the diagonal (which stays the input's)."""
    v = [-0.2812874181513504, -0.6680463461089501, -1.0551505512051214, -0.39080097723465473]
    V = np.zeros((4, 4))
    V[3] = v
    eta = np.array([1e-30, 1.0, 1e30, 1.0])
    X = project_mu_inf(V, 0.5, weights=eta)
    assert X[3, 2] == 0 and measure_ref(X, eta) <= 0.5
    np.testing.assert_allclose(X[3, [0, 1, 3]], np.array(v)[[0, 1, 3]], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_rows_do_not_overflow(dtype):
    """100 entries of 1000 sum past float16's range: the projection (0.005 everywhere) is
    computed in float64 and comes back finite."""
    X = project_mu_inf(torch.full((100, 100), 1000.0, dtype=dtype), 0.5)
    assert X.dtype == dtype and bool(torch.isfinite(X).all())
    assert float(mu_inf(X.double())) <= 0.5
    np.testing.assert_allclose(X.double().numpy(), 0.005, rtol=1e-2)


def test_weight_ratios_past_float64_squares_stay_finite_and_feasible():
    """Found by review: a 1e160 ratio overflowed w² in the rounding repair to inf/inf = NaN."""
    X = project_mu_inf(np.array([[0.0, 1.0], [0.0, 0.0]]), 0.5, weights=[1.0, 1e160])
    assert np.isfinite(X).all() and measure_ref(X, [1.0, 1e160]) <= 0.5


def test_a_projection_outside_the_dtype_range_is_refused_not_minus_inf():
    """float16 rows summing past 65504: the projection's diagonal (-1.29e5) does not fit."""
    V = torch.zeros(101, 101)
    V[0, 1:] = 65000.0
    V[0, 0] = -65000.0
    with pytest.raises(ValueError, match="not representable in torch.float16"):
        project_mu_inf(V.half(), 0.5)
    assert bool(torch.isfinite(project_mu_inf(V, 0.5)).all())  # float32 holds it
