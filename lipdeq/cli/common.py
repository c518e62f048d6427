"""What every ``lipdeq`` command shares: the one-line-error parser, deprecated flag aliases,
output-file checks and the exit code for bad input (2)."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

EXIT_BAD_INPUT = 2
DESCRIPTION = ("lipdeq: train, evaluate and certify implicit networks x = Φ(Ax + Bu + b) kept "
               "well-posed by μ∞(A) ≤ γ < 1.")


class BadInput(Exception):
    """Raised for bad command-line input; becomes one stderr line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise BadInput(f"{message} (see '{self.prog} --help')")


class _DeprecatedAlias(argparse.Action):
    """An old spelling kept for one release: stores into the new flag's dest; one deprecation
    line on stderr after a command that ran (``--json``/``--output`` → ``--out``)."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        # printed once the command has run (print_deprecation_notes): on bad input the one
        # error line stays the only stderr line
        notes = getattr(namespace, "_deprecation_notes", [])
        notes.append(f"lipdeq: note: {option_string} is deprecated and will be removed; use "
                     f"{self.new}")
        setattr(namespace, "_deprecation_notes", notes)
        setattr(namespace, self.dest, values)


def print_deprecation_notes(args) -> None:
    """The notes of the deprecated spellings ``args`` was parsed from, one stderr line each."""
    for note in getattr(args, "_deprecation_notes", ()):
        print(note, file=sys.stderr)


def _out_arg(p: argparse.ArgumentParser, old: str, help: str) -> None:
    p.add_argument("--out", default=None, help=help)
    p.add_argument(old, dest="out", action=_DeprecatedAlias, new="--out")


def _check_output_file(path: str, flag: str, *, keep: tuple[str, ...] = ()) -> None:
    """Refuse an output path that cannot be written, or that is one of the files in ``keep``
    (the checkpoint being read, its run's files), before any work is done."""
    if not path:
        raise BadInput(f"{flag} must not be empty")
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
    _probe_writable(parent, flag, path)


def check_output_dir(out: str, flag: str = "--out") -> None:
    """Refuse (before any work) an output directory that cannot be written: empty, not a
    directory, or one where a file cannot actually be created (for a missing directory: its
    nearest existing parent, where ``makedirs`` would start)."""
    if not out:
        raise ValueError(f"{flag} must not be empty")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{flag} {out!r} is not a directory")
    existing = os.path.abspath(out)
    while not os.path.exists(existing):  # makedirs creates the missing levels
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {out!r} cannot be created ({existing!r} is not a directory)")
    _probe_writable(existing, flag, out)


def _probe_writable(directory: str, flag: str, path: str) -> None:
    """``ValueError`` unless a file can be created (and removed) in ``directory``: permission
    bits alone do not tell (root, read-only or special file systems such as /proc). The
    folder's access and modification times are restored afterwards."""
    before = os.stat(directory)
    try:
        fd, probe = tempfile.mkstemp(prefix=".lipdeq-probe-", dir=directory)
    except OSError as exc:
        raise ValueError(f"{flag} {path!r} cannot be written in {directory!r} "
                         f"({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    os.unlink(probe)
    try:  # leave no trace: the folder's times as they were (bad input writes nothing)
        os.utime(directory, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass


def refuse_empty_paths(args, names=("out", "save_examples", "data_dir", "checkpoint", "run_dir",
                                    "doc")) -> None:
    """``ValueError`` for a path flag given as the empty string (it would otherwise read as
    "not given" and fall back to a default location silently)."""
    for name in names:
        if getattr(args, name, None) == "":
            flag = name if name == "run_dir" else "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must not be empty")


def _run_files(checkpoint: str) -> tuple[str, ...]:
    """The checkpoint and the run files next to it, its lock file included (outputs must not
    replace them: a replaced lock would let a second writer into a running run)."""
    from ..training.rundir import LOCK_NAME, RUN_FILES
    folder = os.path.dirname(os.path.abspath(checkpoint))
    return (checkpoint,) + tuple(os.path.join(folder, name) for name in RUN_FILES + (LOCK_NAME,))


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
