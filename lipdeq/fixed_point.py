"""Public path of the fixed-point solvers (``lipdeq.fixed_point.*``); the code is in :mod:`lipdeq.deq.fixed_point`."""
from .deq.fixed_point import *  # noqa: F401,F403
from .deq.fixed_point import __all__  # noqa: F401
