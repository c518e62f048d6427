r"""Linear operators A acting on batches of states, the only way solvers touch A (monDEQ style).

An operator provides ``multiply(x)`` (the batch form of Ax: x Aᵀ for x of shape (N, n)),
``multiply_transpose(y)`` (Aᵀy: y A), and the contraction data the solvers need:
``mu_inf(eta)`` = μ∞,η(A), ``min_diagonal()`` = minᵢ aᵢᵢ (for the step α*, docs/math.md §4.2), and
``resolvent(alpha)`` = (I + α(I − A))⁻¹ cached per α (for the monDEQ splittings),
``metzler_split()`` = (⌈A⌉, ⌊A⌋) as two operators (for interval bounds, docs/math.md §12), and
``requires_grad`` (whether the implicit backward must reach A).
The adjoint identity yᵀ(Az) = zᵀ(Aᵀy) holds by construction and is tested.
"""
from __future__ import annotations

import torch

from ..geometry import sign_split
from ..solvers.projection import row_measure


class DenseOperator:
    """A dense (n, n) matrix. Differentiable in A; built once per forward pass."""

    def __init__(self, A: torch.Tensor):
        self.A = A
        self._resolvents: dict[float, torch.Tensor] = {}

    @property
    def n(self) -> int:
        return self.A.shape[-1]

    def multiply(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.transpose(-1, -2)

    def multiply_transpose(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self.A

    def mu_inf(self, eta: torch.Tensor | None = None) -> torch.Tensor:
        W = None if eta is None else eta.unsqueeze(-2) / eta.unsqueeze(-1)
        return row_measure(self.A.detach(), W, signed_diag=True).amax(-1)

    def min_diagonal(self) -> torch.Tensor:
        return self.A.detach().diagonal().amin()

    def resolvent(self, alpha: float) -> torch.Tensor:
        """(I + α(I − A))⁻¹, computed once per α for this operator."""
        key = float(alpha)
        if key not in self._resolvents:
            A = self.A.detach()
            eye = torch.eye(self.n, dtype=A.dtype, device=A.device)
            self._resolvents[key] = torch.linalg.inv(eye + key * (eye - A))
        return self._resolvents[key]

    def dense(self) -> torch.Tensor:
        return self.A

    @property
    def requires_grad(self) -> bool:
        return self.A.requires_grad

    def metzler_split(self) -> tuple["DenseOperator", "DenseOperator"]:
        """(⌈A⌉, ⌊A⌋): ⌈A⌉ = diag(aᵢᵢ) + max(offdiag A, 0), ⌊A⌋ = min(offdiag A, 0) (docs/math.md §12.1)."""
        A = self.A
        eye = torch.eye(self.n, dtype=torch.bool, device=A.device)
        pos, neg = sign_split(A)
        upper = torch.where(eye, A, pos)
        lower = torch.where(eye, torch.zeros_like(A), neg)
        return DenseOperator(upper), DenseOperator(lower)
