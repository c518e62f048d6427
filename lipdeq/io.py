"""Atomic file writes: the one helper every output of lipdeq goes through.

:func:`atomic_write` writes to a temporary file in the target's directory, flushes and fsyncs it,
gives it the mode a plain ``open()`` would (0666 minus the umask), and moves it into place with
``os.replace``; a crash at any moment leaves either the old file or the new one, never a partial
one, and the temporary file is removed on any failure. A full disk (``ENOSPC``) or a file-size
limit (``EFBIG``) raises :class:`NoSpaceError`, whose message names the file.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_write", "write_json", "write_text", "write_figure", "append_line", "NoSpaceError", "TEMP_PREFIX",
           "no_space_error", "strict_json", "finite_or_none"]

#: Prefix of the temporary files (``.tmp-<name>-XXXX``): a crash may leave one, never a partial target.
TEMP_PREFIX = ".tmp-"


class NoSpaceError(OSError):
    """No space left (ENOSPC) or file too large (EFBIG) while writing a file.

    ``str()`` is the message alone ("no space left writing 'PATH' (reason)"), without the
    ``[Errno N]`` prefix of a plain OSError, so the CLI's one-line error reads right."""

    def __str__(self) -> str:
        return str(self.strerror)


def no_space_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` as a :class:`NoSpaceError` naming ``path`` when it is ENOSPC/EFBIG, else ``exc``."""
    if isinstance(exc, NoSpaceError) or exc.errno not in (errno.ENOSPC, errno.EFBIG):
        return exc
    return NoSpaceError(exc.errno, f"no space left writing {os.fspath(path)!r} "
                                   f"({os.strerror(exc.errno)})")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """``with atomic_write(path) as fh: ...`` — ``fh`` is a file object on a temporary file that
    replaces ``path`` when the block ends without an exception (text mode ``"w"`` or binary ``"wb"``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}-", dir=directory)
    try:
        try:
            with os.fdopen(fd, mode, **open_kwargs) as fh:
                if hasattr(os, "fchmod"):
                    os.fchmod(fh.fileno(), _umask_mode())
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            err = no_space_error(exc, target)
            if err is not exc:
                raise err from None
            raise
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (best effort: not every file system allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN/±Inf float (nested in dicts, lists, tuples) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def strict_json(obj: Any, **dump_kwargs: Any) -> str:
    """``json.dumps`` that writes standard JSON: NaN and ±Inf (e.g. the infinite Lipschitz bound
    of a model with μ∞(A) ≥ 1) become ``null`` instead of Python's non-standard ``NaN`` /
    ``Infinity``, which strict parsers (jq, JavaScript, many JSON libraries) reject."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **dump_kwargs)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs: Any) -> None:
    """``json.dump`` to ``path`` atomically (``indent=2`` unless given)."""
    dump_kwargs.setdefault("indent", 2)
    with atomic_write(path) as fh:
        json.dump(obj, fh, **dump_kwargs)
        fh.write("\n")


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append ``line`` (plus a newline) to ``path`` and fsync it: the one non-atomic write (a log).

    A crash may leave a torn last line, which readers drop; ENOSPC/EFBIG raise :class:`NoSpaceError`."""
    try:
        with open(path, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        err = no_space_error(exc, path)
        if err is not exc:
            raise err from None
        raise


def write_figure(path: str | os.PathLike, fig: Any, dpi: int = 90) -> None:
    """Save a matplotlib figure as PNG to ``path`` atomically, then close it (also on failure)."""
    import matplotlib.pyplot as plt  # only the callers that plot pay for matplotlib
    try:
        with atomic_write(path, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)
    finally:
        plt.close(fig)
