r"""Exact ℓ∞ robustness verification by mixed-integer programming (docs/math.md §13).

For each example (u, k) and the threat box U = [max(u − ε, 0), min(u + ε, 1)] the question is
whether max_{u' ∈ U} max_{j≠k} y_j(u') − y_k(u') < 0 for the *exact* network (the stored weights,
real arithmetic). :func:`verify_exact` answers it per example, in this order:

1. the clean prediction is wrong, in float64 or by the forward pass of the model as used
   (within its solver tolerance; the certificates require the same) → ``misclassified``
   (counterexample: u itself);
2. the sound float64 interval bound certifies it (docs/math.md §12.3) → ``certified``;
3. a fast PGD attack (:func:`lipdeq.attacks.pgd` on the model as given) finds u' whose float64
   fixed point is misclassified → ``attacked`` (counterexample: u');
4. otherwise, per wrong class j (:mod:`lipdeq.certify.milp`; classes whose sound interval upper bound
   on y_j − y_k is < 0 are skipped, the others tried in decreasing order of that bound):
   a. the LP relaxation: its optimum bounds max y_j − y_k; it also shows the program feasible;
   b. the decision MILP "y_j − y_k ≥ −margin" (HiGHS stops at its first feasible point):
      infeasible ⇔ branch and bound pruned every node by its LP bound ⇒ max y_j − y_k < −margin;
   c. only when (b) returns a point that does not flip: the optimizing MILP, judged by HiGHS's
      dual bound (``mip_dual_bound`` < −margin).
   Every point HiGHS returns (also the LP's) is clipped into U and re-checked with a float64
   fixed point at tol 1e-12: a real flip → ``falsified`` (counterexample: that point; stop).
   j closed for every j → ``verified``; the per-example time limit runs out first →
   ``undecided`` (never a guess).

Safety margin: ``margin`` = 10⁻⁶·max(1, ‖y(u)‖∞). HiGHS works to feasibility tolerances of about
10⁻⁷ (in floating point, not exact rational arithmetic), so a bound in [−margin, 0) proves
nothing here; the margin makes "verified" mean "the solver's bound is below 0 by far more than its
own tolerances". A MILP point that claims y_j − y_k ≥ 0 but whose re-checked margin is below
−10⁻⁵·max(1, ‖y‖∞) is a contradiction and raises :class:`~lipdeq.certify.milp.VerificationError`.
Run-time guard: the float64 fixed point of the box centre must lie inside the bounds the MILP
uses (else :class:`~lipdeq.certify.milp.VerificationError`).

Robust statuses: ``certified``, ``verified``; broken: ``misclassified``, ``attacked``,
``falsified``. exact_robust_accuracy_lower = robust / N, exact_robust_accuracy_upper =
(N − broken) / N; they are equal when no example is ``undecided``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..io import atomic_write
from .milp import (ExactNetwork, MarginProblem, VerificationError,  # noqa: F401 (re-export)
                   VerificationUnsupported)

__all__ = ["verify_exact", "VerifyResult", "exact_metrics", "consistency_problems",
           "save_examples", "STATUSES", "ROBUST", "BROKEN", "VerificationError",
           "VerificationUnsupported"]

STATUSES = ("certified", "verified", "misclassified", "attacked", "falsified", "undecided")
ROBUST = ("certified", "verified")
BROKEN = ("misclassified", "attacked", "falsified")
SAFETY = 1e-6       # proof margin, relative to max(1, ‖y(u)‖∞)
RECHECK_SLACK = 1e-5  # MILP-vs-re-check disagreement that counts as a bug, same scale


@dataclass
class VerifyResult:
    """Per-example ``status`` (N,) (strings of STATUSES), ``counterexample`` (N, p) float64 with
    NaN rows where none, ``seconds`` (wall time), ``milp_seconds`` (N,) time in the MILP stage,
    ``attack_correct`` (N,) bool: the exact network still correct at the fast attack's point
    (run on the model as given for every correctly classified example, the point clipped into
    the threat box and judged in float64; None when the attack was off), ``stage_seconds``
    (forward, interval, attack, milp)."""
    status: np.ndarray
    counterexample: np.ndarray
    seconds: float
    milp_seconds: np.ndarray
    attack_correct: np.ndarray | None = None
    stage_seconds: dict | None = None

    def counts(self) -> dict:
        return {s: int((self.status == s).sum()) for s in STATUSES}

    @property
    def lower(self) -> float:
        return float(np.isin(self.status, ROBUST).mean())

    @property
    def upper(self) -> float:
        return float((~np.isin(self.status, BROKEN)).mean())


def _scale(y: np.ndarray) -> float:
    return max(1.0, float(np.abs(y).max()))


def threat_box(U: np.ndarray, eps: float, *, outward: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """[max(0, u − ε), min(1, u + ε)] in float64, rounded ``outward`` (proofs: u ± ε rounded
    to nearest can cut half an ulp off the threat box, and a proof over a smaller box is no
    proof) or inward (counterexamples are clipped into it, so each lies in the threat box)."""
    out = np.inf if outward else -np.inf
    lo = np.clip(np.nextafter(U - eps, -out), 0.0, None)
    hi = np.clip(np.nextafter(U + eps, out), None, 1.0)
    if outward:
        return lo, hi
    return np.minimum(lo, U), np.maximum(hi, U)  # ε below half an ulp: u itself stays inside


def exact_correct(net: "ExactNetwork", points: torch.Tensor, inside: tuple, labels: np.ndarray,
                  batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(points clipped into the inward-rounded threat box ``inside``, float64; per point: does
    the exact network still predict ``labels`` there) — how attack points are judged."""
    P = np.clip(points.detach().cpu().double().flatten(1).numpy(), inside[0], inside[1])
    correct = np.concatenate([net.logits(P[i:i + batch_size]).argmax(1) == labels[i:i + batch_size]
                              for i in range(0, len(labels), batch_size)])
    return P, correct


