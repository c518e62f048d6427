r"""Parameterized conditions as ``torch.nn.utils.parametrize`` parametrizations.

For ``nemon``, ``mu_inf_weighted``, ``pf``, ``monotone`` and ``lben`` the matrix A is a function of
unconstrained raw tensors (e.g. NEMON: A = γI + D⁻¹MD − diag(|M|1) with D = diag(eᵈ), so that
μ∞,η(A) ≤ γ for η = e⁻ᵈ, docs/math.md §2.5). :func:`parametrize_condition` registers that map on a
module's weight the PyTorch way: ``module.A`` is then computed from
``module.parametrizations.A.original0, original1, …`` (the raw tensors, in the order of
:attr:`ConditionMap.keys`), ``right_inverse`` maps a matrix back to raw tensors (the condition's
``init_raw``, which first puts it inside the set), and optimizers train the raw tensors.

Projected conditions (``mu_inf``, ``norm_inf``) are *not* parametrizations: their weight stays a
plain leaf Parameter that a projection overwrites after each step (docs/design.md).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import Condition

__all__ = ["ConditionMap", "parametrize_condition", "raw_tensors"]


class ConditionMap(nn.Module):
    """forward(*raw) = condition.parameterize(raw); right_inverse(A) = condition.init_raw(A).

    ``coupled``: the module whose ``B`` and ``C`` enter the map too (LBEN with an ℓ2 Lipschitz
    bound couples A with B and C). It is held in a plain list, so it is neither a submodule nor a
    state-dict entry, and ``copy.deepcopy`` of the owner maps it to the copy.
    """

    def __init__(self, condition: Condition, keys: tuple[str, ...], coupled: nn.Module | None = None):
        super().__init__()
        self.condition = condition
        self.keys = tuple(keys)
        self._coupled = [] if coupled is None else [coupled]

    def _extra(self, detach: bool = False) -> dict:
        if not self._coupled:
            return {}
        owner = self._coupled[0]
        return {k: (getattr(owner, k).detach() if detach else getattr(owner, k)) for k in ("B", "C")}

    def forward(self, *raw: torch.Tensor) -> torch.Tensor:
        return self.condition.parameterize(dict(zip(self.keys, raw)), **self._extra())

    def right_inverse(self, A: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.condition.init_raw(A, **self._extra(detach=True))
        return tuple(raw[k] for k in self.keys)


def parametrize_condition(module: nn.Module, name: str, condition: Condition, *,
                          coupled: bool = False) -> ConditionMap:
    """Register ``condition``'s parameterization on ``module.<name>`` (which must exist as a
    tensor: its value becomes the raw tensors through ``right_inverse``). ``coupled``: the map
    also reads ``module.B`` and ``module.C``. Returns the registered map."""
    if condition.training != "parameterize":
        raise ValueError(f"condition {condition.name!r} is not a parameterization "
                         f"(training = {condition.training!r})")
    value = getattr(module, name).detach()
    extra = {k: getattr(module, k).detach() for k in ("B", "C")} if coupled else {}
    keys = tuple(condition.init_raw(value, **extra))
    cmap = ConditionMap(condition, keys, coupled=module if coupled else None)
    parametrize.register_parametrization(module, name, cmap, unsafe=True)
    return cmap


def raw_tensors(module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The raw Parameters behind a parameterized weight, by the condition's names ({} if none)."""
    if not parametrize.is_parametrized(module, name):
        return {}
    plist = module.parametrizations[name]
    cmap = plist[0]
    return {k: getattr(plist, f"original{i}") for i, k in enumerate(cmap.keys)}
