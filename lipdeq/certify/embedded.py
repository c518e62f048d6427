r"""The operator of the embedded (mixed-monotone) network of docs/math.md §12.2.

For x = Φ(Ax + w) the embedded network with 2n states

    x̲ = Φ(⌈A⌉x̲ + ⌊A⌋x̄ + w̲),   x̄ = Φ(⌈A⌉x̄ + ⌊A⌋x̲ + w̄)

bounds every fixed point with w in [w̲, w̄]. :class:`EmbeddedOperator` exposes its matrix with the
operator interface of :mod:`lipdeq.operators` (``multiply``, ``multiply_transpose``, ``mu_inf``,
``min_diagonal``, ``dense``, ``resolvent``), so the registered fixed-point solvers and the
implicit backward run on it unchanged. The interval certificates built on it are in
:mod:`lipdeq.robustness`.
"""
from __future__ import annotations

import torch

__all__ = ["EmbeddedOperator"]


class EmbeddedOperator:
    r"""The 2n-state operator [[⌈A⌉, ⌊A⌋], [⌊A⌋, ⌈A⌉]] of the embedded network (docs/math.md §12.2).

    A state is the pair (x̲, x̄) concatenated along dim 1 (for dense states (N, 2n); for
    channel-first states (N, 2c, …)); weights η must be stacked the same way, twice.
    Row i of the embedded matrix has weighted off-diagonal sum Σ_{j≠i}(a⁺ᵢⱼ + |a⁻ᵢⱼ|)ηⱼ/ηᵢ, so
    ``mu_inf`` (stacked η) = μ∞,η(A) of the base and ``min_diagonal`` = minᵢ aᵢᵢ: the same
    contraction data, the same α* (docs/math.md §4.2).
    """

    def __init__(self, op):
        self.base = op
        self.upper, self.lower = op.metzler_split()
        self._resolvents: dict[float, torch.Tensor] = {}

    @property
    def n(self) -> int:
        return 2 * self.base.n

    def multiply(self, X: torch.Tensor) -> torch.Tensor:
        lo, hi = X.chunk(2, dim=1)
        return torch.cat([self.upper.multiply(lo) + self.lower.multiply(hi),
                          self.upper.multiply(hi) + self.lower.multiply(lo)], dim=1)

    def multiply_transpose(self, Y: torch.Tensor) -> torch.Tensor:
        lo, hi = Y.chunk(2, dim=1)
        return torch.cat([self.upper.multiply_transpose(lo) + self.lower.multiply_transpose(hi),
                          self.lower.multiply_transpose(lo) + self.upper.multiply_transpose(hi)],
                         dim=1)

    def mu_inf(self, eta: torch.Tensor | None = None) -> torch.Tensor:
        return self.base.mu_inf(None if eta is None else eta.chunk(2, dim=0)[0])

    def min_diagonal(self) -> torch.Tensor:
        return self.base.min_diagonal()

    @property
    def requires_grad(self) -> bool:
        return bool(self.upper.requires_grad or self.lower.requires_grad)

    def dense(self) -> torch.Tensor:
        U, L = self.upper.dense(), self.lower.dense()
        return torch.cat([torch.cat([U, L], 1), torch.cat([L, U], 1)], 0)

    def resolvent(self, alpha: float) -> torch.Tensor:
        """(I + α(I − M))⁻¹ of the embedded matrix M (dense; for the monDEQ splittings)."""
        key = float(alpha)
        if key not in self._resolvents:
            M = self.dense().detach()
            eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
            self._resolvents[key] = torch.linalg.inv(eye + key * (eye - M))
        return self._resolvents[key]
