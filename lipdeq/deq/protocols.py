r"""The two interfaces the rest of lipdeq relies on, written down once as ``typing.Protocol`` classes.

* :class:`LinearOperator` — how fixed-point solvers, the implicit backward, the monDEQ splittings and
  the interval embedding touch the matrix A (monDEQ style: they never index A). Implemented by
  :class:`~lipdeq.deq.operators.DenseOperator`, :class:`~lipdeq.deq.conv.ConvOperator` and
  :class:`~lipdeq.certify.embedded.EmbeddedOperator`.
* :class:`ImplicitModel` — what certificates, attacks, the verifier and the trainer need from a
  model x* = Φ(A x* + w(u)), y = readout(x*, u). Implemented by
  :class:`~lipdeq.deq.model.ImplicitNetwork` and :class:`~lipdeq.deq.conv.ImplicitConvNetwork`.

Optional capabilities are separate protocols, tested with ``isinstance`` (they are
``runtime_checkable``): :class:`DenseCapable` (``dense()``, the matrix itself, used for optimal
norm weights and the splittings' direct solves) and :class:`ResolventCapable` (``resolvent(α)``).
Norms: ``mu_inf(eta)`` is the weighted ℓ∞ matrix measure μ∞,η(A) = maxᵢ (aᵢᵢ + Σ_{j≠i} |aᵢⱼ| ηⱼ/ηᵢ)
(docs/math.md §1.2); the adjoint identity yᵀ(Az) = zᵀ(Aᵀy) must hold for every operator.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["LinearOperator", "DenseCapable", "ResolventCapable", "MetzlerSplittable", "ImplicitModel",
           "StateReadout"]


@runtime_checkable
class LinearOperator(Protocol):
    """A linear map on batches of states x of shape (N, *state_shape)."""

    @property
    def n(self) -> int:
        """State dimension (number of entries of one state)."""

    def multiply(self, x: torch.Tensor) -> torch.Tensor:
        """A x for every state of the batch."""

    def multiply_transpose(self, y: torch.Tensor) -> torch.Tensor:
        """Aᵀ y for every state of the batch."""

    def mu_inf(self, eta: torch.Tensor | None = None) -> torch.Tensor:
        """μ∞,η(A) as a 0-d tensor (η = 1 when None), without gradient."""

    def min_diagonal(self) -> torch.Tensor:
        """minᵢ aᵢᵢ (0-d tensor): the average iteration's step α* = 1/(1 − min(minᵢ aᵢᵢ, 0))."""

    @property
    def requires_grad(self) -> bool:
        """Whether the implicit backward must reach the operator's parameters."""


@runtime_checkable
class DenseCapable(Protocol):
    def dense(self) -> torch.Tensor:
        """The operator as an (n, n) matrix."""


@runtime_checkable
class ResolventCapable(Protocol):
    def resolvent(self, alpha: float) -> torch.Tensor:
        """(I + α(I − A))⁻¹, cached per α."""


@runtime_checkable
class MetzlerSplittable(Protocol):
    def metzler_split(self) -> tuple[Any, Any]:
        """(⌈A⌉, ⌊A⌋), two operators: diagonal + non-negative off-diagonal part, and the rest."""


@runtime_checkable
class ImplicitModel(Protocol):
    """A model y = readout(x*(u), u) with x* = Φ(A x* + w(u)) and A given by ``operator()``."""

    activation: Any
    solver_config: Any

    def operator(self) -> LinearOperator:
        """The operator A of the fixed point (built from the current parameters)."""

    def input_map(self, u: torch.Tensor) -> torch.Tensor:
        """w(u) = Bu + b, shaped like a batch of states."""

    def input_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sound box (w̲, w̄) of w(u) over the input box [lower, upper]."""

    def input_gain_inf(self, eta: torch.Tensor | None = None) -> torch.Tensor:
        """‖[η]⁻¹B‖∞: the ℓ∞ gain of u ↦ w(u) into the η-weighted state norm."""

    def readout_matrices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(C, c, D or None) with y = x Cᵀ + c (+ u Dᵀ), C over the flattened state."""

    def norm_weights(self) -> torch.Tensor | None:
        """The norm weights η of the model's certified measure (None: η = 1)."""

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        """The logits y(u)."""


@runtime_checkable
class StateReadout(Protocol):
    """A model whose forward pass is ``readout(fixed_point(u), u)`` (both built-in models): the
    certificates then reuse the forward pass's own solve."""

    def fixed_point(self, u: torch.Tensor) -> torch.Tensor:
        """x*(u), differentiable by the implicit function theorem."""

    def readout(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """y = x Cᵀ + c (+ u Dᵀ)."""
