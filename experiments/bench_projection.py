r"""Benchmark of the μ∞ projection: the exact closed form against CVXPY QP/LP and the sort floor.

For each n in ``--sizes`` (default 16 64 256 512 1024) one random matrix A = randn(n, n) + I
(every row infeasible for γ = 0.95) is projected onto {μ∞(X) ≤ γ} by

* ``exact-numpy-f64``                      ``project_mu_inf`` on a float64 numpy array;
* ``exact-torch-{cpu,cuda}-{f64,f32}``     the same on torch tensors (CUDA when available);
* ``sort-torch-{cpu,cuda}-{f64,f32}``      the floor: ``torch.sort(A.abs(), dim=-1,
  descending=True)`` alone (the one O(n² log n) step of the closed form);
* ``qp-{clarabel,osqp,scs}-{first,cached}`` ``method="qp"`` with the library's solver settings
  (``solvers.cvx``, which also polishes the solver's rows) — *first* is one solve after
  ``solvers.cvx.clear_cache()`` (problem build + DPP canonicalization + solve),
  *cached* re-solves the cached problem on fresh matrices of the same law (no warm start from
  the same data);
* ``qp-clarabel-constw-{first,cached}``   the same QP built here with W a constant (η = 1)
  instead of a CVXPY Parameter, solved by Clarabel with the library's tolerances, neither
  polished nor repaired (``optimal_inaccurate`` accepted, its error is reported): when the
  library's problem is too large to canonicalize (its (n, n) Parameter W times the (n, n)
  variable T gives a DPP tensor with n⁴ rows, 32 GiB of indices at n = 256), this row still
  shows what the interior-point solve itself costs;
* ``lp-{highs,clarabel}-{first,cached}``   ``method="lp"`` (entrywise ℓ1-nearest point).

Agreement: each QP solution's max-abs difference to the exact projection (the library's
Clarabel QP must agree to 1e-6 on every size it solved: ``agreement.clarabel_qp``);
the LP solution is not unique, so its ℓ1 objective Σ|X − A| is compared with the optimum, which
for η = 1 is Σᵢ max(0, rᵢ(A) − γ) (rᵢ the row measures): one unit of ℓ1 change lowers a row
measure by at most one unit, and lowering the diagonal achieves exactly that.

A solver family is skipped for every larger n once one of its solves took longer than
``--budget`` seconds or failed (error, e.g. MemoryError), and also at a size n where its
cached re-solve time at the previous size m, scaled by (n/m)² (the problem has 2n² variables),
already exceeds the budget; skips and their trigger are recorded in the JSON.
Writes ``bench_projection.{json,md,png}`` under ``--out`` and prints the summary table and the
two ratios of median wall times: cached Clarabel QP / exact numpy at n = 256 (target ≥ 1000)
and exact torch CPU float64 / its sort at n = 1024 (target ≤ 3), each also as a ratio of the
fastest samples and of CPU times (robust to a busy machine; see ``--threads``).

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
from typing import Any, Callable

import numpy as np
import torch

from lipdeq.timing import (machine_info, markdown_table, summarize, sync_for, time_call,
                           write_results)

NAME = "bench_projection"
GAMMA = 0.95
DEFAULT_SIZES = (16, 64, 256, 512, 1024)
QUICK_SIZES = (16, 64)
DEFAULT_BUDGET = 20.0
QUICK_BUDGET = 2.0
DEFAULT_OUT = "results/bench_projection"
AGREE_TOL = 1e-6
RATIO_TARGETS = {"cached_clarabel_qp_over_exact": (256, ">=", 1000.0),
                 "exact_torch_over_sort": (1024, "<=", 3.0)}


# ----------------------------------------------------------------------------- problem data
def make_matrix(n: int, seed: int, k: int = 0) -> np.ndarray:
    """A = randn(n, n) + I: every row measure ≈ 0.8 n + 1 > γ, so every row is projected."""
    A = np.random.default_rng([seed, n, k]).standard_normal((n, n))
    A[np.diag_indices(n)] += 1.0
    return A


def row_measures(X: np.ndarray) -> np.ndarray:
    """rᵢ = xᵢᵢ + Σ_{j≠i} |xᵢⱼ| (η = 1), in float64."""
    X = np.asarray(X, dtype=np.float64)
    d = np.diagonal(X)
    return np.abs(X).sum(-1) - np.abs(d) + d


def l1_optimum(A: np.ndarray, gamma: float) -> float:
    """min Σ|X − A| over μ∞(X) ≤ γ (η = 1): Σᵢ max(0, rᵢ(A) − γ)."""
    return float(np.maximum(row_measures(A) - gamma, 0.0).sum())


# ----------------------------------------------------------------------------- methods
class Method:
    """One line of the benchmark: a name, a family (the unit of budget skipping) and a runner."""

    def __init__(self, name: str, family: str, kind: str, *, solver: str | None = None,
                 phase: str | None = None, device: str = "cpu", dtype: str = "float64",
                 options: dict | None = None, group: str | None = None, installed: bool = True,
                 constw: bool = False):
        self.name, self.family, self.kind, self.solver = name, family, kind, solver
        self.phase, self.device, self.dtype, self.options = phase, device, dtype, options
        self.group = group or family  # budget/error skipping unit
        self.installed = installed
        self.constw = constw  # the benchmark's own constant-W QP instead of solvers.cvx

    def meta(self) -> dict[str, Any]:
        return {"method": self.name, "family": self.family, "kind": self.kind,
                "solver": self.solver, "phase": self.phase, "device": self.device,
                "dtype": self.dtype}


def build_methods(devices: list[str]) -> list[Method]:
    import cvxpy as cp

    installed = set(cp.installed_solvers())
    ms: list[Method] = [Method("exact-numpy-f64", "exact-numpy-f64", "exact", device="cpu")]
    for dev in devices:
        for dt in ("f64", "f32"):
            dtype = "float64" if dt == "f64" else "float32"
            ms.append(Method(f"exact-torch-{dev}-{dt}", f"exact-torch-{dev}-{dt}", "exact",
                             device=dev, dtype=dtype))
            ms.append(Method(f"sort-torch-{dev}-{dt}", f"sort-torch-{dev}-{dt}", "sort",
                             device=dev, dtype=dtype))
    cvx_specs = [("qp", "CLARABEL", None),
                 ("qp", "CLARABEL-CONSTW", None), ("qp", "OSQP", None), ("qp", "SCS", None),
                 ("lp", "HIGHS", None), ("lp", "CLARABEL", None)]
    for kind, spec, opts in cvx_specs:
        fam = f"{kind}-{spec.lower()}"
        solver = spec.split("-")[0]
        for phase in ("first", "cached"):
            ms.append(Method(f"{fam}-{phase}", fam, kind, solver=solver, phase=phase, options=opts,
                             installed=solver in installed, constw=spec.endswith("-CONSTW")))
    return ms


def _torch_dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


def _project(A, method: str = "exact", solver: str | None = None, options: dict | None = None):
    from solvers import project_mu_inf

    return project_mu_inf(A, GAMMA, method=method, solver=solver, **(options or {}))


def run_fast(m: Method, A: np.ndarray, X_ref: np.ndarray, timing: dict) -> dict[str, Any]:
    """exact / sort rows: many calls, median of per-call means."""
    if m.name == "exact-numpy-f64":
        fn: Callable[[], Any] = lambda: _project(A)
        sync = None
    else:
        T = torch.from_numpy(A).to(device=m.device, dtype=_torch_dtype(m.dtype))
        sync = sync_for(m.device)
        fn = (lambda: _project(T)) if m.kind == "exact" else \
            (lambda: torch.sort(T.abs(), dim=-1, descending=True))
    stats = time_call(fn, warmup=timing["warmup"], repeats=timing["repeats"],
                      min_time=timing["min_time"], max_time=timing["budget"], sync=sync,
                      return_result=True)
    out = stats.pop("result")
    row: dict[str, Any] = dict(stats)
    if m.kind == "exact":
        X = out if isinstance(out, np.ndarray) else out.detach().double().cpu().numpy()
        row["err_max_abs"] = float(np.abs(X - X_ref).max())
        row["max_violation"] = float(row_measures(X).max() - GAMMA)
    row["longest_solve_s"] = stats["max_s"] * stats["number"]
    return row


_CONSTW: dict[int, tuple] = {}


def _constw_problem(n: int):
    """min ‖X − V‖² s.t. T ≥ ±X, diag(X) + Σ_{j≠i} T_ij ≤ γ, with V the only Parameter."""
    import cvxpy as cp

    if n not in _CONSTW:
        V = cp.Parameter((n, n), name="V")
        X = cp.Variable((n, n), name="X")
        T = cp.Variable((n, n), name="T")
        rows = cp.diag(X) + cp.sum(cp.multiply(np.ones((n, n)) - np.eye(n), T), axis=1)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(X - V)), [T >= X, T >= -X, rows <= GAMMA])
        _CONSTW[n] = (prob, V, X)
    return _CONSTW[n]


def _project_constw(A: np.ndarray, solver: str) -> np.ndarray:
    import cvxpy as cp
    from solvers.cvx import TIGHT

    prob, V, X = _constw_problem(A.shape[-1])
    V.value = A
    prob.solve(solver=solver, **TIGHT.get(solver, {}))
    if prob.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or X.value is None:
        raise RuntimeError(f"{solver} status {prob.status}")
    return np.array(X.value)


def run_cvxpy(m: Method, n: int, A: np.ndarray, X_ref: np.ndarray, seed: int,
              timing: dict) -> dict[str, Any]:
    """One CVXPY row. ``first``: cache cleared, one solve. ``cached``: re-solves (problem cached)
    on fresh matrices; returns stats plus agreement with the exact projection."""
    from solvers import cvx

    kind = m.kind
    if m.constw:
        solve = lambda Ak: _project_constw(Ak, m.solver)
    else:
        solve = lambda Ak: _project(Ak, kind, m.solver, m.options)
    solved: list[tuple[np.ndarray, np.ndarray]] = []  # (A_k, X_k)
    if m.phase == "first":
        cvx.clear_cache()
        _CONSTW.clear()
        gc.collect()
        c0, t0 = time.process_time(), time.perf_counter()
        X = solve(A)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        row: dict[str, Any] = summarize([dt])
        row.update(repeats=1, number=1, warmup=0, cpu_median_s=dc, cpu_samples_s=[dc])
        solved.append((A, X))
    else:
        # The problem was built and canonicalized by this family's ``first`` row just before.
        pool = iter(range(1, 10_000))

        samples, cpu = [], []
        for _ in range(timing["cvx_repeats"]):
            Ak = make_matrix(n, seed, next(pool))  # generation is not timed
            c0, t0 = time.process_time(), time.perf_counter()
            solved.append((Ak, solve(Ak)))
            samples.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if sum(samples) > timing["budget"]:
                break
        row = summarize(samples)
        row.update(repeats=len(samples), number=1, warmup=0, cpu_median_s=float(np.median(cpu)),
                   cpu_samples_s=cpu)
    row["longest_solve_s"] = row["max_s"]
    if kind == "qp":
        errs = [np.abs(Xk - (X_ref if Ak is A else _project(Ak))).max() for Ak, Xk in solved]
        row["err_max_abs"] = float(max(errs))
    else:
        gaps = []
        for Ak, Xk in solved:
            opt = l1_optimum(Ak, GAMMA)
            gaps.append(abs(float(np.abs(Xk - Ak).sum()) - opt) / max(opt, 1e-300))
        row["lp_rel_gap"] = float(max(gaps))
    row["max_violation"] = float(max(row_measures(Xk).max() - GAMMA for _, Xk in solved))
    return row


# ----------------------------------------------------------------------------- driver
def resolve_devices(device: str) -> list[str]:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available")
    return ["cpu", "cuda"] if device == "cuda" or (device == "auto" and torch.cuda.is_available()) \
        else ["cpu"]


def run(sizes=None, budget=None, device: str = "auto", out: str | Path | None = DEFAULT_OUT,
        quick: bool = False, *, seed: int = 0, threads: int | None = None,
        verbose: bool = True) -> dict[str, Any]:
    """Run the benchmark; write ``bench_projection.{json,md,png}`` under ``out`` (unless None).

    ``sizes`` defaults to 16 64 256 512 1024 (16 64 with ``quick``), ``budget`` (seconds) to 20
    (2 with ``quick``). ``threads`` sets torch's intra-op threads for the run (restored after);
    on a busy machine ``threads=1`` makes the CPU times (``cpu_median_s``) meaningful, since
    waiting OpenMP threads spin. Returns the JSON payload (plus ``"summary_md"``).
    """
    if threads is not None and int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _run(sizes, budget, device, out, quick, seed, verbose)
    finally:
        torch.set_num_threads(old_threads)


def _run(sizes, budget, device, out, quick, seed, verbose) -> dict[str, Any]:
    t_start = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    sizes = sorted(set(int(n) for n in (sizes or (QUICK_SIZES if quick else DEFAULT_SIZES))))
    if any(n < 2 for n in sizes):
        raise ValueError(f"sizes must be integers >= 2, got {sizes}")
    budget = float(budget if budget is not None else (QUICK_BUDGET if quick else DEFAULT_BUDGET))
    if not (budget > 0 and math.isfinite(budget)):
        raise ValueError(f"budget must be a positive number of seconds, got {budget}")
    devices = resolve_devices(device)
    timing = (dict(warmup=1, repeats=3, min_time=0.005, cvx_repeats=1) if quick else
              dict(warmup=3, repeats=7, min_time=0.05, cvx_repeats=5))
    timing["budget"] = budget
    methods = build_methods(devices)

    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    exhausted: dict[str, dict[str, Any]] = {}  # group -> why it stops
    last_solve: dict[str, tuple[int, float, str]] = {}  # group -> (n, last solve time, method)
    for n in sizes:
        A = make_matrix(n, seed)
        X_ref = _project(A)
        for m in methods:
            row = {**m.meta(), "n": n}
            if not m.installed:
                row.update(status="skipped", reason=f"solver {m.solver} not installed")
                skipped.append({"method": m.name, "n": n, "reason": row["reason"]})
                rows.append(row)
                continue
            prev = last_solve.get(m.group)
            if (m.kind in ("qp", "lp") and m.group not in exhausted and prev and prev[0] < n
                    and prev[1] * (n / prev[0]) ** 2 > budget):
                # a solve costs at least ∝ its 2n² variables: skip a size whose prediction
                # from the previous size's re-solve time is already over budget
                exhausted[m.group] = {"reason": "predicted", "n": prev[0], "method": prev[2],
                                      "time_s": prev[1], "predicted_s": prev[1] * (n / prev[0]) ** 2,
                                      "budget_s": budget}
            why = exhausted.get(m.group)
            # budget/predicted: larger n only; error: this n too (no cached problem exists)
            if why and (why["n"] < n or why["reason"] == "error"):
                row.update(status="skipped", reason=why["reason"], trigger=why)
                skipped.append({"method": m.name, "n": n, "reason": why["reason"], "trigger": why})
                rows.append(row)
                continue
            try:
                if m.kind in ("exact", "sort"):
                    res = run_fast(m, A, X_ref, timing)
                else:
                    res = run_cvxpy(m, n, A, X_ref, seed, timing)
                row.update(status="ok", **res)
                if m.kind in ("qp", "lp"):  # steady cost: the cached median when there is one
                    last_solve[m.group] = (n, res["median_s"], m.name)
                if res["longest_solve_s"] > budget and m.group not in exhausted:
                    exhausted[m.group] = {"reason": "budget", "n": n, "method": m.name,
                                           "time_s": res["longest_solve_s"], "budget_s": budget}
            except Exception as exc:  # SolverError, MemoryError, ...: record, stop this family
                msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                row.update(status="error", error=msg)
                exhausted[m.group] = {"reason": "error", "n": n, "method": m.name, "error": msg}
                from solvers import cvx
                cvx.clear_cache()
                _CONSTW.clear()
                gc.collect()
            rows.append(row)
            if verbose:
                _progress(row)

    payload: dict[str, Any] = {
        "benchmark": "projection",
        "machine": machine_info(),
        "config": {"sizes": sizes, "budget_s": budget, "gamma": GAMMA, "seed": seed,
                   "quick": quick, "device": device, "devices": devices,
                   "torch_threads": torch.get_num_threads(),
                   "matrix": "A = randn(n, n) + I (numpy default_rng([seed, n, k]))",
                   "timing": timing, "agree_tol": AGREE_TOL, "load_average_start": load_start,
                   "solver_options": "library defaults (solvers.cvx.TIGHT)"},
        "methods": [m.name for m in methods],
        "rows": rows,
        "skipped": skipped,
        "agreement": agreement(rows),
        "ratios": ratios(rows, devices),
    }
    payload["total_runtime_s"] = time.perf_counter() - t_start
    summary = summary_markdown(payload)
    if out is not None:
        payload["files"] = {k: str(v) for k, v in write_results(
            out, NAME, payload, full_markdown(payload, summary), figure=make_figure(payload)).items()}
    payload["summary_md"] = summary
    return payload


def _progress(row: dict[str, Any]) -> None:
    if row["status"] == "ok":
        extra = "".join(f" {k}={row[k]:.2e}" for k in ("err_max_abs", "lp_rel_gap") if k in row)
        print(f"  n={row['n']:5d} {row['method']:28s} {row['median_s']:.3e} s{extra}",
              file=sys.stderr, flush=True)
    else:
        print(f"  n={row['n']:5d} {row['method']:28s} {row['status']}: "
              f"{row.get('error') or row.get('reason')}", file=sys.stderr, flush=True)


def _get(rows, method: str, n: int) -> dict[str, Any] | None:
    for r in rows:
        if r["method"] == method and r["n"] == n and r["status"] == "ok":
            return r
    return None


def agreement(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-family agreement. ``clarabel_qp`` is the acceptance boolean: the library's Clarabel QP
    is within 1e-6 of the exact projection on every size it solved (at least one); sizes where
    it failed are listed under ``qp-clarabel.errors``. ``clarabel_qp_constw``: the same test for
    the benchmark's unpolished constant-W solve (information only)."""
    res: dict[str, Any] = {"tol": AGREE_TOL}
    fams = sorted({r["family"] for r in rows if r["kind"] in ("qp", "lp", "exact")})
    for fam in fams:
        fr = [r for r in rows if r["family"] == fam]
        ok = [r for r in fr if r["status"] == "ok"]
        key = "lp_rel_gap" if fr[0]["kind"] == "lp" else "err_max_abs"
        by_n: dict[int, float] = {}
        for r in ok:
            by_n[r["n"]] = max(by_n.get(r["n"], 0.0), r[key])
        res[fam] = {"metric": key, "max": max(by_n.values()) if by_n else None,
                    "by_n": {str(k): v for k, v in sorted(by_n.items())},
                    "sizes_solved": sorted(by_n),
                    "errors": [r["n"] for r in fr if r["status"] == "error"],
                    "max_violation": max((r["max_violation"] for r in ok), default=None)}
    for fam, key in (("qp-clarabel", "clarabel_qp"), ("qp-clarabel-constw", "clarabel_qp_constw")):
        cl = res.get(fam)
        res[key] = bool(cl and cl["sizes_solved"] and cl["max"] <= AGREE_TOL)
    ex = [res[f] for f in fams if f.startswith("exact")]
    res["exact_variants_feasible"] = all((e["max_violation"] is None or e["max_violation"] <= 0)
                                         for e in ex)
    return res


