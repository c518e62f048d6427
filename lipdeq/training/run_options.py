r"""Training options that cannot be honoured together are refused, never silently ignored.

Two levels (§4):

- :func:`check_combinations` (library, called by ``TrainConfig.validate``): settings whose
  combination would be recorded in ``config.json`` but not done, whatever their origin.
  ``OptionConflict`` (a ``ValueError``) names them.
- :func:`check_explicit_flags` (command line): flags the user typed that the chosen model,
  dataset or training mode does not read (``--hidden`` with a conv model, ``--eps`` without
  ``--robust``, ...). Only flags given explicitly count (``cli._explicit_flags``); a preset or a
  default that sets the same field never trips it.

It also resolves the validation split size (``--val``, :func:`resolve_val`).
"""
from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from ..errors import OptionConflict

#: Conditions under which the ℓ∞ bound ‖C[η]‖∞‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) (``lip_reg``) is
#: guaranteed finite: they keep μ∞,η(A) ≤ γ < 1. Under ``monotone``, ``lben`` and ``none``
#: μ∞(A) is not controlled, the bound becomes +inf as soon as μ∞(A) ≥ 1 and its gradient 0.
LIP_REG_CONDITIONS = ("mu_inf", "norm_inf", "mu_inf_weighted", "nemon", "pf")

#: ``--val`` default: validation examples carved from the training part, per dataset, when the
#: training part keeps at least ``VAL_MIN_TRAIN`` examples after it and a held-out split
#: exists; otherwise 0 (tiny smoke runs such as ``--holdout 4700`` and ``--holdout 0``, whose
#: purpose is to train on all 5,000 digits, get no validation split unless asked).
DEFAULT_VAL = {"mnist-5k": 500, "mnist": 0, "function": 0}
VAL_MIN_TRAIN = 2000


def check_combinations(config) -> None:
    """``OptionConflict`` for settings that would be recorded but not honoured."""
    if config.model == "conv":
        if config.projection != "exact":
            # solvers.project_mu_inf would treat the (c, c, k, k) kernel as a batch of k×k
            # matrices: not the conv operator's μ∞ (conv.py). Only project_kernel is exact.
            raise OptionConflict(
                f"--projection {config.projection} is for dense models: the conv model's kernel "
                f"is projected exactly by its own row structure (use --projection exact)")
        if config.condition != "mu_inf":
            raise OptionConflict(f"--condition {config.condition} is not available with "
                                 f"--model conv (the conv model keeps mu_inf(K) <= gamma only)")
    if config.lip_reg and config.condition not in LIP_REG_CONDITIONS:
        raise OptionConflict(
            f"--lip-reg needs a condition that keeps mu_inf(A) < 1 ({', '.join(LIP_REG_CONDITIONS)}): "
            f"under {config.condition!r} the l_inf bound can be +inf, with gradient 0")
    if config.augment_shift and config.dataset == "function":
        raise OptionConflict("--augment-shift translates images: it applies to mnist/mnist-5k only")
    if config.robust is None and config.eps_ramp is not None:
        raise OptionConflict("--eps-ramp applies to robust training only (add --robust interval)")
    if config.eps_ramp is not None and isinstance(config.epochs, int) and config.eps_ramp > config.epochs:
        raise OptionConflict(f"--eps-ramp {config.eps_ramp} is longer than --epochs "
                             f"{config.epochs}: the training eps would stop at "
                             f"{config.epochs}/{config.eps_ramp} of --eps")
    val = config.val
    if val is not None and (isinstance(val, bool) or not isinstance(val, numbers.Integral)
                            or val < 0):
        raise OptionConflict(f"--val must be an integer >= 0 (0: no validation split), got {val!r}")
    if val and config.dataset == "mnist-5k" and val >= 5000 - config.holdout:
        raise OptionConflict(f"--val {val} leaves no training digits: mnist-5k with --holdout "
                             f"{config.holdout} has {5000 - config.holdout} (use a smaller --val)")


def check_augment_shift(shift) -> None:
    """``ValueError`` unless 0 ≤ shift < 28 (an integer; a 28-pixel shift leaves a blank image,
    and the padding, hence the memory, grows with the shift)."""
    if isinstance(shift, bool) or not isinstance(shift, numbers.Integral) or not 0 <= shift < 28:
        raise ValueError(f"augment_shift (--augment-shift) must be an integer in [0, 27] "
                         f"(pixels), got {shift!r}")


