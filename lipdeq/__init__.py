"""lipdeq: robust implicit neural networks on the exact non-Euclidean contraction polytope.

An implicit network computes x = Φ(Ax + Bu + b), y = Cx + c; when μ∞(A) < 1 the fixed point exists,
is unique, the average iteration converges, and Lip∞(u ↦ y) ≤ ‖C‖∞‖B‖∞/(1 − μ∞(A))
(docs/math.md §3, §4, §6).

Layout by concept (docs/design.md):

* ``lipdeq.solvers``    convex side: projections, CVXPY QP/LP/SDP formulations, certificates;
* ``lipdeq.geometry``   matrix measures and norms;
* ``lipdeq.conditions`` the well-posedness conditions, one registry;
* ``lipdeq.deq``        operators, activations, fixed-point solvers, implicit layer, models;
* ``lipdeq.certify``    Lipschitz bounds, interval certificates, attacks;
* ``lipdeq.training``   data, training loop, checkpoints, projected steps, distributed;
* ``lipdeq.cli``        the ``lipdeq`` command.

Importing lipdeq imports torch, never CVXPY or matplotlib (those load with the functions that use them).
"""
__version__ = "0.1.0"

from . import _source_tree

_source_tree.install()

from .deq.conv import ImplicitConvNetwork  # noqa: E402
from .deq.model import IllPosedError, ImplicitNetwork  # noqa: E402
from .training.checkpoint import load_checkpoint  # noqa: E402
from .training.constrain import ProjectedStep, constrain, unconstrain  # noqa: E402

__all__ = ["ImplicitNetwork", "ImplicitConvNetwork", "IllPosedError", "load_checkpoint",
           "constrain", "unconstrain", "ProjectedStep"]