def ratios(rows: list[dict[str, Any]], devices: list[str]) -> dict[str, Any]:
    """(i) cached Clarabel QP / exact numpy at n = 256; (ii) exact torch / sort at n = 1024."""
    def ratio(num: str, den: str, n: int, op: str, target: float) -> dict[str, Any]:
        a, b = _get(rows, num, n), _get(rows, den, n)
        d: dict[str, Any] = {"n": n, "numerator": num, "denominator": den,
                             "target": f"{op} {target:g}"}
        if a and b:
            v = a["median_s"] / b["median_s"]
            # value: medians of wall time (decides `met`); on a busy machine also compare the
            # ratio of the fastest samples and of the CPU times
            d.update(value=v, met=bool(v >= target if op == ">=" else v <= target),
                     value_min=a["min_s"] / b["min_s"],
                     value_cpu=a["cpu_median_s"] / max(b["cpu_median_s"], 1e-12))
        else:
            missing = num if not a else den
            r = next((r for r in rows if r["method"] == missing and r["n"] == n), None)
            why = None
            if r:
                trig = r.get("trigger") or {}
                why = r.get("error") or (f"{r['reason']} at n={trig['n']} in {trig['method']}"
                                         + (f": {trig['error']}" if trig.get("error") else "")
                                         if trig else r.get("reason"))
            d.update(value=None, met=None, reason=f"{missing} not measured at n={n}"
                     + (f" ({r['status']}: {why})" if r else " (size not run)"))
            common = sorted(m for m in {r["n"] for r in rows}
                            if _get(rows, num, m) and _get(rows, den, m))
            if common:
                m = common[-1]
                d["fallback"] = {"n": m, "value": _get(rows, num, m)["median_s"]
                                 / _get(rows, den, m)["median_s"]}
        return d

    n1, op1, t1 = RATIO_TARGETS["cached_clarabel_qp_over_exact"]
    n2, op2, t2 = RATIO_TARGETS["exact_torch_over_sort"]
    out = {"cached_clarabel_qp_over_exact": ratio("qp-clarabel-cached", "exact-numpy-f64", n1, op1, t1),
           "cached_clarabel_qp_constw_over_exact": ratio("qp-clarabel-constw-cached",
                                                         "exact-numpy-f64", n1, op1, t1),
           "exact_torch_over_sort": ratio("exact-torch-cpu-f64", "sort-torch-cpu-f64", n2, op2, t2)}
    for dev in devices:
        for dt in ("f64", "f32"):
            key = f"exact_torch_over_sort_{dev}_{dt}"
            out[key] = ratio(f"exact-torch-{dev}-{dt}", f"sort-torch-{dev}-{dt}", n2, op2, t2)
    return out