def verify_exact(model, u: torch.Tensor, labels: torch.Tensor, eps: float, *,
                 time_limit: float = 30.0, attack_steps: int = 20, seed: int = 0,
                 progress: bool = False, batch_size: int = 500) -> VerifyResult:
    """Exact robustness status of every example at ℓ∞ radius ``eps`` (module docstring).

    ``u`` (N, p) in [0, 1], ``labels`` (N,). ``time_limit`` (seconds, > 0) bounds the MILP stage
    of each example (construction included); ``attack_steps=0`` skips the attack stage.
    Raises :class:`VerificationUnsupported` for models outside the formulation.
    """
    from .checks import _check_inputs, _check_labels
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if not (time_limit > 0 and math.isfinite(time_limit)):
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    t_start = time.perf_counter()
    net = ExactNetwork.from_model(model)
    U = u.detach().cpu().double().flatten(1).numpy()
    K = labels.cpu().numpy()
    N, q = U.shape[0], net.q
    lower, upper = threat_box(U, eps)
    inside = threat_box(U, eps, outward=False)
    status = np.full(N, "", dtype="<U13")
    cex = np.full(U.shape, np.nan)
    milp_s = np.zeros(N)
    Y = np.concatenate([net.logits(U[i:i + batch_size]) for i in range(0, N, batch_size)])
    with torch.no_grad():  # the model as used: an example it gets wrong is never "robust"
        forward = torch.cat([model(u[i:i + batch_size]).argmax(-1)
                             for i in range(0, N, batch_size)]).cpu().numpy()
    wrong = (Y.argmax(1) != K) | (forward != K)
    status[wrong], cex[wrong] = "misclassified", U[wrong]
    stages = {"forward": time.perf_counter() - t_start}
    # 2. sound float64 interval bound: z_j ≥ max y_j − y_k, per wrong class
    Z = np.full((N, q), -np.inf)
    bounds = {}
    for s0 in range(0, N, batch_size):
        sl = slice(s0, s0 + batch_size)
        x_lo, x_hi = net.state_bounds(lower[sl], upper[sl])
        bounds[s0] = (x_lo, x_hi)
        Z[sl] = _margin_upper(net, x_lo, x_hi, lower[sl], upper[sl], K[sl])
    cert = (status == "") & (Z < 0).all(1)
    status[cert] = "certified"
    stages["interval"] = time.perf_counter() - t_start - sum(stages.values())
    # 3. fast attack on the model as given (every correctly classified example, for the
    #    consistency checks); counterexamples count only after a float64 re-check
    attack_correct = None
    todo = np.flatnonzero(~wrong)
    if attack_steps > 0 and todo.size:
        from .attacks import pgd
        attack_correct = np.zeros(N, dtype=bool)
        gen = torch.Generator().manual_seed(seed)
        for s0 in range(0, todo.size, batch_size):
            idx = todo[s0:s0 + batch_size]
            adv = pgd(model, u[idx], labels[idx], eps, steps=attack_steps, generator=gen)
            # judged by the exact network, as the statuses are (a forward-pass flip within
            # the solver tolerance is not a counterexample)
            A, attack_correct[idx] = exact_correct(net, adv, (inside[0][idx], inside[1][idx]),
                                                   K[idx])
            broke = ~attack_correct[idx] & (status[idx] == "")
            status[idx[broke]], cex[idx[broke]] = "attacked", A[broke]
    stages["attack"] = time.perf_counter() - t_start - sum(stages.values())
    # 4. MILP
    todo = np.flatnonzero(status == "")
    bar = _bar(todo.size, progress)
    for i in todo:
        x_lo, x_hi = (t[i % batch_size] for t in bounds[i - i % batch_size])
        t0 = time.perf_counter()
        status[i], point = _decide(net, lower[i], upper[i], x_lo, x_hi, int(K[i]), Z[i],
                                   _scale(Y[i]), t0 + float(time_limit),
                                   (inside[0][i], inside[1][i]))
        milp_s[i] = time.perf_counter() - t0
        if point is not None:
            cex[i] = point
        bar.update(1)
    bar.close()
    stages["milp"] = time.perf_counter() - t_start - sum(stages.values())
    return VerifyResult(status, cex, time.perf_counter() - t_start, milp_s, attack_correct, stages)


