"""DenseOperator: adjoint identity, contraction data, resolvent, Metzler split (docs/math.md §2, §4.2,
§12.1)."""
from __future__ import annotations

import pytest
import torch

from lipdeq import geometry
from lipdeq.deq.implicit import contraction_data
from lipdeq.deq.operators import DenseOperator

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=[0, 1, 2])
def A(request):
    g = torch.Generator().manual_seed(request.param)
    n = (3, 7, 20)[request.param]
    return torch.randn(n, n, generator=g, dtype=DT) - 2.0 * request.param * torch.eye(n, dtype=DT)


def test_multiply_matches_dense_and_adjoint_identity(A):
    op = DenseOperator(A)
    n = op.n
    assert n == A.shape[0] and op.dense() is A
    g = torch.Generator().manual_seed(7)
    z = torch.randn(5, n, generator=g, dtype=DT)
    y = torch.randn(5, n, generator=g, dtype=DT)
    assert torch.allclose(op.multiply(z), z @ A.T, atol=1e-14, rtol=0)
    assert torch.allclose(op.multiply(z)[2], A @ z[2], atol=1e-13, rtol=0)
    assert torch.allclose(op.multiply_transpose(y)[3], A.T @ y[3], atol=1e-13, rtol=0)
    # yᵀ(Az) = zᵀ(Aᵀy) per sample
    lhs = (y * op.multiply(z)).sum(1)
    rhs = (z * op.multiply_transpose(y)).sum(1)
    assert torch.allclose(lhs, rhs, atol=1e-12 * n, rtol=1e-13)


def test_contraction_data(A):
    op = DenseOperator(A)
    assert float(op.mu_inf()) == pytest.approx(float(geometry.mu_inf(A)), abs=1e-14)
    eta = torch.rand(op.n, generator=torch.Generator().manual_seed(3), dtype=DT) + 0.1
    assert float(op.mu_inf(eta)) == pytest.approx(float(geometry.mu_inf(A, eta)), abs=1e-13)
    # μ∞,η(A) = μ∞([η]⁻¹A[η])
    scaled = A * eta[None, :] / eta[:, None]
    assert float(op.mu_inf(eta)) == pytest.approx(float(DenseOperator(scaled).mu_inf()),
                                                  abs=1e-12)
    assert float(op.min_diagonal()) == float(A.diagonal().min())
    mu_plus, alpha_star = contraction_data(op, None)
    assert float(mu_plus) == max(float(op.mu_inf()), 0.0)
    assert float(alpha_star) == pytest.approx(1.0 / (1.0 - min(float(A.diagonal().min()), 0.0)))


def test_mu_inf_worked_example():
    A = torch.tensor([[0.5, -2.0], [1.0, -3.0]], dtype=DT)  # docs/math.md §2.1
    assert float(DenseOperator(A).mu_inf()) == pytest.approx(2.5)
    X5 = torch.tensor([[-1.0, 5.0], [0.1, -2.0]], dtype=DT)  # docs/math.md §2.2, Perron weights
    v = torch.tensor([0.93179, 0.06821], dtype=DT)
    assert float(DenseOperator(X5).mu_inf()) == pytest.approx(4.0)
    assert float(DenseOperator(X5).mu_inf(v)) == pytest.approx(-0.633975, abs=1e-4)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0, 2.5])
def test_resolvent_is_the_inverse_and_cached(A, alpha):
    op = DenseOperator(A)
    n = op.n
    eye = torch.eye(n, dtype=DT)
    M = eye + alpha * (eye - A)
    R = op.resolvent(alpha)
    assert torch.allclose(R @ M, eye, atol=1e-10, rtol=0)
    assert torch.allclose(M @ R, eye, atol=1e-10, rtol=0)
    assert op.resolvent(alpha) is R  # computed once per α
    assert not R.requires_grad


def test_metzler_split(A):
    op = DenseOperator(A)
    up, lo = op.metzler_split()
    U, L = up.dense(), lo.dense()
    assert torch.equal(U + L, A)
    off = ~torch.eye(op.n, dtype=torch.bool)
    assert torch.equal(U.diagonal(), A.diagonal()) and bool((L.diagonal() == 0).all())
    assert bool((U[off] >= 0).all()) and bool((L[off] <= 0).all())
    # the embedded system's rows reproduce μ∞(A) (docs/math.md §12.2)
    big = torch.cat([torch.cat([U, L], 1), torch.cat([L, U], 1)], 0)
    assert float(DenseOperator(big).mu_inf()) == pytest.approx(float(op.mu_inf()), abs=1e-12)


def test_metzler_split_gradient_is_one_sided_at_zero_entries():
    # The projection leaves exact zeros; the gradient of a zero entry must reach one part of the
    # split only (a one-sided derivative), not both (clamp_min/clamp_max pass it to both).
    A = torch.tensor([[0.2, 0.0, -0.3], [0.0, -0.1, 0.4], [0.5, 0.0, 0.0]], dtype=DT,
                     requires_grad=True)
    up, lo = DenseOperator(A).metzler_split()
    (up.dense() + lo.dense()).sum().backward()  # = A.sum(): gradient exactly ones
    assert torch.equal(A.grad, torch.ones_like(A))
    A.grad = None
    up, lo = DenseOperator(A).metzler_split()
    (up.dense().sum() - lo.dense().sum()).backward()  # = Σ|offdiag| + Σ diag; at 0 one side
    off = ~torch.eye(3, dtype=torch.bool)
    expected = torch.where(off, torch.where(A.detach() >= 0, 1.0, -1.0), torch.ones(3, 3, dtype=DT))
    assert torch.equal(A.grad, expected)


def test_sign_split():
    M = torch.tensor([[-1.0, 0.0, 2.0], [0.0, -0.0, 3.0]], dtype=DT, requires_grad=True)
    pos, neg = geometry.sign_split(M)
    assert torch.equal(pos + neg, M.detach())
    assert bool((pos >= 0).all()) and bool((neg <= 0).all())
    (2 * pos.sum() + 3 * neg.sum()).backward()
    assert torch.equal(M.grad, torch.tensor([[3.0, 2.0, 2.0], [2.0, 2.0, 2.0]], dtype=DT))


def test_requires_grad_and_gradient_flow():
    A = torch.randn(4, 4, dtype=DT, requires_grad=True)
    op = DenseOperator(A)
    assert op.requires_grad and not DenseOperator(A.detach()).requires_grad
    x = torch.randn(3, 4, dtype=DT)
    op.multiply(x).sum().backward()
    assert torch.allclose(A.grad, torch.ones(3, 4, dtype=DT).T @ x, atol=1e-14, rtol=0)
    # the contraction data never carries a graph
    assert not op.mu_inf().requires_grad and not op.min_diagonal().requires_grad
    up, lo = op.metzler_split()
    (up.dense().sum() + lo.dense().sum()).backward()
    assert torch.isfinite(A.grad).all()
