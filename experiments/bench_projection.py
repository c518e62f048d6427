r"""Benchmark of the μ∞ projection: the exact closed form against CVXPY QP/LP and the sort floor.

A = randn(n, n) + I (every row infeasible for γ = 0.95), n in 16 64 256 512 1024, is projected by
``project_mu_inf`` — exact on numpy f64 and torch f64/f32 (CPU, CUDA when present), ``method="qp"``
(Clarabel, OSQP, SCS) and ``"lp"`` (HiGHS, Clarabel): *first* = one solve after
``solvers.cvx.clear_cache()``, *cached* = re-solves on fresh matrices — and against the floor
``torch.sort(A.abs(), dim=-1, descending=True)``. QP rows are KKT-polished by the library;
``err_raw_max_abs`` is the solver's own point (read, untimed, from the cached problem). LP points
are not unique: Σ|X − A| is compared with the optimum Σᵢ max(0, rᵢ(A) − γ). A solver family stops
after a solve over ``--budget`` s or a failure, or when its time at the previous size m times
(n/m)² exceeds it; solver time limit 3 × budget. Writes ``bench_projection.{json,md,png}``; prints
the table, (i) cached Clarabel QP / exact numpy at n = 256 (target ≥ 1000), (ii) exact torch CPU
f64 / torch.sort at n = 1024 (target ≤ 3) and whether Clarabel agrees with exact to 1e-6.

    python -m experiments.bench_projection [--sizes 16 64 256] [--budget 20] [--quick]
                                           [--device auto|cpu|cuda] [--threads N] [--out DIR]
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import cvxpy as cp
import numpy as np
import torch

from experiments._cli import script_main
from experiments.timing import machine_info, markdown_table, summarize, sync_for, time_call, write_results
from lipdeq.solvers import cvx, project_mu_inf

NAME, GAMMA, AGREE_TOL = "bench_projection", 0.95, 1e-6
DEFAULT_SIZES, QUICK_SIZES = (16, 64, 256, 512, 1024), (16, 64)
DEFAULT_BUDGET, QUICK_BUDGET = 20.0, 2.0
DEFAULT_OUT = "results/bench_projection"
RATIO_TARGETS = {"cached_clarabel_qp_over_exact": (256, ">=", 1000.0),
                 "exact_torch_over_sort": (1024, "<=", 3.0)}
CVX_FAMILIES = (("qp", "CLARABEL"), ("qp", "OSQP"), ("qp", "SCS"), ("lp", "HIGHS"), ("lp", "CLARABEL"))
TIME_LIMIT_KEY = {"CLARABEL": "time_limit", "OSQP": "time_limit", "SCS": "time_limit_secs",
                  "HIGHS": "time_limit"}
QP_NOTE = ("QP rows are KKT-polished by the library (solvers.cvx): `err` is the returned point's "
           "max-abs error vs exact, `raw` that of the solver's own point before polishing.")


def make_matrix(n: int, seed: int, k: int = 0) -> np.ndarray:
    """A = randn(n, n) + I: every row measure ≈ 0.8 n + 1 > γ, so every row is projected."""
    A = np.random.default_rng([seed, n, k]).standard_normal((n, n))
    A[np.diag_indices(n)] += 1.0
    return A


def row_measures(X: np.ndarray) -> np.ndarray:
    """rᵢ = xᵢᵢ + Σ_{j≠i} |xᵢⱼ| (η = 1), in float64."""
    X = np.asarray(X, dtype=np.float64)
    return np.abs(X).sum(-1) - np.abs(np.diagonal(X)) + np.diagonal(X)


def l1_optimum(A: np.ndarray, gamma: float) -> float:
    """min Σ|X − A| over μ∞(X) ≤ γ (η = 1): Σᵢ max(0, rᵢ(A) − γ) (one unit of ℓ1 change lowers
    a row measure by at most one unit; lowering the diagonal attains it)."""
    return float(np.maximum(row_measures(A) - gamma, 0.0).sum())


def build_methods(devices: list[str], installed: list[str]) -> list[dict[str, Any]]:
    """One dict per line of the table; ``family`` is the unit of budget/error skipping."""
    def method(name, kind, family=None, solver=None, phase=None, device="cpu", dtype="float64"):
        return dict(method=name, family=family or name, kind=kind, solver=solver, phase=phase,
                    device=device, dtype=dtype)

    ms = [method("exact-numpy-f64", "exact")]
    for dev in devices:
        for dt, dtype in (("f64", "float64"), ("f32", "float32")):
            ms += [method(f"{k}-torch-{dev}-{dt}", k, device=dev, dtype=dtype)
                   for k in ("exact", "sort")]
    ms += [method(f"{k}-{sv.lower()}-{ph}", k, f"{k}-{sv.lower()}", sv, ph)
           for k, sv in CVX_FAMILIES if sv in installed for ph in ("first", "cached")]
    return ms


def run_fast(m: dict, A: np.ndarray, X_ref: np.ndarray, timing: dict) -> dict[str, Any]:
    """exact / sort rows: many calls, median of per-call means."""
    fn, sync = (lambda: project_mu_inf(A, GAMMA)), None
    if m["method"] != "exact-numpy-f64":
        T = torch.from_numpy(A).to(m["device"], getattr(torch, m["dtype"]))
        sync = sync_for(m["device"])
        fn = (lambda: project_mu_inf(T, GAMMA)) if m["kind"] == "exact" else \
            (lambda: torch.sort(T.abs(), dim=-1, descending=True))
    row = time_call(fn, warmup=timing["warmup"], repeats=timing["repeats"], sync=sync,
                    min_time=timing["min_time"], max_time=timing["budget"], return_result=True)
    out = row.pop("result")
    if m["kind"] == "exact":
        X = out if isinstance(out, np.ndarray) else out.detach().double().cpu().numpy()
        row.update(err_max_abs=float(np.abs(X - X_ref).max()),
                   max_violation=float(row_measures(X).max() - GAMMA))
    row["longest_solve_s"] = row["max_s"] * row["number"]
    return row


def run_cvxpy(m: dict, n: int, A: np.ndarray, X_ref: np.ndarray, seed: int,
              timing: dict) -> dict[str, Any]:
    """``first``: cache cleared, one solve of A. ``cached``: re-solves (the family's ``first``
    row just built the problem) on fresh matrices; stats plus accuracy against exact."""
    kind, solver, first = m["kind"], m["solver"], m["phase"] == "first"
    opts = {TIME_LIMIT_KEY[solver]: 3 * timing["budget"]} if solver in TIME_LIMIT_KEY else {}
    solved, statuses, samples, cpu = [], set(), [], []  # solved: (A_k, X_k, raw X_k)
    if first:
        cvx.clear_cache()
        gc.collect()
    for k in range(1 if first else timing["cvx_repeats"]):
        Ak = A if first else make_matrix(n, seed, k + 1)  # generation is not timed
        c0, t0 = time.process_time(), time.perf_counter()
        X = project_mu_inf(Ak, GAMMA, method=kind, solver=solver, **opts)
        samples.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        problem, _, _, Xvar = cvx.polytope_problem(kind, n, True)  # the library's cached one
        raw = (np.full((n, n), np.nan) if Xvar.value is None  # the solver's rows, rescaled back
               else Xvar.value * cvx.row_scales(np.asarray(Ak), GAMMA)[:, None])
        solved.append((Ak, X, raw))
        statuses.add(str(problem.status))
        if sum(samples) > timing["budget"]:
            break
    row: dict[str, Any] = summarize(samples)
    row.update(repeats=len(samples), number=1, warmup=0, cpu_median_s=float(np.median(cpu)),
               cpu_samples_s=cpu, longest_solve_s=max(samples), solver_status=sorted(statuses))
    if kind == "qp":
        refs = [X_ref if Ak is A else project_mu_inf(Ak, GAMMA) for Ak, _, _ in solved]
        row["err_max_abs"] = max(float(np.abs(X - R).max()) for (_, X, _), R in zip(solved, refs))
        row["err_raw_max_abs"] = max(float(np.abs(Xr - R).max()) for (*_, Xr), R in zip(solved, refs))
    else:
        row["lp_rel_gap"] = max(abs(float(np.abs(X - Ak).sum()) - l1_optimum(Ak, GAMMA))
                                / max(l1_optimum(Ak, GAMMA), 1e-300) for Ak, X, _ in solved)
    row["max_violation"] = float(max(row_measures(X).max() - GAMMA for _, X, _ in solved))
    return row


def run(sizes=None, budget=None, device: str = "auto", out: str | Path | None = DEFAULT_OUT,
        quick: bool = False, *, seed: int = 0, threads: int | None = None,
        verbose: bool = True) -> dict[str, Any]:
    """Run; write ``bench_projection.{json,md,png}`` under ``out`` (unless None); return the JSON
    payload plus ``"summary_md"``. Defaults: sizes 16…1024 (16 64 quick), budget 20 s (2 s quick);
    ``threads``: torch intra-op threads for the run (restored after)."""
    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    sizes = sorted(set(int(n) for n in (sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))))
    if any(n < 2 for n in sizes):
        raise ValueError(f"sizes must be integers >= 2, got {sizes}")
    budget = float(budget if budget is not None else (QUICK_BUDGET if quick else DEFAULT_BUDGET))
    if not (budget > 0 and math.isfinite(budget)):
        raise ValueError(f"budget must be a positive number of seconds, got {budget}")
    if device not in ("auto", "cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ValueError(f"device must be auto, cpu or cuda (when available), got {device!r}")
    devices = ["cpu", "cuda"] if device != "cpu" and torch.cuda.is_available() else ["cpu"]
    timing = dict(warmup=1, repeats=3, min_time=0.005, cvx_repeats=1, budget=budget) if quick \
        else dict(warmup=3, repeats=7, min_time=0.05, cvx_repeats=5, budget=budget)
    methods = build_methods(devices, installed := cp.installed_solvers())
    old_threads = torch.get_num_threads()
    torch.set_num_threads(torch_threads := int(threads or old_threads))
    try:
        rows = _measure(methods, sizes, budget, seed, timing, verbose)
    finally:
        torch.set_num_threads(old_threads)
    payload: dict[str, Any] = {
        "benchmark": "projection", "machine": machine_info(),
        "config": {"sizes": sizes, "budget_s": budget, "gamma": GAMMA, "seed": seed,
                   "quick": quick, "device": device, "devices": devices,
                   "torch_threads": torch_threads, "timing": timing, "agree_tol": AGREE_TOL,
                   "matrix": "A = randn(n, n) + I (numpy default_rng([seed, n, k]))",
                   "load_average_start": load_start, "qp_rows": QP_NOTE,
                   "solver_options": "library defaults (solvers.cvx.TIGHT), time limit 3 x budget",
                   "solvers_not_installed": [s for _, s in CVX_FAMILIES if s not in installed]},
        "methods": [m["method"] for m in methods], "rows": rows,
        "skipped": [{k: r[k] for k in ("method", "n", "reason", "trigger")}
                    for r in rows if r["status"] == "skipped"],
        "agreement": agreement(rows), "ratios": ratios(rows, devices),
        "total_runtime_s": time.perf_counter() - t_start}
    summary = summary_markdown(payload)
    if out is not None:
        m, c = payload["machine"], payload["config"]
        head = (f"# Projection benchmark (μ∞ ≤ {GAMMA})\n\nMachine: {m['cpu_model']}, "
                f"{m['logical_cores']} logical cores, torch threads {c['torch_threads']}, GPU "
                f"{m['gpu']}; python {m['python']}, " + ", ".join(f"{k} {v}" for k, v in
                                                                 m["versions"].items())
                + f". Budget {budget:g} s per solve (solver time limit {3 * budget:g} s); quick="
                f"{quick}. Samples, CPU times and skip triggers: bench_projection.json.\n\n")
        payload["files"] = {k: str(p) for k, p in write_results(
            out, NAME, payload, head + summary, figure=make_figure(payload)).items()}
    payload["summary_md"] = summary
    return payload


def _measure(methods, sizes, budget, seed, timing, verbose) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    exhausted: dict[str, dict[str, Any]] = {}  # family -> why it stops
    last: dict[str, tuple[int, float, str]] = {}  # family -> (n, median solve time, method)
    for n in sizes:
        A = make_matrix(n, seed)
        X_ref = project_mu_inf(A, GAMMA)
        for m in methods:
            row, fam, prev = {**m, "n": n}, m["family"], last.get(m["family"])
            if fam not in exhausted and prev and prev[0] < n and prev[1] * (n / prev[0]) ** 2 > budget:
                exhausted[fam] = {"reason": "predicted", "n": prev[0], "method": prev[2],
                                  "time_s": prev[1], "predicted_s": prev[1] * (n / prev[0]) ** 2}
            why = exhausted.get(fam)
            if why and (why["n"] < n or why["reason"] == "error"):
                # budget/predicted: larger n only; error: this n too (no cached problem exists)
                row.update(status="skipped", reason=why["reason"], trigger=why)
            else:
                t0 = time.perf_counter()
                try:
                    res = (run_fast(m, A, X_ref, timing) if m["kind"] in ("exact", "sort")
                           else run_cvxpy(m, n, A, X_ref, seed, timing))
                    row.update(status="ok", **res)
                    if m["kind"] in ("qp", "lp"):  # steady cost: the cached median if there is one
                        last[fam] = (n, res["median_s"], m["method"])
                    if res["longest_solve_s"] > budget and fam not in exhausted:
                        exhausted[fam] = {"reason": "budget", "n": n, "method": m["method"],
                                          "time_s": res["longest_solve_s"], "budget_s": budget}
                except Exception as exc:  # SolverError, MemoryError, ...: record, stop the family
                    msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                    row.update(status="error", error=msg, elapsed_s=time.perf_counter() - t0)
                    exhausted[fam] = {"reason": "error", "n": n, "method": m["method"], "error": msg}
                    cvx.clear_cache()
                    gc.collect()
            rows.append(row)
            if verbose:
                print(f"  n={n:5d} {m['method']:22s} {_cell(row)}", file=sys.stderr, flush=True)
    return rows


def _get(rows, method: str, n: int) -> dict[str, Any] | None:  # the row, if it was measured
    return next((r for r in rows if (r["method"], r["n"], r["status"]) == (method, n, "ok")), None)


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per family, the worst error by n (``metric``: max-abs vs exact, or the LP's ℓ1 gap; QP also
    ``raw_*``: unpolished). ``clarabel_qp`` (acceptance): the Clarabel QP is within 1e-6 on every
    size it solved (at least one); ``clarabel_qp_raw``: the same for the raw solver points."""
    res: dict[str, Any] = {"tol": AGREE_TOL}
    for fam in dict.fromkeys(r["family"] for r in rows if r["kind"] != "sort"):
        fr = [r for r in rows if r["family"] == fam]
        ok = [r for r in fr if r["status"] == "ok"]
        key = "lp_rel_gap" if fr[0]["kind"] == "lp" else "err_max_abs"
        d = res[fam] = {"metric": key, "errors": [r["n"] for r in fr if r["status"] == "error"],
                        "max_violation": max((r["max_violation"] for r in ok), default=None)}
        for pre, k in (("", key), ("raw_", "err_raw_max_abs")):
            if all(k in r for r in ok):
                by_n = {str(n): max(r[k] for r in ok if r["n"] == n) for n in sorted({r["n"] for r in ok})}
                d.update({pre + "by_n": by_n, pre + "max": max(by_n.values(), default=None)})
        d["sizes_solved"] = [int(n) for n in d["by_n"]]
    cl = res.get("qp-clarabel", {})
    for key, mx in (("clarabel_qp", "max"), ("clarabel_qp_raw", "raw_max")):
        res[key] = bool(cl.get("sizes_solved") and cl[mx] <= AGREE_TOL)
    res["exact_variants_feasible"] = all(res[f]["max_violation"] is None or
                                         res[f]["max_violation"] <= 0 for f in res if f.startswith("exact"))
    return res