# ----------------------------------------------------------------------------- reporting
def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "—"
    if r["status"] == "skipped":
        return (f"skip ({r['reason']})" if r["reason"] in ("budget", "error", "predicted")
                else "skip (n/a)")
    if r["status"] == "error":
        return "error (" + r["error"].split(":")[0] + ")"
    s = f"{r['median_s']:.2e}"
    if "err_max_abs" in r and r["kind"] != "exact":
        s += f" (err {r['err_max_abs']:.0e})"
    elif "lp_rel_gap" in r:
        s += f" (gap {r['lp_rel_gap']:.0e})"
    return s


def summary_markdown(payload: dict[str, Any]) -> str:
    sizes = payload["config"]["sizes"]
    rows = payload["rows"]
    table_rows = []
    for name in payload["methods"]:
        d = {"method": name}
        for n in sizes:
            d[f"n={n}"] = _cell(next((r for r in rows if r["method"] == name and r["n"] == n), None))
        table_rows.append(d)
    lines = ["Median wall time per projection in seconds (QP: max-abs error vs exact; "
             "LP: relative gap of the ℓ1 objective)", "",
             markdown_table(table_rows, ["method"] + [f"n={n}" for n in sizes])]
    lines.append(ratio_lines(payload))
    return "\n".join(lines)


