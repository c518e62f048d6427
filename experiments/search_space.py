r"""Search-space comparison of the well-posedness sets E1, E2, N0, N, M, L (SPEC §2.3, §9).

For n ∈ {2, 3, 5, 10, 50} and two reference distributions (the sets N0, N, M, L are unbounded, so
"size" only means probability under a named bounded distribution, SPEC §9.1)

* ``gaussian``        A = σZ,       Z iid N(0, 1),  σ = c/√n over a grid of c;
* ``gaussian_shift``  A = σZ − I    (diagonal shifted by −1; N0, N, M, L are invariant under
                      A ↦ A − tI, t ≥ 0, the norm sets E1, E2 are not);

the same samples are tested for membership in every set at γ = 1 with strict inequalities
(SPEC §9.2): E1 ‖A‖∞ < 1, E2 ρ(|A|) < 1, N0 μ∞(A) < 1, N α(M(A)) < 1, M μ₂(A) < 1, and L by the
SDP max t s.t. 2Λ − ΛA − AᵀΛ ⪰ tI, λ ≥ 0, Σλ = n, member iff t > 1e-7 (``solvers.sdp``; decided by
certified float64 bounds, with a fallback solver when those straddle the threshold). Samples with
α(A) = max Re λ(A) ≥ 1 are outside L without an SDP (every weighted μ₂ is ≥ α(A)). At n = 50 one
SDP takes ~0.2 s, so L is decided on the first ``lben_cap`` samples of each configuration only
(recorded; fractions and containment counts involving L use that subset).

Outputs (``--out``, default results/search_space): ``search_space.json`` (everything below plus
the machine), ``search_space.md`` (tables), ``search_space.png`` (log10 fraction against σ, one
panel per n, one colour per set) and ``search_space_slices.png`` (SPEC §9.4 slices).

1. fractions with Wilson 95% intervals;
2. containments: violations of each proven inclusion of SPEC §2.4 (must be 0) and, for each
   non-inclusion, a witness (from the samples, else a targeted 2×2 search, else the SPEC §2.6
   example), rounded and re-verified, printed as a small matrix;
3. mean Frobenius distance from A = Z/√n to each set at γ = 1: exact for the convex sets E1, N0
   (SPEC §7), M (eigenvalue clip); for E2, N, L an **upper bound** (the best feasible point found:
   weighted polytope projections with Perron / optimal weights, Λ-scaled clips, the fixed-Λ SDP
   projection, and points of the smaller sets, since E1 ⊂ E2 ⊂ N ⊂ L and M ⊂ L);
4. the exact row volumes of SPEC §9.3 (A ~ U[−r, r]) against Monte Carlo, per row and per matrix;
5. 2-D slices A = [[δ, b], [c, δ]]: closed forms of SPEC §9.4 against the direct tests.

    python -m experiments.search_space [--quick] [--out DIR] [--samples N] [--seed S]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lipdeq import geometry
from lipdeq.conditions import CONDITIONS, clip_symmetric
from solvers import project_mu_inf, project_norm_inf
from solvers import sdp

NAME = "search_space"
DEFAULT_OUT = "results/search_space"
GAMMA = 1.0
THRESHOLD = 1e-7                      # SPEC §9.2: L member iff t > 1e-7
TAGS = ("E1", "E2", "N0", "N", "M", "L")
CONDITION = {"E1": "norm_inf", "E2": "pf", "N0": "mu_inf", "N": "mu_inf_weighted",
             "M": "monotone", "L": "lben"}
#: proven inclusions (SPEC §2.4) and their transitive consequences
PROVEN = [("E1", "N0"), ("E1", "E2"), ("E2", "N"), ("N0", "N"), ("M", "L"), ("N", "L"),
          ("E1", "N"), ("E1", "L"), ("E2", "L"), ("N0", "L")]
#: non-inclusions: (subset, sets the witness must avoid, SPEC §2.6 example)
NON_INCLUSIONS = [
    ("N0", ("E1", "E2"), "X1", [[-3, 1], [1, -3]]),
    ("E2", ("E1",), "X4", [[0, 10], [0.01, 0]]),
    ("E2", ("N0",), "X4", [[0, 10], [0.01, 0]]),
    ("N", ("N0", "E2"), "X5", [[-1, 5], [0.1, -2]]),
    ("N0", ("M",), "X2", [[0.9, 0], [10.9, -10]]),
    ("E1", ("M",), "X3", [[0.9, 0], [0.9, 0]]),
    ("E2", ("M",), "X6", [[0, 0], [3, 0]]),
    ("N", ("M",), "X6", [[0, 0], [3, 0]]),
    ("M", ("N",), "X7", [[0, 2], [-2, 0]]),
    ("L", ("M", "N"), "X8", [[0, 4], [-1, 0]]),
]
COLORS = {"E1": "tab:blue", "E2": "tab:orange", "N0": "tab:green", "N": "tab:red",
          "M": "tab:purple", "L": "tab:brown"}
Z95 = 1.959963984540054

FULL = dict(ns=(2, 3, 5, 10, 50), cs=tuple(np.geomspace(0.05, 4.0, 10).round(4)), samples=1000,
            lben_cap={50: 25}, dist_samples={50: 8}, dist_default=40, dist_sdp_max_n=10,
            volume_factor=20, slice_grid=301, slice_sdp=100, search_budget=60000)
QUICK = dict(ns=(2, 3, 5, 10, 50), cs=(0.1, 0.5, 1.0, 2.0), samples=100,
             lben_cap={10: 20, 50: 2}, dist_samples={50: 2}, dist_default=5, dist_sdp_max_n=3,
             volume_factor=10, slice_grid=61, slice_sdp=8, search_budget=15000)
DISTRIBUTIONS = {"gaussian": 0.0, "gaussian_shift": -1.0}   # diagonal shift


# ----------------------------------------------------------------------------- statistics
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (0.0 if k == 0 else max(0.0, mid - half), 1.0 if k == n else min(1.0, mid + half))


# ----------------------------------------------------------------------------- membership
_TIERS_SMALL = [("CLARABEL", {}), ("SCS", {"eps": 1e-9})]
_TIERS_LARGE = [("SCS", {"eps": 1e-5}), ("SCS", {"eps": 1e-8}), ("CLARABEL", {})]


def lben_decide(A: np.ndarray, gamma: float = GAMMA) -> tuple[bool, str, float]:
    """(member, how, t): how ∈ {'abscissa' (α(A) ≥ γ, no SDP), 'certified', 'solver'}."""
    if np.linalg.eigvals(A).real.max() >= gamma:
        return False, "abscissa", math.nan
    tiers = _TIERS_SMALL if A.shape[0] <= 20 else _TIERS_LARGE
    member, certified, t = sdp.lben_member(A, gamma, threshold=THRESHOLD, tiers=tiers)
    return member, "certified" if certified else "solver", t


def measures(A: np.ndarray) -> dict[str, np.ndarray]:
    """The condition measures of a batch (K, n, n) (float64), via the conditions registry."""
    T = torch.from_numpy(A)
    out = {}
    for tag in ("E1", "E2", "N0", "N", "M"):
        out[tag] = CONDITIONS[CONDITION[tag]](gamma=GAMMA).measure(T).numpy()
    return out


def memberships(A: np.ndarray, lben_count: int) -> dict[str, Any]:
    """Strict memberships at γ = 1 of every sample; L for the first ``lben_count`` samples only."""
    meas = measures(A)
    member = {tag: meas[tag] < GAMMA for tag in meas}
    L = np.zeros(len(A), dtype=bool)
    known = np.zeros(len(A), dtype=bool)
    how = {"abscissa": 0, "certified": 0, "solver": 0}
    t = np.full(len(A), np.nan)
    for i in range(min(lben_count, len(A))):
        L[i], h, t[i] = lben_decide(A[i])
        known[i] = True
        how[h] += 1
    member["L"] = L
    return {"member": member, "known_L": known, "measures": meas, "t": t, "lben_how": how}


def sample(dist: str, n: int, sigma: float, count: int, rng: np.random.Generator) -> np.ndarray:
    A = sigma * rng.standard_normal((count, n, n))
    A[:, np.arange(n), np.arange(n)] += DISTRIBUTIONS[dist]
    return A


# ----------------------------------------------------------------------------- witnesses
def _decide_all(A: np.ndarray) -> tuple[dict[str, bool], dict[str, float]]:
    """Memberships and margins (1 − measure; t for L) of one matrix."""
    meas = {k: float(v[0]) for k, v in measures(A[None]).items()}
    mem = {k: v < GAMMA for k, v in meas.items()}
    mem["L"], _, t = lben_decide(A)
    margins = {k: GAMMA - v for k, v in meas.items()}
    margins["L"] = t if t == t else -math.inf
    return mem, margins


def _robust(A: np.ndarray, sub: str, avoid: tuple, slack: float = 1e-3) -> bool:
    mem, mar = _decide_all(A)
    return (mem[sub] and mar[sub] > (THRESHOLD if sub == "L" else slack)
            and all(not mem[t] and mar[t] < -slack for t in avoid))


def _rounded(A: np.ndarray, sub: str, avoid: tuple) -> np.ndarray:
    for d in (1, 2, 3, 4):
        R = np.round(A, d) + 0.0  # no "-0"
        if _robust(R, sub, avoid):
            return R
    return A


def _search_batch(rng: np.random.Generator, K: int) -> np.ndarray:
    """2×2 candidates from three families: heavy-tailed Gaussian with diagonal shifts, scaled
    uniform with shifts, and one dominant column (the shape of SPEC §2.6's X2/X3)."""
    k = K // 3
    s = rng.choice([0.3, 1.0, 3.0, 10.0], size=(k, 1, 1))
    a = s * rng.standard_normal((k, 2, 2)) * np.exp(1.5 * rng.standard_normal((k, 2, 2)))
    a += rng.choice([0.0, -1.0, -3.0, -10.0], size=(k, 1, 1)) * np.eye(2)
    b = rng.uniform(-1, 1, (k, 2, 2)) * rng.choice([0.5, 1.0, 2.0, 5.0], size=(k, 1, 1))
    b += rng.choice([0.0, -1.0, -3.0], size=(k, 1, 1)) * np.eye(2)
    c = rng.uniform(-0.1, 0.1, (K - 2 * k, 2, 2))
    c[:, :, 0] = rng.uniform(0.5, 1.0, (K - 2 * k, 2)) * rng.choice([-1.0, 1.0], (K - 2 * k, 1))
    return np.concatenate([a, b, c])


def _search(sub: str, avoid: tuple, rng: np.random.Generator, budget: int, slack: float = 1e-3):
    """Vectorised random search: cheap filters on batches, then the full (SDP) check."""
    drawn = 0
    while drawn < budget:
        A = _search_batch(rng, 3000)
        drawn += len(A)
        m = measures(A)
        ok = (m[sub] < GAMMA - slack) if sub != "L" else (np.linalg.eigvals(A).real.max(-1) < GAMMA)
        for t in avoid:
            ok &= m[t] > GAMMA + slack
        for i in np.flatnonzero(ok)[:20]:
            if _robust(A[i], sub, avoid):
                return A[i], drawn
    return None, drawn


def find_witnesses(pool: list, budget: int, seed: int) -> list[dict]:
    """A witness for each non-inclusion: from the pooled samples (smallest n first, memberships
    already known), else a random 2×2 search, else the SPEC §2.6 example; rounded to as few
    decimals as keep it valid, and re-verified (margins ≥ 1e-3 on every side)."""
    rng = np.random.default_rng([seed, 99])
    out = []
    for sub, avoid, spec_name, spec_A in NON_INCLUSIONS:
        found, source = None, None
        cands = [A for A, mem in pool if mem[sub] and not any(mem[t] for t in avoid)]
        for A in cands[:20]:
            if _robust(A, sub, avoid):
                found, source = A, f"sample (n={A.shape[0]})"
                break
        if found is None:
            found, drawn = _search(sub, avoid, rng, budget)
            source = f"random 2×2 search ({drawn} draws)"
        if found is None:
            found, source = np.array(spec_A, dtype=float), f"SPEC §2.6 {spec_name}"
        W = _rounded(found, sub, avoid)
        mem, mar = _decide_all(W)
        ok = mem[sub] and not any(mem[t] for t in avoid)
        out.append({"subset": sub, "not_in": list(avoid), "witness": W.tolist(), "source": source,
                    "verified": bool(ok), "memberships": mem,
                    "margins": {k: float(v) for k, v in mar.items()},
                    "spec_example": spec_name, "sample_candidates": len(cands)})
    return out


def fmt_matrix(A) -> str:
    return "[" + ", ".join("[" + ", ".join(f"{x:g}" for x in row) + "]" for row in A) + "]"


# ----------------------------------------------------------------------------- distances
def _perron_right(M: np.ndarray) -> np.ndarray | None:
    w, V = np.linalg.eig(M)
    v = np.real(V[:, np.argmax(w.real)])
    v = v * np.sign(v.sum()) if v.sum() != 0 else v
    if not np.all(v > 1e-12):
        return None
    return v / v.max()


def _verify(tag: str, X: np.ndarray, tol: float = 1e-9) -> bool:
    if tag == "L":
        return True  # candidates for L are verified by construction below
    return float(CONDITIONS[CONDITION[tag]](gamma=GAMMA).measure(X)) <= GAMMA + tol


def distances_one(A: np.ndarray, use_sdp: bool) -> dict[str, dict]:
    """Distance from A to each closed set at γ = 1 (exact or best upper bound) and the method."""
    n = A.shape[0]
    res = {"E1": ("exact", project_norm_inf(A, GAMMA)), "N0": ("exact", project_mu_inf(A, GAMMA)),
           "M": ("exact", clip_symmetric(torch.from_numpy(A), GAMMA).numpy())}
    cand = {"E2": [("E1 projection", res["E1"][1])], "N": [("N0 projection", res["N0"][1])]}
    v = _perron_right(np.abs(A))
    if v is not None:
        cand["E2"].append(("weighted ℓ1 rows, η = Perron(|A|)",
                           project_norm_inf(A, GAMMA, weights=v)))
    rho = float(geometry.pf_radius(A))
    cand["E2"].append(("scaling A/ρ(|A|)", A / max(rho, GAMMA)))
    eta = geometry.optimal_inf_weights(A)
    cand["N"].append(("weighted polytope, η = optimal(A)", project_mu_inf(A, GAMMA, weights=eta)))
    out = {k: {"method": "exact (projection)", "distance": float(np.linalg.norm(X - A))}
           for k, (_, X) in res.items()}
    best = {}
    for tag in ("E2", "N"):
        pts = [(name, X) for name, X in cand[tag] if _verify(tag, X)]
        if tag == "N":  # E2 ⊂ N
            pts += [("via E2: " + name, X) for name, X in best["E2"]]
        best[tag] = pts
        name, X = min(pts, key=lambda p: np.linalg.norm(p[1] - A))
        out[tag] = {"method": f"upper bound (best of {len(pts)} feasible points: {name})",
                    "distance": float(np.linalg.norm(X - A))}
    # L ⊇ M ∪ N (closures): candidates from those plus Λ-scaled clips / fixed-Λ SDP projections.
    ptsL = [("M projection (Λ = I)", res["M"][1])] + [("via N: " + nm, X) for nm, X in best["N"]]
    lam = sdp.lben_margin(A, GAMMA, **({"solver": "SCS", "eps": 1e-6} if n > 20 else {})).Lambda
    if np.all(lam > 1e-8):
        s = np.sqrt(lam)
        Y = clip_symmetric(torch.from_numpy(s[:, None] * A / s[None, :]), GAMMA).numpy()
        X = Y * s[None, :] / s[:, None]
        if min_eig_ok(X, lam):
            ptsL.append(("Λ-scaled clip, Λ from the SDP at A", X))
        if use_sdp:
            try:
                ptsL.append(("fixed-Λ SDP projection", sdp.project_lben_sdp(A, GAMMA, lam).X))
            except Exception:  # noqa: BLE001 - a failed SDP only loses a candidate
                pass
    name, X = min(ptsL, key=lambda p: np.linalg.norm(p[1] - A))
    out["L"] = {"method": f"upper bound (best of {len(ptsL)} feasible points: {name})",
                "distance": float(np.linalg.norm(X - A))}
    return out


def min_eig_ok(X: np.ndarray, lam: np.ndarray) -> bool:
    M = sdp.lben_lmi(X, lam / lam.mean(), GAMMA)
    return float(np.linalg.eigvalsh((M + M.T) / 2)[0]) >= -1e-9


# ----------------------------------------------------------------------------- volumes
def row_volumes(n: int, r: float, gamma: float) -> tuple[float, float]:
    """Exact per-row probabilities (p_E1, p_N0) under A ~ U[−r, r]^{n×n} (SPEC §9.3)."""
    p_e1 = (gamma / r) ** n / math.factorial(n) if gamma <= r else math.nan
    total = 0.0
    for k in range(n):
        for e in (0, 1):
            total += (-1) ** (k + e) * math.comb(n - 1, k) * max(gamma + r - k * r - 2 * e * r, 0) ** n
    return p_e1, total / (math.factorial(n) * 2 * r ** n)


def volume_check(samples: int, seed: int) -> list[dict]:
    """Monte Carlo of E1/N0 per row and per matrix against :func:`row_volumes`: z-score (normal
    approximation, only where ≥ 5 hits and misses are expected) and the exact binomial p-value."""
    from scipy.stats import binomtest
    rows = []
    for n, r in ((2, 1.0), (3, 1.0), (5, 1.0), (2, 2.0), (3, 2.0)):
        rng = np.random.default_rng([seed, 7, n, int(r * 10)])
        A = rng.uniform(-r, r, size=(samples, n, n))
        absA = np.abs(A)
        d = A[:, np.arange(n), np.arange(n)]
        row_e1 = absA.sum(-1) < GAMMA
        row_n0 = (absA.sum(-1) - np.abs(d) + d) < GAMMA
        p_e1, p_n0 = row_volumes(n, r, GAMMA)
        for tag, p, hit in (("E1", p_e1, row_e1), ("N0", p_n0, row_n0)):
            for level, k, m, exact in (("row", int(hit.sum()), hit.size, p),
                                       ("matrix", int(hit.all(1).sum()), samples, p ** n)):
                phat = k / m
                se = math.sqrt(exact * (1 - exact) / m) if 0 < exact < 1 else math.nan
                normal_ok = min(exact * m, (1 - exact) * m) >= 5  # else z is meaningless
                rows.append({"set": tag, "n": n, "r": r, "level": level, "exact": exact,
                             "monte_carlo": phat, "trials": m, "hits": k, "wilson": wilson(k, m),
                             "z": (phat - exact) / se if normal_ok else None,
                             "p_value": float(binomtest(k, m, exact).pvalue),
                             "expected_hits": exact * m})
    return rows


# ----------------------------------------------------------------------------- slices
def slice_closed_forms(delta: float, b: np.ndarray, c: np.ndarray) -> dict[str, np.ndarray]:
    """SPEC §9.4 closed forms for A = [[δ, b], [c, δ]] (strict, γ = 1)."""
    r = np.sqrt(np.abs(b * c))
    return {"E1": abs(delta) + np.maximum(np.abs(b), np.abs(c)) < 1,
            "N0": delta + np.maximum(np.abs(b), np.abs(c)) < 1,
            "E2": abs(delta) + r < 1, "N": delta + r < 1, "M": delta + np.abs(b + c) / 2 < 1,
            "L": (delta < 1) & ((b * c < 0) | (delta + r < 1))}


def slices(deltas, grid: int, sdp_checks: int, seed: int) -> tuple[dict, Any]:
    ax = np.linspace(-2.5, 2.5, grid) + 1e-3 * math.pi  # offset: no exact ties on the grid
    Bg, Cg = np.meshgrid(ax, ax, indexing="xy")
    rng = np.random.default_rng([seed, 5])
    info, masks = {}, {}
    for delta in deltas:
        b, c = Bg.ravel(), Cg.ravel()
        A = np.empty((b.size, 2, 2))
        A[:, 0, 0] = A[:, 1, 1] = delta
        A[:, 0, 1], A[:, 1, 0] = b, c
        closed = slice_closed_forms(delta, b, c)
        direct = {k: v < GAMMA for k, v in measures(A).items()}
        mism = {k: int((closed[k] != direct[k]).sum()) for k in direct}
        # L: closed form against the SDP on random grid points away from the boundary
        gL = np.where(b * c < 0, delta - 1, delta + np.sqrt(np.abs(b * c)) - 1)
        far = np.flatnonzero(np.abs(gL) > 1e-3)
        pick = rng.choice(far, size=min(sdp_checks, far.size), replace=False)
        mism["L"] = int(sum(lben_decide(A[i])[0] != closed["L"][i] for i in pick))
        info[str(delta)] = {"grid": grid, "mismatches_closed_vs_direct": mism,
                            "L_sdp_checked": int(pick.size),
                            "area_fraction": {k: float(v.mean()) for k, v in closed.items()}}
        masks[delta] = {k: v.reshape(Bg.shape) for k, v in closed.items()}
    return info, (ax, masks)


#: drawing order for the slices: larger sets first with thicker boundaries, so boundaries that
#: coincide (e.g. E1 and N0 for δ ≥ 0) show as two-coloured lines
SLICE_ORDER = (("L", 5.0, "-"), ("N", 4.0, "-"), ("M", 3.2, "-"), ("E2", 2.6, "--"),
               ("N0", 1.8, "-"), ("E1", 1.0, "-"))


def plot_slices(ax_vals, masks):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    deltas = list(masks)
    cols = 2
    rows = math.ceil(len(deltas) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 5.0 * rows), squeeze=False)
    for axis, delta in zip(axes.ravel(), deltas):
        for tag, lw, ls in SLICE_ORDER:
            m = masks[delta][tag].astype(float)
            axis.contourf(ax_vals, ax_vals, m, levels=[0.5, 1.5], colors=[COLORS[tag]], alpha=0.10)
            axis.contour(ax_vals, ax_vals, m, levels=[0.5], colors=[COLORS[tag]], linewidths=lw,
                         linestyles=ls)
        axis.set_title(f"A = [[δ, b], [c, δ]],  δ = {delta:g}")
        axis.set_xlabel("b")
        axis.set_ylabel("c")
        axis.set_aspect("equal")
    for axis in axes.ravel()[len(deltas):]:
        axis.set_visible(False)
    handles = [Line2D([], [], color=COLORS[t], lw=lw, ls=ls, label=f"{t}: {LABELS[t]}")
               for t, lw, ls in SLICE_ORDER]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9)
    fig.suptitle("Slices of the well-posedness sets at γ = 1 (SPEC §9.4): filled = inside, "
                 "overlaps add up; for bc < 0 L is the whole half-plane δ < 1")
    fig.tight_layout(rect=(0, 0.08, 1, 0.96))
    return fig


