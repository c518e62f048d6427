r"""Benchmark of the implicit layer's fixed-point solvers: iterations and time to tol, forward
and backward (the adjoint solve), for the average iteration (α*), Picard and Anderson.

Matrices (n ∈ ``--sizes``, default 100 1000; float64, batch ``--batch`` = 128, ReLU):

* ``mu=0.5``, ``mu=0.9``, ``mu=0.99`` — V = randn(n, n)·2/√n (mixed signs, every row measure
  ≈ 1.6√n ≫ 1) projected with ``solvers.project_mu_inf`` onto μ∞ ≤ target. The projection makes
  every row tight, so μ∞(A) = target exactly; the diagonal ends up moderately negative and
  ‖A‖∞ > 1, i.e. outside El Ghaoui's set.
* ``negdiag`` — the docs/math.md §4.4 stress case: diagonal −40…−46, off-diagonal rows scaled so that
  every row measure is 1 before projecting onto μ∞ ≤ 0.9. α* ≈ 0.021 and ‖A‖∞ ≈ 93.

Inputs w = Bu + b are drawn as w ~ N(0, 1) (the solvers only see w). Each solver runs the
library's own code path. Forward: ``implicit_fixed_point``, i.e. ``solve`` on x = relu(Ax + w)
in ‖·‖∞ with the a-posteriori stopping rule of docs/math.md §4.5 (tol ``--tol`` = 1e-6 relative to
max(1, ‖x‖∞), at most ``--max-iter`` = 2000 iterations). Backward: autograd through the
returned x with a random cotangent, i.e. the adjoint solve w = AᵀGw + g of docs/math.md §5 by the same
solver in ‖·‖₁ (the hook of implicit.py). A solve that does not converge within ``--max-iter``
(or blows up: a non-finite residual stops it early) is timed once and reported as not
converged; its backward is skipped.

Times: median wall time of repeated calls (``lipdeq.timing.time_call``, at most 10 s of
repeats; a first call slower than that is the only sample) and the process CPU time per call
(``cpu_s``; on a busy shared machine wall times of multi-threaded torch ops are inflated by
descheduled OpenMP threads; ``--threads 1`` avoids that). ``--quick``: n = 64, batch 32,
max_iter 1000, one repeat, one torch thread (under 20 s).

Writes ``bench_fixed_point.{json,md,png}`` under ``--out`` (default results/bench_fixed_point):
the PNG has one panel per (device, n, matrix) with log10 residual against iteration for every
solver (forward solid, backward dashed). CUDA rows are added when a GPU is present
(``--device auto``). The summary states, as measured, whether the average iteration
accelerates convergence compared with Picard (the paper's claim).

    python -m experiments.bench_fixed_point [--quick] [--device auto|cpu|cuda] [--out DIR]
                                            [--sizes 100 1000] [--batch 128] [--tol 1e-6]
                                            [--max-iter N] [--repeats R] [--threads T]
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from experiments._cli import script_main
from lipdeq.deq import fixed_point as fp
from lipdeq.deq.activations import get_activation
from lipdeq.deq.implicit import SolverConfig, contraction_data, implicit_fixed_point
from lipdeq.deq.operators import DenseOperator
from experiments.timing import machine_info, sync_for, time_call, write_results
from lipdeq.solvers import project_mu_inf

NAME = "bench_fixed_point"
DEFAULT_OUT = "results/bench_fixed_point"
SOLVERS = ("average", "picard", "anderson")
CASES = ("mu=0.5", "mu=0.9", "mu=0.99", "negdiag")
DEFAULTS = dict(sizes=(100, 1000), batch=128, max_iter=2_000, repeats=3, threads=None)
#: seconds of timed repeats per measurement; a first call slower than this is the only sample
BUDGET_S = 10.0
QUICK = dict(sizes=(64,), batch=32, max_iter=1_000, repeats=1, threads=1)
SCHEMA_VERSION = 1
ROW_KEYS = ("device", "n", "case", "mu_inf", "norm_inf", "min_diag", "alpha_star",
            "rate_bound", "solver", "batch", "fwd_converged", "fwd_iterations", "fwd_time_s",
            "fwd_cpu_s", "fwd_residual", "fwd_bound", "bwd_converged", "bwd_iterations",
            "bwd_time_s", "bwd_cpu_s", "bwd_residual", "status")


# ----------------------------------------------------------------------------- problem data
def make_matrix(case: str, n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """The matrix of ``case`` (module docstring), on the CPU."""
    if case not in CASES:
        raise ValueError(f"case must be one of {CASES}, got {case!r}")
    g = torch.Generator().manual_seed(_seed(case, n, seed))
    if case != "negdiag":
        target = float(case[3:])
        V = torch.randn(n, n, generator=g, dtype=torch.float64) * (2.0 / math.sqrt(n))
        A = project_mu_inf(V, target)
    else:  # negdiag
        d = -40.0 - 6.0 * torch.rand(n, generator=g, dtype=torch.float64)
        off = torch.randn(n, n, generator=g, dtype=torch.float64)
        off.fill_diagonal_(0.0)
        off = off / off.abs().sum(1, keepdim=True) * (1.0 - d)[:, None]  # row measure 1
        A = project_mu_inf(off + torch.diag(d), 0.9)
    return A.to(dtype)


def _seed(case: str, n: int, seed: int) -> int:
    return (1_000_003 * (CASES.index(case) + 1) + 7919 * n + seed) % (2 ** 31)


def matrix_info(A: torch.Tensor) -> dict[str, float]:
    op = DenseOperator(A)
    mu_plus, alpha_star = contraction_data(op, None)
    mu = float(op.mu_inf())
    a = float(alpha_star)
    return {"mu_inf": mu, "norm_inf": float(A.abs().sum(1).max()),
            "min_diag": float(A.diagonal().min()), "alpha_star": a,
            "rate_bound": 1.0 - a * (1.0 - max(mu, 0.0))}


# ----------------------------------------------------------------------------- measurements
def _timed(fn, *, repeats: int, sync, first: tuple[float, float]) -> dict[str, float]:
    """Median wall time (time_call) and mean process CPU time per call. ``first`` = (wall, cpu)
    of the untimed first call: when it exceeded ``BUDGET_S`` it is the only sample."""
    if first[0] > BUDGET_S:
        return {"median_s": first[0], "iqr_s": 0.0, "cpu_s": first[1], "repeats": 1}
    c0 = time.process_time()
    stats = time_call(fn, warmup=0, repeats=repeats, sync=sync, max_time=BUDGET_S,
                      return_result=True)
    cpu = (time.process_time() - c0) / max(1, stats["repeats"] * stats["number"])
    return {"median_s": stats["median_s"], "iqr_s": stats["iqr_s"], "cpu_s": cpu,
            "repeats": stats["repeats"]}


def run_solver(A: torch.Tensor, w: torch.Tensor, g: torch.Tensor, solver: str, *, tol: float,
               max_iter: int, repeats: int, device: str) -> dict[str, Any]:
    """Forward and backward of one solver on one problem; traces and timings."""
    relu = get_activation("relu")
    cfg = SolverConfig(solver=solver, tol=tol, max_iter=max_iter)
    op = DenseOperator(A)
    sync = sync_for(device)
    row: dict[str, Any] = {"solver": solver}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fp.ConvergenceWarning)
        # first (untimed) forward: convergence, iterations, trace
        stats: dict = {}
        with torch.no_grad():
            t0 = time.perf_counter()
            c0 = time.process_time()
            implicit_fixed_point(op, w, relu, cfg, stats=stats)
            if sync:
                sync()
            once_wall, once_cpu = time.perf_counter() - t0, time.process_time() - c0
        fwd = stats["forward"]
        row.update(fwd_converged=bool(fwd.converged), fwd_iterations=int(fwd.iterations),
                   fwd_residual=float(fwd.residual), fwd_bound=float(fwd.bound),
                   fwd_trace=fwd.residuals.detach().cpu().tolist())
        if not fwd.converged:
            why = ("diverged: non-finite residual" if fwd.iterations < max_iter
                   else f"residual {fwd.residual:.2g} at max_iter")
            row.update(fwd_time_s=once_wall, fwd_cpu_s=once_cpu, fwd_repeats=1,
                       status=f"forward not converged ({why})",
                       bwd_converged=None, bwd_iterations=None, bwd_time_s=None, bwd_cpu_s=None,
                       bwd_residual=None, bwd_trace=[])
            return row

        def forward():
            with torch.no_grad():
                return implicit_fixed_point(op, w, relu, cfg)

        t = _timed(forward, repeats=repeats, sync=sync, first=(once_wall, once_cpu))
        row.update(fwd_time_s=t["median_s"], fwd_iqr_s=t["iqr_s"], fwd_cpu_s=t["cpu_s"],
                   fwd_repeats=t["repeats"])

        # backward: autograd through x = relu(Ax* + w) with the adjoint hook
        wl = w.detach().clone().requires_grad_(True)
        bstats: dict = {}
        x = implicit_fixed_point(op, wl, relu, cfg, stats=bstats)

        def backward():
            return torch.autograd.grad(x, wl, grad_outputs=g, retain_graph=True)[0]

        t0, c0 = time.perf_counter(), time.process_time()
        backward()  # untimed first call: convergence and trace
        if sync:
            sync()
        first = (time.perf_counter() - t0, time.process_time() - c0)
        bwd = bstats["backward"]
        row.update(bwd_converged=bool(bwd.converged), bwd_iterations=int(bwd.iterations),
                   bwd_residual=float(bwd.residual),
                   bwd_trace=bwd.residuals.detach().cpu().tolist())
        if bwd.converged:
            t = _timed(backward, repeats=repeats, sync=sync, first=first)
            row.update(bwd_time_s=t["median_s"], bwd_iqr_s=t["iqr_s"], bwd_cpu_s=t["cpu_s"],
                       bwd_repeats=t["repeats"], status="ok")
        else:
            row.update(bwd_time_s=first[0], bwd_cpu_s=first[1], bwd_repeats=1,
                       status="backward not converged")
    return row


def resolve_devices(device: str) -> list[str]:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but torch.cuda.is_available() is False")
    if device == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [device]


# ----------------------------------------------------------------------------- driver
def run(quick: bool = False, device: str = "auto", out: str | Path | None = DEFAULT_OUT, *,
        sizes=None, batch: int | None = None, tol: float = 1e-6, max_iter: int | None = None,
        repeats: int | None = None, threads: int | None = None, seed: int = 0,
        verbose: bool = True) -> dict[str, Any]:
    """Run the benchmark; write ``bench_fixed_point.{json,md,png}`` under ``out`` (unless None).

    Returns the JSON payload plus ``"summary_md"`` (the printed markdown) and ``"files"``.
    ``threads`` sets torch's intra-op threads for the run (restored afterwards; ``quick``
    defaults to 1).
    """
    base = QUICK if quick else DEFAULTS
    sizes = sorted({int(n) for n in (sizes or base["sizes"])})
    batch = int(batch if batch is not None else base["batch"])
    max_iter = int(max_iter if max_iter is not None else base["max_iter"])
    repeats = int(repeats if repeats is not None else base["repeats"])
    threads = threads if threads is not None else base["threads"]
    if any(n < 2 for n in sizes):
        raise ValueError(f"sizes must be integers >= 2, got {sizes}")
    if batch < 1 or max_iter < 1 or repeats < 1:
        raise ValueError("batch, max_iter and repeats must be positive integers")
    if not (tol > 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a positive finite number, got {tol}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    devices = resolve_devices(device)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        payload = _run(quick, devices, sizes, batch, tol, max_iter, repeats, seed, verbose)
    finally:
        torch.set_num_threads(old_threads)
    from experiments.bench_fixed_point_report import make_figure, summary_markdown
    summary = summary_markdown(payload)
    payload["summary_md"] = summary
    if out is not None:
        fig = make_figure(payload)
        paths = write_results(out, NAME, {k: v for k, v in payload.items() if k != "summary_md"},
                              summary, figure=fig)
        import matplotlib.pyplot as plt
        plt.close(fig)
        payload["files"] = {k: str(v) for k, v in paths.items()}
    return payload


def _run(quick, devices, sizes, batch, tol, max_iter, repeats, seed, verbose) -> dict[str, Any]:
    t_start = time.perf_counter()
    machine = machine_info()
    machine["torch_threads"] = torch.get_num_threads()
    rows: list[dict[str, Any]] = []
    for dev in devices:
        for n in sizes:
            for case in CASES:
                A = make_matrix(case, n, seed)
                info = matrix_info(A)
                gen = torch.Generator().manual_seed(_seed(case, n, seed) + 1)
                w = torch.randn(batch, n, generator=gen, dtype=torch.float64)
                g = torch.randn(batch, n, generator=gen, dtype=torch.float64)
                A_d, w_d, g_d = A.to(dev), w.to(dev), g.to(dev)
                for solver in SOLVERS:
                    row = {"device": dev, "n": n, "case": case, "batch": batch, **info}
                    row.update(run_solver(A_d, w_d, g_d, solver, tol=tol, max_iter=max_iter,
                                          repeats=repeats, device=dev))
                    rows.append(row)
                    if verbose:
                        _progress(row)
    return {"benchmark": NAME, "schema_version": SCHEMA_VERSION,
            "config": {"quick": quick, "devices": devices, "sizes": sizes, "batch": batch,
                       "tol": tol, "max_iter": max_iter, "repeats": repeats, "seed": seed,
                       "activation": "relu", "dtype": "float64", "cases": list(CASES),
                       "solvers": list(SOLVERS), "torch_threads": torch.get_num_threads()},
            "machine": machine, "rows": rows, "claim": claim(rows),
            "total_s": time.perf_counter() - t_start}


def _progress(r: dict[str, Any]) -> None:
    bwd = (f"bwd {r['bwd_iterations']} it {_fmt_t(r.get('bwd_time_s'))}"
           if r.get("bwd_iterations") is not None else "bwd —")
    print(f"[{r['device']}] n={r['n']:<5} {r['case']:<8} {r['solver']:<9} "
          f"fwd {r['fwd_iterations']} it {_fmt_t(r['fwd_time_s'])} "
          f"{'ok' if r['fwd_converged'] else 'NOT converged'} | {bwd}", file=sys.stderr)


def _fmt_t(t) -> str:
    return "—" if t is None else f"{t:.3g}s"


# ----------------------------------------------------------------------------- the claim
def claim(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Average iteration (α*) vs Picard on each (device, n, case), as measured.

    "Accelerates" is judged on forward iterations to tol (deterministic); the ratios of
    iterations and of CPU time per solve are reported beside it (wall times on a shared
    machine are noisier)."""
    cases = []
    for r in rows:
        if r["solver"] != "average":
            continue
        p = next(q for q in rows if q["solver"] == "picard" and q["device"] == r["device"]
                 and q["n"] == r["n"] and q["case"] == r["case"])
        both = r["fwd_converged"] and p["fwd_converged"]
        if r["fwd_converged"] and not p["fwd_converged"]:
            verdict = "average converges, picard does not"
        elif p["fwd_converged"] and not r["fwd_converged"]:
            verdict = "picard converges, average does not"
        elif not both:
            verdict = "neither converges"
        elif r["fwd_iterations"] < p["fwd_iterations"]:
            verdict = "average needs fewer iterations"
        elif r["fwd_iterations"] == p["fwd_iterations"]:
            verdict = "same iterations"
        else:
            verdict = "picard needs fewer iterations"
        cases.append({
            "device": r["device"], "n": r["n"], "case": r["case"], "verdict": verdict,
            "norm_inf": r["norm_inf"], "alpha_star": r["alpha_star"],
            "iterations_average": r["fwd_iterations"], "iterations_picard": p["fwd_iterations"],
            "iteration_ratio_picard_over_average":
                p["fwd_iterations"] / r["fwd_iterations"] if both else None,
            "cpu_ratio_picard_over_average":
                p["fwd_cpu_s"] / r["fwd_cpu_s"] if both and r["fwd_cpu_s"] > 0 else None})
    better = [c for c in cases if c["verdict"] in ("average converges, picard does not",
                                                    "average needs fewer iterations")]
    n_avg = sum(bool(r["fwd_converged"]) for r in rows if r["solver"] == "average")
    n_pic = sum(bool(r["fwd_converged"]) for r in rows if r["solver"] == "picard")
    ratios = [c["iteration_ratio_picard_over_average"] for c in cases
              if c["iteration_ratio_picard_over_average"] is not None]
    holds = len(better) == len(cases) and len(cases) > 0
    text = (f"Average iteration (α*) vs Picard, as measured: the average iteration reached tol "
            f"on {n_avg}/{len(cases)} problems, Picard on {n_pic}/{len(cases)}; the average "
            f"iteration was better (converged where Picard did not, or needed fewer "
            f"iterations) on {len(better)}/{len(cases)}")
    if ratios:
        text += (f"; where both converged Picard needed {min(ratios):.2g}–{max(ratios):.2g}× "
                 f"the iterations of the average iteration")
    text += (". The paper's claim that the average iteration accelerates convergence relative "
             f"to Picard {'holds on every problem here' if holds else 'does not hold on every problem here'}.")
    return {"holds_everywhere": holds, "better_count": len(better), "total": len(cases),
            "cases": cases, "text": text}


# ----------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="n=64, batch 32, max_iter 1000, one repeat, one thread (< 20 s)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--sizes", nargs="+", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for the run (default: torch's own; quick: 1)")
    p.add_argument("--seed", type=int, default=0)


def run_cli(args: argparse.Namespace) -> int:
    payload = run(args.quick, args.device, args.out, sizes=args.sizes, batch=args.batch,
                  tol=args.tol, max_iter=args.max_iter, repeats=args.repeats,
                  threads=args.threads, seed=args.seed)
    print(payload["summary_md"])
    if "files" in payload:
        print("wrote " + ", ".join(payload["files"].values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """One stderr line and exit code 2 for bad input, ``--out`` checked before the work
    (:func:`experiments._cli.script_main`, as every experiment script)."""
    return script_main("bench_fixed_point", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
