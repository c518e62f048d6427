"""PNG plots of run directories (matplotlib, Agg backend; nothing is shown on screen)."""
from __future__ import annotations

import os

from ..errors import DataError
from ..io import write_figure

REQUIRED_KEYS = frozenset({"epoch", "train_loss", "mu_inf", "lipschitz_bound_inf",
                           "fwd_iterations", "bwd_iterations"})


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def read_metrics(run_dir: str) -> list[dict]:
    """The run's metrics rows (:func:`lipdeq.training.rundir.read_metrics`, the one reader:
    a torn last line dropped, anything else malformed refused), each with the keys plotted."""
    from ..training.rundir import read_metrics as read_rows
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise DataError(f"{run_dir!r} has no metrics.jsonl (not a lipdeq run directory?)")
    rows = read_rows(path)
    for k, row in enumerate(rows):
        if not REQUIRED_KEYS <= set(row):
            raise DataError(f"{path!r} row {k + 1} lacks metrics keys "
                            f"{sorted(REQUIRED_KEYS - set(row))}")
    if not rows:
        raise DataError(f"{path!r} has no finished epoch yet")
    return rows


def plot_output(run_dir: str, output: str | None) -> str:
    """Where the PNG goes: ``output`` (a file, or an existing directory → ``DIR/curves.png``),
    default ``RUN_DIR/curves.png``; a missing parent directory is refused before any plotting."""
    from .common import _check_output_file, _run_files
    if output is None:
        return os.path.join(run_dir, "curves.png")
    if os.path.isdir(output):
        output = os.path.join(output, "curves.png")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise DataError(f"--out {output!r}: directory {parent!r} does not exist")
    # the run's own files (also through a link or '..') are never replaced, as for evaluate
    _check_output_file(output, "--out", keep=_run_files(os.path.join(run_dir, "last.pt")))
    return output


def plot_run(run_dir: str, output: str | None = None) -> str:
    """Loss, accuracy, μ∞(A), ℓ∞ Lipschitz bound and iterations per epoch → ``curves.png``."""
    rows = read_metrics(run_dir)
    output = plot_output(run_dir, output)
    plt = _pyplot()
    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    axes[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train loss")
    axes[0].set_title("loss")
    for key in ("train_accuracy", "test_accuracy"):
        vals = [r.get(key) for r in rows]
        if any(v is not None for v in vals):
            axes[1].plot(ep, [float("nan") if v is None else v for v in vals], "o-",
                         label=key.replace("_", " "))
    axes[1].set_title("accuracy")
    if any(r.get("test_mse") is not None for r in rows):  # regression runs (function dataset)
        axes[0].plot(ep, [float("nan") if r.get("test_mse") is None else r["test_mse"]
                          for r in rows], "s-", label="test MSE")
        if not axes[1].lines:
            axes[1].set_visible(False)
    axes[2].semilogy(ep, [float("nan") if r["lipschitz_bound_inf"] is None else  # null: infinite
                          r["lipschitz_bound_inf"] for r in rows], "o-", label="ℓ∞ bound")
    axes[2].set_title("ℓ∞ Lipschitz bound")
    axes[3].plot(ep, [r["fwd_iterations"] for r in rows], "o-", label="forward")
    axes[3].plot(ep, [r["bwd_iterations"] for r in rows], "s-", label="backward")
    axes[3].set_title("mean iterations")
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:  # an empty legend() warns on stderr
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{os.path.basename(os.path.abspath(run_dir))}: μ∞(A) = {rows[-1]['mu_inf']:.4f}")
    fig.tight_layout()
    write_figure(output, fig)
    return output
