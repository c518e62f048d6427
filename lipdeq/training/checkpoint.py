r"""Checkpoints in the format of docs/design.md §6, written atomically, loadable with weights_only.

``{"format": "lipdeq-checkpoint", "version": 1, "model": state_dict, "model_config": {...},
"weights": {"A", "B", "b", "C", "c"[, "D"]}, "optimizer": ..., "scheduler": ..., "rng": ...,
"epoch": k}``. ``weights`` holds the effective tensors the fixed point uses (for nemon the built A,
for conv models the kernel), so a checkpoint can be checked without lipdeq.
"""
from __future__ import annotations

import io
import os
from typing import Any

import torch

from ..deq.conv import ImplicitConvNetwork
from ..deq.model import ImplicitNetwork
from ..errors import CheckpointError
from ..io import atomic_write

FORMAT = "lipdeq-checkpoint"
VERSION = 1
ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
#: how far above γ a stored A may measure (float32 rounding of a projected A) before loading it
#: is refused as ill-posed
LOAD_TOL = 1e-6
#: the effective tensors every checkpoint's ``weights`` holds (``D`` too with a feedthrough)
WEIGHT_KEYS = ("A", "B", "b", "C", "c")


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
    """``torch.save`` into memory, then :func:`lipdeq.io.atomic_write` (temporary file in the same
    directory, fsync, ``os.replace``, fsync of the directory): a crash at any moment leaves either
    the old or the new checkpoint, never a partial one. Serialising first keeps a full disk an
    ``OSError`` (:class:`~lipdeq.io.NoSpaceError`, "no space left writing …") rather than the
    RuntimeError torch's zip writer raises when a write fails under it."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getbuffer())


def read_checkpoint(path: str, map_location: Any = "cpu") -> dict:
    """Load and validate a checkpoint dict; ``CheckpointError`` with a one-line reason otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if "cuda" in str(map_location) and not torch.cuda.is_available():
        # torch's message would otherwise read as a corrupt checkpoint
        raise ValueError(f"map_location={map_location!r}: CUDA is not available")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head and head != ZIP_MAGIC:  # a text file, a numpy array ...: not torch.save's zip
        raise CheckpointError(f"{path!r} is not a lipdeq checkpoint (not a torch.save archive)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, wrong file type ...
        first = (str(exc).strip().splitlines() or ["no details"])[0][:120]  # may be empty
        if "weights only load failed" in first.lower() or "unsupported global" in str(exc).lower():
            raise CheckpointError(f"checkpoint {path!r} was refused: it holds Python objects "
                                  f"that would run code when loaded (only tensors and plain "
                                  f"data are accepted)") from None
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
    missing = [k for k in WEIGHT_KEYS if k not in ckpt["weights"]]
    if missing:
        raise CheckpointError(f"checkpoint {path!r}: 'weights' lacks {', '.join(missing)} (it "
                              f"holds the effective {', '.join(WEIGHT_KEYS)}[, D])")
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
    check_well_posed(model, path)
    return model.eval()


@torch.no_grad()
def check_well_posed(model: torch.nn.Module, path: str) -> None:
    """``CheckpointError`` unless every stored tensor is finite and a projected model's A lies
    in its own set: measure(A) ≤ γ + LOAD_TOL·(1 + |γ|) (μ∞ of the kernel for conv models; the
    condition's measure, weights included, for dense ones). Parameterized conditions hold by
    construction. An edited or foreign checkpoint would otherwise load and solve an ill-posed
    fixed point, and its scores would be silently meaningless."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {path!r}: {name!r} holds NaN or Inf")
    cond = model.condition
    if cond.training != "project":
        return
    measure = float(model.mu_inf() if isinstance(model, ImplicitConvNetwork)
                    else cond.measure(model.effective_A().detach().double()))
    if not measure <= cond.gamma + LOAD_TOL * (1 + abs(cond.gamma)):
        raise CheckpointError(f"checkpoint {path!r}: A is outside the model's set "
                              f"({cond.name}: {measure:.6g} > gamma = {cond.gamma:g}); the "
                              f"fixed point may not exist or be unique")


def check_resumable(ckpt: dict, path: str) -> dict:
    """``ckpt`` after checking what resuming reads beyond :func:`read_checkpoint`: the
    ``optimizer`` and ``scheduler`` state dicts, the ``rng`` generator states (uint8 tensors of
    the CPU generator's state size) and, when present, the ``metrics`` row of its epoch."""
    for key in ("optimizer", "scheduler", "rng"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"checkpoint {path!r} cannot be resumed: its {key!r} entry is "
                                  f"missing or not a dict")
    size = torch.get_rng_state().numel()
    for key in ("order", "torch"):
        value = ckpt["rng"].get(key)
        if not (isinstance(value, torch.Tensor) and value.dtype == torch.uint8
                and value.dim() == 1 and value.numel() == size):
            raise CheckpointError(f"checkpoint {path!r} cannot be resumed: rng[{key!r}] must be "
                                  f"a uint8 tensor of {size} bytes (a CPU generator state)")
    from .rundir import is_metrics_row
    row = ckpt.get("metrics")
    if row is not None and not (is_metrics_row(row) and row["epoch"] == ckpt["epoch"]):
        raise CheckpointError(f"checkpoint {path!r} cannot be resumed: its 'metrics' entry must "
                              f"be the metrics row of epoch {ckpt['epoch']} (with 'epoch_s')")
    return ckpt


def restore_training_state(ckpt: dict, path: str, optimizer, scheduler, order_gen) -> None:
    """Load a resumable checkpoint's optimizer, scheduler and generator states (the global torch
    RNG and the batch-order generator ``order_gen``); ``CheckpointError`` when they do not fit
    this run (an edited or foreign checkpoint), never a traceback from deep inside torch."""
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        order_gen.set_state(ckpt["rng"]["order"])
        torch.set_rng_state(ckpt["rng"]["torch"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise CheckpointError(f"checkpoint {path!r} cannot be resumed: its optimizer, scheduler "
                              f"or rng state does not fit this run ({first})") from None
