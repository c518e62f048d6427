r"""Slope-restricted activations Φ (every secant slope in [0, 1], docs/math.md §1.1) and their derivatives.

``derivative`` is the one-sided derivative used by the implicit backward (ReLU: φ'(0) := 0).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Activation:
    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    derivative: Callable[[torch.Tensor], torch.Tensor]
    monotone_box: bool = True  # monotone: interval bounds map boxes to boxes


LEAKY_SLOPE = 0.1

ACTIVATIONS = {
    "relu": Activation("relu", torch.relu, lambda z: (z > 0).to(z.dtype)),
    "leaky_relu": Activation("leaky_relu", lambda z: F.leaky_relu(z, LEAKY_SLOPE),
                             # built in z's dtype: torch.where(z > 0, 1.0, s) would round the
                             # slope through float32 (1.5e-8 off in float64)
                             lambda z: torch.where(z > 0, torch.ones_like(z),
                                                   torch.full_like(z, LEAKY_SLOPE))),
    "tanh": Activation("tanh", torch.tanh, lambda z: 1.0 - torch.tanh(z) ** 2),
    "identity": Activation("identity", lambda z: z, torch.ones_like),
}


def get_activation(name: str) -> Activation:
    """Look an activation up by name; ``ValueError`` listing the choices otherwise."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}") from None
