r"""Search-space comparison of the well-posedness sets E1, E2, N0, N, M, L (docs/math.md §2.3, §9).

For n ∈ {2, 3, 5, 10, 50} and two reference distributions (the sets N0, N, M, L are unbounded, so
"size" only means probability under a named bounded distribution, docs/math.md §9.1)

* ``gaussian``        A = σZ,       Z iid N(0, 1),  σ = c/√n over a grid of c;
* ``gaussian_shift``  A = σZ − I    (diagonal shifted by −1; N0, N, M, L are invariant under
                      A ↦ A − tI, t ≥ 0, the norm sets E1, E2 are not);

the same samples are tested for membership in every set at γ = 1 with strict inequalities
(docs/math.md §9.2): E1 ‖A‖∞ < 1, E2 ρ(|A|) < 1, N0 μ∞(A) < 1, N α(M(A)) < 1, M μ₂(A) < 1, and L by the
SDP max t s.t. 2Λ − ΛA − AᵀΛ ⪰ tI, λ ≥ 0, Σλ = n, member iff t > 1e-7 (``solvers.sdp``; decided by
certified float64 bounds, with a fallback solver when those straddle the threshold). Samples with
α(A) = max Re λ(A) ≥ 1 are outside L without an SDP (every weighted μ₂ is ≥ α(A)). At n = 50 one
SDP takes ~0.2 s, so L is decided on the first ``lben_cap`` samples of each configuration only
(recorded; fractions and containment counts involving L use that subset).

Outputs (``--out``, default results/search_space): ``search_space.json`` (everything below plus
the machine), ``search_space.md`` (tables), ``search_space.png`` (log10 fraction against σ, one
panel per n, one colour per set) and ``search_space_slices.png`` (docs/math.md §9.4 slices).

1. fractions with Wilson 95% intervals;
2. containments: violations of each proven inclusion of docs/math.md §2.4 (must be 0) and, for each
   non-inclusion, a witness (from the samples, else a targeted 2×2 search, else the docs/math.md §2.6
   example), rounded and re-verified, printed as a small matrix;
3. mean Frobenius distance from A = Z/√n to each set at γ = 1: exact for the convex sets E1, N0
   (docs/math.md §7), M (eigenvalue clip); for E2, N, L an **upper bound** (the best feasible point found:
   weighted polytope projections with Perron / optimal weights, Λ-scaled clips, the fixed-Λ SDP
   projection, and points of the smaller sets, since E1 ⊂ E2 ⊂ N ⊂ L and M ⊂ L);
4. the exact row volumes of docs/math.md §9.3 (A ~ U[−r, r]) against Monte Carlo, per row and per matrix;
5. 2-D slices A = [[δ, b], [c, δ]]: closed forms of docs/math.md §9.4 against the direct tests.

This module runs the comparison and writes the tables; the measurements are in
:mod:`experiments.search_space_sets`, the figures in :mod:`experiments.search_space_plots`.

    python -m experiments.search_space [--quick] [--out DIR] [--samples N] [--seed S]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from experiments._cli import script_main
from experiments.search_space_plots import legend_text, plot_fractions, plot_slices
from experiments.search_space_sets import (BOUNDARY, DISTRIBUTIONS, GAMMA, PROVEN, TAGS, THRESHOLD,
                                           distances_one, find_witnesses, fmt_matrix, memberships,
                                           row_volumes, sample, slices, volume_check, wilson)
# The sets and plots were defined here before they moved out: keep their names importable.
from experiments.search_space_plots import COLORS, LABELS, SLICE_ORDER  # noqa: F401
from experiments.search_space_sets import (CONDITION, NON_INCLUSIONS, Z95,  # noqa: F401
                                           lben_decide, measures, min_eig_ok, slice_closed_forms)

NAME = "search_space"
DEFAULT_OUT = "results/search_space"

FULL = dict(ns=(2, 3, 5, 10, 50), cs=tuple(np.geomspace(0.05, 4.0, 10).round(4)), samples=1000,
            lben_cap={50: 25}, dist_samples={50: 8}, dist_default=40, dist_sdp_max_n=10,
            volume_factor=20, slice_grid=301, slice_sdp=100, search_budget=60000)
QUICK = dict(ns=(2, 3, 5, 10, 50), cs=(0.1, 0.5, 1.0, 2.0), samples=100,
             lben_cap={10: 20, 50: 2}, dist_samples={50: 2}, dist_default=5, dist_sdp_max_n=3,
             volume_factor=10, slice_grid=61, slice_sdp=8, search_budget=15000)


def _save_png(fig, path: Path) -> None:
    from lipdeq.io import atomic_write
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")


# ----------------------------------------------------------------------------- run
def run(out: str | os.PathLike = DEFAULT_OUT, *, quick: bool = False, samples: int | None = None,
        seed: int = 0, verbose: bool = True) -> dict:
    """Run the whole comparison, write the files under ``out`` and return the payload."""
    t_start, cpu_start = time.perf_counter(), time.process_time()
    cfg = dict(QUICK if quick else FULL)
    if samples is not None:
        if int(samples) != samples or samples < 1:
            raise ValueError(f"samples must be a positive integer, got {samples!r}")
        cfg["samples"] = int(samples)
    torch.manual_seed(seed)
    log = print if verbose else (lambda *a, **k: None)
    log(legend_text())
    frac_rows, cont = [], {f"{a}⊂{b}": {"subset": a, "superset": b, "n_subset": 0,
                                          "violations": 0, "at_boundary": 0, "by_n": {}}
                       for a, b in PROVEN}
    pool, lben_stats = [], {"abscissa": 0, "certified": 0, "solver": 0, "skipped": 0}
    for n in cfg["ns"]:
        for di, dist in enumerate(DISTRIBUTIONS):
            for ci, c in enumerate(cfg["cs"]):
                sigma = c / math.sqrt(n)
                rng = np.random.default_rng([seed, n, di, ci])
                S = cfg["samples"]
                A = sample(dist, n, sigma, S, rng)
                cap = cfg["lben_cap"].get(n, S)
                res = memberships(A, cap)
                mem, known = res["member"], res["known_L"]
                for h, v in res["lben_how"].items():
                    lben_stats[h] += v
                lben_stats["skipped"] += int((~known).sum())
                row = {"distribution": dist, "n": n, "c": c, "sigma": sigma, "samples": S,
                       "samples_L": int(known.sum()), "count": {}, "fraction": {}, "wilson": {}}
                for tag in TAGS:
                    m = mem[tag][known] if tag == "L" else mem[tag]
                    k, tot = int(m.sum()), int(m.size)
                    row["count"][tag] = k
                    row["fraction"][tag] = k / tot if tot else None
                    row["wilson"][tag] = wilson(k, tot) if tot else None
                frac_rows.append(row)
                for a, b in PROVEN:
                    sel = known if "L" in (a, b) else np.ones(S, dtype=bool)
                    sub = mem[a] & sel
                    miss = sub & ~mem[b]
                    if b == "L":  # L's test (t > THRESHOLD) is a strict subset of L: a miss
                        # within BOUNDARY of a's own boundary is undecided, not a violation
                        edge = miss & (GAMMA - res["measures"][a] <= BOUNDARY)
                        miss = miss & ~edge
                        cont[f"{a}⊂{b}"]["at_boundary"] += int(edge.sum())
                    viol = int(miss.sum())
                    entry = cont[f"{a}⊂{b}"]
                    entry["n_subset"] += int(sub.sum())
                    entry["violations"] += viol
                    bn = entry["by_n"].setdefault(str(n), {"n_subset": 0, "violations": 0})
                    bn["n_subset"] += int(sub.sum())
                    bn["violations"] += viol
                if n <= 5:
                    pool += [(A[i], {t: bool(mem[t][i]) for t in TAGS})
                             for i in np.flatnonzero(known)]
                log(f"{dist:15s} n={n:3d} σ={sigma:.4f} " + " ".join(
                    f"{t}={row['fraction'][t]:.3f}" if row["fraction"][t] is not None else f"{t}=—"
                    for t in TAGS))
    pool.sort(key=lambda p: p[0].shape[0])
    t_frac = time.perf_counter() - t_start
    witnesses = find_witnesses(pool, cfg["search_budget"], seed)
    for w in witnesses:
        log(f"{w['subset']} ⊄ {' ∪ '.join(w['not_in'])}: {fmt_matrix(w['witness'])}  "
            f"[{w['source']}; verified={w['verified']}]")

    dist_rows = []
    for n in cfg["ns"]:
        count = cfg["dist_samples"].get(n, cfg["dist_default"])
        rng = np.random.default_rng([seed, n, 1234])
        per = [distances_one(A, use_sdp=n <= cfg["dist_sdp_max_n"])
               for A in rng.standard_normal((count, n, n)) / math.sqrt(n)]
        for tag in TAGS:
            d = np.array([p[tag]["distance"] for p in per])
            kinds = sorted({p[tag]["method"].split(" (")[0] for p in per})
            dist_rows.append({"n": n, "set": tag, "samples": count, "mean": float(d.mean()),
                              "std": float(d.std(ddof=1)) if count > 1 else None,
                              "kind": "/".join(kinds),
                              "methods": sorted({p[tag]["method"] for p in per})})
    volumes = volume_check(cfg["samples"] * cfg["volume_factor"], seed)
    worked = {"n=2,r=1,γ=0.5": row_volumes(2, 1.0, 0.5), "n=3,r=1,γ=0.9": row_volumes(3, 1.0, 0.9)}
    slice_info, (ax_vals, masks) = slices((-0.5, 0.0, 0.5, 0.9), cfg["slice_grid"],
                                          cfg["slice_sdp"], seed)
    runtime = time.perf_counter() - t_start
    payload = {
        "name": NAME, "quick": quick, "seed": seed, "gamma": GAMMA, "threshold_L": THRESHOLD,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "reference_distributions": {
            "gaussian": "A = σZ, Z iid N(0,1), σ = c/√n",
            "gaussian_shift": "A = σZ − I, σ = c/√n",
            "distances": "A = Z/√n", "volumes": "A ~ U[−r, r]^{n×n}"},
        "fractions": frac_rows, "containments": list(cont.values()),
        "non_inclusions": witnesses, "distances": dist_rows, "volumes": volumes,
        "volume_worked_examples": {k: {"p_E1": v[0], "p_N0": v[1]} for k, v in worked.items()},
        "slices": slice_info,
        "lben": {"decided_by": lben_stats, "caps": {str(k): v for k, v in cfg["lben_cap"].items()},
                 "reason": "one SDP per sample; at large n each takes ~0.2 s (SCS), so L is "
                           "decided on the first `cap` samples of each configuration"},
        "runtime_s": runtime, "cpu_s": time.process_time() - cpu_start,
        "fractions_runtime_s": t_frac,
    }
    md = markdown(payload)
    outp = Path(out)
    from experiments.timing import write_results
    fig = plot_fractions(frac_rows, cfg["ns"])
    paths = write_results(outp, NAME, payload, md, figure=fig)
    _save_png(plot_slices(ax_vals, masks), outp / f"{NAME}_slices.png")
    import matplotlib.pyplot as plt
    plt.close("all")
    log(md)
    log(f"wrote {', '.join(str(p) for p in paths.values())}, {outp / (NAME + '_slices.png')} "
        f"in {runtime:.1f} s")
    return payload


def _cell(row, tag) -> str:
    f = row["fraction"][tag]
    if f is None:
        return "—"
    lo, hi = row["wilson"][tag]
    return f"{f:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown(p: dict) -> str:
    from experiments.timing import markdown_table
    parts = [f"# Search-space comparison (γ = 1, strict; seed {p['seed']}"
             f"{', quick' if p['quick'] else ''})\n",
             "Fraction of samples inside each set with Wilson 95% intervals; the same samples for "
             "every set (L: the first `n_L` samples; distributions: "
             + "; ".join(f"{k}: {v}" for k, v in p["reference_distributions"].items()) + ").\n",
             legend_text() + ".\n"]
    rows = [dict(distribution=r["distribution"], n=r["n"], sigma=f"{r['sigma']:.4g}",
                 samples=r["samples"], n_L=r["samples_L"], **{t: _cell(r, t) for t in TAGS})
            for r in p["fractions"]]
    parts.append(markdown_table(rows, ["distribution", "n", "sigma", "samples", "n_L", *TAGS]))
    parts.append("\n## Proven inclusions (docs/math.md §2.4): violations must be 0\n")
    parts.append(markdown_table(
        [dict(inclusion=f"{c['subset']} ⊂ {c['superset']}", members=c["n_subset"],
              violations=c["violations"], at_boundary=c.get("at_boundary", 0))
         for c in p["containments"]],
        ["inclusion", "members", "violations", "at_boundary"]))
    parts.append("\n## Non-inclusions: witnesses (rounded, re-verified)\n")
    parts.append(markdown_table(
        [dict(claim=f"{w['subset']} ⊄ {' ∪ '.join(w['not_in'])}", witness=fmt_matrix(w["witness"]),
              source=w["source"], verified=w["verified"], spec=w["spec_example"])
         for w in p["non_inclusions"]], ["claim", "witness", "source", "verified", "spec"]))
    parts.append("\n## Mean Frobenius distance from A = Z/√n to each set (γ = 1)\n")
    parts.append(markdown_table(
        [dict(n=d["n"], set=d["set"], samples=d["samples"], mean=d["mean"], std=d["std"],
              kind=d["kind"]) for d in p["distances"]],
        ["n", "set", "samples", "mean", "std", "kind"], floatfmt=".4g"))
    parts.append("\n## Exact row volumes (docs/math.md §9.3) vs Monte Carlo, A ~ U[−r, r], γ = 1\n")
    parts.append(markdown_table(
        [dict(v, wilson=f"[{v['wilson'][0]:.4g}, {v['wilson'][1]:.4g}]") for v in p["volumes"]],
        ["set", "n", "r", "level", "exact", "monte_carlo", "wilson", "trials", "z", "p_value"],
        floatfmt=".4g"))
    parts.append("\n## 2-D slices (docs/math.md §9.4): closed form vs direct test, mismatching grid points\n")
    parts.append(markdown_table(
        [dict(delta=d, **{t: s["mismatches_closed_vs_direct"][t] for t in TAGS},
              L_checked_by_SDP=s["L_sdp_checked"]) for d, s in p["slices"].items()],
        ["delta", *TAGS, "L_checked_by_SDP"]))
    lb = p["lben"]["decided_by"]
    parts.append(f"\nL decided: {lb['abscissa']} by α(A) ≥ 1 (no SDP), {lb['certified']} by "
                 f"certified SDP bounds, {lb['solver']} by the solver's t alone, {lb['skipped']} "
                 f"not evaluated (cap {p['lben']['caps']}). Runtime {p['runtime_s']:.1f} s wall, "
                 f"{p['cpu_s']:.1f} s CPU.\n")
    return "\n".join(parts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``python -m experiments.search_space`` and ``lipdeq search-space``."""
    parser.add_argument("--quick", action="store_true", help="small grid (< 1 minute)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples per (distribution, n, σ) (default 1000, quick 100)")
    parser.add_argument("--seed", type=int, default=0)


def run_cli(args: argparse.Namespace) -> int:
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be positive, got {args.samples}")
    run(args.out, quick=args.quick, samples=args.samples, seed=args.seed)
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main("python -m experiments.search_space", __doc__, add_arguments, run_cli, argv)


if __name__ == "__main__":
    sys.exit(main())
