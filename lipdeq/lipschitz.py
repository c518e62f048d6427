"""Public path of the Lipschitz bounds (``lipdeq.lipschitz.*``); the code is in :mod:`lipdeq.certify.lipschitz`."""
from .certify.lipschitz import *  # noqa: F401,F403
from .certify.lipschitz import __all__  # noqa: F401
