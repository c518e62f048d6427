"""Public path of attacks and certificates (``lipdeq.robustness.*``); the code is in :mod:`lipdeq.certify`."""
from .certify.robustness import *  # noqa: F401,F403
from .certify.robustness import __all__  # noqa: F401
