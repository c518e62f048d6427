"""Command line: ``lipdeq {train,evaluate,info,plot,robustness,search-space,bench,reproduce}``.

DESCRIPTION (plain text, shown by ``lipdeq --help``) is the parser's description.

Bad input anywhere prints one line on stderr and exits with code 2 (no traceback, nothing
written); see docs/design.md §7.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .common import (DESCRIPTION, EXIT_BAD_INPUT, BadInput, _one_line, _out_arg, _Parser,  # noqa: F401
                     print_deprecation_notes, refuse_empty_paths)
from .evaluate import add_evaluate_arguments, cmd_evaluate  # noqa: F401
from .train import _train_args, cmd_train  # noqa: F401


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
    from ..io import strict_json
    print(strict_json(info, indent=2))
    return 0


def cmd_plot(args, argv) -> int:
    from .plot import plot_run
    path = plot_run(args.run_dir, args.out)
    print(path)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; the module of an extra command is imported only when ``command`` names it."""
    from .. import __version__
    parser = _Parser(prog="lipdeq", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"lipdeq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("train", help="projected-gradient training run",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _train_args(p)
    add_evaluate_arguments(sub.add_parser("evaluate", help="evaluate a checkpoint: accuracy, attacks, certificates, exact verification"))
    p = sub.add_parser("info", help="describe a checkpoint (without one: versions and registries)")
    p.add_argument("--checkpoint")
    p = sub.add_parser("plot", help="plot a run's curves (PNG)")
    p.add_argument("run_dir")
    _out_arg(p, "--output", "PNG file, or a directory for DIR/curves.png (default RUN_DIR/curves.png)")
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
    "bench": ("experiments.bench", "benchmarks: projection, fixed-point, training, autoattack (repository checkout)"),
    "reproduce": ("experiments.reproduce", "reproduce the paper's claims into EXPERIMENTS.md (repository checkout)"),
}


def _add_extra(sub, name: str, module: str, text: str, load: bool) -> None:
    p = sub.add_parser(name, help=text, description=text)
    if not load:  # listed only; its arguments are added when the command itself is parsed
        p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    import importlib
    if module.startswith("experiments."):
        _find_experiments()
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:  # refused here, before its flags would be parsed as unknown
        where = ("it needs the repository's experiments/ folder, which is not next to this "
                 "lipdeq nor in the current directory: run it from a lipdeq checkout"
                 if module.startswith("experiments.") else "an optional dependency is missing")
        raise BadInput(f"'lipdeq {name}' is unavailable: {where} "
                       f"({type(exc).__name__}: {exc})") from None
    mod.add_arguments(p)
    p.set_defaults(_run=lambda args: _run_extra(mod, args))


def _run_extra(mod, args) -> int:
    """Run an extra command, refusing an unwritable ``--out`` before its work (as the
    experiments' own ``script_main`` does)."""
    if getattr(args, "out", None) is not None:
        from .common import check_output_dir
        check_output_dir(args.out)
    return mod.run_cli(args)


def _find_experiments() -> None:
    """Put the checkout holding ``experiments/`` on ``sys.path``: the one this lipdeq was
    installed from (an editable install) or the current directory. The ``lipdeq`` console
    script, unlike ``python -m lipdeq``, does not see the current directory by itself."""
    import importlib.util
    import os
    if importlib.util.find_spec("experiments") is not None:
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../lipdeq
    for root in (os.path.dirname(here), os.getcwd()):
        if os.path.isfile(os.path.join(root, "experiments", "__init__.py")):
            sys.path.insert(0, root)
            return


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "info": cmd_info, "plot": cmd_plot}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one stderr line each (``lipdeq: warning: …``), not Python's two-line form."""
    print(f"lipdeq: warning: {_one_line(message)}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():  # restores Python's own format on return
        warnings.showwarning = _one_line_warning
        return _main(argv)


def _main(argv: list[str]) -> int:
    from ..solvers import SolverError
    try:
        command = argv[0] if argv and argv[0] in EXTRA_COMMANDS else None
        args = build_parser(command).parse_args(argv)
        refuse_empty_paths(args)
        run = getattr(args, "_run", None)
        code = run(args) if run else COMMANDS[args.command](args, argv)
        print_deprecation_notes(args)
    except (BadInput, ValueError, TypeError, OSError, SolverError) as exc:
        print(f"lipdeq: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("lipdeq: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
