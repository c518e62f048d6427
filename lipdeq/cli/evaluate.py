"""``lipdeq evaluate``: accuracy, attacks (PGD, AutoAttack), certificates and exact (MILP)
verification of a checkpoint, as JSON."""
from __future__ import annotations

import sys

from .common import BadInput, _check_output_file, _one_line, _out_arg, _run_config, _run_files


def cmd_evaluate(args, argv) -> int:
    from ..training.checkpoint import load_checkpoint, read_checkpoint
    from ..training.data import load_dataset
    from ..training.loop import evaluate, lipschitz_of
    ckpt = read_checkpoint(args.checkpoint)
    if args.limit is not None and args.limit < 1:
        raise BadInput("--limit must be a positive integer")
    if args.start < 0:
        raise BadInput(f"--start must be a non-negative integer, got {args.start}")
    if args.out:
        _check_output_file(args.out, "--out", keep=_run_files(args.checkpoint))
    _check_attack_flags(args)
    _check_verify_args(args)
    # Defaults come from the run the checkpoint belongs to (its config.json), so that a plain
    # `evaluate --checkpoint RUN/last.pt` scores the run's own held-out split and never digits
    # the run trained on; without a config.json: mnist-5k with holdout 1000.
    run = _run_config(args.checkpoint)
    dataset = args.dataset or run.get("dataset") or "mnist-5k"
    same = dataset == run.get("dataset")
    _check_data_flags(args, dataset, run if same else {})
    holdout = (args.holdout if args.holdout is not None else
               run.get("holdout", 1000) if same else 1000)
    data_dir = args.data_dir if args.data_dir is not None else (run.get("data_dir") if same else None)
    val = int(run.get("val") or 0) if same else 0  # the run's training part excludes its val split
    if args.split == "val" and not val:
        raise BadInput(f"--split val: the run has no validation split for dataset {dataset!r} "
                       f"(trained with --val 0, or another dataset)")
    data = load_dataset(dataset, data_dir=data_dir, holdout=holdout, val=val,
                        splits=(args.split,) if args.split != "val" else ())
    split = getattr(data, args.split)
    if split is None:
        raise BadInput(f"dataset {dataset!r} has no {args.split!r} split")
    if args.start >= len(split):
        raise BadInput(f"--start {args.start} is past the end of the {args.split} split "
                       f"({len(split)} examples)")
    if args.start or args.limit is not None:  # examples start … start + limit − 1 (a shard)
        from ..training.data import Split
        stop = None if args.limit is None else args.start + args.limit
        split = Split(split.inputs[args.start:stop], split.targets[args.start:stop])
    model = load_checkpoint(args.checkpoint)
    classes = getattr(model, "out_features", None)
    if args.aa_targets is not None and isinstance(classes, int) and args.aa_targets > classes - 1:
        raise BadInput(f"--aa-targets {args.aa_targets}: the model has {classes} classes, so at "
                       f"most {classes - 1} target classes")
    result = evaluate(model, split)
    result.update(mu_inf=float(model.mu_inf()), lipschitz_bound_inf=lipschitz_of(model),
                  epoch=int(ckpt["epoch"]), dataset=dataset, split=args.split, start=args.start)
    eps_values = _eps_values(args)
    rows = []
    for eps in eps_values:
        row = _robustness_at(model, split, eps, args)
        if row is None:
            return 1  # a verification error (already reported)
        rows.append(row)
    if len(rows) == 1:
        result.update(rows[0])
    elif rows and any(rows):
        result["by_eps"] = rows
        for key in ("soundness_violations",):
            if any(key in r for r in rows):
                result[key] = sum(r.get(key, 0) for r in rows)
        problems = [p for r in rows for p in r.get("verify_inconsistencies") or []]
        if any("verify_inconsistencies" in r for r in rows):
            result["verify_inconsistencies"] = problems
    from ..io import strict_json
    text = strict_json(result, indent=2)
    print(text)
    if args.out:
        from ..io import write_text
        write_text(args.out, text + "\n")
    for problem in result.get("verify_inconsistencies") or []:
        print(f"lipdeq: inconsistency: {problem}", file=sys.stderr)
    code = _report_soundness(result)
    return 1 if result.get("verify_inconsistencies") else code


EXIT_UNSOUND = 1