def ratios(rows: list[dict[str, Any]], devices: list[str]) -> dict[str, Any]:
    """(i) cached Clarabel QP / exact numpy at n = 256; (ii) exact torch / sort at n = 1024 (CPU
    f64, and per device/dtype); medians of wall time decide ``met``, also fastest/CPU times."""
    specs = {"cached_clarabel_qp_over_exact": ("qp-clarabel-cached", "exact-numpy-f64"),
             "exact_torch_over_sort": ("exact-torch-cpu-f64", "sort-torch-cpu-f64"),
             **{f"exact_torch_over_sort_{d}_{t}": (f"exact-torch-{d}-{t}", f"sort-torch-{d}-{t}")
                for d in devices for t in ("f64", "f32")}}
    out = {}
    for key, (num, den) in specs.items():
        n, op, target = RATIO_TARGETS[key if key in RATIO_TARGETS else "exact_torch_over_sort"]
        a, b = _get(rows, num, n), _get(rows, den, n)
        d = out[key] = {"n": n, "numerator": num, "denominator": den,
                        "target": f"{op} {target:g}", "value": None, "met": None}
        if a and b:
            v = a["median_s"] / b["median_s"]
            d.update(value=v, met=bool(v >= target if op == ">=" else v <= target),
                     value_min=a["min_s"] / b["min_s"],
                     value_cpu=a["cpu_median_s"] / max(b["cpu_median_s"], 1e-12))
            continue
        r = next((r for r in rows if r["method"] == (den if a else num) and r["n"] == n), None)
        d["reason"] = f"{den if a else num} not measured at n={n} " + (f"({r['status']}: " + (
            r.get("error") or f"{r['reason']} at n={r['trigger']['n']} in {r['trigger']['method']}"
            + (f": {r['trigger']['error']}" if "error" in r["trigger"] else "")) + ")"
            if r else "(size not run)")
        common = [k for k in sorted({r["n"] for r in rows}) if _get(rows, num, k) and _get(rows, den, k)]
        if common:
            d["fallback"] = {"n": common[-1], "value": _get(rows, num, common[-1])["median_s"]
                             / _get(rows, den, common[-1])["median_s"]}
    return out


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    if r["status"] != "ok":  # an error shows its kind and how long the failed attempt took
        return f"skip ({r['reason']})" if r["status"] == "skipped" else \
            f"error ({r['error'].split(':')[0]} after {r['elapsed_s']:.3g} s)"
    s = f"{r['median_s']:.2e}"
    if r["kind"] in ("qp", "lp"):
        s += (f" (err {r['err_max_abs']:.0e}, raw {r['err_raw_max_abs']:.0e})" if r["kind"] == "qp"
              else f" (gap {r['lp_rel_gap']:.0e})")
    bad = ", ".join(st for st in r.get("solver_status", []) if st != "optimal")
    return s + (f" [{bad}]" if bad else "")