def ratio_lines(payload: dict[str, Any]) -> str:
    r = payload["ratios"]
    ag = payload["agreement"]
    out = []
    for key, label in (("cached_clarabel_qp_over_exact", "(i)  cached Clarabel QP / exact numpy"),
                       ("cached_clarabel_qp_constw_over_exact",
                        "(i') same, constant-W formulation"),
                       ("exact_torch_over_sort", "(ii) exact torch CPU f64 / torch.sort")):
        d = r[key]
        if d["value"] is not None:
            out.append(f"{label} at n={d['n']}: {d['value']:.3g} (target {d['target']}: "
                       f"{'met' if d['met'] else 'NOT met'}; ratio of min times "
                       f"{d['value_min']:.3g}, of CPU times {d['value_cpu']:.3g})")
        else:
            fb = d.get("fallback")
            out.append(f"{label} at n={d['n']}: not measured — {d['reason']}"
                       + (f"; at n={fb['n']}: {fb['value']:.3g}" if fb else ""))
    extra = [f"{k.removeprefix('exact_torch_over_sort_')}={v['value']:.3g}"
             for k, v in r.items() if k.startswith("exact_torch_over_sort_") and v["value"] is not None]
    if extra:
        out.append(f"     exact/sort at n={r['exact_torch_over_sort']['n']} per device/dtype: "
                   + ", ".join(extra))
    for fam, key in (("qp-clarabel", "clarabel_qp"),):
        cl = ag.get(fam, {})
        mx = cl.get("max")
        out.append(f"{fam}: agrees with exact to {ag['tol']:g} on every size it solved "
                   f"{cl.get('sizes_solved')}: {ag[key]} (max err "
                   f"{'—' if mx is None else format(mx, '.1e')}; failed at n={cl.get('errors')})")
    l0, l1 = payload["config"].get("load_average_start"), payload["machine"].get("load_average")
    out.append(f"Total runtime: {payload['total_runtime_s']:.1f} s"
               + (f"; 1-min load average {l0[0]:.1f} at the start, {l1[0]:.1f} at the end, on "
                  f"{payload['machine']['logical_cores']} logical cores" if l0 and l1 else ""))
    return "\n".join("- " + s if not s.startswith(" ") else s for s in out) + "\n"


