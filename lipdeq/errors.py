"""Exceptions for bad input on the learning side (all are ``ValueError`` subclasses, so a
caller catching ValueError catches them; the CLI turns them into one line and exit code 2)."""


class DataError(ValueError):
    """Missing, malformed or inconsistent data (directory, IDX magic/size, labels)."""


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupt or of an unknown format."""


class OptionConflict(ValueError):
    """Options that cannot be honoured together (one would be recorded but not done), e.g.
    ``--projection qp`` with a conv model or ``--hidden`` with a conv model."""


class RunDirectoryError(ValueError):
    """A run directory that cannot be used: held by another process (its lock), holding another
    run's files without ``--resume``, not a directory, or not creatable."""
