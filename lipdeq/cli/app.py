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
    from ..training.loop import TrainConfig
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, choices=["mnist-5k", "mnist", "function"])
    p.add_argument("--data-dir")
    p.add_argument("--holdout", type=int, default=d.holdout)
    p.add_argument("--model", default=d.model, choices=["dense", "conv"])
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--channels", type=int, default=d.channels, help="conv model: state channels")
    p.add_argument("--kernel-size", type=int, default=d.kernel_size, help="conv model: odd kernel")
    p.add_argument("--backward", default=d.backward, choices=["implicit", "jacobian-free"],
                   help="gradient: exact adjoint solve, or the Jacobian-free (biased) one "
                        "(default: implicit; conv: lipdeq.training.loop.CONV_DEFAULTS)")
    p.add_argument("--downsample", type=int, default=d.downsample,
                   help="conv model: stride of the input conv (state at H/d x W/d)")
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
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    explicit = _explicit_flags(argv)
    values = {k: v for k, v in vars(args).items() if k in fields}
    if args.resume:
        # A resumed run takes its stored settings; flags given now must agree (checked in train).
        if not args.out:
            raise BadInput("--resume needs --out RUN_DIR")
        stored = _run_config(os.path.join(args.out, "last.pt"))
        if not stored:
            raise BadInput(f"--resume: {args.out!r} holds no run (no config.json)")
        values.update({k: stored[k] for k in fields if k in stored and k not in explicit
                       and k != "device"})
        explicit |= set(stored) & fields
    config = TrainConfig(**values)
    config = apply_preset(config, explicit)
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
    from ..training.checkpoint import load_checkpoint, read_checkpoint
    from ..training.data import load_dataset
    from ..training.loop import evaluate, lipschitz_of
    ckpt = read_checkpoint(args.checkpoint)
    if args.limit is not None and args.limit < 1:
        raise BadInput("--limit must be a positive integer")
    if args.json:
        _check_output_file(args.json, "--json")
    # Defaults come from the run the checkpoint belongs to (its config.json), so that a plain
    # `evaluate --checkpoint RUN/last.pt` scores the run's own held-out split and never digits
    # the run trained on; without a config.json: mnist-5k with holdout 1000.
    run = _run_config(args.checkpoint)
    dataset = args.dataset or run.get("dataset") or "mnist-5k"
    same = dataset == run.get("dataset")
    holdout = (args.holdout if args.holdout is not None else
               run.get("holdout", 1000) if same else 1000)
    data_dir = args.data_dir if args.data_dir is not None else (run.get("data_dir") if same else None)
    data = load_dataset(dataset, data_dir=data_dir, holdout=holdout, splits=(args.split,))
    split = getattr(data, args.split)
    if split is None:
        raise BadInput(f"dataset {dataset!r} has no {args.split!r} split")
    if args.limit is not None:
        from ..training.data import Split
        split = Split(split.inputs[:args.limit], split.targets[:args.limit])
    model = load_checkpoint(args.checkpoint)
    result = evaluate(model, split)
    result.update(mu_inf=float(model.mu_inf()), lipschitz_bound_inf=lipschitz_of(model),
                  epoch=int(ckpt["epoch"]), dataset=dataset, split=args.split)
    if args.attack or args.certify:
        from .robustness import robustness_metrics
        result.update(robustness_metrics(model, split, attack=args.attack, eps=args.eps,
                                         steps=args.steps, certify=args.certify))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")
    return 0