def summary_markdown(payload: dict[str, Any]) -> str:
    sizes, rows = payload["config"]["sizes"], payload["rows"]
    table = [{"method": name, **{f"n={n}": _cell(next((r for r in rows if r["method"] == name
                                                        and r["n"] == n), None)) for n in sizes}}
             for name in payload["methods"]]
    r, ag, out = payload["ratios"], payload["agreement"], []
    for key, label in (("cached_clarabel_qp_over_exact", "(i)  cached Clarabel QP / exact numpy"),
                       ("exact_torch_over_sort", "(ii) exact torch CPU f64 / torch.sort")):
        d, fb = r[key], r[key].get("fallback")
        out.append(f"{label} at n={d['n']}: " + (
            f"{d['value']:.3g} (target {d['target']}: {'met' if d['met'] else 'NOT met'}; ratio of "
            f"min times {d['value_min']:.3g}, of CPU times {d['value_cpu']:.3g})"
            if d["value"] is not None else f"not measured — {d['reason']}"
            + (f"; at n={fb['n']}: {fb['value']:.3g}" if fb else "")))
    extra = [f"{k[22:]}={v['value']:.3g}" for k, v in r.items()
             if k.startswith("exact_torch_over_sort_") and v["value"] is not None]
    out.append(f"     exact/sort at n={r['exact_torch_over_sort']['n']} per device/dtype: "
               + (", ".join(extra) or "—"))
    cl, fmt = ag.get("qp-clarabel", {}), (lambda x: "—" if x is None else f"{x:.1e}")
    out.append(f"qp-clarabel: agrees with exact to {ag['tol']:g} on every size it solved "
               f"{cl.get('sizes_solved')}: {ag['clarabel_qp']} (max err {fmt(cl.get('max'))}; "
               f"unpolished solver points: {ag['clarabel_qp_raw']}, max {fmt(cl.get('raw_max'))}; "
               f"failed at n={cl.get('errors')})")
    l0, l1 = payload["config"].get("load_average_start"), payload["machine"].get("load_average")
    out.append(f"Total runtime: {payload['total_runtime_s']:.1f} s"
               + (f"; 1-min load average {l0[0]:.1f} at the start, {l1[0]:.1f} at the end, on "
                  f"{payload['machine']['logical_cores']} logical cores" if l0 and l1 else ""))
    return "\n".join(["Median wall time per projection in seconds (QP: max-abs error vs exact; "
                      "LP: relative gap of the ℓ1 objective). " + QP_NOTE, "",
                      markdown_table(table, ["method"] + [f"n={n}" for n in sizes])]
                     + ["- " + s if not s.startswith(" ") else s for s in out]) + "\n"