def _margin_upper(net, x_lo, x_hi, u_lo, u_hi, K) -> np.ndarray:
    """Sound float64 upper bounds of y_j − y_k (N, q) over the boxes (−inf at j = k)."""
    out = np.empty((len(K), net.q))
    for r, k in enumerate(K):
        R = net.C - net.C[k]
        hi = np.clip(R, 0, None) @ x_hi[r] + np.clip(R, None, 0) @ x_lo[r] + (net.c - net.c[k])
        sc = np.abs(R) @ np.maximum(np.abs(x_lo[r]), np.abs(x_hi[r])) + np.abs(net.c - net.c[k])
        if net.D is not None:
            S = net.D - net.D[k]
            hi += np.clip(S, 0, None) @ u_hi[r] + np.clip(S, None, 0) @ u_lo[r]
            sc += np.abs(S) @ np.maximum(np.abs(u_lo[r]), np.abs(u_hi[r]))
        out[r] = hi + 2 * (R.shape[1] + 2) * 2.0 ** -53 * sc     # rounding, outward
        out[r, k] = -np.inf
    return out


def _decide(net, lower, upper, x_lo, x_hi, k, z, scale, deadline, inside):
    """(status, counterexample or None) for one example by the MILP stage: proofs over the
    outward box [lower, upper], counterexamples clipped into the ``inside`` box first."""
    z_lo, z_hi = net.pre_activation_bounds(x_lo, x_hi, lower, upper)
    _check_enclosure(net, (lower + upper) / 2, x_lo, x_hi, z_lo[0], z_hi[0])
    if time.perf_counter() >= deadline:
        return "undecided", None
    prob = MarginProblem(net, lower, upper, x_lo, x_hi, z_lo[0], z_hi[0])
    open_classes = False
    for j in np.argsort(-z):
        if j == k or z[j] < 0:
            continue
        closed = False
        # LP relaxation (cheap, often enough), the decision MILP (y_j − y_k ≥ −margin, first
        # point), and only if that point is ambiguous the optimizing MILP (its dual bound)
        for mode in ("lp", "decide", "optimize"):
            left = deadline - time.perf_counter()
            if left <= 0:
                return "undecided", None
            out = prob.maximize(k, int(j), left, relax=mode == "lp",
                                at_least=-SAFETY * scale if mode == "decide" else None)
            if out.u is not None:
                point = np.clip(out.u, *inside)
                y = net.logits(point)[0]
                m = float(np.max(np.delete(y, k)) - y[k])
                if m >= 0:                     # any candidate input that really flips counts
                    return "falsified", point
                if mode != "lp" and out.value is not None and out.value >= 0 and \
                        m < -RECHECK_SLACK * scale:
                    raise VerificationError(f"the MILP point claims y_{j} - y_{k} = "
                                            f"{out.value:.3g} but its float64 fixed point "
                                            f"gives {m:.3g}")
            if out.bound < -SAFETY * scale or (mode == "decide" and out.status == 2):
                closed = True
                break
            if mode == "decide" and out.u is None:
                break                          # time limit inside HiGHS: nothing proven
        open_classes |= not closed
    return ("undecided", None) if open_classes else ("verified", None)