LABELS = {"E1": "‖A‖∞ < 1", "E2": "ρ(|A|) < 1", "N0": "μ∞(A) < 1", "N": "α(M(A)) < 1",
          "M": "μ₂(A) < 1", "L": "LBEN LMI"}


def plot_fractions(rows, ns):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    dists = list(DISTRIBUTIONS)
    fig, axes = plt.subplots(len(dists), len(ns), figsize=(3.6 * len(ns), 3.3 * len(dists)),
                             squeeze=False, sharey=True)
    for i, dist in enumerate(dists):
        for axis, n in zip(axes[i], ns):
            sel = [r for r in rows if r["n"] == n and r["distribution"] == dist]
            for tag in TAGS:
                pts = [(r["sigma"], r["fraction"][tag]) for r in sel
                       if r["fraction"][tag] is not None and r["fraction"][tag] > 0]
                if pts:
                    x, y = zip(*pts)
                    axis.plot(x, np.log10(y), "-", color=COLORS[tag], marker=".", label=tag)
            axis.set_xscale("log")
            axis.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            axis.xaxis.set_minor_formatter(NullFormatter())
            axis.set_title(f"{'σZ' if dist == 'gaussian' else 'σZ − I'}, n = {n}", fontsize=10)
            axis.set_xlabel("σ")
            axis.grid(alpha=0.3)
        axes[i][0].set_ylabel("log10 fraction inside")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Fraction of Gaussian samples inside each set at γ = 1 (zero fractions not drawn)")
    fig.tight_layout()
    return fig


