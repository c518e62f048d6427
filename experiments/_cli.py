"""Command-line plumbing shared by the experiment scripts (docs/design.md §7: bad input gives one
line on stderr and exit code 2)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr instead of usage + message
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def script_main(prog: str, doc: str | None, add_arguments: Callable, run_cli: Callable,
                argv: list[str] | None = None) -> int:
    """``python -m experiments.<prog>``: parse with ``add_arguments``, run ``run_cli``;
    a ValueError becomes one stderr line and exit code 2."""
    parser = OneLineParser(prog=prog, description=(doc or prog).split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        from lipdeq.cli.common import check_output_dir, refuse_empty_paths
        refuse_empty_paths(args)
        if getattr(args, "out", None) is not None:  # before the work, not after it (hours)
            check_output_dir(args.out)
        return run_cli(args)
    except (ValueError, OSError) as exc:
        from lipdeq.cli.common import _one_line
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


def train_or_resume(config, run_dir: str) -> list[dict]:
    """``train`` into ``run_dir``, resuming it when an earlier (killed) call left a run there:
    a rerun of a tuning script picks up where it stopped (a different configuration is refused
    by ``train``'s resume check)."""
    from lipdeq.training.loop import train
    resume = os.path.isfile(os.path.join(run_dir, "config.json"))
    return train(config, run_dir, resume=resume, progress=False)


def report(out_dir: str, name: str, payload: dict, md: str, figure=None) -> int:
    """Write ``name.{json,md}`` (and ``name.png`` for a matplotlib ``figure``) under ``out_dir``
    (:func:`experiments.timing.write_results`), print the markdown and the paths; the exit code 0
    of a finished script."""
    from experiments.timing import write_results
    paths = write_results(out_dir, name, payload, md, figure=figure)
    print(md)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cached_row(run_dir: str, **expected) -> dict | None:
    """The row a tuning run cached in ``run_dir/row.json``, or None when there is none.
    ``expected`` names the row's keys that must hold exactly these values (the configuration it
    was made with); ``ValueError`` naming the file when they do not."""
    path = os.path.join(run_dir, "row.json")
    if not os.path.isfile(path):
        return None
    with open(path) as fh:
        row = json.load(fh)
    other = {k: row.get(k) for k, v in expected.items() if row.get(k) != v}
    if other:
        raise ValueError(f"{path} holds another configuration ({other}); remove it")
    return row
