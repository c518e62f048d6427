"""Benchmarks behind one entry point: ``lipdeq bench projection|fixed-point|training|autoattack|all``.

Each benchmark runs on the shared timing helper (``lipdeq.timing``) and writes JSON (with the
machine recorded) + PNG + markdown under ``--out``/<name>.
"""
from __future__ import annotations

import argparse
import importlib
import os

from experiments._cli import script_main

BENCHMARKS = {
    "projection": "experiments.bench_projection",
    "fixed-point": "experiments.bench_fixed_point",
    "training": "experiments.bench_training",
    "autoattack": "experiments.bench_autoattack",
}
DEFAULT_OUT = "results"


def run(names, *, quick: bool = False, device: str = "cpu", out: str = DEFAULT_OUT,
        threads: int | None = None, model: str = "dense", seeds=None) -> dict:
    """Run the named benchmarks; returns {name: payload} (``model="conv"``: the conv training
    benchmark, experiments.bench_training_conv, in place of the dense one). ``seeds``: the
    training benchmark's seed(s) (several: conv only)."""
    results = {}
    for name in names:
        conv = model == "conv" and name == "training"
        module = importlib.import_module(
            "experiments.bench_training_conv" if conv else BENCHMARKS[name])
        kwargs = dict(quick=quick, device=device, out=os.path.join(out, f"bench_{name.replace('-', '_')}"))
        if threads is not None:
            kwargs["threads"] = threads
        if seeds is not None and name == "training":
            kwargs.update(dict(seeds=list(seeds)) if conv else dict(seed=seeds[0]))
        print(f"== bench {name} ==", flush=True)
        results[name] = module.run(**kwargs)
        if model == "conv" and name == "training":
            print(results[name]["summary_md"], flush=True)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=[*BENCHMARKS, "all"])
    p.add_argument("--quick", action="store_true", help="small sizes, a few seconds each")
    p.add_argument("--device", default="cpu",
                   help="cpu or cuda (CUDA rows are added when present; pick a GPU with "
                        "CUDA_VISIBLE_DEVICES)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default=DEFAULT_OUT)
    p.add_argument("--model", default="dense", choices=["dense", "conv"],
                   help="training: the dense benchmark or the conv speed benchmark")
    p.add_argument("--seed", type=int, nargs="+", default=None, metavar="S",
                   help="training: the training seed; --model conv: several (each configuration "
                        "once per seed, accuracy averaged, paired differences to today)")


def run_cli(args: argparse.Namespace) -> int:
    if args.device not in ("cpu", "cuda"):  # the benchmarks take no device index
        raise ValueError(f"--device must be cpu or cuda (pick a GPU with CUDA_VISIBLE_DEVICES), "
                         f"got {args.device!r}")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be a positive integer")
    if args.model != "dense" and args.which not in ("training", "all"):
        raise ValueError(f"--model applies to the training benchmark, not {args.which!r}")
    if args.seed is not None and args.which not in ("training", "all"):
        raise ValueError(f"--seed applies to the training benchmark, not {args.which!r}")
    if args.seed is not None and len(args.seed) > 1 and args.model != "conv":
        raise ValueError("several --seed values apply to --model conv only")
    names = list(BENCHMARKS) if args.which == "all" else [args.which]
    run(names, quick=args.quick, device=args.device, out=args.out, threads=args.threads,
        model=args.model, seeds=args.seed)
    return 0


def main(argv=None) -> int:
    return script_main("python -m experiments.bench", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
