"""Reproduce the paper's three claims end to end and write EXPERIMENTS.md.

(i) μ∞(A) < 1 gives a larger search space (search-space table, `experiments.search_space`);
(ii) the average iteration converges faster than Picard (iterations to tol on trained and random A);
(iii) training with the ℓ∞ bound as regularizer gives accurate models with smaller Lipschitz
bounds and better robustness — on function estimation and on MNIST (mnist-5k by default, the
full dataset when ``--data-dir`` holds the IDX files), for NEMON (projected and parameterized),
monDEQ, LBEN and unconstrained models trained by this toolkit on the same data and budget.

Every number in the generated EXPERIMENTS.md comes from this run (mean ± std over seeds), with
the command that regenerates it. ``--quick`` is a smoke test (tiny budgets, 1 seed).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

from experiments.runs import train_and_measure
from experiments.timing import machine_info, to_jsonable
from lipdeq.io import write_json
from lipdeq.training.loop import PRESETS
from experiments._cli import script_main

MNIST_MODELS = [("NEMON projected (mu_inf)", dict(condition="mu_inf")),
                ("NEMON parameterized (nemon)", dict(condition="nemon")),
                ("monDEQ (monotone)", dict(condition="monotone")),
                ("LBEN (lben)", dict(condition="lben")),
                ("unconstrained (none)", dict(condition="none", gamma=1.0))]
FUNCTION_CONDITIONS = ("mu_inf", "nemon", "norm_inf", "monotone", "lben", "none")
FULL = dict(seeds=3, mnist_epochs=10, function_epochs=40, lambdas=(0.0, 1e-4, 1e-3),
            function_lambdas=(0.0, 1e-3, 1e-2, 1e-1), attack_limit=1000, hidden=100,
            function_hidden=32, holdout=1000, search_samples=300, fp_batch=256, robust_row=True)
QUICK = dict(seeds=1, mnist_epochs=1, function_epochs=2, lambdas=(0.0, 1e-3),
             function_lambdas=(0.0, 1e-2), attack_limit=50, hidden=16, function_hidden=8,
             holdout=4700, search_samples=None, fp_batch=32, robust_row=False)


def _brief(r: dict) -> str:
    if "failed" in r:
        return f"FAILED ({r['failed']})"
    return f"acc {r['accuracy']:.4f} bound {r['lipschitz_bound_inf']:.4g}"


def _mnist(cfg, out, data_dir, log):
    dataset = "mnist" if data_dir else "mnist-5k"
    common = dict(dataset=dataset, data_dir=data_dir, epochs=cfg["mnist_epochs"],
                  hidden=cfg["hidden"], holdout=cfg["holdout"])
    rows = []
    for seed in range(cfg["seeds"]):
        for label, extra in MNIST_MODELS:
            r = train_and_measure(os.path.join(out, "runs", f"mnist-{extra['condition']}-s{seed}"),
                                  seed=seed, attack_limit=cfg["attack_limit"], **common, **extra)
            r["model_name"] = label
            rows.append(r)
            log(f"  {label} seed {seed}: {_brief(r)}")
        for lam in cfg["lambdas"][1:]:
            r = train_and_measure(os.path.join(out, "runs", f"mnist-lip{lam:g}-s{seed}"),
                                  seed=seed, lip_reg=lam, attack_limit=cfg["attack_limit"], **common)
            r["model_name"] = f"NEMON projected, λ = {lam:g}"
            rows.append(r)
            log(f"  λ={lam:g} seed {seed}: {_brief(r)}")
        if cfg["robust_row"]:
            robust = {k: v for k, v in PRESETS["robust"].items() if k != "epochs"}
            r = train_and_measure(os.path.join(out, "runs", f"mnist-robust-s{seed}"), seed=seed,
                                  attack_limit=cfg["attack_limit"],
                                  **{**common, "epochs": PRESETS["robust"]["epochs"]}, **robust)
            r["model_name"] = "NEMON projected, interval-trained (--preset robust)"
            rows.append(r)
            log(f"  robust preset seed {seed}: {_brief(r)}")
    return rows


def _function(cfg, out, log):
    common = dict(dataset="function", epochs=cfg["function_epochs"], hidden=cfg["function_hidden"],
                  batch_size=50, eps_list=(), lr=1e-2)
    rows = []
    for seed in range(cfg["seeds"]):
        for cond in FUNCTION_CONDITIONS:
            r = train_and_measure(os.path.join(out, "runs", f"fn-{cond}-s{seed}"), seed=seed,
                                  condition=cond, gamma=1.0 if cond == "none" else 0.95, **common)
            r["model_name"] = cond
            rows.append(r)
        for lam in cfg["function_lambdas"][1:]:
            r = train_and_measure(os.path.join(out, "runs", f"fn-lip{lam:g}-s{seed}"), seed=seed,
                                  lip_reg=lam, **common)
            r["model_name"] = f"mu_inf, λ = {lam:g}"
            rows.append(r)
        log(f"  function seed {seed} done")
    return rows


def _fixed_point_iterations(cfg, out, mnist_rows):
    """Iterations to reach tol 1e-6 of each solver on the trained NEMON-projected models' A."""
    from lipdeq.deq import fixed_point as fp
    from lipdeq.training.checkpoint import load_checkpoint
    from lipdeq.training.data import load_dataset
    data = load_dataset("mnist-5k", holdout=max(cfg["holdout"], 1))
    u = data.test.inputs[:cfg["fp_batch"]].double()
    rows = []
    for r in mnist_rows:
        if "failed" in r or (r["model_name"] != MNIST_MODELS[0][0]
                             and not r["model_name"].startswith("NEMON projected, λ")):
            continue
        model = load_checkpoint(os.path.join(r["run_dir"], "last.pt")).double()
        for solver in ("average", "picard", "anderson"):
            model.solver_config.solver = solver
            model.solver_config.tol = 1e-6
            model.solver_config.max_iter = 2000
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", fp.ConvergenceWarning)
                model(u)
            res = model.last_forward
            rows.append(dict(model_name=r["model_name"], seed=r["seed"], solver=solver,
                             iterations=res.iterations, converged=res.converged,
                             mu_inf=float(model.mu_inf())))
    return rows


