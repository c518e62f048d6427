"""The run directory (docs/design.md §6): its lock, its checks, and the writes of its files.

One process at a time writes a run directory: :func:`lock_run_dir` takes an exclusive
``fcntl.flock`` on ``RUN_DIR/.lock`` for the whole run (the kernel drops it on any exit, a
SIGKILL included) and writes the holder's PID into it, so a second writer is refused with a
:class:`~lipdeq.errors.RunDirectoryError` naming that PID. A fresh run refuses a directory that
holds any run file (``config.json``, ``metrics.jsonl``, ``last.pt``); only ``resume`` continues one.
Every file goes through :mod:`lipdeq.io` (atomic replace, or an fsync'd append for the metrics log).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from typing import Iterator

from ..errors import DataError, RunDirectoryError
from ..io import TEMP_PREFIX, append_line, strict_json, write_text

__all__ = ["RUN_FILES", "LOCK_NAME", "default_run_name", "check_run_dir", "lock_run_dir",
           "clean_stale_temps", "write_config", "append_jsonl", "is_metrics_row", "read_metrics",
           "truncate_metrics",
           "read_run_config", "read_resume_checkpoint"]

#: Files whose presence makes a directory a run (a fresh run refuses such a directory).
RUN_FILES = ("config.json", "metrics.jsonl", "last.pt")
#: The lock file (kept after the run; the lock is the flock on it, not its existence).
LOCK_NAME = ".lock"
#: Temporary names an older lipdeq wrote (``path + ".tmp"``); cleaned like lipdeq.io's on resume.
_OLD_TEMPS = ("config.json.tmp", "metrics.jsonl.tmp")


def default_run_name(dataset: str, model: str, condition: str) -> str:
    """``runs/<dataset>-<model>-<condition>-<YYYYmmdd-HHMMSS>-<6 hex>``: the random suffix keeps
    two runs started in the same second apart (and the lock refuses the 1 in 16M collision)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return os.path.join("runs", f"{dataset}-{model}-{condition}-{stamp}-{secrets.token_hex(3)}")


def _present_run_files(out_dir: str) -> list[str]:
    return [name for name in RUN_FILES if os.path.lexists(os.path.join(out_dir, name))]


def check_run_dir(out_dir: str, resume: bool, *, locked: bool = False) -> None:
    """Refuse (before anything is written) an ``out_dir`` that is not a directory, that another
    process holds (unless ``locked``: this process holds it), or that holds run files when
    ``resume`` is false."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise RunDirectoryError(f"run directory {out_dir!r} exists and is not a directory")
    if not locked:
        _check_not_locked(out_dir)
    if not resume and os.path.isdir(out_dir):
        present = _present_run_files(out_dir)
        if present:
            raise RunDirectoryError(f"{out_dir!r} already holds a run ({', '.join(present)}); "
                                    f"pass --resume or choose another --out")


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        if text:
            return f"process {int(text)}"
    return "another process (PID not yet written)"


def _busy(out_dir: str, fd: int) -> RunDirectoryError:
    return RunDirectoryError(f"run directory {out_dir!r} is in use by {_holder(fd)} "
                             f"(lock {LOCK_NAME}); wait for it or choose another --out")


def _check_not_locked(out_dir: str) -> None:
    """Refuse a directory another process holds, without writing anything (a probe of its lock)."""
    import fcntl
    try:
        fd = os.open(os.path.join(out_dir, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return  # no lock file: nobody holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out_dir, fd) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock_run_dir(out_dir: str) -> Iterator[None]:
    """Create ``out_dir`` if needed and hold an exclusive lock on it until the block ends."""
    import fcntl
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd = os.open(os.path.join(out_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RunDirectoryError(f"cannot create run directory {out_dir!r}: "
                                f"{exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(out_dir, fd) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is a courtesy for the refused writer; the flock is the lock
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def clean_stale_temps(out_dir: str) -> list[str]:
    """Remove temporary files a killed writer of this run left (call it holding the lock)."""
    removed = []
    for name in os.listdir(out_dir):
        if name.startswith(TEMP_PREFIX) or name in _OLD_TEMPS:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out_dir, name))
                removed.append(name)
    return removed


def write_config(path: str, obj: dict) -> None:
    """Run files are standard JSON: a non-finite number is written as ``null``."""
    write_text(path, strict_json(obj, indent=2) + "\n")


def append_jsonl(path: str, row: dict) -> None:
    append_line(path, strict_json(row))


def is_metrics_row(row) -> bool:
    """A metrics row as resume and plotting read it: a dict with an integer ``epoch`` and a
    number ``epoch_s`` (bools are not numbers here)."""
    if not isinstance(row, dict):
        return False
    epoch, seconds = row.get("epoch"), row.get("epoch_s")
    return (isinstance(epoch, int) and not isinstance(epoch, bool)
            and isinstance(seconds, (int, float)) and not isinstance(seconds, bool))


def read_metrics(path: str) -> list[dict]:
    """The metrics rows (blank lines skipped); a torn **last** line (a crash mid-append) is
    dropped. ``DataError`` for anything else that is not a metrics row: a line that is not JSON followed by more lines, a
    row that is not a JSON object, or one without an integer ``epoch`` and a number ``epoch_s``
    (the file was edited or is not a metrics log: nothing is dropped or rewritten silently)."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        lines = [(number, line) for number, line in enumerate(fh.read().splitlines(), 1)
                 if line.strip()]  # blank lines are not rows
    rows = []
    for k, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break  # torn by a crash mid-append
            raise DataError(f"{path!r} line {number} is not JSON (only a torn last line is "
                            f"dropped): the metrics log is corrupt") from None
        if not isinstance(row, dict):
            raise DataError(f"{path!r} line {number}: a metrics row must be a JSON object, "
                            f"got {type(row).__name__}")
        if not is_metrics_row(row):
            raise DataError(f"{path!r} line {number}: a metrics row needs an integer 'epoch' and "
                            f"a number 'epoch_s'")
        rows.append(row)
    return rows