def full_markdown(payload: dict[str, Any], summary: str) -> str:
    m = payload["machine"]
    v = m["versions"]
    head = (f"# Projection benchmark (μ∞ ≤ {GAMMA})\n\n"
            f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores, torch threads "
            f"{m['torch_threads']}, GPU {m['gpu']}; python {m['python']}, torch {v['torch']}, "
            f"numpy {v['numpy']}, cvxpy {v['cvxpy']}, clarabel {v['clarabel']}, osqp {v['osqp']}, "
            f"scs {v['scs']}, highspy {v['highspy']}. Budget {payload['config']['budget_s']} s "
            f"per solve; quick={payload['config']['quick']}.\n\n")
    long_rows = []
    for r in payload["rows"]:
        d = {k: r.get(k) for k in ("method", "n", "status", "median_s", "iqr_s", "min_s", "max_s",
                                   "cpu_median_s", "err_max_abs", "lp_rel_gap", "max_violation")}
        d["samples"] = f"{r['repeats']}×{r['number']}" if r["status"] == "ok" else None
        d["note"] = r.get("error") or r.get("reason")
        long_rows.append(d)
    cols = ["method", "n", "status", "median_s", "iqr_s", "min_s", "max_s", "cpu_median_s", "samples",
            "err_max_abs", "lp_rel_gap", "max_violation", "note"]
    return (head + summary + "\n## All rows\n\n" + markdown_table(long_rows, cols))


