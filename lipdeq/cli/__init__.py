"""The ``lipdeq`` command (``lipdeq …`` and ``python -m lipdeq …``)."""
from .app import build_parser, main  # noqa: F401