def _save_png(fig, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    frac_rows, cont = [], {f"{a}⊂{b}": {"subset": a, "superset": b, "n_subset": 0,
                                          "violations": 0, "by_n": {}} for a, b in PROVEN}
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
                    viol = int((sub & ~mem[b]).sum())
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
    from lipdeq.timing import write_results
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
    from lipdeq.timing import markdown_table
    parts = [f"# Search-space comparison (γ = 1, strict; seed {p['seed']}"
             f"{', quick' if p['quick'] else ''})\n",
             "Fraction of samples inside each set with Wilson 95% intervals; the same samples for "
             "every set (L: the first `n_L` samples; distributions: "
             + "; ".join(f"{k}: {v}" for k, v in p["reference_distributions"].items()) + ").\n"]
    rows = [dict(distribution=r["distribution"], n=r["n"], sigma=f"{r['sigma']:.4g}",
                 samples=r["samples"], n_L=r["samples_L"], **{t: _cell(r, t) for t in TAGS})
            for r in p["fractions"]]
    parts.append(markdown_table(rows, ["distribution", "n", "sigma", "samples", "n_L", *TAGS]))
    parts.append("\n## Proven inclusions (SPEC §2.4): violations must be 0\n")
    parts.append(markdown_table(
        [dict(inclusion=f"{c['subset']} ⊂ {c['superset']}", members=c["n_subset"],
              violations=c["violations"]) for c in p["containments"]],
        ["inclusion", "members", "violations"]))
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
    parts.append("\n## Exact row volumes (SPEC §9.3) vs Monte Carlo, A ~ U[−r, r], γ = 1\n")
    parts.append(markdown_table(
        [dict(v, wilson=f"[{v['wilson'][0]:.4g}, {v['wilson'][1]:.4g}]") for v in p["volumes"]],
        ["set", "n", "r", "level", "exact", "monte_carlo", "wilson", "trials", "z", "p_value"],
        floatfmt=".4g"))
    parts.append("\n## 2-D slices (SPEC §9.4): closed form vs direct test, mismatching grid points\n")
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
    parser = argparse.ArgumentParser(prog="python -m experiments.search_space",
                                     description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_cli(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
