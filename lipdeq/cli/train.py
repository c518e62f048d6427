"""``lipdeq train``: a projected-gradient training run (flags, presets, run directory)."""
from __future__ import annotations

import argparse
import os

from .common import BadInput, _Parser, _run_config


def _train_args(p: argparse.ArgumentParser) -> None:
    from ..conditions.sets import CONDITIONS
    from ..deq.activations import ACTIVATIONS
    from ..deq.fixed_point import SOLVERS
    from ..training.loop import PRESETS, TrainConfig
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, choices=["mnist-5k", "mnist", "function"],
                   help="mnist-5k: 5,000 MNIST digits (bundled); mnist: IDX files in --data-dir; "
                        "function: 1-D regression")
    p.add_argument("--data-dir", help="folder with the MNIST IDX files (--dataset mnist)")
    p.add_argument("--holdout", type=int, default=d.holdout,
                   help="mnist-5k digits held out as the test split")
    p.add_argument("--val", type=int, default=None, metavar="N",
                   help="validation examples carved from the training part (tuning uses them; "
                        "0: none; default 500 for mnist-5k when 2,000 training digits remain, else 0)")
    p.add_argument("--model", default=d.model, choices=["dense", "conv"], help="model family")
    p.add_argument("--hidden", type=int, default=d.hidden, help="dense model: state size n")
    p.add_argument("--channels", type=int, default=d.channels, help="conv model: state channels")
    p.add_argument("--kernel-size", type=int, default=d.kernel_size, help="conv model: odd kernel")
    p.add_argument("--backward", default=d.backward, choices=["implicit", "jacobian-free"],
                   help="gradient: the exact adjoint solve, or the Jacobian-free (biased) one "
                        "(default: implicit; --model conv: jacobian-free, the fast path of "
                        "lipdeq.training.loop.CONV_DEFAULTS)")
    p.add_argument("--downsample", type=int, default=d.downsample,
                   help="conv model: stride of the input conv (state at H/d x W/d; default 2)")
    p.add_argument("--activation", default=d.activation, choices=sorted(ACTIVATIONS),
                   help="activation Φ")
    p.add_argument("--condition", default=d.condition, choices=sorted(CONDITIONS),
                   help="well-posedness condition that keeps A inside its set (README table)")
    p.add_argument("--gamma", type=float, default=d.gamma,
                   help="bound γ of the condition (γ < 1: well-posed)")
    p.add_argument("--allow-ill-posed", action="store_true",
                   help="accept gamma >= 1 (no well-posedness guarantee)")
    p.add_argument("--solver", default=d.solver, choices=sorted(SOLVERS),
                   help="fixed-point solver (default: the condition's: average, or "
                        "peaceman_rachford for monotone/lben)")
    p.add_argument("--tol", type=float, default=d.tol, help="fixed-point residual tolerance")
    p.add_argument("--max-iter", type=int, default=d.max_iter, help="fixed-point iteration cap")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--optimizer", default=d.optimizer, choices=["adam", "sgd"], help="optimizer")
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "none"],
                   help="learning-rate schedule")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="samples per step (default: 100; --model conv: 25, its fast-path default)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="training epochs")
    p.add_argument("--augment-shift", type=int, default=d.augment_shift, metavar="S",
                   help="translate each training image by a random (dy, dx) in [-S, S]^2 pixels, "
                        "zero fill (image datasets; default 0: no augmentation)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of weights and data order")
    p.add_argument("--device", default=d.device, help="cpu, cuda or cuda:K")
    p.add_argument("--lip-reg", type=float, default=d.lip_reg, metavar="LAMBDA",
                   help="weight λ of the ℓ∞ Lipschitz bound in the loss")
    p.add_argument("--projection", default=d.projection, choices=["exact", "qp", "lp"],
                   help="how A is projected after each step (qp/lp: CVXPY, mu_inf/norm_inf only)")
    p.add_argument("--robust", default=None, choices=["interval"],
                   help="robust training: interval (IBP) loss")
    p.add_argument("--eps", type=float, default=d.eps, help="robust training: ℓ∞ radius ε")
    p.add_argument("--eps-ramp", type=int, default=None,
                   help="robust training: epochs of the linear ε ramp (default: half the epochs)")
    p.add_argument("--kappa", type=float, default=d.kappa,
                   help="robust training: weight of the robust loss, in [0, 1]")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="measured settings (README 'Presets'); explicit flags override them")
    p.add_argument("--out", default=None, metavar="RUN_DIR",
                   help="run directory (default: runs/<dataset>-<model>-<condition>-<time>-<id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _explicit_flags(argv: list[str]) -> set[str]:
    """Destinations the user set on the command line, however spelled (``--lr=0.1``, and
    argparse's unambiguous abbreviations such as ``--epoch 3`` for ``--epochs 3``)."""
    p = _Parser(prog="lipdeq train", add_help=False)
    _train_args(p)
    for action in p._actions:
        action.default = argparse.SUPPRESS
    rest = argv[argv.index("train") + 1:] if "train" in argv else argv
    ns, _ = p.parse_known_args(rest)
    return set(vars(ns))


def cmd_train(args, argv) -> int:
    import dataclasses
    from ..training.loop import TrainConfig, apply_preset, train
    from ..training.rundir import default_run_name
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = _explicit_flags(argv)
    given = set(explicit)  # what the user typed now (a resumed run's stored settings are not)
    values = {k: v for k, v in vars(args).items() if k in fields}
    if args.resume:
        # A resumed run takes its stored settings; flags given now must agree (checked in train).
        if not args.out:
            raise BadInput("--resume needs --out RUN_DIR")
        stored = _run_config(os.path.join(args.out, "last.pt"))
        if not os.path.isfile(os.path.join(args.out, "config.json")):
            raise BadInput(f"--resume: {args.out!r} holds no run (no config.json)")
        if not stored:
            raise BadInput(f"--resume: {os.path.join(args.out, 'config.json')!r} is corrupt "
                           f"(not a JSON object)")
        values.update({k: stored[k] for k in fields if k in stored and k not in explicit
                       and k != "device"})
        if "val" not in stored and "val" not in explicit:
            values["val"] = 0  # a run from before --val trained on its whole training part
        explicit |= set(stored) & fields
    config = TrainConfig(**values)
    config = apply_preset(config, explicit)
    from ..training.run_options import check_explicit_flags
    check_explicit_flags(config, given)
    out = args.out or default_run_name(config.dataset, config.model, config.condition)
    rows = train(config, out, resume=args.resume, progress=not args.quiet)
    if rows:
        last = rows[-1]
        acc = last.get("test_accuracy")
        msg = (f"held-out accuracy {acc:.4f}" if acc is not None else
               f"test MSE {last['test_mse']:.4g}" if "test_mse" in last else "no held-out split")
        mean_s = sum(r["epoch_s"] for r in rows) / len(rows)
        print(f"{out}: {msg}, mu_inf(A) {last['mu_inf']:.4f}, "
              f"l_inf Lipschitz bound {_inf_if_null(last['lipschitz_bound_inf']):.4g}, "
              f"{mean_s:.2f} s/epoch (mean of {len(rows)} epochs)")
    return 0


def _inf_if_null(value):
    """Rows read back from ``metrics.jsonl`` hold ``null`` for an infinite bound."""
    return float("inf") if value is None else value
