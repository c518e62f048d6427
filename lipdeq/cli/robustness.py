"""Robustness sweep of a trained run: clean, PGD and certified accuracy against ε (JSON + PNG).

``lipdeq robustness RUN_DIR --eps 0,0.02,0.05,0.1`` and the ``--attack/--certify`` options of
``lipdeq evaluate`` are built on :func:`robustness_metrics`.
"""
from __future__ import annotations

import math
import os
import sys

import torch

from ..io import write_figure, write_json
from ..training.data import Split
from .common import check_output_dir


def parse_eps_list(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--eps must be a comma-separated list of numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--eps values must be finite and >= 0, got {text!r}")
    return values


ROBUSTNESS_ATTACKS = ("fgsm", "pgd", "autoattack", "all")


def per_example_minimum(outcomes: dict) -> torch.Tensor:
    """An example is robust only if it is robust under every attack: the element-wise AND of
    the boolean (N,) tensors in ``outcomes`` (attack name → robust)."""
    if not outcomes:
        raise ValueError("per_example_minimum needs at least one attack outcome")
    values = list(outcomes.values())
    out = values[0].bool().clone()
    for v in values[1:]:
        if v.shape != out.shape:
            raise ValueError(f"attack outcomes must share one shape, got {tuple(v.shape)} and "
                             f"{tuple(out.shape)}")
        out &= v.bool()
    return out


def soundness_violations(certified: torch.Tensor, robust: torch.Tensor) -> int:
    """Examples certified at ε that an attack broke at the same ε (0 for sound certificates)."""
    return int((certified.bool() & ~robust.bool()).sum())


def robustness_metrics(model, split: Split, *, attack: str | None, eps: float, steps: int = 20,
                       certify: str | None = None, batch_size: int = 500, seed: int = 0,
                       restarts: int | None = None, loss: str = "ce",
                       aa_options: dict | None = None, points: dict | None = None) -> dict:
    """Attack and/or certified accuracy at one ε (fractions), per example combined.

    ``attack``: fgsm, pgd (``restarts``, default 1, and ``loss`` ce|margin), autoattack
    (:func:`lipdeq.certify.autoattack.autoattack`, options ``aa_options``), or all = PGD with the CE and
    the margin loss (``restarts``, default 5) and AutoAttack. Keys: ``attack_accuracy`` (the
    requested attack; for all the per-example minimum), ``pgd_accuracy`` (best of the PGD runs),
    ``autoattack_accuracy``, ``autoattack_attacks`` (what ran), ``autoattack_settings``,
    ``robust_accuracy`` (robust under every attack that ran),
    ``certified_accuracy_{lipschitz,interval}``, and, when an
    attack and a certificate both ran, ``soundness_violations`` = the number of examples
    certified (by either certificate) that an attack broke. ``points`` (a dict, filled when
    given): attack name → its adversarial inputs for the whole split (for exact verification's
    per-example cross-check).
    """
    from ..certify import robustness as rb
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if attack not in (None, *ROBUSTNESS_ATTACKS):
        raise ValueError(f"attack must be one of {ROBUSTNESS_ATTACKS}, got {attack!r}")
    if certify not in (None, "lipschitz", "interval", "both"):
        raise ValueError(f"certify must be 'lipschitz' or 'interval', got {certify!r}")
    if split.targets.dtype != torch.int64:
        raise ValueError("robustness metrics need a classification dataset")
    if restarts is None:
        restarts = 5 if attack == "all" else 1
    aa_options = dict(aa_options or {})
    if attack in ("autoattack", "all") and aa_options.get("backend", "art") == "art":
        from ..certify.autoattack import require_art
        require_art()
    gen = torch.Generator().manual_seed(seed)
    runs = {"fgsm": ["fgsm"], "pgd": ["pgd"], "autoattack": ["autoattack"],
            "all": ["pgd-ce", "pgd-margin", "autoattack"]}.get(attack, [])
    ok = {name: [] for name in runs}
    cert = {"lipschitz": [], "interval": []}
    aa_attacks, aa_settings, aa_seconds = None, None, 0.0
    for start in range(0, len(split), batch_size):
        u = split.inputs[start:start + batch_size]
        t = split.targets[start:start + batch_size]
        for name in runs:
            if name == "autoattack":
                from ..certify.autoattack import autoattack
                res = autoattack(model, u, t, eps, seed=seed, batch_size=batch_size, **aa_options)
                ok[name].append(res.robust)
                if points is not None:
                    points.setdefault(name, []).append(res.adversarial.detach())
                aa_attacks, aa_settings = list(res.attacks), res.settings
                aa_seconds += res.seconds
                continue
            if name == "fgsm":
                adv = rb.fgsm(model, u, t, eps)
            else:
                adv = rb.pgd(model, u, t, eps, steps=steps, generator=gen, restarts=restarts,
                             loss={"pgd-ce": "ce", "pgd-margin": "margin"}.get(name, loss))
            with torch.no_grad():
                ok[name].append(model(adv).argmax(1) == t)
            if points is not None:
                points.setdefault(name, []).append(adv.detach())
        if certify in ("lipschitz", "both"):
            cert["lipschitz"].append(rb.certified_lipschitz(model, u, t, eps).bool())
        if certify in ("interval", "both"):
            with torch.no_grad():
                cert["interval"].append(rb.certified_interval(model, u, t, eps).bool())
    ok = {k: torch.cat(v) for k, v in ok.items()}
    if points is not None:
        points.update({k: torch.cat(v) for k, v in points.items()})
    n = len(split)
    frac = lambda mask: int(mask.sum()) / n  # noqa: E731
    out = {"eps": eps}
    if attack:
        robust = per_example_minimum(ok)
        out.update(attack=attack, attack_accuracy=frac(robust), robust_accuracy=frac(robust))
        if attack != "autoattack":  # AutoAttack's steps are in autoattack_settings
            out["attack_steps"] = 1 if attack == "fgsm" else steps
        pgd_runs = {k: v for k, v in ok.items() if k.startswith("pgd")}
        if pgd_runs:
            out.update(pgd_accuracy=frac(per_example_minimum(pgd_runs)), pgd_restarts=restarts,
                       pgd_losses=[loss] if attack == "pgd" else ["ce", "margin"])
        if "autoattack" in ok:
            out.update(autoattack_accuracy=frac(ok["autoattack"]), autoattack_attacks=aa_attacks,
                       autoattack_settings=aa_settings, autoattack_seconds=aa_seconds)
    certified = None
    for name in ("lipschitz", "interval"):
        if cert[name]:
            mask = torch.cat(cert[name])
            out[f"certified_accuracy_{name}"] = frac(mask)
            certified = mask if certified is None else certified | mask
    if attack and certified is not None:
        out["soundness_violations"] = soundness_violations(certified, robust)
    return out


def sweep(model, split: Split, eps_values, *, steps: int = 20) -> list[dict]:
    """Clean accuracy plus PGD and both certificates at every ε."""
    with torch.no_grad():
        clean = float((model(split.inputs).argmax(1) == split.targets).float().mean())
    rows = []
    for eps in eps_values:
        row = robustness_metrics(model, split, attack="pgd", eps=eps, steps=steps, certify="both")
        row["clean_accuracy"] = clean
        rows.append(row)
    return rows


def plot_sweep(rows: list[dict], path: str, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    eps = [r["eps"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(eps, [r["clean_accuracy"] for r in rows], "k--", label="clean")
    ax.plot(eps, [r["attack_accuracy"] for r in rows], "o-", label="PGD")
    ax.plot(eps, [r["certified_accuracy_lipschitz"] for r in rows], "s-", label="certified (Lipschitz)")
    ax.plot(eps, [r["certified_accuracy_interval"] for r in rows], "^-", label="certified (interval)")
    ax.set_xlabel("ε (ℓ∞, pixel units)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    write_figure(path, fig)


def add_arguments(p) -> None:
    p.add_argument("run_dir")
    p.add_argument("--eps", default="0,0.02,0.04,0.06,0.08,0.1")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--dataset", choices=["mnist-5k", "mnist"], default=None,
                   help="default: the run's own dataset and held-out split")
    p.add_argument("--data-dir")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", default=None, help="default: RUN_DIR")


def run_cli(args) -> int:
    from ..training.checkpoint import load_checkpoint
    from ..training.data import load_dataset
    from ..training.rundir import read_run_config
    from ..validate import check_positive_int
    eps_values = parse_eps_list(args.eps)
    check_positive_int("--steps", args.steps)
    if args.limit is not None:  # 0 and negative values silently sliced a different sample
        check_positive_int("--limit", args.limit)
    out = args.run_dir if args.out is None else args.out
    check_output_dir(out)
    ckpt = os.path.join(args.run_dir, "last.pt")
    model = load_checkpoint(ckpt)
    cfg_path = os.path.join(args.run_dir, "config.json")
    cfg = read_run_config(cfg_path) if os.path.isfile(cfg_path) else {}
    dataset = args.dataset or cfg.get("dataset", "mnist-5k")
    if args.data_dir is not None and dataset != "mnist":  # as train and evaluate refuse it
        raise ValueError(f"--data-dir applies to --dataset mnist only (got {dataset!r}: it would "
                         f"be ignored)")
    data = load_dataset(dataset, data_dir=args.data_dir or cfg.get("data_dir"),
                        holdout=cfg.get("holdout", 1000), splits=("test",))
    split = data.test
    if split is None:
        raise ValueError(f"the run's dataset {dataset!r} has no held-out split (holdout 0?)")
    if args.limit is not None:
        split = Split(split.inputs[:args.limit], split.targets[:args.limit])
    rows = sweep(model, split, eps_values, steps=args.steps)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "robustness.json")
    write_json(path, {"run_dir": args.run_dir, "dataset": dataset, "n": len(split), "rows": rows})
    png = os.path.join(out, "robustness.png")
    plot_sweep(rows, png, title=os.path.basename(os.path.abspath(args.run_dir)))
    for r in rows:
        print(f"eps {r['eps']:.3f}: clean {r['clean_accuracy']:.3f} PGD {r['attack_accuracy']:.3f} "
              f"cert-Lip {r['certified_accuracy_lipschitz']:.3f} cert-IBP {r['certified_accuracy_interval']:.3f}")
    print(path)
    print(png)
    bad = {r["eps"]: r["soundness_violations"] for r in rows if r.get("soundness_violations")}
    if bad:  # as `lipdeq evaluate`: a certificate an attack broke is a bug, never a silent 0
        print(f"lipdeq: error: soundness_violations: {sum(bad.values())} (examples certified "
              f"that PGD broke, at eps {sorted(bad)})", file=sys.stderr)
        return 1
    return 0