def _run_config(checkpoint: str) -> dict:
    """The config.json next to a checkpoint ({} when absent or unreadable)."""
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "config.json")
    try:
        with open(path) as fh:
            cfg = json.load(fh)
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _check_output_file(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written, before any work is done."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise BadInput(f"{flag} {path!r} is a directory")
    if not os.path.isdir(parent):
        raise BadInput(f"{flag} {path!r}: directory {parent!r} does not exist")


def _environment() -> dict:
    """Versions, devices and the registries (what `lipdeq info` prints without a checkpoint)."""
    import platform

    import numpy
    import torch

    from .. import __version__
    from ..deq.activations import ACTIVATIONS
    from ..conditions.sets import CONDITIONS
    from ..training.data import DATASETS
    from ..deq.fixed_point import SOLVERS
    from ..training.loop import PRESETS
    versions = {"lipdeq": __version__, "python": platform.python_version(),
                "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import cvxpy
        versions["cvxpy"] = cvxpy.__version__
        cvx_solvers = sorted(cvxpy.installed_solvers())
    except ImportError:  # pragma: no cover - cvxpy is a dependency
        cvx_solvers = []
    return {"versions": versions, "platform": platform.platform(),
            "cuda_available": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "datasets": list(DATASETS), "conditions": sorted(CONDITIONS),
            "activations": sorted(ACTIVATIONS), "solvers": sorted(SOLVERS),
            "presets": sorted(PRESETS), "cvxpy_solvers": cvx_solvers}


def cmd_info(args, argv) -> int:
    from ..training.checkpoint import read_checkpoint
    if args.checkpoint is None:
        print(json.dumps(_environment(), indent=2))
        return 0
    ckpt = read_checkpoint(args.checkpoint)
    info = {"epoch": ckpt["epoch"], "model_config": ckpt["model_config"],
            "weights": {k: list(v.shape) for k, v in ckpt["weights"].items()}}
    from ..training.checkpoint import load_checkpoint
    from ..training.loop import lipschitz_of
    model = load_checkpoint(args.checkpoint)
    info.update(mu_inf=float(model.mu_inf()), lipschitz_bound_inf=lipschitz_of(model))
    print(json.dumps(info, indent=2))
    return 0


def cmd_plot(args, argv) -> int:
    from .plot import plot_run
    path = plot_run(args.run_dir, args.output)
    print(path)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; the module of an extra command is imported only when ``command`` names it."""
    parser = _Parser(prog="lipdeq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="projected-gradient training run")
    _train_args(p)
    p = sub.add_parser("evaluate", help="evaluate a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", choices=["mnist-5k", "mnist", "function"])
    p.add_argument("--data-dir")
    p.add_argument("--holdout", type=int, default=None,
                   help="mnist-5k held-out digits (default: the run's, else 1000)")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int)
    p.add_argument("--attack", choices=["fgsm", "pgd"])
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--certify", choices=["lipschitz", "interval", "both"])
    p.add_argument("--json")
    p = sub.add_parser("info", help="describe a checkpoint (without one: versions and registries)")
    p.add_argument("--checkpoint")
    p = sub.add_parser("plot", help="plot a run's curves (PNG)")
    p.add_argument("run_dir")
    p.add_argument("--output")
    for name, (module, text) in EXTRA_COMMANDS.items():
        _add_extra(sub, name, module, text, load=(name == command))
    return parser


# Subcommands implemented in their own modules: name -> (module exposing add_arguments(parser) and
# run_cli(args) -> int, one-line help). A module is imported only when its command runs, so that
# `lipdeq --help` and `lipdeq train` never import CVXPY or matplotlib. The experiment commands live in
# the repository's experiments/ folder (they are not part of an installed lipdeq).
EXTRA_COMMANDS = {
    "robustness": ("lipdeq.cli.robustness",
                   "robustness sweep of a run: clean, attacked and certified accuracy against eps"),
    "search-space": ("experiments.search_space",
                     "search-space comparison of the well-posedness sets (repository checkout)"),
    "bench": ("experiments.bench", "solver benchmarks: projection, fixed-point, training (repository checkout)"),
    "reproduce": ("experiments.reproduce", "reproduce the paper's claims into EXPERIMENTS.md (repository checkout)"),
}


def _add_extra(sub, name: str, module: str, text: str, load: bool) -> None:
    p = sub.add_parser(name, help=text, description=text)
    if not load:  # listed only; its arguments are added when the command itself is parsed
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    import importlib
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        where = ("it needs the repository's experiments/ folder: run it from a lipdeq checkout"
                 if module.startswith("experiments.") else "an optional dependency is missing")
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        p.set_defaults(_run=lambda args, exc=exc: _unavailable(name, where, exc))
        return
    mod.add_arguments(p)
    p.set_defaults(_run=mod.run_cli)


def _unavailable(name: str, where: str, exc: ImportError) -> int:
    raise BadInput(f"'lipdeq {name}' is unavailable: {where} ({type(exc).__name__}: {exc})")


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info, "plot": cmd_plot}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..solvers import SolverError
    try:
        command = argv[0] if argv and argv[0] in EXTRA_COMMANDS else None
        args = build_parser(command).parse_args(argv)
        run = getattr(args, "_run", None)
        code = run(args) if run else COMMANDS[args.command](args, argv)
    except (BadInput, ValueError, TypeError, OSError, SolverError) as exc:
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
