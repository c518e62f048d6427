"""Command line: ``lipdeq {train,evaluate,info,plot,robustness,search-space,bench,reproduce}``.

Bad input anywhere prints one line on stderr and exits with code 2 (no traceback, nothing
written); see CONVENTIONS §4.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised for bad command-line input; becomes one stderr line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise BadInput(f"{message} (see '{self.prog} --help')")


def _train_args(p: argparse.ArgumentParser) -> None:
    from .train import TrainConfig
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, choices=["mnist-5k", "mnist", "function"])
    p.add_argument("--data-dir")
    p.add_argument("--holdout", type=int, default=d.holdout)
    p.add_argument("--model", default=d.model, choices=["dense", "conv"])
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--channels", type=int, default=d.channels, help="conv model: state channels")
    p.add_argument("--kernel-size", type=int, default=d.kernel_size, help="conv model: odd kernel")
    p.add_argument("--activation", default=d.activation)
    p.add_argument("--condition", default=d.condition)
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--allow-ill-posed", action="store_true",
                   help="accept gamma >= 1 (no well-posedness guarantee)")
    p.add_argument("--solver", default=d.solver)
    p.add_argument("--tol", type=float, default=d.tol)
    p.add_argument("--max-iter", type=int, default=d.max_iter)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--optimizer", default=d.optimizer, choices=["adam", "sgd"])
    p.add_argument("--schedule", default=d.schedule, choices=["cosine", "none"])
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default=d.device)
    p.add_argument("--lip-reg", type=float, default=d.lip_reg, metavar="LAMBDA")
    p.add_argument("--projection", default=d.projection, choices=["exact", "qp", "lp"])
    p.add_argument("--robust", default=None, choices=["interval"])
    p.add_argument("--eps", type=float, default=d.eps)
    p.add_argument("--eps-ramp", type=int, default=None, help="epochs of the linear eps ramp")
    p.add_argument("--kappa", type=float, default=d.kappa)
    p.add_argument("--preset", default=None)
    p.add_argument("--out", default=None, metavar="RUN_DIR")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _explicit_flags(argv: list[str]) -> set[str]:
    return {a[2:].split("=")[0].replace("-", "_") for a in argv if a.startswith("--")}


def cmd_train(args, argv) -> int:
    import dataclasses
    from .train import TrainConfig, apply_preset, train
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    config = apply_preset(config, _explicit_flags(argv))
    out = args.out or os.path.join("runs", f"{config.dataset}-{config.model}-{config.condition}-"
                                          f"{time.strftime('%Y%m%d-%H%M%S')}")
    rows = train(config, out, resume=args.resume, progress=not args.quiet)
    if rows:
        last = rows[-1]
        acc = last.get("test_accuracy")
        msg = (f"held-out accuracy {acc:.4f}" if acc is not None else
               f"test MSE {last['test_mse']:.4g}" if "test_mse" in last else "no held-out split")
        print(f"{out}: {msg}, mu_inf(A) {last['mu_inf']:.4f}, "
              f"l_inf Lipschitz bound {last['lipschitz_bound_inf']:.4g}, "
              f"{last['epoch_s']:.2f} s/epoch")
    return 0


def cmd_evaluate(args, argv) -> int:
    from .checkpoint import load_checkpoint, read_checkpoint
    from .data import load_dataset
    from .train import evaluate, lipschitz_of
    ckpt = read_checkpoint(args.checkpoint)
    dataset = args.dataset or "mnist-5k"
    data = load_dataset(dataset, data_dir=args.data_dir, holdout=args.holdout,
                        splits=(args.split,))
    split = getattr(data, args.split)
    if split is None:
        raise BadInput(f"dataset {dataset!r} has no {args.split!r} split")
    if args.limit is not None:
        if args.limit < 1:
            raise BadInput("--limit must be a positive integer")
        from .data import Split
        split = Split(split.inputs[:args.limit], split.targets[:args.limit])
    model = load_checkpoint(args.checkpoint)
    result = evaluate(model, split)
    result.update(mu_inf=float(model.mu_inf()), lipschitz_bound_inf=lipschitz_of(model),
                  epoch=int(ckpt["epoch"]), dataset=dataset, split=args.split)
    if args.attack or args.certify:
        from .robustness_cli import robustness_metrics
        result.update(robustness_metrics(model, split, attack=args.attack, eps=args.eps,
                                         steps=args.steps, certify=args.certify))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


def cmd_info(args, argv) -> int:
    from .checkpoint import read_checkpoint
    ckpt = read_checkpoint(args.checkpoint)
    info = {"epoch": ckpt["epoch"], "model_config": ckpt["model_config"],
            "weights": {k: list(v.shape) for k, v in ckpt["weights"].items()}}
    from .checkpoint import load_checkpoint
    from .train import lipschitz_of
    model = load_checkpoint(args.checkpoint)
    info.update(mu_inf=float(model.mu_inf()), lipschitz_bound_inf=lipschitz_of(model))
    print(json.dumps(info, indent=2))
    return 0


def cmd_plot(args, argv) -> int:
    from .plotting import plot_run
    path = plot_run(args.run_dir, args.output)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lipdeq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="projected-gradient training run")
    _train_args(p)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", choices=["mnist-5k", "mnist", "function"])
    p.add_argument("--data-dir")
    p.add_argument("--holdout", type=int, default=1000)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int)
    p.add_argument("--attack", choices=["fgsm", "pgd"])
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--certify", choices=["lipschitz", "interval"])
    p.add_argument("--json")
    p = sub.add_parser("info", help="describe a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p = sub.add_parser("plot", help="plot a run's curves (PNG)")
    p.add_argument("run_dir")
    p.add_argument("--output")
    for name, module in EXTRA_COMMANDS.items():
        _add_extra(sub, name, module)
    return parser


# Subcommands implemented next to their experiments: name -> "module" exposing
# add_arguments(parser) and run_cli(args) -> int.
EXTRA_COMMANDS = {
    "robustness": "lipdeq.robustness_cli",
    "search-space": "experiments.search_space",
    "bench": "experiments.bench",
    "reproduce": "experiments.reproduce",
}


def _add_extra(sub, name: str, module: str) -> None:
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return
    p = sub.add_parser(name, help=(mod.__doc__ or name).strip().splitlines()[0])
    mod.add_arguments(p)
    p.set_defaults(_run=mod.run_cli)


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from solvers import SolverError
    try:
        args = build_parser().parse_args(argv)
        run = getattr(args, "_run", None)
        code = run(args) if run else COMMANDS[args.command](args, argv)
    except (BadInput, ValueError, TypeError, FileNotFoundError, SolverError) as exc:
        print(f"lipdeq: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lipdeq: interrupted", file=sys.stderr)
        return 130
    return code


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