def read_run_config(path: str) -> dict:
    """A run's ``config.json`` as a dict; ``DataError`` naming the file when it is unreadable,
    not JSON, or not a JSON object."""
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except OSError as exc:
        raise DataError(f"run config {path!r} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise DataError(f"run config {path!r} is corrupt ({exc})") from None
    if not isinstance(cfg, dict):
        raise DataError(f"run config {path!r} is corrupt (not a JSON object: "
                        f"{type(cfg).__name__})")
    return cfg


def read_resume_checkpoint(out_dir: str) -> dict | None:
    """The checkpoint ``resume`` continues from, with everything resuming reads checked
    (:func:`~lipdeq.training.checkpoint.check_resumable`). ``None`` for a run that stopped
    before its first checkpoint (``config.json`` but neither ``last.pt`` nor a metrics row):
    there is nothing to continue, and it starts again from epoch 1. Otherwise a missing or
    corrupt ``last.pt`` is a ``CheckpointError``."""
    from .checkpoint import check_resumable, read_checkpoint
    path, cfg = os.path.join(out_dir, "last.pt"), os.path.join(out_dir, "config.json")
    if (not os.path.lexists(path) and os.path.isfile(cfg)
            and not read_metrics(os.path.join(out_dir, "metrics.jsonl"))
            and "model_config" in read_run_config(cfg)):  # a lipdeq run's, not any config.json
        return None
    return check_resumable(read_checkpoint(path), path)


def truncate_metrics(path: str, last_epoch: int) -> None:
    """Keep only rows up to the checkpoint's epoch (atomically)."""
    rows = [r for r in read_metrics(path) if r.get("epoch", 0) <= last_epoch]
    write_text(path, "".join(strict_json(r) + "\n" for r in rows))


#: Settings that must match for ``resume`` to continue the same trajectory.
RESUME_KEYS = ("dataset", "data_dir", "holdout", "val", "lr", "batch_size", "epochs", "seed",
               "lip_reg", "projection", "robust", "eps", "eps_ramp", "kappa", "optimizer",
               "schedule", "augment_shift", "preset")


def _same_setting(key: str, stored, now) -> bool:
    """Paths (``data_dir``) compare as the folders they name, everything else by value."""
    if key == "data_dir" and isinstance(stored, str) and isinstance(now, str):
        return os.path.realpath(stored) == os.path.realpath(now)
    return stored == now


def check_resume_matches(ckpt: dict, model, config, out_dir: str) -> None:
    """``ValueError`` (before anything is written) when the run was made with other settings."""
    have, now = ckpt["model_config"], model.config()
    diff = [f"{k}={have.get(k)!r} (now {now.get(k)!r})"
            for k in sorted(set(have) | set(now)) if have.get(k) != now.get(k)]
    stored_path = os.path.join(out_dir, "config.json")
    if os.path.isfile(stored_path):
        stored = read_run_config(stored_path)
        stored.setdefault("val", 0)  # runs from before --val trained on the whole training part
        stored.setdefault("augment_shift", 0)  # and those from before --augment-shift, unshifted
        diff += [f"{k}={stored.get(k)!r} (now {getattr(config, k)!r})"
                 for k in RESUME_KEYS if k in stored and not _same_setting(k, stored[k],
                                                                           getattr(config, k))]
    if diff:
        raise ValueError("--resume: the run was made with " + ", ".join(diff))
