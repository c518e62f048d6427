r"""Robustness experiment: Lipschitz regularization against interval training on mnist-5k.

Dense implicit networks x = relu(Ax + Bu + b), y = Cx + c of width 100 (μ∞(A) ≤ γ = 0.95 after
every step) are trained exactly as ``lipdeq train --val 500`` trains them
(:func:`experiments.runs.train_and_measure`): on the 4,000 training digits of ``mnist-5k`` minus
a 500-digit validation split carved from them (3,500 digits). The presets were chosen on that
validation split only by ``python -m experiments.tune_presets`` (its log:
``docs/tuning/tuning.{json,md}``, referenced here, never pasted). The 1,000 held-out digits are
touched only here, for the final report. Models:

* ``lip0`` / ``lip_small`` / ``lip_large`` — cross-entropy + λ·L∞ with λ ∈ {0, 1e-4, 1e-3}
  (L∞ = ‖C‖∞‖B‖∞/(1 − μ∞(A)), docs/math.md §6.1), all with the ``accurate`` preset's lr and epochs;
* ``interval_base`` — interval training (docs/math.md §12.4) with the old defaults (ε 0.1, κ 0.5,
  lr 3e-3, 10 epochs, ε ramped over the first half);
* ``interval_tuned`` — the ``robust`` preset (:data:`lipdeq.training.loop.PRESETS`), the headline.

At ε = 0.1 (``HEADLINE_EPS``), per model on the held-out digits: clean accuracy; AutoAttack
(:func:`lipdeq.certify.autoattack.autoattack`: APGD-CE, APGD-T, Square) — standard settings
for the robust preset, the reduced ``AA_REDUCED`` (3 target classes, 1,000 Square queries) for
the others; ART's attacks, except on the conv row: lipdeq's torch backend (``backend="torch"``);
best-of-PGD (CE and margin loss, ``RESTARTS`` random starts each, ``CONV_RESTARTS`` on the conv
row, 20 steps); the settings of each model are recorded under ``config.attacks``; robust
accuracy (per-example minimum over every attack); certified accuracy by interval bounds (SPEC
§12.3) and by the pairwise Lipschitz certificate (docs/math.md §6.3); exact robust accuracy by MILP
(:func:`lipdeq.certify.verify.exact_metrics`: lower = proven robust, upper = not broken, undecided,
seconds; per-example limit ``VERIFY_LIMIT_S`` for the interval-trained models, ``VERIFY_LIMIT_FAST``
for the others, whose loose interval bounds leave most units unstable); ``soundness_violations``
(certified examples an attack broke; must be 0) and the consistency chain certified ≤ exact lower ≤
exact upper ≤ every attack's accuracy (``verify_inconsistencies@0.1``, must be empty). At the
other ε of ``EPS`` (curves; 0.05 in the table): PGD (CE, 1 start, 20 steps) and both certificates.

The anchors (:data:`ANCHORS`) are the paper authors' code trained on all 5,000 digits and
measured on the *official* MNIST test set (10,000 digits) with PGD, not AutoAttack: a different
split and a weaker attack, so the comparison is indicative only (±1.4 % is one binomial standard
error at n = 1,000, p ≈ 0.7). The goal (:data:`TARGET`) is evaluated for the
robust preset, not asserted.

Writes ``robustness.{json,md,png}`` under ``--out`` (default results/robustness) through
:func:`experiments.timing.write_results`. Every run directory is kept under ``OUT/runs/``.

    python -m experiments.robustness [--quick] [--out DIR] [--epochs E] [--seeds K]
        [--attack-limit N] [--pgd-steps S] [--models M ...]

``--quick``: width 32, 2 epochs on 150 digits (val 50, holdout 4800), everything on 50 held-out
digits, AutoAttack with 5 APGD steps, 2 targets, 50 Square queries, MILP limit 1 s: a schema
check, not a measurement. The process uses ``--threads`` torch threads (default 1).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from experiments._cli import script_main

NAME = "robustness"
DEFAULT_OUT = "results/robustness"
EPS = (0.02, 0.05, 0.1, 0.15)
HEADLINE_EPS = 0.1
TABLE_EPS = (0.05, 0.1)
VAL = 500
RESTARTS = 5
VERIFY_LIMIT_S, VERIFY_LIMIT_FAST = 30.0, 0.5
AA_REDUCED = dict(n_target_classes=3, square_queries=1000)
CONV_RESTARTS = 2  # best-of-PGD starts per loss on the conv row (each step is a C×14×14 solve)
TUNING_LOG = "docs/tuning/tuning.json"
TUNING_COMMAND = "python -m experiments.tune_presets"
SPLIT = "held-out 1,000 digits of mnist-5k (never used for training, tuning or selection)"


def split_text(holdout: int) -> str:
    """SPLIT with the run's own held-out count (``--quick`` holds out 4,800)."""
    return SPLIT.replace("1,000", f"{holdout:,}")


