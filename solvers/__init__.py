"""Convex side of lipdeq: projections onto well-posedness sets and their certificates.

Independent of neural networks; every function takes numpy arrays or torch tensors and returns
the caller's type.
"""
from .errors import SolverError
from .projection import project_mu_inf, project_norm_inf, row_measure

__all__ = ["SolverError", "project_mu_inf", "project_norm_inf", "row_measure"]
