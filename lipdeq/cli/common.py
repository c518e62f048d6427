"""What every ``lipdeq`` command shares: the one-line-error parser, deprecated flag aliases,
output-file checks and the exit code for bad input (2)."""
from __future__ import annotations

import argparse
import os
import sys

EXIT_BAD_INPUT = 2
DESCRIPTION = ("lipdeq: train, evaluate and certify implicit networks x = Φ(Ax + Bu + b) kept "
               "well-posed by μ∞(A) ≤ γ < 1.")


class BadInput(Exception):
    """Raised for bad command-line input; becomes one stderr line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise BadInput(f"{message} (see '{self.prog} --help')")


class _DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: stores into the new flag's dest and prints one
    deprecation line on stderr (``--json``/``--output`` → ``--out``)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"lipdeq: note: {option_string} is deprecated and will be removed; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def _out_arg(p: argparse.ArgumentParser, old: str, help: str) -> None:
    p.add_argument("--out", default=None, help=help)
    p.add_argument(old, dest="out", action=_DeprecatedAlias, new="--out")


def _check_output_file(path: str, flag: str, *, keep: tuple[str, ...] = ()) -> None:
    """Refuse an output path that cannot be written, or that is one of the files in ``keep``
    (the checkpoint being read, its run's files), before any work is done."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise BadInput(f"{flag} {path!r} is a directory")
    if not os.path.isdir(parent):
        raise BadInput(f"{flag} {path!r}: directory {parent!r} does not exist")
    for other in keep:
        same = (os.path.samefile(path, other) if os.path.exists(path) and os.path.exists(other)
                else os.path.abspath(path) == os.path.abspath(other))
        if same:
            raise BadInput(f"{flag} {path!r} would overwrite {other!r}; choose another file")


def _run_files(checkpoint: str) -> tuple[str, ...]:
    """The checkpoint and the run files next to it (outputs must not replace them)."""
    from ..training.rundir import RUN_FILES
    folder = os.path.dirname(os.path.abspath(checkpoint))
    return (checkpoint,) + tuple(os.path.join(folder, name) for name in RUN_FILES)


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line; an OSError as "reason: 'path'" (no [Errno N])."""
    if isinstance(exc, OSError) and exc.strerror and len(exc.args) == 2:
        text = exc.strerror + (f": {exc.filename!r}" if exc.filename else "") + (
            f" -> {exc.filename2!r}" if exc.filename2 else "")
    else:
        text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _run_config(checkpoint: str) -> dict:
    """The config.json next to a checkpoint ({} when absent; ``DataError`` when it is there but
    unreadable or not a JSON object: its defaults would otherwise be replaced silently)."""
    from ..training.rundir import read_run_config
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.json")
    return read_run_config(path) if os.path.isfile(path) else {}