def _check_enclosure(net, u, x_lo, x_hi, z_lo, z_hi):
    """Run-time guard: the fixed point of the box centre lies inside the bounds the MILP uses."""
    x = net.fixed_point(u)[0]
    z = net.A @ x + net.B @ np.atleast_2d(u)[0] + net.b
    tol = 1e-9 * (1 + np.abs(x).max())
    if (x < x_lo - tol).any() or (x > x_hi + tol).any() or (z < z_lo - tol).any() or \
            (z > z_hi + tol).any():
        raise VerificationError("the fixed point of the box centre lies outside the interval "
                                "bounds that the MILP uses: unsound bounds")


def _bar(total: int, progress: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="exact verification", unit="ex", disable=not progress,
                leave=False)


def save_examples(path: str, result: VerifyResult, index: np.ndarray | None = None) -> None:
    """npz with ``index`` (N,), ``status`` (N,) strings, ``counterexample`` (N, p), atomically."""
    N = result.status.shape[0]
    index = np.arange(N) if index is None else np.asarray(index)
    with atomic_write(path, "wb") as fh:
        np.savez(fh, index=index, status=result.status.astype(str),
                 counterexample=result.counterexample)


def exact_metrics(model, split, eps: float, *, time_limit: float = 30.0,
                  save_path: str | None = None, progress: bool = True,
                  accuracies: dict | None = None, start: int = 0,
                  attack_points: dict | None = None) -> dict:
    """The ``evaluate --verify exact`` keys for a classification split (fractions, seconds).

    Runs :func:`verify_exact`, the model's own interval certificate
    (:func:`lipdeq.robustness.certified_interval`) per example, and :func:`consistency_problems`
    against them, the fast attack and ``accuracies`` (name → accuracy already in the report).
    Writes ``save_path`` (npz, :func:`save_examples`) when given. ``verify_inconsistencies``
    lists contradictions (the CLI exits non-zero when it is not empty). ``start``: the split index
    of ``split``'s first example (a shard, ``evaluate --start``); example indices in the npz and
    in the messages count from it. ``attack_points``: name → the adversarial inputs (N, …) of
    attacks the caller ran; each is clipped into the threat box and judged by the exact network,
    and an example proven robust whose point flips is reported per example.
    """
    from .robustness import certified_interval
    u, t = split.inputs, split.targets
    res = verify_exact(model, u, t, eps, time_limit=time_limit, progress=progress)
    with torch.no_grad():
        cert = torch.cat([certified_interval(model, u[i:i + 500], t[i:i + 500], eps)
                          for i in range(0, len(t), 500)]).cpu().numpy()
    attacks = {} if res.attack_correct is None else {"verify_pgd": res.attack_correct}
    if attack_points:
        net, K = ExactNetwork.from_model(model), t.cpu().numpy()
        inside = threat_box(u.detach().cpu().double().flatten(1).numpy(), eps, outward=False)
        for name, points in attack_points.items():
            attacks[name] = exact_correct(net, points, inside, K)[1]
    accs = dict(accuracies or {})
    accs["certified_accuracy_interval"] = float(cert.mean())
    if res.attack_correct is not None:
        accs["verify_pgd_accuracy"] = float(res.attack_correct.mean())
    problems = consistency_problems(res, certified=cert, attack_correct=attacks, accuracies=accs,
                                    start=start)
    if save_path:
        save_examples(save_path, res, index=np.arange(start, start + len(t)))
    counts = res.counts()
    return {"eps": float(eps), "exact_robust_accuracy_lower": res.lower,
            "exact_robust_accuracy_upper": res.upper, "undecided": counts["undecided"],
            "verify_seconds": res.seconds, "verify_time_limit": float(time_limit),
            "verify_counts": counts, "verify_pgd_accuracy": accs.get("verify_pgd_accuracy"),
            "verify_milp_seconds_max": float(res.milp_seconds.max(initial=0.0)),
            "verify_stage_seconds": res.stage_seconds,
            "verify_inconsistencies": problems}