def make_figure(payload: dict[str, Any]):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot / global backend state

    ax = (fig := Figure(figsize=(10, 6))).add_subplot()
    fams = list(dict.fromkeys(r["family"].rsplit("-f", 1)[0] for r in payload["rows"]))
    for name in payload["methods"]:
        ok = [r for r in payload["rows"] if r["method"] == name and r["status"] == "ok"]
        if ok:
            ax.plot([r["n"] for r in ok], [r["median_s"] for r in ok],
                    "--" if name.endswith("-first") else ":" if name.startswith("sort") else "-",
                    color=f"C{fams.index(ok[0]['family'].rsplit('-f', 1)[0]) % 10}", lw=1.4, ms=4,
                    marker="s" if name.endswith("f32") else "o", label=name)
    sizes, m = payload["config"]["sizes"], payload["machine"]
    ax.set(xscale="log", yscale="log", xlabel="n", ylabel="median wall time per projection [s]")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_title(f"μ∞ projection (γ = {GAMMA}) — {m['cpu_model']}, GPU {m['gpu']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", nargs="+", type=int, default=None,
                   help="sizes n (default 16 64 256 512 1024; 16 64 with --quick)")
    p.add_argument("--budget", type=float, default=None, help="seconds per solve before a solver is "
                   f"skipped for larger n (default {DEFAULT_BUDGET:g}, {QUICK_BUDGET:g} with --quick)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: add CUDA rows when a GPU is available")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="sizes 16 64, small budget, few repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the run")


def run_cli(args: argparse.Namespace) -> int:
    payload = run(args.sizes, args.budget, args.device, args.out, args.quick, seed=args.seed,
                  threads=args.threads)
    print(payload["summary_md"])
    if "files" in payload:
        print("wrote " + ", ".join(payload["files"].values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main("bench_projection", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
