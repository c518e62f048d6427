"""Markdown table and residual-trace figure of :mod:`experiments.bench_fixed_point` (split out to
keep modules short)."""
from __future__ import annotations

import math
from typing import Any

import torch

from experiments.bench_fixed_point import CASES
from experiments.timing import markdown_table

TABLE_COLUMNS = ["device", "n", "case", "mu_inf", "norm_inf", "alpha_star", "rate_bound",
                 "solver", "fwd_iterations", "fwd_time_s", "fwd_cpu_s", "bwd_iterations",
                 "bwd_time_s", "bwd_cpu_s", "status"]
TABLE_HEADERS = {"mu_inf": "μ∞(A)", "norm_inf": "‖A‖∞", "alpha_star": "α*",
                 "rate_bound": "1−α*(1−μ⁺)", "fwd_iterations": "fwd iters",
                 "fwd_time_s": "fwd wall s", "fwd_cpu_s": "fwd cpu s",
                 "bwd_iterations": "bwd iters", "bwd_time_s": "bwd wall s",
                 "bwd_cpu_s": "bwd cpu s"}


def summary_markdown(payload: dict[str, Any]) -> str:
    c = payload["config"]
    m = payload["machine"]
    v = m.get("versions") or {}
    head = (f"Fixed-point solvers, ReLU, float64, batch {c['batch']}, tol {c['tol']:g} "
            f"(a-posteriori bound ≤ tol·max(1, ‖x‖∞)), max_iter {c['max_iter']}; "
            f"times: median of {c['repeats']} call(s) (wall) and process CPU per call. "
            f"Backward = the adjoint solve through autograd. Machine: {m.get('cpu_model')}, "
            f"{m.get('logical_cores')} logical cores, torch threads {c['torch_threads']}, "
            f"GPU {m.get('gpu')}; torch {v.get('torch')}.")
    claim_table = markdown_table(
        payload["claim"]["cases"],
        ["device", "n", "case", "norm_inf", "alpha_star", "iterations_average",
         "iterations_picard", "iteration_ratio_picard_over_average",
         "cpu_ratio_picard_over_average", "verdict"],
        headers={"norm_inf": "‖A‖∞", "alpha_star": "α*", "iterations_average": "avg iters",
                 "iterations_picard": "picard iters",
                 "iteration_ratio_picard_over_average": "iters picard/avg",
                 "cpu_ratio_picard_over_average": "cpu picard/avg"})
    return "\n".join([head, "", markdown_table(payload["rows"], TABLE_COLUMNS,
                                               headers=TABLE_HEADERS),
                      "The paper's claim (average iteration vs Picard, forward):", "",
                      claim_table, payload["claim"]["text"], ""])


def make_figure(payload: dict[str, Any]):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = payload["rows"]
    panels = sorted({(r["device"], r["n"], r["case"]) for r in rows},
                    key=lambda k: (k[0], k[1], CASES.index(k[2])))
    ncol = len(CASES)
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow), squeeze=False)
    colors = {"average": "C0", "picard": "C3", "anderson": "C2"}
    for ax, (dev, n, case) in zip(axes.flat, panels):
        for r in rows:
            if (r["device"], r["n"], r["case"]) != (dev, n, case):
                continue
            for key, style, label in (("fwd_trace", "-", "fwd"), ("bwd_trace", "--", "bwd")):
                tr = torch.tensor(r.get(key) or [], dtype=torch.float64)
                if tr.numel() == 0:
                    continue
                # diverging runs: show their climb up to the frame, not 1e300 (axis overflow)
                tr = torch.where(torch.isfinite(tr), tr.clamp(1e-300, 1e30),
                                 torch.full_like(tr, float("nan")))
                ax.semilogy(range(1, tr.numel() + 1), tr.tolist(), style,
                            color=colors[r["solver"]], lw=1.1,
                            label=f"{r['solver']} {label}")
        ax.axhline(payload["config"]["tol"], color="grey", lw=0.6, ls=":")
        ax.set_title(f"{dev} n={n} {case}", fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("residual ‖F(x)−x‖ (max over batch)")
        ax.set_ylim(1e-12, 1e6)
        ax.set_xscale("log")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("Fixed-point residuals (solid: forward ‖·‖∞, dashed: adjoint ‖·‖₁)")
    fig.tight_layout()
    return fig
