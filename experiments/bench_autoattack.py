r"""Benchmark of AutoAttack's two backends on an implicit conv model: ART's attacks against
lipdeq's own torch APGD and Square (:func:`lipdeq.certify.autoattack.autoattack`, ``backend``).

On an implicit model every model evaluation is a fixed-point solve (and a gradient adds the
adjoint solve), so an attack's cost is its number of evaluations. For each backend (ART only when
installed) and attack (``apgd-ce`` for ``--apgd-steps`` steps, ``square`` for ``--square-queries``
queries) on the first ``--n`` digits of the mnist-5k *validation* split (500 digits carved from
the training part, as ``lipdeq train --val 500``; the held-out digits are not touched), ε = 0.1:

* ``evals_per_step`` — examples pushed through the model per example and step/query (counted by a
  forward pre-hook), and ``grads_per_step`` those with a graph (a gradient evaluation);
* ``cpu_ms_per_step`` — process CPU milliseconds per example and step/query (``--threads``
  torch threads, default 1); ``wall_s``;
* ``robust_accuracy`` — what the run left unbroken (both backends are checked by lipdeq's own
  forward pass; with this few steps it is not a robustness measurement).

Model: ``--checkpoint`` (a ``lipdeq train`` checkpoint), else ``lipdeq train --model conv
--epochs 1 --val 500`` (the conv fast path, 32 channels, one epoch on the training digits minus
the validation split), trained in a temporary folder. ``--quick``: 8 digits, 3 steps,
5 queries, 8 channels (a schema check). Writes ``bench_autoattack.{json,md,png}`` under ``--out``.

    python -m experiments.bench_autoattack [--checkpoint last.pt] [--n 100] [--apgd-steps 10]
        [--square-queries 50] [--threads 1] [--quick] [--out DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from experiments._cli import script_main

NAME = "bench_autoattack"
DEFAULT_OUT = "results/bench_autoattack"
EPS = 0.1
DEFAULTS = dict(n=100, apgd_steps=10, square_queries=50, channels=32)
QUICK = dict(n=8, apgd_steps=3, square_queries=5, channels=8)
COLUMNS = ["backend", "attack", "steps", "n", "evals_per_step", "grads_per_step",
           "cpu_ms_per_step", "wall_s", "robust_accuracy"]


def _model(checkpoint: str | None, channels: int):
    import os
    import tempfile
    from lipdeq.training.checkpoint import load_checkpoint
    from lipdeq.training.loop import TrainConfig, train
    if checkpoint is not None:
        return load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as run_dir:  # the conv fast path, one epoch
        train(TrainConfig(dataset="mnist-5k", model="conv", channels=channels, epochs=1, val=500),
              run_dir, progress=False)
        return load_checkpoint(os.path.join(run_dir, "last.pt"))


def measure(model, u, labels, backend: str, attack: str, steps: int) -> dict[str, Any]:
    """One attack of one backend: evaluations, CPU time and what it left unbroken."""
    import torch
    from lipdeq.certify.autoattack import autoattack
    seen = {"rows": 0, "grad_rows": 0}

    def count(_module, args):
        seen["rows"] += args[0].shape[0]
        seen["grad_rows"] += args[0].shape[0] if torch.is_grad_enabled() else 0

    option = dict(apgd_steps=steps) if attack.startswith("apgd") else dict(square_queries=steps)
    handle = model.register_forward_pre_hook(count)
    try:
        c0, t0 = time.process_time(), time.perf_counter()
        res = autoattack(model, u, labels, EPS, attacks=(attack,), backend=backend, **option)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    finally:
        handle.remove()
    work = len(u) * steps
    return dict(backend=backend, attack=attack, steps=steps, n=len(u),
                evals_per_step=seen["rows"] / work, grads_per_step=seen["grad_rows"] / work,
                cpu_ms_per_step=1e3 * cpu / work, wall_s=wall, robust_accuracy=res.robust_accuracy)


def run(quick: bool = False, out: str | Path | None = DEFAULT_OUT, device: str = "cpu", *,
        checkpoint: str | None = None, n: int | None = None, apgd_steps: int | None = None,
        square_queries: int | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Run the benchmark (module docstring); write its files under ``out`` unless None."""
    from experiments.timing import markdown_table, num_threads, write_results
    from lipdeq.certify.autoattack import AttackLibraryMissing, require_art
    from lipdeq.training.data import load_dataset
    cfg = dict(QUICK if quick else DEFAULTS)
    cfg.update({k: v for k, v in dict(n=n, apgd_steps=apgd_steps,
                                      square_queries=square_queries).items() if v is not None})
    for k in ("n", "apgd_steps", "square_queries"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ValueError(f"{k} must be a positive integer, got {cfg[k]!r}")
    try:
        require_art()
        backends = ("art", "torch")
    except AttackLibraryMissing:
        backends = ("torch",)
    val = load_dataset("mnist-5k", holdout=1000, val=500, splits=("train",)).val
    if cfg["n"] > len(val):
        raise ValueError(f"n must be at most {len(val)} (the validation split), got {cfg['n']}")
    model = _model(checkpoint, cfg["channels"]).to(device)
    cfg["channels"] = getattr(model, "channels", None)  # a checkpoint's own width
    u, labels = val.inputs[:cfg["n"]].to(device), val.targets[:cfg["n"]].to(device)
    rows = []
    with num_threads(threads):
        for attack, steps in (("apgd-ce", cfg["apgd_steps"]), ("square", cfg["square_queries"])):
            for backend in backends:
                rows.append(measure(model, u, labels, backend, attack, steps))
    md = markdown_table(rows, COLUMNS, floatfmt=".3g")
    payload = dict(rows=rows, config=dict(cfg, eps=EPS, threads=threads, device=device,
                                          checkpoint=checkpoint, quick=quick,
                                          split="mnist-5k validation (first n of 500)"))
    if out is not None:
        write_results(out, NAME, payload, md, figure=make_figure(payload))
    print(md, flush=True)
    return payload


def make_figure(payload: dict[str, Any]):
    """Two bar charts per attack, one bar per backend: CPU ms per example-step and the robust
    accuracy it left (the same attack budget, so the backends are comparable side by side)."""
    from matplotlib.figure import Figure  # Agg canvas, no pyplot / global backend state

    rows = payload["rows"]
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig = Figure(figsize=(9, 3.6))
    width = 0.8 / len(backends)
    for k, (key, label) in enumerate((("cpu_ms_per_step", "CPU ms per example-step"),
                                      ("robust_accuracy", "robust accuracy"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for j, backend in enumerate(backends):
            values = [next((r[key] for r in rows if r["attack"] == a and r["backend"] == backend),
                           0.0) for a in attacks]
            ax.bar([i + j * width for i in range(len(attacks))], values, width, label=backend)
        ax.set_xticks([i + width * (len(backends) - 1) / 2 for i in range(len(attacks))])
        ax.set_xticklabels(attacks)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=7)
    cfg = payload["config"]
    fig.suptitle(f"AutoAttack backends, eps {cfg['eps']:g}, {cfg['n']} validation digits, "
                 f"{cfg['threads']} thread(s)", fontsize=9)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="a lipdeq train checkpoint (default: one "
                   "epoch of the conv fast path, trained here)")
    p.add_argument("--n", type=int, default=None, help=f"digits (default {DEFAULTS['n']})")
    p.add_argument("--apgd-steps", type=int, default=None)
    p.add_argument("--square-queries", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="8 digits, 3 steps, 5 queries: a schema check")
    p.add_argument("--out", default=DEFAULT_OUT)


def run_cli(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be a positive integer")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: no such file")
    run(args.quick, args.out, args.device, checkpoint=args.checkpoint, n=args.n,
        apgd_steps=args.apgd_steps, square_queries=args.square_queries, threads=args.threads)
    return 0


def main(argv=None) -> int:
    return script_main("python -m experiments.bench_autoattack", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
