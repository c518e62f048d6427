"""The implicit layer: operators, activations, fixed-point solvers, implicit backward, models.

Importing this package registers every fixed-point solver, the monDEQ splittings included.
"""
from . import fixed_point, splittings  # noqa: F401  (splittings register themselves)
