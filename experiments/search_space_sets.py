r"""Membership, witnesses, distances, volumes and slices of the sets E1 … L at γ = 1 (docs/math.md §9).

The measurements behind :mod:`experiments.search_space` (which runs them and writes the tables;
its docstring describes the experiment): strict membership of sampled matrices in every set
(L by the SDP of ``solvers.sdp``), Wilson intervals, witnesses of the non-inclusions of
docs/math.md §2.6, Frobenius distances to each set (exact or an upper bound), the exact row volumes of
docs/math.md §9.3 against Monte Carlo, and the 2-D slices of docs/math.md §9.4 against the direct tests.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lipdeq import geometry
from lipdeq.conditions.sets import CONDITIONS, clip_symmetric
from lipdeq.solvers import project_mu_inf, project_norm_inf
from lipdeq.solvers import sdp

GAMMA = 1.0
THRESHOLD = 1e-7                      # docs/math.md §9.2: L member iff t > 1e-7
#: a sample within this of its subset's boundary that L's test misses is undecided (t > THRESHOLD
#: is stricter than membership: near the boundary the margin t of L tends to 0 too)
BOUNDARY = 1e-6
TAGS = ("E1", "E2", "N0", "N", "M", "L")
CONDITION = {"E1": "norm_inf", "E2": "pf", "N0": "mu_inf", "N": "mu_inf_weighted",
             "M": "monotone", "L": "lben"}
#: proven inclusions (docs/math.md §2.4) and their transitive consequences
PROVEN = [("E1", "N0"), ("E1", "E2"), ("E2", "N"), ("N0", "N"), ("M", "L"), ("N", "L"),
          ("E1", "N"), ("E1", "L"), ("E2", "L"), ("N0", "L")]
#: non-inclusions: (subset, sets the witness must avoid, docs/math.md §2.6 example)
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
Z95 = 1.959963984540054
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
    uniform with shifts, and one dominant column (the shape of docs/math.md §2.6's X2/X3)."""
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
    already known), else a random 2×2 search, else the docs/math.md §2.6 example; rounded to as few
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
            found, source = np.array(spec_A, dtype=float), f"docs/math.md §2.6 {spec_name}"
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
    """Exact per-row probabilities (p_E1, p_N0) under A ~ U[−r, r]^{n×n} (docs/math.md §9.3)."""
    if gamma <= 0:  # the row's ℓ1 ball of radius γ ≤ 0 has no volume
        p_e1 = 0.0
    else:
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
    """docs/math.md §9.4 closed forms for A = [[δ, b], [c, δ]] (strict, γ = 1)."""
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


