r"""Choose the fast conv configuration on the validation split only (issue 16, items 1–4).

Each configuration of ``GRID`` trains the conv implicit network for 3 epochs with ``lipdeq train``
semantics (:func:`lipdeq.training.loop.train`: 3×3 kernel, 7×7 input kernel, γ = 0.95, tol 1e-3,
Adam lr 1e-2 with a cosine schedule) on the mnist-5k training digits minus the validation split
(``--val``, default 500), once per seed in ``--seeds`` (default 0 1: a 500-digit validation
accuracy has a standard error near 1 point, so one seed cannot separate the candidates). Read
from each run: the validation accuracy after the last epoch and the CPU (process) seconds of the
run per epoch, one torch thread. ``today`` (average iteration, implicit backward, 28×28 state,
batch 100) is in the grid as the cost reference.

Selection rule (stated before running): among configurations whose mean CPU s/epoch is at most
``--max-ratio`` (0.25) × today's mean, the highest mean validation accuracy (ties: the cheaper).
The held-out digits are not read here (``train`` logs their accuracy; this script ignores it).
``--grid accuracy`` is a sensitivity check around the chosen default (``fast``: the
``CONV_DEFAULTS`` of ``lipdeq train --model conv``): one setting changed at a time (random-shift
augmentation, learning rate, batch, width, γ, kernel), same base, same validation split. It
chooses nothing; it reports each variant's mean validation accuracy and its paired difference to
``fast`` (same seed, same 500 digits) with the standard error over seeds, and writes
``conv_accuracy.{json,md}``. A run's row is cached in ``runs/speed-<name>-s<seed>/row.json``,
so disjoint ``--only`` shards can
run in parallel processes; a final call without ``--only`` collects them and writes
``conv_speed.{json,md}`` under ``--out``.

    python -m experiments.tune_conv_speed [--grid speed|accuracy] [--only a,b] [--seeds 0 1]
                                          [--out DIR] [--quick]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

from experiments._cli import cached_row, report, script_main, train_or_resume

NAME = "conv_speed"
DEFAULT_OUT = "docs/tuning"
BASE = dict(dataset="mnist-5k", model="conv", kernel_size=3, lr=1e-2, epochs=3, tol=1e-3)
TODAY = dict(solver="average", backward="implicit", downsample=1, channels=32, batch_size=100)
JFB2 = dict(TODAY, backward="jacobian-free", downsample=2)
IMP2 = dict(TODAY, downsample=2)
GRID = {
    "today": TODAY,
    "jfb-ds2": JFB2,
    "jfb-ds2-b50": dict(JFB2, batch_size=50),
    "jfb-ds2-b25": dict(JFB2, batch_size=25),
    "jfb-ds2-b50-c48": dict(JFB2, batch_size=50, channels=48),
    "jfb-ds2-b50-c64": dict(JFB2, batch_size=50, channels=64),
    "implicit-ds2": IMP2,
    "implicit-ds2-b50": dict(IMP2, batch_size=50),
    "implicit-ds2-b50-c48": dict(IMP2, batch_size=50, channels=48),
}
FAST = dict(JFB2, batch_size=25)  # the chosen fast path: lipdeq.training.loop.CONV_DEFAULTS
ACCURACY_GRID = {"fast": FAST, "fast-shift1": dict(FAST, augment_shift=1),
                 "fast-shift2": dict(FAST, augment_shift=2), "fast-lr5e-3": dict(FAST, lr=5e-3),
                 "fast-lr2e-2": dict(FAST, lr=2e-2), "fast-b10": dict(FAST, batch_size=10),
                 "fast-c40": dict(FAST, channels=40), "fast-c48": dict(FAST, channels=48),
                 "fast-gamma0.9": dict(FAST, gamma=0.9), "fast-gamma0.99": dict(FAST, gamma=0.99),
                 "fast-k5": dict(FAST, kernel_size=5)}
GRIDS = {"speed": GRID, "accuracy": ACCURACY_GRID}


def run_one(name: str, seed: int, out_dir: str, base: dict, override: dict | None = None,
            grid: dict | None = None) -> dict:
    """Train one (configuration of ``grid``, default ``GRID``; seed) and return its row (cached
    in ``row.json``); ``override`` (``--quick``) replaces configuration values."""
    from lipdeq.io import write_json
    from lipdeq.training.loop import TrainConfig
    cfg = dict((grid or GRID)[name], seed=seed, **(override or {}))
    run_dir = os.path.join(out_dir, "runs", f"speed-{name}-s{seed}")
    cached = cached_row(run_dir, config=cfg, base=base)
    if cached is not None:
        return cached
    config = TrainConfig(**{**base, **cfg})
    c0, t0 = time.process_time(), time.perf_counter()
    metrics = train_or_resume(config, run_dir)
    cpu = time.process_time() - c0
    row = {"name": name, "config": cfg, "base": base, "train_cpu_s": cpu,
           "train_wall_s": time.perf_counter() - t0, "epoch_cpu_s": cpu / config.epochs,
           "val_accuracy": metrics[-1]["val_accuracy"],
           "train_accuracy": metrics[-1]["train_accuracy"],
           "val_accuracy_by_epoch": [m["val_accuracy"] for m in metrics],
           "fwd_iterations": metrics[-1]["fwd_iterations"],
           "bwd_iterations": metrics[-1]["bwd_iterations"]}
    write_json(os.path.join(run_dir, "row.json"), row)
    print(f"{name} seed {seed}: val {row['val_accuracy']:.3f}, {row['epoch_cpu_s']:.1f} CPU s/epoch",
          flush=True)
    return row


def summarize(rows: list[dict], max_ratio: float) -> tuple[list[dict], str | None]:
    """One line per configuration (means over seeds) and the chosen name (None: nothing fits)."""
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    today = statistics.mean(r["epoch_cpu_s"] for r in by_name.get("today", [])) \
        if "today" in by_name else None
    lines = []
    for name, rs in by_name.items():
        config = {k: v for k, v in rs[0]["config"].items() if k != "seed"}
        cpu = statistics.mean(r["epoch_cpu_s"] for r in rs)
        lines.append({"name": name, "config": config, "seeds": [r["config"]["seed"] for r in rs],
                      "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in rs),
                      "val_accuracy": [r["val_accuracy"] for r in rs], "epoch_cpu_s": cpu,
                      "cpu_ratio_vs_today": cpu / today if today else None,
                      "fwd_iterations": statistics.mean(r["fwd_iterations"] for r in rs),
                      "bwd_iterations": statistics.mean(r["bwd_iterations"] for r in rs)})
    fits = [ln for ln in lines if ln["name"] != "today" and ln["cpu_ratio_vs_today"] is not None
            and ln["cpu_ratio_vs_today"] <= max_ratio]
    chosen = max(fits, key=lambda ln: (ln["val_accuracy_mean"], -ln["epoch_cpu_s"]))["name"] \
        if fits else None
    return lines, chosen


def table(lines: list[dict]) -> str:
    out = ["| config | channels | batch | backward | downsample | val accuracy (per seed) | mean | "
           "CPU s/epoch | vs today | fwd it | bwd it |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ln in lines:
        c = ln["config"]
        ratio = "" if ln["cpu_ratio_vs_today"] is None else f"{ln['cpu_ratio_vs_today']:.3f}"
        out.append(f"| {ln['name']} | {c['channels']} | {c['batch_size']} | {c['backward']} | "
                   f"{c['downsample']} | {' / '.join(f'{v:.3f}' for v in ln['val_accuracy'])} | "
                   f"{ln['val_accuracy_mean']:.4f} | {ln['epoch_cpu_s']:.2f} | {ratio} | "
                   f"{ln['fwd_iterations']:.1f} | {ln['bwd_iterations']:.1f} |")
    return "\n".join(out)


def paired_differences(rows: list[dict], reference: str = "fast") -> list[dict]:
    """Per variant: mean validation accuracy and the paired difference to ``reference`` (same
    seed, same validation digits), mean ± standard error over seeds (None with one seed)."""
    ref = {r["config"]["seed"]: r["val_accuracy"] for r in rows if r["name"] == reference}
    by_name: dict[str, list[dict]] = {}
    for r in rows:
        by_name.setdefault(r["name"], []).append(r)
    out = []
    for name, rs in by_name.items():
        diffs = [r["val_accuracy"] - ref[r["config"]["seed"]] for r in rs if r["config"]["seed"] in ref]
        se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
        out.append({"name": name, "change": {k: v for k, v in rs[0]["config"].items()
                                             if k != "seed" and FAST.get(k, BASE.get(k)) != v},
                    "val_accuracy": [r["val_accuracy"] for r in rs],
                    "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in rs),
                    "diff_mean": statistics.mean(diffs) if diffs else None, "diff_se": se,
                    "train_accuracy_mean": statistics.mean(r.get("train_accuracy", math.nan)
                                                           for r in rs),
                    "epoch_cpu_s": statistics.mean(r["epoch_cpu_s"] for r in rs)})
    return out


def accuracy_table(lines: list[dict]) -> str:
    out = ["| variant | change | val accuracy (per seed) | mean | vs fast (paired, ± s.e.) | "
           "train accuracy (mean) | CPU s/epoch |", "|---|---|---|---|---|---|---|"]
    for ln in lines:
        diff = "" if ln["diff_mean"] is None else f"{100 * ln['diff_mean']:+.2f}" + (
            "" if ln["diff_se"] is None else f" ± {100 * ln['diff_se']:.2f}")
        change = ", ".join(f"{k}={v}" for k, v in ln["change"].items()) or "—"
        out.append(f"| {ln['name']} | {change} | {' / '.join(f'{v:.3f}' for v in ln['val_accuracy'])}"
                   f" | {ln['val_accuracy_mean']:.4f} | {diff} | {ln['train_accuracy_mean']:.4f} | "
                   f"{ln['epoch_cpu_s']:.2f} |")
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", default="speed", choices=sorted(GRIDS),
                   help="speed: choose the fast path; accuracy: one-change variants of it (no choice)")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--val", type=int, default=500, help="validation digits carved from training")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--max-ratio", type=float, default=None,
                   help="--grid speed: the cost cap vs today's CPU s/epoch (default 0.25)")
    p.add_argument("--only", default=None, help="comma-separated configuration names (a shard)")
    p.add_argument("--quick", action="store_true", help="1 epoch on 200 training digits, 4 channels: a schema check")


def run_cli(args) -> int:
    import torch
    torch.set_num_threads(1)
    if args.val < 1:
        raise ValueError(f"--val must be >= 1 (selection needs a validation split), got {args.val}")
    grid = GRIDS[args.grid]
    if args.max_ratio is not None and args.grid != "speed":
        raise ValueError("--max-ratio applies to --grid speed (the accuracy grid chooses nothing)")
    args.max_ratio = 0.25 if args.max_ratio is None else args.max_ratio
    if not (args.max_ratio > 0 and math.isfinite(args.max_ratio)):
        raise ValueError(f"--max-ratio must be positive and finite, got {args.max_ratio}")
    names = list(grid) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise ValueError(f"--only must name configurations among {list(grid)}, got {unknown}")
    base = dict(BASE, val=args.val)
    override = None
    if args.quick:
        base.update(holdout=4700, val=100, epochs=1, tol=1e-2)
        override = dict(channels=4)
        names = list(grid)[:2] if args.only is None else names
    rows = [run_one(name, seed, args.out, base, override, grid) for name in names
            for seed in args.seeds]
    if args.only is not None:
        return 0
    if args.grid == "accuracy":
        lines = paired_differences(rows)
        md = (f"# Conv fast path: one-change variants (validation split only: {base['val']} training "
              f"digits; held-out digits not read)\n\nBase: {base}; reference `fast` = {FAST}; seeds "
              f"{args.seeds}; 1 torch thread. A sensitivity check: nothing is chosen from it.\n\n"
              f"{accuracy_table(lines)}\n")
        return report(args.out, "conv_accuracy", {"base": base, "reference": FAST,
                                                  "seeds": args.seeds, "variants": lines,
                                                  "runs": rows, "quick": args.quick}, md)
    lines, chosen = summarize(rows, args.max_ratio)
    md = (f"# Conv fast-path choice (validation split only: {base['val']} training digits; "
          f"held-out digits not read)\n\nBase: {base}; seeds {args.seeds}; 1 torch thread; CPU s/epoch "
          f"is the process time of the run over its epochs (validation and held-out evaluation "
          f"included). Selection: the highest mean validation accuracy among configurations at most "
          f"{args.max_ratio}× today's CPU s/epoch.\n\n{table(lines)}\n\nChosen: {chosen}\n")
    return report(args.out, NAME, {"base": base, "seeds": args.seeds, "max_ratio": args.max_ratio,
                                   "configs": lines, "runs": rows, "chosen": chosen,
                                   "quick": args.quick}, md)


def main(argv: list[str] | None = None) -> int:
    return script_main(f"experiments.tune_{NAME}", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    raise SystemExit(main())