def _check_attack_flags(args) -> None:
    """Refuse attack options that the chosen attack would ignore; check ART is there (exit 2).
    Fills the defaults of --eps (0.1) and --steps (20) once they are known to be read."""
    if args.eps is not None and not (args.attack or args.certify or args.verify):
        raise BadInput("--eps needs --attack, --certify or --verify (a plain evaluate has no radius)")
    if args.steps is not None and args.attack not in ("pgd", "all"):
        raise BadInput("--steps needs --attack pgd or all (FGSM takes one step; AutoAttack runs "
                       "its own schedule)")
    args.eps = "0.1" if args.eps is None else args.eps
    args.steps = 20 if args.steps is None else args.steps
    if args.steps < 1:
        raise BadInput(f"--steps must be a positive integer, got {args.steps}")
    if args.restarts is not None and args.restarts < 1:
        raise BadInput("--restarts must be a positive integer")
    if args.restarts is not None and args.attack not in ("pgd", "all"):
        raise BadInput("--restarts needs --attack pgd or all")
    if args.loss != "ce" and args.attack != "pgd":
        raise BadInput("--loss needs --attack pgd (--attack all runs both losses)")
    aa = {"--square-queries": args.square_queries, "--aa-targets": args.aa_targets,
          "--aa-backend": args.aa_backend}
    for flag, value in aa.items():
        if value is not None and args.attack not in ("autoattack", "all"):
            raise BadInput(f"{flag} needs --attack autoattack or all")
        if isinstance(value, int) and value < 1:
            raise BadInput(f"{flag} must be a positive integer")
    if args.attack in ("autoattack", "all") and args.aa_backend in (None, "art"):
        from ..certify.autoattack import AttackLibraryMissing, require_art
        try:
            require_art()
        except AttackLibraryMissing as exc:
            raise BadInput(str(exc)) from None


def _aa_options(args) -> dict:
    out = {}
    if args.square_queries is not None:
        out["square_queries"] = args.square_queries
    if args.aa_targets is not None:
        out["n_target_classes"] = args.aa_targets
    if args.aa_backend is not None:
        out["backend"] = args.aa_backend
    return out


def _report_soundness(result: dict) -> int:
    """Print ``soundness_violations: N`` (stderr; stdout stays pure JSON); N > 0 is an error
    (an attack broke a certified example: a certificate or an attack is wrong) → exit 1."""
    if "soundness_violations" not in result:
        return 0
    v = result["soundness_violations"]
    if v:
        eps = result.get("eps", [r.get("eps") for r in result.get("by_eps", [])])
        print(f"lipdeq: error: soundness_violations: {v} (examples certified at eps {eps} "
              f"that an attack broke)", file=sys.stderr)
        return EXIT_UNSOUND
    print("soundness_violations: 0", file=sys.stderr)
    return 0


def _eps_values(args) -> list[float]:
    """``--eps`` is a comma-separated list everywhere (as for ``lipdeq robustness``); one value
    gives the flat JSON, several give one row per ε under ``by_eps``."""
    from .robustness import parse_eps_list
    values = parse_eps_list(str(args.eps))
    if len(values) > 1 and args.save_examples:
        raise BadInput("--save-examples takes one --eps value (one file per radius)")
    return values


def _robustness_at(model, split, eps: float, args) -> dict | None:
    """Attacks, certificates and exact verification at one ε (keys of the flat JSON)."""
    out: dict = {}
    points: dict = {}  # each attack's adversarial inputs, judged again by the exact verifier
    if args.attack or args.certify:
        from .robustness import robustness_metrics
        out.update(robustness_metrics(model, split, attack=args.attack, eps=eps,
                                      steps=args.steps, certify=args.certify,
                                      restarts=args.restarts, loss=args.loss,
                                      aa_options=_aa_options(args),
                                      points=points if args.verify else None))
    if args.verify:
        from ..certify.verify import VerificationError, exact_metrics
        known = ("attack_accuracy", "autoattack_accuracy", "robust_accuracy",
                 "certified_accuracy_lipschitz", "certified_accuracy_interval")
        try:
            out.update(exact_metrics(model, split, eps, time_limit=args.verify_time_limit,
                                     save_path=args.save_examples, progress=not args.quiet,
                                     accuracies={k: out[k] for k in known if k in out},
                                     start=args.start, attack_points=points))
        except VerificationError as exc:
            print(f"lipdeq: verification error (a bug, please report): {_one_line(exc)}",
                  file=sys.stderr)
            return None
    if out:
        out.setdefault("eps", eps)
    return out


