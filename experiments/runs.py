"""Train-and-measure helper shared by the comparison, robustness and reproduction experiments.

:func:`train_and_measure` trains one configuration with :func:`lipdeq.train.train` (so every
experiment runs exactly what ``lipdeq train`` runs) and measures the trained model on the
held-out split: accuracy, ℓ∞ and ℓ2 Lipschitz bounds, an empirical Lipschitz lower bound,
forward iterations, epoch time, PGD accuracy and both certified accuracies at each ε.
:func:`mean_std` aggregates seeds.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import statistics
import time

import torch

from lipdeq.training.data import Split, load_dataset
from lipdeq.training.loop import TrainConfig, evaluate, lipschitz_of, train


def measure(model, split: Split, *, eps_list=(0.05, 0.1), pgd_steps: int = 20,
            attack_limit: int | None = None, empirical_samples: int = 64, seed: int = 0,
            full_eps=(), restarts: int = 5, aa_options: dict | None = None,
            verify_eps=(), verify_time_limit: float = 30.0) -> dict:
    """Held-out metrics of a trained classifier (accuracies are fractions).

    At every ε of ``eps_list``: ``pgd_accuracy@ε`` (PGD, cross-entropy, 1 start, ``pgd_steps``)
    and both certified accuracies. At every ε of ``full_eps`` the attack is instead ``all``
    (:func:`lipdeq.cli.robustness.robustness_metrics`): ``pgd_accuracy@ε`` is then best-of-PGD
    (CE and margin loss, ``restarts`` starts each), plus ``autoattack_accuracy@ε`` (options
    ``aa_options``), ``robust_accuracy@ε`` (per-example minimum over every attack) and
    ``soundness_violations@ε``. At every ε of ``verify_eps`` the exact MILP verifier
    (:func:`lipdeq.certify.verify.exact_metrics`, per-example limit ``verify_time_limit`` s) adds
    ``exact_lower@ε``, ``exact_upper@ε``, ``undecided@ε``, ``verify_seconds@ε`` and
    ``verify_inconsistencies@ε`` (the chain certified ≤ exact lower ≤ every attack's accuracy,
    and exact upper ≤ every attack's where no example is undecided, checked against the numbers
    measured here; empty when consistent).
    """
    from lipdeq.certify.lipschitz import empirical_lipschitz, l2_bound
    from lipdeq.cli.robustness import robustness_metrics
    model.eval()
    out = {}
    ev = evaluate(model, split)
    out["accuracy"] = ev.get("accuracy")
    if "mse" in ev:
        out["mse"] = ev["mse"]
    out["fwd_iterations_eval"] = ev["fwd_iterations"]
    out["mu_inf"] = float(model.mu_inf())
    out["lipschitz_bound_inf"] = lipschitz_of(model)
    from lipdeq.deq.model import ImplicitNetwork
    # ℓ2 bound (μ₂(A) < 1 needed) only for dense models: a conv model's A is a kernel
    out["lipschitz_bound_l2"] = l2_bound(model) if isinstance(model, ImplicitNetwork) else None
    probe = split.inputs[:empirical_samples]
    out["empirical_lipschitz_inf"] = empirical_lipschitz(model, probe, seed=seed)
    if split.targets.dtype == torch.int64 and eps_list:
        sub = split if attack_limit is None else Split(split.inputs[:attack_limit],
                                                        split.targets[:attack_limit])
        for eps in sorted(set(eps_list) | set(full_eps) | set(verify_eps)):
            full = eps in full_eps
            t0 = time.perf_counter()
            r = robustness_metrics(model, sub, attack="all" if full else "pgd", eps=eps,
                                   steps=pgd_steps, certify="both", seed=seed,
                                   restarts=restarts if full else None, aa_options=aa_options)
            e = f"@{eps:g}"
            out["pgd_accuracy" + e] = r["pgd_accuracy"]
            out["certified_lipschitz" + e] = r["certified_accuracy_lipschitz"]
            out["certified_interval" + e] = r["certified_accuracy_interval"]
            out["soundness_violations" + e] = r["soundness_violations"]
            if full:
                out.update({k + e: r[k] for k in ("autoattack_accuracy", "robust_accuracy",
                                                  "autoattack_seconds")})
                out["autoattack_attacks"], out["autoattack_settings"] = (
                    r["autoattack_attacks"], r["autoattack_settings"])
                out["attack_seconds" + e] = time.perf_counter() - t0
            if eps in verify_eps:
                out.update(_exact(model, sub, eps, r, verify_time_limit))
    return out


def _exact(model, split: Split, eps: float, r: dict, time_limit: float) -> dict:
    """Exact MILP metrics at ε for a dense ReLU model (None values where unsupported)."""
    from lipdeq.certify.verify import VerificationUnsupported, exact_metrics
    e = f"@{eps:g}"
    accs = {k: r[k] for k in ("autoattack_accuracy", "pgd_accuracy", "robust_accuracy",
                              "certified_accuracy_interval", "certified_accuracy_lipschitz")
            if r.get(k) is not None}
    try:
        x = exact_metrics(model, split, eps, time_limit=time_limit, progress=False,
                          accuracies=accs)
    except VerificationUnsupported as exc:
        return {"exact_lower" + e: None, "exact_upper" + e: None, "exact_unsupported": str(exc)}
    return {"exact_lower" + e: x["exact_robust_accuracy_lower"],
            "exact_upper" + e: x["exact_robust_accuracy_upper"], "undecided" + e: x["undecided"],
            "verify_seconds" + e: x["verify_seconds"], "verify_time_limit" + e: time_limit,
            "verify_counts" + e: x["verify_counts"],
            "verify_inconsistencies" + e: x["verify_inconsistencies"]}


def train_and_measure(out_dir: str, *, eps_list=(0.05, 0.1), pgd_steps: int = 20,
                      attack_limit: int | None = None, fresh: bool = True,
                      measure_options: dict | None = None, **config) -> dict:
    """Train ``TrainConfig(**config)`` into ``out_dir`` and return one flat result row
    (``measure_options``: further keyword arguments of :func:`measure`).

    ``fresh=False`` with a run already in ``out_dir`` continues it (``train(resume=True)``): a
    finished run is measured as it is, and ``train`` refuses it (ValueError, returned as
    ``failed``) unless it was made with exactly this configuration. ``train_s`` is then the sum
    of the stored epochs' ``epoch_s`` and ``reused`` is True."""
    cfg = TrainConfig(**config)
    if fresh and os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    reused = not fresh and os.path.isfile(os.path.join(out_dir, "last.pt"))
    t0 = time.perf_counter()
    try:
        rows = train(cfg, out_dir, progress=False, resume=reused)
    except ValueError as exc:  # e.g. a parameterization that diverged to NaN: a result, not a crash
        if reused:  # a stored run of another configuration: refused, never measured
            raise
        return {**{k: getattr(cfg, k) for k in ("model", "condition", "gamma", "lip_reg", "seed")},
                "failed": f"{type(exc).__name__}: {exc}", "run_dir": out_dir}
    total = sum(r["epoch_s"] for r in rows) if reused else time.perf_counter() - t0
    from lipdeq.training.checkpoint import load_checkpoint
    model = load_checkpoint(os.path.join(out_dir, "last.pt"))
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, holdout=cfg.holdout, splits=("test",))
    result = {k: v for k, v in dataclasses.asdict(cfg).items()
              if k in ("model", "condition", "gamma", "lip_reg", "robust", "eps", "seed", "epochs",
                       "hidden", "lr", "dataset", "val", "holdout")}
    last = rows[-1]
    result.update(epoch_s=statistics.mean(r["epoch_s"] for r in rows), train_s=total,
                  fwd_iterations=last["fwd_iterations"], bwd_iterations=last["bwd_iterations"],
                  projection_share=sum(r["projection_s"] for r in rows) / sum(r["epoch_s"] for r in rows))
    result.update(measure(model, data.test, eps_list=eps_list, pgd_steps=pgd_steps,
                          attack_limit=attack_limit, seed=cfg.seed, **(measure_options or {})))
    result["run_dir"], result["reused"] = out_dir, reused
    return result


def mean_std(rows: list[dict], group_keys: tuple[str, ...], value_keys: list[str]) -> list[dict]:
    """Group rows (e.g. over seeds) and report ``key`` = mean and ``key_std`` = std per group."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in group_keys), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(group_keys, key))
        row["seeds"] = len(members)
        for v in value_keys:
            vals = [m[v] for m in members if m.get(v) is not None and math.isfinite(m[v])]
            row[v] = statistics.mean(vals) if vals else None
            row[v + "_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
        out.append(row)
    return out


def fmt_pm(row: dict, key: str, fmt: str = ".3f") -> str:
    """'mean ± std' text for a mean_std row."""
    m, s = row.get(key), row.get(key + "_std")
    if m is None:
        return "—"
    return f"{m:{fmt}} ± {s:{fmt}}" if s else f"{m:{fmt}}"


def require_trained(row: dict, what: str) -> dict:
    """``row`` unless its training failed; then ``ValueError`` naming ``what`` and the reason
    (one stderr line and exit 2 through ``script_main``), not a table with a hole in it."""
    if "failed" in row:
        raise ValueError(f"{what}: training failed ({row['failed']}); its run is in "
                         f"{row.get('run_dir')!r}")
    return row
