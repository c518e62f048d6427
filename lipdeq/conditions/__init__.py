"""Well-posedness conditions behind one registry, ``CONDITIONS``: name → class, built as ``cls(gamma=…)``.

Every condition has ``measure``, ``margin(A)`` (γ − measure, > 0 inside), ``contains(A)`` and
``project(A)`` where its set is convex (docs/math.md §2).
"""
from .base import Condition, NotConvexError
from .lben import LBEN
from .sets import (CONDITIONS, NEMON, PF, Monotone, MuInf, MuInfWeighted, NoCondition, NormInf,
                   clip_symmetric, get_condition)

__all__ = ["CONDITIONS", "Condition", "NotConvexError", "get_condition", "MuInf", "NormInf",
           "MuInfWeighted", "NEMON", "PF", "Monotone", "LBEN", "NoCondition", "clip_symmetric"]
