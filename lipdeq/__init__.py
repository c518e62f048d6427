"""lipdeq: robust implicit neural networks on the exact non-Euclidean contraction polytope.

An implicit network computes x = Φ(Ax + Bu + b), y = Cx + c; when μ∞(A) < 1 the fixed point exists,
is unique, the average iteration converges, and Lip∞(u ↦ y) ≤ ‖C‖∞‖B‖∞/(1 − μ∞(A)).
"""
__version__ = "0.1.0"

from . import splittings  # noqa: E402,F401  (registers the monDEQ splittings)
from .model import IllPosedError, ImplicitNetwork  # noqa: E402

__all__ = ["ImplicitNetwork", "IllPosedError"]

from .constrain import ProjectedStep, constrain, unconstrain  # noqa: E402

__all__ += ["constrain", "unconstrain", "ProjectedStep"]
