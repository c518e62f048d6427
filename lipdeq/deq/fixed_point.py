r"""Fixed-point solvers for x = F(x) on batches, with a registry and residual traces (docs/math.md §4).

A solver receives a :class:`FixedPointProblem` (the map F, the starting point, the norm in which
the map contracts and its contraction data) and returns a :class:`FixedPointResult`.

Stopping rule (docs/design.md §8, docs/math.md §4.5): with μ⁺ = max(μ, 0) < 1 the one-sided Lipschitz bound
of x ↦ Φ(Ax + w) in the solver's norm, any x satisfies the a-posteriori bound

    ‖x − x*‖ ≤ ‖F(x) − x‖ / (1 − μ⁺),

and a solve stops as soon as this bound, plus the rounding floor 2u‖x‖/(1 − μ⁺) of computing
the residual in x's precision (u = eps/2: 6e-8 in float32), is ≤ tol·max(s₀, ‖x‖) (max over the
batch), or after
``max_iter`` evaluations of F. The floor s₀ is ``FixedPointProblem.scale_floor``: 1 for the
forward solve (docs/design.md §8); the adjoint solve passes ‖g‖ (its right-hand side, floored at the
smallest normal float only to avoid 0/0), which makes its tolerance relative, so gradient accuracy
does not depend on the scale of the loss. Without a contraction certificate (μ⁺ ≥ 1, e.g. an unconstrained
model) the rule is the plain residual ‖F(x) − x‖ ≤ tol·max(s₀, ‖x‖) and the bound is reported as
``inf``. The reported ``bound`` carries the same rounding floor: near μ⁺ = 1 a float32 residual
stagnates at its rounding level while the error is 1/(1 − μ⁺) times that (μ = 0.999: residual 0,
error 0.03 at ‖x‖ = 1000), and without the floor such a solve was reported converged with bound 0.
The floor is an estimate of one evaluation's rounding, not a proof; certificates (lipdeq.certify)
recompute the residual in float64. Convergence is checked every ``check_every`` iterations only (one host sync per check);
the residual of every iteration is kept on the device and returned as the trace. A solve whose
residual turns NaN/Inf at a check stops there, unconverged (it is warned about like any other),
and returns x = NaN (not its last finite iterate, which under ``no_grad`` read as a plausible
output of broken weights).

Registered solvers: ``average`` (x⁺ = (1−α)x + αF(x), default α = α* = 1/(1 − min(d_min, 0)),
contraction factor 1 − α(1 − μ⁺)), ``picard`` (α = 1) and ``anderson`` (Anderson acceleration of
the averaged map, memory m). More can be added with :func:`register`.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..validate import check_nonnegative, check_positive, check_positive_int


__all__ = ["ConvergenceWarning", "ConvergenceError", "FixedPointProblem", "FixedPointResult", "SOLVERS",
           "register", "solve", "average_iteration", "picard_iteration", "anderson_acceleration"]


class ConvergenceWarning(RuntimeWarning):
    """A fixed-point solve stopped at max_iter before meeting its tolerance."""


class ConvergenceError(RuntimeError):
    """A fixed-point solve did not converge and ``strict=True`` was asked for."""


Norm = Callable[[torch.Tensor], torch.Tensor]  # (N, ...) -> (N,) per-sample norms


@dataclass
class FixedPointProblem:
    """x = F(x) on a batch. ``norm`` gives per-sample norms; ``mu_plus`` is max(μ, 0) of the map's
    one-sided Lipschitz constant in that norm (a 0-d tensor; ≥ 1 means no certificate);
    ``alpha_star`` the largest step with the guaranteed rate. ``operator`` (optional) is the
    linear operator A for solvers that need its structure (the monDEQ splittings).
    ``scale_floor`` (a positive float or 0-d tensor) is s₀ of the stopping rule
    tol·max(s₀, ‖x‖) (module docstring): 1 by default, the adjoint's ‖g‖ for the implicit layer."""
    F: Callable[[torch.Tensor], torch.Tensor]
    x0: torch.Tensor
    norm: Norm
    mu_plus: torch.Tensor
    alpha_star: torch.Tensor
    operator: Any = None
    extra: dict = field(default_factory=dict)
    scale_floor: Any = 1.0