def _label(spec: dict, cfg: dict) -> str:
    """The model's label, plus the epochs it actually ran when they differ from its spec
    (``--quick``, ``--epochs``): a fixed "10 ep" label must not describe a 2-epoch run."""
    ran, planned = cfg.get("epochs"), spec.get("epochs")
    return spec["label"] if ran == planned else f"{spec['label']} [ran {ran} ep]"
LAMBDA_SMALL, LAMBDA_LARGE = 1e-4, 1e-3
#: The paper authors' code (NEMON, FC width 100, trained on the 5,000 digits, *official MNIST
#: test set*, PGD); fractions. LBEN is ℓ2-Lipschitz-bounded (its certificates are not comparable).
ANCHORS = {
    "nemon_interval": {"label": "NEMON interval-trained (authors)", "accuracy": 0.905,
                       "pgd_accuracy@0.1": 0.685, "certified_interval@0.1": 0.663,
                       "certified_interval@0.05": 0.817, "epoch_s": 0.9},
    "nemon": {"label": "NEMON unregularized (authors)", "accuracy": 0.921,
              "pgd_accuracy@0.1": 0.09},
    "lben": {"label": "LBEN ℓ2-Lipschitz (authors)", "accuracy": 0.913, "pgd_accuracy@0.1": 0.44},
}
ANCHOR_SPLIT = "official MNIST test set (10,000 digits), authors' PGD; trained on 5,000 digits"
#: The goal for the robust preset on the held-out digits
TARGET = {"accuracy": (">=", 0.91), "autoattack_accuracy@0.1": (">=", 0.74),
          "certified_interval@0.1": (">=", 0.73)}
QUICK = dict(hidden=32, epochs=2, holdout=4800, val=50, attack_limit=50, eps=(0.05, 0.1),
             pgd_steps=5, restarts=2, verify_limit=1.0,
             aa=dict(apgd_steps=5, n_target_classes=2, square_queries=50))
METRIC_KEYS = ["accuracy", "lipschitz_bound_inf", "empirical_lipschitz_inf", "epoch_s", "train_s",
               "fwd_iterations"]
EPS_METRICS = ("pgd_accuracy", "certified_lipschitz", "certified_interval", "soundness_violations")
HEAD_METRICS = ("autoattack_accuracy", "robust_accuracy", "exact_lower", "exact_upper",
                "undecided", "verify_seconds", "autoattack_seconds")


def model_specs(quick: bool = False) -> dict[str, dict[str, Any]]:
    """The models of the table: name → TrainConfig fields (before quick/--epochs overrides)."""
    from lipdeq.training.loop import PRESETS

    accurate = {k: v for k, v in PRESETS["accurate"].items() if k != "lip_reg"}
    return {
        "lip0": dict(label="λ = 0 (accurate preset)", lip_reg=0.0, **accurate),
        "lip_small": dict(label=f"λ = {LAMBDA_SMALL:g}", lip_reg=LAMBDA_SMALL, **accurate),
        "lip_large": dict(label=f"λ = {LAMBDA_LARGE:g}", lip_reg=LAMBDA_LARGE, **accurate),
        "interval_base": dict(label="interval ε 0.1, κ 0.5, lr 3e-3, 10 ep", robust="interval",
                              eps=0.1, kappa=0.5, lr=3e-3, epochs=10),
        "interval_tuned": dict(label="interval (robust preset)", **PRESETS["robust"]),
        # conv: best-of-PGD, the reduced AutoAttack (AA_REDUCED) with the torch backend (ART's
        # costs 2-3x more model evaluations; standard settings: hours of CPU on 1,000 digits
        # here) and the certificates; no MILP (6,272 state units)
        "conv_robust": dict(label="conv, interval (robust-conv preset; reduced AutoAttack, no MILP)",
                            **PRESETS["robust-conv"]),
    }