def check_data_fits(config, data) -> None:
    """``ValueError`` when the loaded images do not fit the model or the augmentation: the conv
    model takes 28×28 images, a shift must stay below the image side. Checked on the data
    (an IDX header may hold other sizes), before the run directory is written."""
    size = data.image_size
    holds = (f"dataset {config.dataset!r} holds "
             f"{'x'.join(map(str, size)) + ' images' if size else 'no images'}")
    if config.model == "conv" and size != (28, 28):
        raise ValueError(f"--model conv takes 28x28 images; {holds}")
    if config.augment_shift and (size is None or config.augment_shift >= min(size)):
        raise ValueError(f"--augment-shift {config.augment_shift} needs images larger than the "
                         f"shift; {holds}")


#: flag → (field it sets, predicate on the final config telling when the flag is read).
_READ_WHEN = {
    "hidden": ("--hidden", lambda c: c.model == "dense",
               "applies to --model dense (the conv state size is --channels)"),
    "channels": ("--channels", lambda c: c.model == "conv", "applies to --model conv only"),
    "kernel_size": ("--kernel-size", lambda c: c.model == "conv", "applies to --model conv only"),
    "eps": ("--eps", lambda c: c.robust is not None,
            "applies to robust training only (add --robust interval)"),
    "kappa": ("--kappa", lambda c: c.robust is not None,
              "applies to robust training only (add --robust interval)"),
    "eps_ramp": ("--eps-ramp", lambda c: c.robust is not None,
                 "applies to robust training only (add --robust interval)"),
    "holdout": ("--holdout", lambda c: c.dataset == "mnist-5k",
                "applies to --dataset mnist-5k only (mnist is scored on its t10k files, function on "
                "its own test grid)"),
    "data_dir": ("--data-dir", lambda c: c.dataset == "mnist",
                 "applies to --dataset mnist only (mnist-5k is embedded, function synthetic)"),
    "gamma": ("--gamma", lambda c: c.condition != "none",
              "has no effect with --condition none (A is unconstrained)"),
    "condition": ("--condition", lambda c: c.model == "dense" or c.condition == "mu_inf",
                  "is not available with --model conv (mu_inf only)"),
}


def check_explicit_flags(config, given: set[str]) -> None:
    """``OptionConflict`` naming the first flag in ``given`` (field names the user typed) that
    ``config`` (after presets) would not read. Called before anything is written."""
    for field, (flag, read, why) in _READ_WHEN.items():
        if field in given and not read(config):
            raise OptionConflict(f"{flag} {why}: it would be ignored")


def resolve_val(config) -> int:
    """The validation split size: ``config.val``, or for ``None`` the dataset's default
    (:data:`DEFAULT_VAL`, used only when ``VAL_MIN_TRAIN`` training examples remain)."""
    if config.val is not None:
        return int(config.val)
    n = DEFAULT_VAL.get(config.dataset, 0)
    if config.dataset == "mnist-5k":
        if config.holdout == 0 or 5000 - config.holdout - n < VAL_MIN_TRAIN:
            return 0
    return n


@torch.no_grad()
def validation_metrics(model, split, device: str, batch_size: int = 1000) -> dict:
    """``val_accuracy`` (None for regression) and ``val_loss`` (mean cross-entropy, or MSE) on
    the validation split, in eval mode; both None without one."""
    if split is None:
        return {"val_accuracy": None, "val_loss": None}
    model.eval()
    cls = split.targets.dtype == torch.int64
    loss, correct = 0.0, 0
    for start in range(0, len(split), batch_size):
        u = split.inputs[start:start + batch_size].to(device)
        t = split.targets[start:start + batch_size].to(device)
        y = model(u)
        if cls:
            loss += float(F.cross_entropy(y, t, reduction="sum"))
            correct += int((y.argmax(1) == t).sum())
        else:
            loss += float(((y - t) ** 2).sum())
    n = len(split)
    return {"val_accuracy": correct / n if cls else None, "val_loss": loss / n}


def epoch_line(row: dict) -> str:
    """One progress line per epoch. With a validation split it shows the validation accuracy,
    not the held-out one (still in ``metrics.jsonl``): choices made while watching training
    should see only the split that is meant for them."""
    parts = [f"epoch {row['epoch']}", f"loss {row['train_loss']:.4f}"]
    if row.get("val_accuracy") is not None:
        parts.append(f"val acc {row['val_accuracy']:.4f}")
    elif row.get("test_accuracy") is not None:
        parts.append(f"test acc {row['test_accuracy']:.4f}")
    parts += [f"mu_inf {row['mu_inf']:.4f}", f"Lip_inf {row['lipschitz_bound_inf']:.4g}",
              f"fwd/bwd it {row['fwd_iterations']:.1f}/{row['bwd_iterations']:.1f}",
              f"{row['epoch_s']:.2f}s"]
    return " | ".join(parts)