@dataclass
class FixedPointResult:
    """The answer ``x`` with ``iterations`` (evaluations of F), the per-iteration residual trace
    max_batch ‖F(x_k) − x_k‖ (1-D tensor on x's device), ``converged``, the a-posteriori error
    ``bound`` of the returned x (inf without a certificate), the step ``alpha`` and ``rate``
    (the guaranteed contraction factor of the iteration, or nan when none holds)."""
    x: torch.Tensor
    iterations: int
    residuals: torch.Tensor
    converged: bool
    bound: float
    alpha: float
    rate: float
    safeguards: int = 0  # Anderson steps rejected for the averaged one (anderson only)

    @property
    def residual(self) -> float:
        return float(self.residuals[-1]) if self.residuals.numel() else float("nan")


SOLVERS: dict[str, Callable[..., FixedPointResult]] = {}


def register(name: str):
    """Decorator adding a solver ``fn(problem, *, tol, max_iter, alpha, check_every, **options)``."""
    def deco(fn):
        SOLVERS[name] = fn
        return fn
    return deco


def check_solver_name(name: str) -> str:
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {name!r}")
    return name


def solve(name: str, problem: FixedPointProblem, *, tol: float = 1e-4, max_iter: int = 300,
          alpha: float | None = None, check_every: int | None = None, strict: bool = False,
          label: str | None = None, **options: Any) -> FixedPointResult:
    """Run the registered solver ``name``; warn (or raise with ``strict``) when not converged,
    the message starting with ``label`` (e.g. "forward", "adjoint") when given."""
    check_solver_name(name)
    check_positive("tol", tol)
    check_positive_int("max_iter", max_iter)
    if alpha is not None:
        check_positive("alpha", alpha)
    if check_every is None:
        check_every = 1 if problem.x0.device.type == "cpu" else 8
    check_positive_int("check_every", check_every)
    if problem.x0.shape[0] == 0:  # an empty batch is its own fixed point: nothing to iterate
        a, rate = _alpha_and_rate(problem, alpha)
        return FixedPointResult(problem.x0, 0, problem.x0.new_zeros(0), True, 0.0, a, rate)
    result = SOLVERS[name](problem, tol=tol, max_iter=int(max_iter), alpha=alpha,
                           check_every=int(check_every), **options)
    if not result.converged:
        what = f"{label} " if label else ""
        msg = (f"{what}fixed-point solver {name!r} did not reach tol={tol:g} in {result.iterations} "
               f"iterations (residual {result.residual:.3g}"
               f"{'; diverged, stopped early' if result.iterations < max_iter else ''})")
        if strict:
            raise ConvergenceError(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    return result


class _Loop:
    """Bookkeeping shared by the solvers: residual trace, stopping test, final bound."""

    def __init__(self, problem: FixedPointProblem, tol: float, max_iter: int, check_every: int):
        self.p = problem
        self.tol = tol
        self.max_iter = max_iter
        self.check_every = check_every
        self.diverged = False
        # On the CPU a host read is free: keep the trace as Python floats (fewer tiny ops per
        # iteration). On an accelerator keep it on the device and read only at checks.
        self.host = problem.x0.device.type == "cpu"
        self.values: list[float] = []
        self.trace = None if self.host else torch.empty(max_iter, device=problem.x0.device,
                                                        dtype=problem.x0.dtype)
        mu = problem.mu_plus.to(problem.x0.dtype)
        self.certified = bool(mu < 1)  # one sync per solve
        self.factor = (1.0 / (1.0 - mu)) if self.certified else torch.ones((), dtype=mu.dtype,
                                                                             device=mu.device)
        self.factor_value = float(self.factor)
        # rounding floor of a residual computed in x's precision (module docstring): 2u‖x‖
        self.rounding = 2 * _unit_roundoff(problem.x0.dtype) if self.certified else 0.0
        floor = problem.scale_floor
        if self.host:
            self.floor = float(floor)
        else:
            self.floor = torch.as_tensor(floor, dtype=problem.x0.dtype, device=problem.x0.device)

    def done(self, k: int, x: torch.Tensor, fx: torch.Tensor) -> bool:
        """Record the residual of iterate k; return True when it meets the stopping rule.

        Sets ``self.diverged`` (and returns False) when the residual is NaN/Inf at a check: the
        iteration has blown up and further steps cannot help, so the solvers stop there
        (reported as not converged, hence warned about or raised by :func:`solve`).
        """
        r = self.p.norm(fx - x).amax()
        if self.host:
            value = float(r)
            self.values.append(value)
            if (k + 1) % self.check_every and k + 1 != self.max_iter:
                return False
            if not math.isfinite(value):
                self.diverged = True
                return False
            size = float(self.p.norm(x).amax())
            return (value + self.rounding * size) * self.factor_value <= self.tol * max(self.floor, size)
        self.trace[k] = r
        if (k + 1) % self.check_every and k + 1 != self.max_iter:
            return False
        size = self.p.norm(x).amax()
        scale = torch.maximum(size, self.floor)
        ok, bad = torch.stack([(r + self.rounding * size) * self.factor <= self.tol * scale,
                               ~torch.isfinite(r)]).tolist()
        self.diverged = bool(bad)
        return bool(ok)

    def result(self, x, k, converged, alpha, rate) -> FixedPointResult:
        if self.diverged:  # F(x) is NaN/Inf: no iterate is an answer; the last finite one (often
            x = torch.full_like(x, math.nan)  # x0) would read as a plausible output under no_grad
        if self.host:
            res = torch.tensor(self.values[: k + 1], dtype=self.p.x0.dtype)
        else:
            res = self.trace[: k + 1]
        bound = ((float(res[-1]) + self.rounding * float(self.p.norm(x).amax())) * self.factor_value
                 if self.certified else float("inf"))
        return FixedPointResult(x, k + 1, res, converged, bound, float(alpha), rate)


def _unit_roundoff(dtype: torch.dtype) -> float:
    """u = eps/2 of a floating dtype (the relative error of one rounding)."""
    return torch.finfo(dtype).eps / 2 if dtype.is_floating_point else 0.0


def _alpha_and_rate(problem: FixedPointProblem, alpha: float | None) -> tuple[Any, float]:
    a = problem.alpha_star if alpha is None else torch.as_tensor(alpha)
    a_val = float(a)
    mu = float(problem.mu_plus)
    guaranteed = mu < 1 and a_val <= float(problem.alpha_star) * (1 + 1e-12)
    return a_val, (1.0 - a_val * (1.0 - mu)) if guaranteed else float("nan")


@register("average")
def average_iteration(problem: FixedPointProblem, *, tol, max_iter, alpha, check_every
                      ) -> FixedPointResult:
    """x⁺ = (1 − α)x + αF(x); with α ≤ α* a contraction with factor 1 − α(1 − μ⁺) (docs/math.md §4.2)."""
    a, rate = _alpha_and_rate(problem, alpha)
    loop = _Loop(problem, tol, max_iter, check_every)
    x = problem.x0
    for k in range(max_iter):
        fx = problem.F(x)
        if loop.done(k, x, fx):
            return loop.result(x, k, True, a, rate)
        if loop.diverged:
            return loop.result(x, k, False, a, rate)
        if k + 1 < max_iter:
            x = torch.lerp(x, fx, a) if a != 1.0 else fx
    return loop.result(x, max_iter - 1, False, a, rate)


@register("picard")
def picard_iteration(problem: FixedPointProblem, *, tol, max_iter, alpha, check_every
                     ) -> FixedPointResult:
    """x⁺ = F(x): the average iteration with α = 1 (factor ‖A‖∞,η, may exceed 1; docs/math.md §4.4)."""
    if alpha not in (None, 1.0):
        raise ValueError("picard iteration uses alpha = 1; use solver='average' for another step")
    return average_iteration(problem, tol=tol, max_iter=max_iter, alpha=1.0, check_every=check_every)


@register("anderson")
def anderson_acceleration(problem: FixedPointProblem, *, tol, max_iter, alpha, check_every,
                          memory: int = 5, regularization: float = 1e-6,
                          safeguard: bool = True) -> FixedPointResult:
    """Anderson acceleration (type II, memory m) of the averaged map T_α(x) = (1−α)x + αF(x).

    Each step solves, per sample, min_θ ‖Σ θ_i g_i‖² with Σθ = 1 over the last m residuals
    g_i = T_α(x_i) − x_i (a small linear system, Tikhonov-regularized relative to its scale) and
    sets x⁺ = Σ θ_i T_α(x_i). Safeguard (``safeguard=True``): when an extrapolated iterate's
    residual ‖F(x) − x‖ is not below that of the iterate it came from, that sample is reset to
    the plain averaged step T_α(x_prev) (already computed) and its memory restarts from that
    pair; with α ≤ α* the averaged step contracts (docs/math.md §4.2), so every rejected step is
    followed by a guaranteed one. Rejections are counted in ``result.safeguards``. No
    contraction rate is guaranteed; convergence is judged by the same a-posteriori rule.
    """
    memory = check_positive_int("anderson memory", memory)
    regularization = check_nonnegative("anderson regularization", regularization)
    a, _ = _alpha_and_rate(problem, alpha)
    loop = _Loop(problem, tol, max_iter, check_every)
    x = problem.x0
    N = x.shape[0]
    flat = x.reshape(N, -1)
    Xs = flat.new_zeros(N, memory, flat.shape[1])  # T_α(x_i)
    Gs = flat.new_zeros(N, memory, flat.shape[1])  # residuals
    valid = torch.zeros(N, memory, dtype=torch.bool, device=x.device)
    eye = torch.eye(memory, dtype=x.dtype, device=x.device)
    extrapolated = torch.zeros(N, dtype=torch.bool, device=x.device)
    r_prev = tx = None
    rejected = torch.zeros((), dtype=torch.long, device=x.device)

    def finish(k, converged):
        res = loop.result(x, k, converged, a, float("nan"))
        res.safeguards = int(rejected)
        return res

    for k in range(max_iter):
        fx = problem.F(x)
        if loop.done(k, x, fx):
            return finish(k, True)
        if loop.diverged:
            return finish(k, False)
        if k + 1 == max_iter:
            break
        r = problem.norm(fx - x)
        bad = extrapolated & ~(r < r_prev) if safeguard and r_prev is not None else None
        slot = k % memory
        tx_new = torch.lerp(x, fx, a).reshape(N, -1)
        g_new = tx_new - x.reshape(N, -1)
        if bad is not None:  # rejected samples keep only the pair of their previous iterate
            prev = (k - 1) % memory
            keep = torch.arange(memory, device=x.device) == prev
            valid = torch.where(bad[:, None], keep[None, :] & valid, valid)
            sel = (~bad)[:, None]
            Xs[:, slot] = torch.where(sel, tx_new, Xs[:, slot])
            Gs[:, slot] = torch.where(sel, g_new, Gs[:, slot])
            valid[:, slot] = ~bad
            rejected = rejected + bad.sum()
        else:
            Xs[:, slot], Gs[:, slot] = tx_new, g_new
            valid[:, slot] = True
        # Least squares over the valid slots only: invalid slots get θ = 0 exactly (row e_i, rhs 0).
        vf = valid.to(x.dtype)
        H = (Gs @ Gs.transpose(1, 2)) * (vf[:, :, None] * vf[:, None, :])
        scale = H.diagonal(dim1=1, dim2=2).sum(1) / vf.sum(1).clamp_min(1)
        # A sample whose residuals are all exactly 0 (already at its fixed point, e.g. a zero
        # cotangent in the adjoint) has H = 0: regularize it relative to 1, not to 0 (else NaN).
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        H = H + (regularization * scale[:, None] * vf + (1 - vf))[:, :, None] * eye
        theta, _ = torch.linalg.solve_ex(H, vf[:, :, None])
        theta = theta / theta.sum(1, keepdim=True)
        # Fallback for a degenerate least-squares system: the plain averaged step T_α(x_k).
        degenerate = ~torch.isfinite(theta).all(1, keepdim=True)
        plain = (torch.arange(memory, device=x.device) == slot).to(x.dtype)[None, :, None]
        theta = torch.where(degenerate, plain, theta)
        x_and = (theta.transpose(1, 2) @ Xs).reshape(x.shape)
        if bad is not None:
            x_and = torch.where(bad.view(-1, *[1] * (x.ndim - 1)), tx.reshape(x.shape), x_and)
            r = torch.where(bad, r_prev, r)
        extrapolated = valid.sum(1) > 1
        if bad is not None:
            extrapolated &= ~bad
        r_prev, tx, x = r, tx_new, x_and
    return finish(max_iter - 1, False)
