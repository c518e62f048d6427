r"""Choose the ``accurate`` and ``robust`` presets on the validation split only.

Every configuration is trained with ``lipdeq train`` semantics (:func:`lipdeq.training.loop.train`)
on the mnist-5k training digits minus a validation split carved from them (``--val``, default 500),
and measured on that validation split only: clean accuracy, PGD accuracy (20 steps) and certified
(interval) accuracy at ε = 0.1. Nothing here evaluates the held-out digits.

Selection rules (stated before running):

* ``accurate``: the highest validation accuracy among the Lipschitz-unregularized runs;
* ``robust``: among interval-trained runs with validation clean accuracy ≥ ``--min-clean``
  (default 0.90), the highest validation ``certified@0.1 + PGD@0.1`` (ties: higher clean
  accuracy).

Writes ``tuning.{json,md}`` under ``--out`` (the tuning log: every configuration tried, with its
validation metrics and the choice), through :func:`experiments.timing.write_results`.

    python -m experiments.tune_presets [--quick] [--out DIR] [--val N] [--seed S]
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any

from experiments._cli import report, script_main, train_or_resume

NAME = "tuning"
DEFAULT_OUT = "docs/tuning"
EPS = 0.1

#: The grids (width 100, γ = 0.95, batch 100, Adam with a cosine schedule).
ACCURATE_GRID = [dict(lr=lr, epochs=10, lip_reg=0.0) for lr in (3e-3, 1e-2, 3e-2)]
ROBUST_GRID = [dict(robust="interval", eps=eps, kappa=kappa, lr=1e-2, epochs=20)
               for eps in (0.1, 0.12, 0.15) for kappa in (0.3, 0.5)]


def validation_metrics(model, split, *, steps: int = 20, restarts: int = 1, seed: int = 0,
                       with_soundness: bool = False) -> dict:
    """Clean, PGD@ε (``steps``, ``restarts`` starts) and certified-interval@ε accuracy on the
    validation split (fractions); with ``with_soundness`` also the soundness violations."""
    from lipdeq.cli.robustness import robustness_metrics
    from lipdeq.training.loop import evaluate
    out = {"val_accuracy": evaluate(model, split)["accuracy"]}
    r = robustness_metrics(model, split, attack="pgd", eps=EPS, steps=steps, restarts=restarts,
                           certify="interval", seed=seed)
    out["val_pgd@0.1"] = r["attack_accuracy"]
    out["val_certified_interval@0.1"] = r["certified_accuracy_interval"]
    if with_soundness:
        out["soundness_violations"] = r["soundness_violations"]
    return out


def run_grid(grid: list[dict], out_dir: str, *, base: dict, robust: bool, progress=print) -> list[dict]:
    from lipdeq.training.checkpoint import load_checkpoint
    from lipdeq.training.data import load_dataset
    from lipdeq.training.loop import TrainConfig
    rows = []
    for i, cfg in enumerate(grid):
        config = TrainConfig(**{**base, **cfg})
        run_dir = os.path.join(out_dir, "runs", f"{'robust' if robust else 'accurate'}-{i}")
        t0 = time.perf_counter()
        train_or_resume(config, run_dir)
        model = load_checkpoint(os.path.join(run_dir, "last.pt"))
        data = load_dataset(config.dataset, holdout=config.holdout, val=config.val, splits=("val",))
        row = {"config": cfg, "train_s": time.perf_counter() - t0}
        row.update(validation_metrics(model, data.val, seed=config.seed))
        progress(f"{'robust' if robust else 'accurate'} {i + 1}/{len(grid)} {cfg}: "
                 + " ".join(f"{k} {v:.3f}" for k, v in row.items() if k.startswith("val_")))
        rows.append(row)
    return rows


def choose(accurate: list[dict], robust: list[dict], min_clean: float) -> dict[str, Any]:
    best_acc = max(accurate, key=lambda r: r["val_accuracy"])
    eligible = [r for r in robust if r["val_accuracy"] >= min_clean] or robust
    best_rob = max(eligible, key=lambda r: (r["val_certified_interval@0.1"] + r["val_pgd@0.1"],
                                            r["val_accuracy"]))
    return {"accurate": best_acc["config"], "robust": best_rob["config"],
            "robust_eligible": len([r for r in robust if r["val_accuracy"] >= min_clean])}


def table(rows: list[dict], kind: str) -> str:
    lines = [f"| {kind} configuration | val clean | val PGD@0.1 | val cert-IBP@0.1 | train s |",
             "|---|---|---|---|---|"]
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items())
        lines.append(f"| {cfg} | {r['val_accuracy']:.3f} | {r['val_pgd@0.1']:.3f} | "
                     f"{r['val_certified_interval@0.1']:.3f} | {r['train_s']:.0f} |")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--val", type=int, default=500, help="validation digits carved from training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-clean", type=float, default=0.90)
    p.add_argument("--quick", action="store_true", help="tiny grid on 300 digits: a schema check")


def run_cli(args) -> int:
    import torch
    torch.set_num_threads(1)
    if not 0 <= args.min_clean <= 1:  # NaN fails this too (it accepted NaN and chose from all runs)
        raise ValueError(f"--min-clean must be an accuracy in [0, 1], got {args.min_clean}")
    if args.val < 1:
        raise ValueError(f"--val must be >= 1 (selection needs a validation split), got {args.val}")
    base = dict(dataset="mnist-5k", hidden=100, seed=args.seed, val=args.val)
    acc_grid, rob_grid = ACCURATE_GRID, ROBUST_GRID
    if args.quick:
        base.update(hidden=16, holdout=4700, val=100)
        acc_grid = [dict(g, epochs=1) for g in ACCURATE_GRID[:2]]
        rob_grid = [dict(g, epochs=1) for g in ROBUST_GRID[:2]]
    t0 = time.perf_counter()
    accurate = run_grid(acc_grid, args.out, base=base, robust=False)
    robust = run_grid(rob_grid, args.out, base=base, robust=True)
    chosen = choose(accurate, robust, args.min_clean)
    md = (f"# Preset tuning (validation split only: {base['val']} training digits; held-out digits "
          f"untouched)\n\nSelection: accurate = max val accuracy; robust = max val (cert-IBP@0.1 + "
          f"PGD@0.1) among runs with val clean >= {args.min_clean}.\n\n{table(accurate, 'accurate')}"
          f"\n\n{table(robust, 'robust')}\n\nChosen: accurate = {chosen['accurate']}; "
          f"robust = {chosen['robust']}\n")
    payload = {"base": base, "eps": EPS, "min_clean": args.min_clean, "accurate": accurate,
               "robust": robust, "chosen": chosen, "runtime_s": time.perf_counter() - t0,
               "quick": args.quick}
    return report(args.out, NAME, payload, md)


def main(argv: list[str] | None = None) -> int:
    return script_main(f"experiments.{NAME}", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