def make_figure(payload: dict[str, Any]):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot / global backend state

    fig = Figure(figsize=(10, 6))
    ax = fig.add_subplot()
    import matplotlib

    fams = list(dict.fromkeys(r["family"].removesuffix("-f32").removesuffix("-f64")
                              for r in payload["rows"]))
    cmap = matplotlib.colormaps["tab20"]
    color = {f: cmap(i % 20) for i, f in enumerate(fams)}
    for name in payload["methods"]:
        pts = [(r["n"], r["median_s"]) for r in payload["rows"]
               if r["method"] == name and r["status"] == "ok"]
        if not pts:
            continue
        fam = next(r["family"] for r in payload["rows"] if r["method"] == name)
        x, y = zip(*pts)
        style = "--" if name.endswith("-first") else (":" if name.startswith("sort") else "-")
        ax.plot(x, y, style, marker="s" if name.endswith("f32") else "o", ms=4, lw=1.4,
                color=color[fam.removesuffix("-f32").removesuffix("-f64")], label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(payload["config"]["sizes"], [str(n) for n in payload["config"]["sizes"]])
    ax.set_yscale("log")
    ax.set_xlabel("n")
    ax.set_ylabel("median wall time per projection [s]")
    m = payload["machine"]
    ax.set_title(f"μ∞ projection (γ = {GAMMA}) — {m['cpu_model']}"
                 + (f", {m['gpu']}" if m["gpu"] else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


# ----------------------------------------------------------------------------- CLI
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line on stderr, exit 2 (CONVENTIONS §4)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _sizes(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench_projection", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=_sizes, default=None,
                   help="matrix sizes n (space or comma separated; default 16 64 256 512 1024, "
                        "16 64 with --quick)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds; a solver is skipped for larger n once one solve took longer "
                        f"(default {DEFAULT_BUDGET:g}, {QUICK_BUDGET:g} with --quick)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="auto: add CUDA rows when a GPU is available")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="sizes 16 64, small budget, few repeats")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads for the run (default: torch's own choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = [n for group in args.sizes for n in group] if args.sizes else None
    try:
        payload = run(sizes, args.budget, args.device, args.out, args.quick, seed=args.seed,
                      threads=args.threads)
    except ValueError as exc:
        print(f"bench_projection: error: {exc}", file=sys.stderr)
        return 2
    print(payload["summary_md"])
    if "files" in payload:
        print("wrote " + ", ".join(payload["files"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
