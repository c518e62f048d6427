"""Figures of the search-space comparison (:mod:`experiments.search_space`): the fraction of
samples inside each set against σ, and the 2-D slices of docs/math.md §9.4."""
from __future__ import annotations

import math

import numpy as np

from experiments.search_space_sets import CONDITION, DISTRIBUTIONS, TAGS

COLORS = {"E1": "tab:blue", "E2": "tab:orange", "N0": "tab:green", "N": "tab:red",
          "M": "tab:purple", "L": "tab:brown"}

#: drawing order for the slices: larger sets first with thicker boundaries, so boundaries that
#: coincide (e.g. E1 and N0 for δ ≥ 0) show as two-coloured lines
SLICE_ORDER = (("L", 5.0, "-"), ("N", 4.0, "-"), ("M", 3.2, "-"), ("E2", 2.6, "--"),
               ("N0", 1.8, "-"), ("E1", 1.0, "-"))


def plot_slices(ax_vals, masks):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    deltas = list(masks)
    cols = 2
    rows = math.ceil(len(deltas) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 5.0 * rows), squeeze=False)
    for axis, delta in zip(axes.ravel(), deltas):
        for tag, lw, ls in SLICE_ORDER:
            m = masks[delta][tag].astype(float)
            axis.contourf(ax_vals, ax_vals, m, levels=[0.5, 1.5], colors=[COLORS[tag]], alpha=0.10)
            axis.contour(ax_vals, ax_vals, m, levels=[0.5], colors=[COLORS[tag]], linewidths=lw,
                         linestyles=ls)
        axis.set_title(f"A = [[δ, b], [c, δ]],  δ = {delta:g}")
        axis.set_xlabel("b")
        axis.set_ylabel("c")
        axis.set_aspect("equal")
    for axis in axes.ravel()[len(deltas):]:
        axis.set_visible(False)
    handles = [Line2D([], [], color=COLORS[t], lw=lw, ls=ls,
                      label=f"{t}: {CONDITION[t]} ({LABELS[t]})")
               for t, lw, ls in SLICE_ORDER]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9)
    fig.suptitle("Slices of the well-posedness sets at γ = 1 (docs/math.md §9.4): filled = inside, "
                 "overlaps add up; for bc < 0 L is the whole half-plane δ < 1")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return fig


LABELS = {"E1": "‖A‖∞ < 1", "E2": "ρ(|A|) < 1", "N0": "μ∞(A) < 1", "N": "α(M(A)) < 1",
          "M": "μ₂(A) < 1", "L": "LBEN LMI"}


def legend_text() -> str:
    """One line naming every set tag: its ``--condition`` name and its defining inequality."""
    return "Sets: " + "; ".join(f"{t} = {CONDITION[t]} ({LABELS[t]})" for t in TAGS)


def plot_fractions(rows, ns):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    dists = list(DISTRIBUTIONS)
    fig, axes = plt.subplots(len(dists), len(ns), figsize=(3.6 * len(ns), 3.3 * len(dists)),
                             squeeze=False, sharey=True)
    for i, dist in enumerate(dists):
        for axis, n in zip(axes[i], ns):
            sel = [r for r in rows if r["n"] == n and r["distribution"] == dist]
            for tag in TAGS:
                pts = [(r["sigma"], r["fraction"][tag]) for r in sel
                       if r["fraction"][tag] is not None and r["fraction"][tag] > 0]
                if pts:
                    x, y = zip(*pts)
                    axis.plot(x, np.log10(y), "-", color=COLORS[tag], marker=".",
                              label=f"{tag}: {CONDITION[tag]} ({LABELS[tag]})")
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.set_title(f"{'σZ' if dist == 'gaussian' else 'σZ − I'}, n = {n}", fontsize=10)
            axis.set_xlabel("σ")
            axis.grid(alpha=0.3)
        axes[i][0].set_ylabel("log10 fraction inside")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Fraction of Gaussian samples inside each set at γ = 1 (zero fractions not drawn)")
    fig.tight_layout()
    return fig


