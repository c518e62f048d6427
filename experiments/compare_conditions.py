"""Train one implicit network per well-posedness condition on mnist-5k with one budget.

Rows: ``mu_inf`` (exact projection, lipdeq's default), ``nemon`` (the authors'
parameterization), ``norm_inf`` (projection onto the older ‖A‖∞ ≤ γ), ``monotone`` (monDEQ's
parameterization), ``lben`` (LBEN's parameterization), ``none`` (unconstrained), and a
convolutional ``mu_inf`` row (exact kernel-space projection). Table: held-out accuracy, ℓ∞ and
ℓ2 Lipschitz bounds, empirical ℓ∞ Lipschitz lower bound, PGD and certified accuracy at ε = 0.1,
forward iterations and epoch time. Writes JSON + markdown + PNG (accuracy vs ℓ∞ bound).
"""
from __future__ import annotations

import argparse
import os

import torch

from experiments._cli import script_main
from experiments.runs import require_trained, train_and_measure
from experiments.timing import markdown_table, write_results

CONDITIONS = ("mu_inf", "nemon", "norm_inf", "monotone", "lben", "none")
COLUMNS = ["row", "accuracy", "lipschitz_bound_inf", "lipschitz_bound_l2", "empirical_lipschitz_inf",
           "pgd_accuracy@0.1", "certified_lipschitz@0.1", "certified_interval@0.1",
           "fwd_iterations", "bwd_iterations", "epoch_s"]
HEADERS = {"row": "model", "accuracy": "held-out acc", "lipschitz_bound_inf": "ℓ∞ bound",
           "lipschitz_bound_l2": "ℓ2 bound", "empirical_lipschitz_inf": "empirical ℓ∞",
           "pgd_accuracy@0.1": "PGD@0.1", "certified_lipschitz@0.1": "cert-Lip@0.1",
           "certified_interval@0.1": "cert-IBP@0.1", "fwd_iterations": "fwd it",
           "bwd_iterations": "bwd it", "epoch_s": "s/epoch"}


def run(*, quick: bool = False, out: str = "results/compare_conditions", epochs: int | None = None,
        seed: int = 0, conv: bool = True, conditions=CONDITIONS, threads: int | None = 1) -> dict:
    if threads:
        torch.set_num_threads(threads)
    epochs = epochs if epochs is not None else (1 if quick else 5)
    budget = dict(epochs=epochs, seed=seed, hidden=16 if quick else 100,
                  holdout=4700 if quick else 1000)
    limit = 100 if quick else 1000
    rows = []
    runs_dir = os.path.join(out, "runs")
    for cond in conditions:
        gamma = 1.0 if cond == "none" else 0.95
        row = require_trained(train_and_measure(os.path.join(runs_dir, cond), condition=cond,
                                                gamma=gamma, eps_list=(0.1,), attack_limit=limit,
                                                **budget), f"dense {cond}")
        row["row"] = f"dense {cond}"
        rows.append(row)
        print(f"{row['row']}: acc {row['accuracy']:.3f}, bound {row['lipschitz_bound_inf']:.4g}, "
              f"{row['epoch_s']:.2f} s/epoch", flush=True)
    if conv:
        # the exact configuration (implicit backward, 28×28 state, batch 100), not the fast
        # --model conv default: this table compares the conditions' models as they are
        row = require_trained(train_and_measure(
            os.path.join(runs_dir, "conv"), model="conv", eps_list=(0.1,), attack_limit=limit,
            backward="implicit", downsample=1,
            **{**budget, "batch_size": 100, "epochs": min(epochs, 1 if quick else 3)},
            **({"channels": 4} if quick else {})), "conv mu_inf")
        row["row"] = "conv mu_inf"
        rows.append(row)
        print(f"{row['row']}: acc {row['accuracy']:.3f}, {row['epoch_s']:.2f} s/epoch", flush=True)
    table = markdown_table(rows, COLUMNS, headers=HEADERS)
    payload = {"budget": budget, "rows": rows, "quick": quick}
    write_results(out, "compare_conditions", payload, table, figure=_figure(rows))
    print(table)
    return payload


def _figure(rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r in rows:
        bound = r["lipschitz_bound_inf"]
        if bound is None or bound == float("inf"):
            bound = r["empirical_lipschitz_inf"]
            ax.scatter([bound], [r["accuracy"]], marker="x", label=f"{r['row']} (empirical, no bound)")
        else:
            ax.scatter([bound], [r["accuracy"]], label=r["row"])
    ax.set_xscale("log")
    ax.set_xlabel("ℓ∞ Lipschitz bound (log)")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="results/compare_conditions")
    p.add_argument("--epochs", type=int, default=None, help="default 5 (--quick: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-conv", action="store_true")


def run_cli(args) -> int:
    if args.epochs is not None and args.epochs < 1:  # 0 silently meant the default; < 0 crashed
        raise ValueError(f"--epochs must be a positive integer, got {args.epochs}")
    run(quick=args.quick, out=args.out, epochs=args.epochs, seed=args.seed, conv=not args.no_conv)
    return 0


def main(argv=None) -> int:
    return script_main("python -m experiments.compare_conditions", __doc__, add_arguments,
                       run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