class ReproduceFailed(RuntimeError):
    """A model of the run failed to train or measure: the report is not written."""


FIGURES = ("function.png", "mnist.png")


def check_inputs(*, quick: bool, out: str, data_dir: str | None, doc: str | None,
                 figures: str, force: bool) -> None:
    """Every input, before any work (``ValueError``, exit 2): the MNIST IDX files of ``data_dir``
    load and validate, ``out`` can be created, and no existing report or figure is overwritten
    without ``force``."""
    from lipdeq.cli.common import check_output_dir
    from lipdeq.training.data import load_dataset
    check_output_dir(out)
    if data_dir is not None:  # a mistyped path must not silently leave the MNIST table empty
        load_dataset("mnist", data_dir=data_dir, splits=("train", "test"))
    if doc:
        check_output_dir(os.path.dirname(os.path.abspath(doc)), "--doc")
        existing = [p for p in [doc, *(os.path.join(figures, f) for f in FIGURES)]
                    if os.path.exists(p)]
        if existing and not force:
            raise ValueError(f"{existing[0]!r} exists; pass --force to overwrite the report "
                             f"and its figures")


def _failures(rows: list[dict]) -> list[str]:
    return [f"{r.get('model_name', r.get('run_dir'))} seed {r.get('seed')}: {r['failed']}"
            for r in rows if "failed" in r]


def run(*, quick: bool = False, out: str = "results/reproduce", data_dir: str | None = None,
        doc: str | None = "EXPERIMENTS.md", figures: str = "figures", threads: int | None = 1,
        verbose: bool = True, force: bool = False) -> dict:
    """Train and measure every model, then write ``OUT/reproduce.json`` and the report.

    The report (``doc`` and its figures) is written only when every model succeeded (each file
    atomically); otherwise :class:`ReproduceFailed` names the failures."""
    check_inputs(quick=quick, out=out, data_dir=data_dir, doc=doc, figures=figures, force=force)
    if threads:
        torch.set_num_threads(threads)
    cfg = dict(QUICK if quick else FULL)
    log = print if verbose else (lambda *a, **k: None)
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    log("== search space (claim i)")
    from experiments import search_space
    # the search-space sizes of its --quick mode (a few minutes), with more samples in full mode
    ss = search_space.run(os.path.join(out, "search_space"), quick=True,
                          samples=cfg["search_samples"], verbose=False)
    log("== function estimation (claim iii)")
    fn_rows = _function(cfg, out, log)
    log("== MNIST (claims ii, iii)")
    mn_rows = _mnist(cfg, out, data_dir, log)
    log("== fixed-point iterations (claim ii)")
    fp_rows = _fixed_point_iterations(cfg, out, mn_rows)
    elapsed = time.perf_counter() - t0
    payload = dict(quick=quick, config=cfg, data_dir=data_dir, elapsed_s=elapsed,
                   machine=machine_info(), function=fn_rows, mnist=mn_rows, fixed_point=fp_rows,
                   search_space_summary=ss.get("summary") if isinstance(ss, dict) else None)
    write_json(os.path.join(out, "reproduce.json"), to_jsonable(payload))
    failed = _failures(fn_rows) + _failures(mn_rows)
    if failed:
        raise ReproduceFailed(f"{len(failed)} model(s) failed, report not written "
                              f"(rows in {os.path.join(out, 'reproduce.json')}): {failed[0]}")
    from experiments.reproduce_report import write_report
    write_report(payload, ss, out=out, doc=doc, figures=figures)
    log(f"done in {elapsed:.0f} s")
    return payload


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="smoke test: tiny budgets, 1 seed")
    p.add_argument("--out", default=None, help="results folder (default results/reproduce[-quick])")
    p.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (full MNIST)")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from OUT/reproduce.json without training")
    p.add_argument("--doc", default=None,
                   help="markdown report path (default EXPERIMENTS.md; OUT/EXPERIMENTS.md with --quick)")
    p.add_argument("--force", action="store_true",
                   help="overwrite an existing report and its figures")


def run_cli(args) -> int:
    out = args.out or ("results/reproduce-quick" if args.quick else "results/reproduce")
    doc = args.doc or (os.path.join(out, "EXPERIMENTS.md") if args.quick else "EXPERIMENTS.md")
    figures = os.path.join(os.path.dirname(os.path.abspath(doc)), "figures")
    if args.report_only:
        from experiments.reproduce_report import regenerate
        if os.path.exists(doc) and not args.force:
            raise ValueError(f"{doc!r} exists; pass --force to overwrite the report")
        regenerate(out, doc, figures)
        return 0
    try:
        run(quick=args.quick, out=out, data_dir=args.data_dir, doc=doc, figures=figures,
            force=args.force)
    except ReproduceFailed as exc:
        print(f"lipdeq: error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return script_main("python -m experiments.reproduce", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