def consistency_problems(result: VerifyResult, *, certified: np.ndarray | None = None,
                         attack_correct: dict | None = None,
                         accuracies: dict | None = None, start: int = 0) -> list[str]:
    """Contradictions between the exact statuses and the other methods (§3).

    ``certified``: per-example mask of a sound certificate; ``attack_correct``: name → per-example
    mask "still correct after the attack"; ``accuracies``: name → accuracy of a certificate
    (keys starting with ``certified``) or of an attack (others); example indices in the messages
    are offset by ``start``. Checks: certified ≤ exact lower
    ≤ exact upper ≤ every attack accuracy (with undecided examples an attack may break them, so
    then only exact lower ≤ every attack accuracy); no certified example is broken; no example
    proven robust is broken by an attack. Returns one line per problem (empty when consistent).
    """
    out = []
    st = result.status
    robust, broken = np.isin(st, ROBUST), np.isin(st, BROKEN)
    N = st.shape[0]
    lo, hi = result.lower, result.upper
    undecided = int((st == "undecided").sum())
    tol = 0.5 / N
    if not lo <= hi + 1e-12:
        out.append(f"exact lower {lo} > exact upper {hi}")
    for name, acc in (accuracies or {}).items():
        if acc is None:
            continue
        if name.startswith("certified") and acc > lo + tol:
            out.append(f"{name} {acc:.4f} > exact_robust_accuracy_lower {lo:.4f}")
        # an attack may break undecided examples (lower = upper − undecided/N), so acc < lower
        # is the contradiction; with none undecided lower = upper and this is acc < upper
        if not name.startswith("certified") and acc < lo - tol:
            out.append(f"{name} {acc:.4f} < exact_robust_accuracy_lower {lo:.4f}"
                       + (f" (= upper, {undecided} undecided)" if undecided == 0 else ""))
    if certified is not None:
        bad = np.flatnonzero(np.asarray(certified, bool) & broken)
        if bad.size:
            out.append(f"{bad.size} certified example(s) broken by the exact verifier "
                       f"(first: {(bad[:5] + start).tolist()})")
    for name, correct in (attack_correct or {}).items():
        bad = np.flatnonzero(robust & ~np.asarray(correct, bool))
        if bad.size:
            out.append(f"{bad.size} example(s) proven robust but broken by {name} "
                       f"(first: {(bad[:5] + start).tolist()})")
    return out