def _check_positive(name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


def target_status(row: dict[str, Any]) -> dict[str, Any]:
    """Per target key: value, target, met, gap (value − target; ≥ 0 meets it)."""
    out: dict[str, Any] = {}
    for key, (op, bound) in TARGET.items():
        v = row.get(key)
        met = v is not None and (v >= bound if op == ">=" else v > bound)
        out[key] = {"value": v, "target": f"{op} {bound:g}", "met": bool(met),
                    "gap": None if v is None else v - bound}
    out["met"] = all(out[k]["met"] for k in TARGET)
    return out


def tuning_reference(root: str | Path | None = None) -> dict[str, Any]:
    """Where the tuning log lives and, when the file is there, the choice it records."""
    ref: dict[str, Any] = {"file": TUNING_LOG, "command": TUNING_COMMAND,
                           "split": "validation (500 training digits)"}
    path = (Path(root) if root is not None else Path(__file__).resolve().parents[1]) / TUNING_LOG
    if path.is_file():
        log = json.loads(path.read_text())
        ref.update(chosen=log.get("chosen"), base=log.get("base"),
                   configurations=len(log.get("accurate", [])) + len(log.get("robust", [])))
    return ref


def _measure_options(name: str, quick: bool, restarts: int) -> dict[str, Any]:
    if name.startswith("conv"):
        aa = dict(QUICK["aa"]) if quick else dict(AA_REDUCED)
        return dict(full_eps=(HEADLINE_EPS,), verify_eps=(), restarts=min(restarts, CONV_RESTARTS),
                    aa_options=dict(aa, backend="torch"))
    headline = name == "interval_tuned"
    if quick:
        return dict(full_eps=(HEADLINE_EPS,), verify_eps=(HEADLINE_EPS,), restarts=restarts,
                    aa_options=dict(QUICK["aa"]), verify_time_limit=QUICK["verify_limit"])
    interval = name.startswith("interval")
    return dict(full_eps=(HEADLINE_EPS,), verify_eps=(HEADLINE_EPS,), restarts=restarts,
                aa_options={} if headline else dict(AA_REDUCED),
                verify_time_limit=VERIFY_LIMIT_S if interval else VERIFY_LIMIT_FAST)


def attack_settings(name: str, quick: bool, restarts: int) -> dict[str, Any]:
    """What the attacks on model ``name`` ran with (recorded per model in the JSON and the table
    notes): best-of-PGD starts per loss, AutoAttack options ({} = standard), backend."""
    o = _measure_options(name, quick, restarts)
    aa = dict(o["aa_options"])
    return {"pgd_restarts": o["restarts"], "autoattack_backend": aa.pop("backend", "art"),
            "autoattack": aa or "standard"}


def _progress_line(r: dict[str, Any], h: str) -> str:
    """One line per trained model; metrics a row does not have (the conv row) print as '—'."""
    def f(key: str) -> str:
        v = r.get(key + h)
        return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))
    return (f"clean {r['accuracy']:.3f}, AA{h} {f('autoattack_accuracy')}, PGD{h} "
            f"{f('pgd_accuracy')}, exact{h} [{f('exact_lower')}, {f('exact_upper')}] (undecided "
            f"{f('undecided')}), cert-IBP{h} {f('certified_interval')}, cert-Lip{h} "
            f"{f('certified_lipschitz')}, soundness_violations {f('soundness_violations')}, "
            f"chain problems {r['chain_problems'] or 'none'} ({r['wall_s']:.0f} s)")


def chain_problems(row: dict[str, Any], eps: float = HEADLINE_EPS) -> list[str]:
    """Soundness and the chain certified ≤ exact lower ≤ every attack's accuracy, plus exact
    upper ≤ every attack's accuracy when no example is undecided (an attack may break an
    undecided one, so the upper end can then exceed an attack's accuracy), re-checked on one
    result row; the verifier's own list is included."""
    e = f"@{eps:g}"
    out = list(row.get("verify_inconsistencies" + e) or [])
    if row.get("soundness_violations" + e):
        out.append(f"soundness_violations{e} = {row['soundness_violations' + e]}")
    lo, hi = row.get("exact_lower" + e), row.get("exact_upper" + e)
    chain = [row.get("certified_interval" + e), row.get("certified_lipschitz" + e)]
    for cert in chain:
        if lo is not None and cert is not None and cert > lo + 1e-12:
            out.append(f"certified {cert} > exact lower {lo}")
    # an attack may break undecided examples: only attack < lower is then a contradiction
    bound = lo if row.get("undecided" + e) else hi
    for k in ("autoattack_accuracy", "pgd_accuracy", "robust_accuracy"):
        a = row.get(k + e)
        if bound is not None and a is not None and a < bound - 1e-12:
            out.append(f"{k}{e} {a} < exact {'lower' if bound is lo else 'upper'} {bound}")
    return sorted(set(out))


