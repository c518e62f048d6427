r"""Checkpoints in the format of CONVENTIONS §3, written atomically, loadable with weights_only.

``{"format": "lipdeq-checkpoint", "version": 1, "model": state_dict, "model_config": {...},
"weights": {"A", "B", "b", "C", "c"[, "D"]}, "optimizer": ..., "scheduler": ..., "rng": ...,
"epoch": k}``. ``weights`` holds the effective tensors the fixed point uses (for nemon the built A,
for conv models the kernel), so a checkpoint can be checked without lipdeq.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import torch

from ..deq.conv import ImplicitConvNetwork
from ..deq.model import ImplicitNetwork
from ..errors import CheckpointError

FORMAT = "lipdeq-checkpoint"
VERSION = 1


def build_model(model_config: dict) -> torch.nn.Module:
    """Build a model from its ``config()`` dict (key ``model``: ``dense`` (default) or ``conv``)."""
    cfg = dict(model_config)
    kind = cfg.pop("model", "dense")
    if kind == "dense":
        return ImplicitNetwork(**cfg)
    if kind == "conv":
        return ImplicitConvNetwork(**cfg)
    raise ValueError(f"model must be 'dense' or 'conv', got {kind!r}")


def save_checkpoint(path: str, payload: dict) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then ``os.replace``:
    a crash at any moment leaves either the old or the new checkpoint, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            # mkstemp creates the file 0600; give the checkpoint the mode a plain open() would
            # (0666 minus the umask), like the run's other files.
            _chmod_default(fh.fileno())
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def _chmod_default(fd: int) -> None:
    if not hasattr(os, "fchmod"):  # pragma: no cover - Windows
        return
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)


def _fsync_dir(directory: str) -> None:
    """Make the rename durable (best effort; not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Load and validate a checkpoint dict; ``CheckpointError`` with a one-line reason otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, wrong file type ...
        first = (str(exc).strip().splitlines() or ["no details"])[0][:120]  # may be empty
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated "
                              f"({type(exc).__name__}: {first})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a lipdeq checkpoint")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path!r} has checkpoint version {ckpt.get('version')!r}, "
                              f"this lipdeq reads version {VERSION}")
    for key in ("model", "model_config", "weights", "epoch"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path!r} lacks the {key!r} entry")
    for key in ("model", "model_config", "weights"):
        if not isinstance(ckpt[key], dict):
            raise CheckpointError(f"checkpoint {path!r}: {key!r} must be a dict, "
                                  f"got {type(ckpt[key]).__name__}")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["weights"].values()):
        raise CheckpointError(f"checkpoint {path!r}: 'weights' must map names to tensors")
    if isinstance(ckpt["epoch"], bool) or not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        raise CheckpointError(f"checkpoint {path!r}: 'epoch' must be a non-negative integer, "
                              f"got {ckpt['epoch']!r}")
    return ckpt


def load_checkpoint(path: str, map_location: Any = "cpu") -> torch.nn.Module:
    """Rebuild the model stored in a checkpoint (in eval mode): the one entry point for every model
    class (dense :class:`ImplicitNetwork` or :class:`ImplicitConvNetwork`, from ``model_config``)."""
    ckpt = read_checkpoint(path, map_location)
    try:
        model = build_model(ckpt["model_config"])
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"checkpoint {path!r} does not match its model config: "
                              f"{first}") from None
    return model.eval()