def _check_data_flags(args, dataset: str, run: dict) -> None:
    """--holdout / --data-dir: refused where they would be ignored (as ``train`` refuses them),
    and a --holdout larger than the run's (its extra digits are ones the run trained on)."""
    if args.holdout is not None and dataset != "mnist-5k":
        raise BadInput(f"--holdout applies to --dataset mnist-5k only (got {dataset!r})")
    if args.data_dir is not None and dataset != "mnist":
        raise BadInput(f"--data-dir applies to --dataset mnist only (got {dataset!r}: "
                       f"it would be ignored)")
    trained = run.get("holdout")
    if args.holdout is not None and isinstance(trained, int) and args.holdout > trained:
        raise BadInput(f"--holdout {args.holdout} is larger than the run's held-out split "
                       f"({trained}): the extra digits are ones it was trained on")
    if (args.holdout is not None and isinstance(trained, int) and args.holdout != trained
            and args.split in ("train", "val")):
        raise BadInput(f"--holdout {args.holdout} with --split {args.split}: the run's "
                       f"{args.split} split comes from its own --holdout {trained}; another value "
                       f"would re-carve the training part and mix in other digits")


def _check_verify_args(args) -> None:
    """--verify-time-limit / --save-examples: checked before any work is done."""
    import math
    if args.save_examples and not args.verify:
        raise BadInput("--save-examples needs --verify exact")
    if args.verify_time_limit is not None and not args.verify:
        raise BadInput("--verify-time-limit needs --verify exact")
    args.verify_time_limit = 30.0 if args.verify_time_limit is None else args.verify_time_limit
    if not (math.isfinite(args.verify_time_limit) and args.verify_time_limit > 0):
        raise BadInput(f"--verify-time-limit must be a positive number of seconds, "
                       f"got {args.verify_time_limit!r}")
    if args.save_examples:
        keep = _run_files(args.checkpoint) + ((args.out,) if args.out else ())
        _check_output_file(args.save_examples, "--save-examples", keep=keep)


def add_evaluate_arguments(p) -> None:
    """The flags of ``lipdeq evaluate``."""
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", choices=["mnist-5k", "mnist", "function"])
    p.add_argument("--data-dir")
    p.add_argument("--holdout", type=int, default=None,
                   help="mnist-5k held-out digits (default: the run's, else 1000)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="val: the run's validation split (rebuilt from its config.json)")
    p.add_argument("--limit", type=int, help="evaluate at most N examples")
    p.add_argument("--start", type=int, default=0,
                   help="first example of the split to evaluate (default 0): --start K --limit N "
                        "scores examples K … K+N−1, one shard of a long evaluation (indices in "
                        "--save-examples count from K; random attack starts are drawn per call, "
                        "so shards are not bit-identical to one call on the whole split)")
    p.add_argument("--attack", choices=["fgsm", "pgd", "autoattack", "all"],
                   help="all: PGD (CE and margin, with restarts) and AutoAttack, per-example minimum")
    p.add_argument("--eps", default=None,
                   help="attack/certificate radius in pixel units (default 0.1); a comma-separated "
                        "list (like `lipdeq robustness --eps`) gives one result row per radius (by_eps)")
    p.add_argument("--steps", type=int, default=None,
                   help="PGD steps (--attack pgd or all; default 20)")
    p.add_argument("--restarts", type=int, default=None,
                   help="PGD random starts (default 1 for pgd, 5 for all)")
    p.add_argument("--loss", choices=["ce", "margin"], default="ce", help="PGD loss (--attack pgd)")
    p.add_argument("--square-queries", type=int, default=None,
                   help="AutoAttack Square queries (default 5000, the standard)")
    p.add_argument("--aa-targets", type=int, default=None,
                   help="AutoAttack APGD-T target classes (default 9, the standard)")
    p.add_argument("--aa-backend", choices=["art", "torch"], default=None,
                   help="AutoAttack's attacks: art (ART, the default) or torch (lipdeq's own "
                        "APGD/Square: one model evaluation per step, about 2-3x faster)")
    p.add_argument("--certify", choices=["lipschitz", "interval", "both"],
                   help="certified accuracy: lipschitz (ℓ∞ bound), interval (IBP) or both")
    p.add_argument("--verify", choices=["exact"],
                   help="exact robustness at --eps by mixed-integer programming (ReLU models)")
    p.add_argument("--verify-time-limit", type=float, default=None, metavar="SECONDS",
                   help="per-example MILP time limit (default 30); reached: 'undecided'")
    p.add_argument("--save-examples", metavar="FILE.npz",
                   help="with --verify: per-example index, status, counterexample")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _out_arg(p, "--json", "write the JSON result to this file too")