def run(quick: bool = False, out: str | Path | None = DEFAULT_OUT, *, epochs: int | None = None,
        seeds: int = 1, attack_limit: int | None = None, pgd_steps: int | None = None,
        models: list[str] | None = None, reuse_runs: bool = False, threads: int = 1,
        verbose: bool = True) -> dict[str, Any]:
    """Train and measure every model; write ``robustness.{json,md,png}`` under ``out``.

    ``epochs`` overrides every model's epochs (default: each model's own); ``seeds`` trains
    seeds 0 … seeds−1; ``attack_limit`` evaluates attacks, certificates and the MILP on the first
    N held-out digits (default all; 50 with ``quick``); ``reuse_runs`` measures a finished run
    already in ``OUT/runs/<model>_seed<k>`` instead of retraining it (refused unless it was made
    with exactly the same configuration: ``train(resume=True)``); ``threads`` torch intra-op
    threads (default 1; the conv row gains from 2). Returns the JSON payload (plus
    ``"summary_md"``). ``ValueError`` for bad arguments, before anything runs or is written.
    """
    import torch

    from experiments.robustness_report import make_figure, summary_markdown
    from experiments.runs import mean_std, require_trained, train_and_measure
    from experiments.timing import write_results
    from lipdeq.training.loop import TrainConfig

    _check_positive("epochs", epochs, allow_none=True)
    _check_positive("seeds", seeds)
    _check_positive("attack_limit", attack_limit, allow_none=True)
    _check_positive("pgd_steps", pgd_steps, allow_none=True)
    _check_positive("threads", threads)
    specs = model_specs(quick)
    if models is None:  # the conv row runs on request (--models conv_robust): it costs minutes
        models = [m for m in specs if not m.startswith("conv")]
    if models is not None:
        bad = [m for m in models if m not in specs]
        if bad or not models:
            raise ValueError(f"models must be among {sorted(specs)}, got {models!r}")
        specs = {m: specs[m] for m in models}
    eps_list = QUICK["eps"] if quick else EPS
    attack_limit = attack_limit if attack_limit is not None else (
        QUICK["attack_limit"] if quick else None)
    pgd_steps = pgd_steps if pgd_steps is not None else (QUICK["pgd_steps"] if quick else 20)
    restarts = QUICK["restarts"] if quick else RESTARTS
    configs: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():
        cfg = {k: v for k, v in spec.items() if k != "label"}
        if cfg.get("model") != "conv":
            cfg.setdefault("hidden", 100)
        cfg["val"] = VAL
        if quick:
            cfg.update(hidden=QUICK["hidden"], epochs=QUICK["epochs"], holdout=QUICK["holdout"],
                       val=QUICK["val"])
        if epochs is not None:
            cfg["epochs"] = epochs
        TrainConfig(**cfg).validate()
        configs[name] = cfg
    out_dir = Path(out) if out is not None else None
    run_root = (out_dir / "runs") if out_dir is not None else None
    tmp = None
    if run_root is None:
        import tempfile
        tmp = tempfile.TemporaryDirectory(prefix="lipdeq-robustness-")
        run_root = Path(tmp.name)

    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    rows: list[dict[str, Any]] = []
    h = f"@{HEADLINE_EPS:g}"
    try:
        for name, cfg in configs.items():
            for seed in range(seeds):
                t1 = time.perf_counter()
                r = train_and_measure(str(run_root / f"{name}_seed{seed}"), eps_list=eps_list,
                                      pgd_steps=pgd_steps, attack_limit=attack_limit,
                                      measure_options=_measure_options(name, quick, restarts),
                                      fresh=not reuse_runs, **{**cfg, "seed": seed})
                require_trained(r, f"{name} seed {seed}")
                r.update(model_name=name, label=_label(specs[name], cfg), kappa=cfg.get("kappa"),
                         eps_ramp=cfg.get("eps_ramp"), wall_s=time.perf_counter() - t1,
                         load_avg=list(os.getloadavg()))
                r["chain_problems"] = chain_problems(r)
                rows.append(r)
                if verbose:
                    print(f"{name} seed {seed}: " + _progress_line(r, h), flush=True)
    finally:
        torch.set_num_threads(old_threads)
        if tmp is not None:
            tmp.cleanup()
    runtime, cpu = time.perf_counter() - t0, time.process_time() - c0

    value_keys = METRIC_KEYS + [f"{m}@{e:g}" for e in eps_list for m in EPS_METRICS] + [
        m + h for m in HEAD_METRICS]
    summary = mean_std(rows, ("model_name",), value_keys)
    for s in summary:
        s["label"] = _label(specs[s["model_name"]], configs[s["model_name"]])
        s["config"] = configs[s["model_name"]]
        s["chain_problems"] = sorted({p for r in rows if r["model_name"] == s["model_name"]
                                      for p in r["chain_problems"]})
    headline = next((s for s in summary if s["model_name"] == "interval_tuned"), None)
    target = None if headline is None else {"model_name": "interval_tuned",
                                            **target_status(headline)}
    payload: dict[str, Any] = {
        "experiment": NAME, "quick": quick,
        "config": {"dataset": "mnist-5k", "holdout": configs[next(iter(configs))].get("holdout", 1000),
                   "val": configs[next(iter(configs))]["val"],
                   "split": split_text(configs[next(iter(configs))].get("holdout", 1000)),
                   "eps": list(eps_list), "table_eps": list(TABLE_EPS),
                   "headline_eps": HEADLINE_EPS, "pgd_steps": pgd_steps, "restarts": restarts,
                   "attack_limit": attack_limit, "seeds": seeds, "epochs_override": epochs,
                   "torch_threads": threads, "lambda_small": LAMBDA_SMALL, "lambda_large": LAMBDA_LARGE,
                   "autoattack_reduced": None if quick else AA_REDUCED,
                   "autoattack_quick": QUICK["aa"] if quick else None,
                   "verify_time_limit": {n: _measure_options(n, quick, restarts).get(
                                             "verify_time_limit") for n in configs},
                   "attacks": {n: attack_settings(n, quick, restarts) for n in configs}},
        "models": {n: {"label": specs[n]["label"], **c} for n, c in configs.items()},
        "rows": rows, "summary": summary, "anchors": ANCHORS, "anchor_split": ANCHOR_SPLIT,
        "target_definition": {k: f"{op} {b:g}" for k, (op, b) in TARGET.items()},
        "target": target, "tuning_log": tuning_reference(),
        "runtime_s": runtime, "cpu_s": cpu,
    }
    md = summary_markdown(payload)
    payload["summary_md"] = md
    if out_dir is not None:
        fig = make_figure(payload)
        files = write_results(out_dir, NAME, {k: v for k, v in payload.items() if k != "summary_md"},
                              md, figure=fig)
        payload["files"] = {k: str(v) for k, v in files.items()}
    return payload


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="width 32, 2 epochs on 200 digits, attacks on 50 (a schema check)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--epochs", type=int, default=None, help="override every model's epochs")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1 per model (default 1)")
    p.add_argument("--attack-limit", type=int, default=None,
                   help="attacks/certificates/MILP on the first N held-out digits (default all)")
    p.add_argument("--pgd-steps", type=int, default=None, help="default 20 (5 with --quick)")
    p.add_argument("--models", nargs="+", default=None,
                   help="subset of lip0 lip_small lip_large interval_base interval_tuned "
                        "(conv_robust on request)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--reuse-runs", action="store_true",
                   help="measure finished runs already under OUT/runs (same configuration "
                        "only) instead of retraining them")


def run_cli(args: argparse.Namespace) -> int:
    payload = run(args.quick, args.out, epochs=args.epochs, seeds=args.seeds,
                  attack_limit=args.attack_limit, pgd_steps=args.pgd_steps, models=args.models,
                  reuse_runs=args.reuse_runs, threads=args.threads)
    print(payload["summary_md"])
    if "files" in payload:
        print("wrote " + ", ".join(payload["files"].values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main("robustness", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
