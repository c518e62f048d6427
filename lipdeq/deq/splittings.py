r"""monDEQ operator splittings as fixed-point solvers: ``forward_backward``, ``peaceman_rachford``.

Winston & Kolter (monDEQ) write x = Φ(Ax + w) as the monotone inclusion
0 ∈ (I − A)x − w + ∂f(x), where Φ = prox_f (every activation with slopes in [0, 1] is the
proximal map of a convex f; ReLU is the projection onto x ≥ 0, so prox_{αf} = ReLU for every α).
With G(x) = (I − A)x − w, m = 1 − μ₂(A) = λ_min(I − sym A) and L = ‖I − A‖₂:

* forward–backward  x⁺ = prox_{αf}((1 − α)x + α(Ax + w)).
  ℓ2: factor √(1 − 2αm + α²L²) < 1 for 0 < α < 2m/L² (needs m > 0, i.e. μ₂(A) < 1); minimal at
  **α = m/L²** (factor √(1 − m²/L²)). ∞,η: when μ∞,η(A) < 1 the linear part is the average
  iteration with Γ = I, so for α ≤ α* (docs/math.md §4.2) the factor is 1 − α(1 − μ⁺) (prox_{αf} acts
  coordinatewise and is nonexpansive). Default α: the one of these two with the smaller factor
  (α* when only the ∞-norm certificate holds; α* without any certificate, then no rate).
* Peaceman–Rachford (monDEQ's Algorithm): u½ = 2x − u, x½ = (I + α(I − A))⁻¹(u½ + αw),
  u = 2x½ − u½, x = prox_{αf}(u). For m > 0 the reflected resolvent contracts u with factor
  √(1 − 4αm/(1 + 2αm + α²L²)) for **every** α > 0, minimal at **α = 1/L** (factor
  √((L − m)/(L + m))); the default. Without m > 0 there is no guarantee (rate nan).

Outside the monotone set (and, for forward–backward, outside μ∞,η < 1) the splittings may diverge;
the solve then reports not converged (ConvergenceWarning, or ConvergenceError with strict).

Bookkeeping is :class:`lipdeq.fixed_point._Loop`'s: the residual trace ‖F(x_k) − x_k‖ of the
problem's own map in the problem's norm, the stopping rule of docs/math.md §4.5 and the a-posteriori bound
(valid whenever μ⁺ < 1, whatever produced x_k). The forward problem must carry
``operator`` (multiply, resolvent(α) for PR, dense() for the ℓ2 constants) and
``extra['w']``, ``extra['activation']`` (F(x) = activation(Ax + w)). The adjoint problem
(``operator=None``, ``extra={'G','g','transpose_of': op}``, F(w) = AᵀGw + g) is solved by the same
splitting on v = Gw, which satisfies v = Φ̃(Aᵀv + g) with the linear activation Φ̃(z) = Gz
(slopes G ∈ [0, 1]; prox_{αf̃}(z) = Gz/(G + α(1 − G))), the resolvent of Aᵀ being the transpose
of the cached one; the iterate reported is w = Aᵀv + g.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Callable

import torch

from . import fixed_point as fp
from .activations import LEAKY_SLOPE
from .protocols import DenseCapable, ResolventCapable

__all__ = ["monotone_constants", "prox", "forward_backward", "peaceman_rachford"]

_CONSTANTS: "weakref.WeakKeyDictionary[Any, tuple[float, float]]" = weakref.WeakKeyDictionary()


def monotone_constants(op) -> tuple[float, float] | None:
    """(m, L) = (λ_min(I − sym A), ‖I − A‖₂) in float64, cached per operator; None without dense()."""
    if not isinstance(op, DenseCapable):
        return None
    try:
        return _CONSTANTS[op]
    except (KeyError, TypeError):
        pass
    A = op.dense().detach().double()
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    m = float(1.0 - torch.linalg.eigvalsh((A + A.transpose(-1, -2)) / 2)[..., -1].max())
    L = float(torch.linalg.matrix_norm(eye - A, ord=2).max())
    try:
        _CONSTANTS[op] = (m, L)
    except TypeError:
        pass
    return m, L


def prox(activation, alpha: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """prox_{αf} for the f with prox_f = activation.fn: x solving (1 − α)x + αφ⁻¹(x) ∋ z.

    Closed forms for relu (itself), identity and leaky_relu; otherwise a safeguarded Newton solve
    of h(s) = (1 − α)φ(s) + αs − z = 0 (h' ≥ min(α, 1) > 0), x = φ(s)."""
    name = getattr(activation, "name", None)
    if name == "relu":
        return torch.relu
    if name == "identity" or alpha == 1.0:
        return activation.fn
    if name == "leaky_relu":
        s = LEAKY_SLOPE
        return lambda z: torch.where(z >= 0, z, z * (s / (s + alpha * (1 - s))))
    phi, dphi = activation.fn, activation.derivative
    kappa = min(alpha, 1.0)

    def generic(z: torch.Tensor) -> torch.Tensor:
        s = z.clone()
        h = (1 - alpha) * phi(s) + alpha * s - z
        lo, hi = s - h.abs() / kappa, s + h.abs() / kappa
        for k in range(60):
            done = h.abs() <= 1e-14 * (1 + z.abs())  # converged entries stay where they are
            lo, hi = torch.where(h < 0, s, lo), torch.where(h > 0, s, hi)
            step = s - h / ((1 - alpha) * dphi(s) + alpha)
            s = torch.where(done, s, torch.where((step > lo) & (step < hi), step, (lo + hi) / 2))
            h = (1 - alpha) * phi(s) + alpha * s - z
            if k % 6 == 5 and bool(done.all()):  # a host sync: every 6th step only
                break
        return phi(s)
    return generic


class _Setup:
    """The splitting's view x = Φ̃(Ãx + w̃) of a forward or adjoint FixedPointProblem."""

    def __init__(self, problem: fp.FixedPointProblem, solver: str):
        extra = problem.extra or {}
        self.problem = problem
        if problem.operator is not None:
            self.adjoint, self.op = False, problem.operator
            if "w" not in extra or "activation" not in extra:
                raise ValueError(f"solver {solver!r} needs problem.extra['w'] and "
                                 f"extra['activation'] (F(x) = activation(Ax + w))")
            self.wt, self.act = extra["w"], extra["activation"]
            self.x0 = problem.x0
        else:
            if "transpose_of" not in extra or "G" not in extra or "g" not in extra:
                raise ValueError(f"solver {solver!r} needs the operator: for an adjoint problem "
                                 f"extra['transpose_of'], extra['G'] and extra['g']; otherwise "
                                 f"use backward_solver='average'")
            self.adjoint, self.op = True, extra["transpose_of"]
            self.G, self.wt = extra["G"], extra["g"]
            self.x0 = self.G * problem.x0

    def lin(self, x):  # Ãx + w̃
        return (self.op.multiply_transpose(x) if self.adjoint else self.op.multiply(x)) + self.wt

    def prox(self, alpha):
        if self.adjoint:
            G = self.G
            return lambda z: G * z / (G + alpha * (1 - G))
        return prox(self.act, alpha)

    def resolvent(self, alpha):
        if not isinstance(self.op, ResolventCapable):
            raise TypeError(f"peaceman_rachford needs an operator with resolvent(alpha); "
                            f"{type(self.op).__name__} has none")
        R = self.op.resolvent(alpha).to(self.x0.dtype)
        return (lambda y: y @ R) if self.adjoint else (lambda y: y @ R.transpose(-1, -2))

    def check(self, loop, k, x, lx):
        """Record iterate k in the problem's own variables; return (done, reported iterate)."""
        if self.adjoint:  # w = Aᵀv + g, residual of F(w) = AᵀGw + g
            return loop.done(k, lx, self.problem.F(lx)), lx
        return loop.done(k, x, self.act.fn(lx)), x


def _rates(problem, setup: _Setup, method: str, alpha: float | None) -> tuple[float, float]:
    """(α, guaranteed factor or nan) for the method, see the module docstring."""
    mc = monotone_constants(setup.op)
    mu = float(problem.mu_plus)
    a_star = float(problem.alpha_star)

    def factor(a: float) -> float:
        best = math.nan
        if mc is not None and mc[0] > 0:
            m, L = mc
            r = (1 - 2 * a * m + a * a * L * L) if method == "fb" else \
                1 - 4 * a * m / (1 + 2 * a * m + a * a * L * L)
            if r < 1:
                best = math.sqrt(max(r, 0.0))
        if method == "fb" and mu < 1 and a <= a_star * (1 + 1e-12):
            best = min(best, 1 - a * (1 - mu)) if best == best else 1 - a * (1 - mu)
        return best

    if alpha is not None:
        return float(alpha), factor(float(alpha))
    if method == "pr":
        if mc is None:
            raise ValueError("peaceman_rachford needs alpha= for an operator without dense()")
        a = 1.0 / mc[1] if mc[1] > 0 else 1.0
        return a, factor(a)
    cands = [a_star]
    if mc is not None and mc[0] > 0 and mc[1] > 0:
        cands.append(mc[0] / mc[1] ** 2)
    scored = [(factor(a), a) for a in cands]
    valid = [s for s in scored if s[0] == s[0]]
    rate, a = min(valid) if valid else (math.nan, a_star)
    return a, rate


def _finish(loop, x, k, converged, a, rate):
    return loop.result(x, k, converged, a, rate)


@fp.register("forward_backward")
def forward_backward(problem: fp.FixedPointProblem, *, tol, max_iter, alpha, check_every
                     ) -> fp.FixedPointResult:
    """monDEQ forward–backward splitting x⁺ = prox_{αf}((1 − α)x + α(Ax + w)) (module docstring)."""
    setup = _Setup(problem, "forward_backward")
    a, rate = _rates(problem, setup, "fb", alpha)
    px = setup.prox(a)
    loop = fp._Loop(problem, tol, max_iter, check_every)
    x = setup.x0
    for k in range(max_iter):
        lx = setup.lin(x)
        done, ans = setup.check(loop, k, x, lx)
        if done or getattr(loop, "diverged", False):
            return _finish(loop, ans, k, done, a, rate)
        if k + 1 < max_iter:
            x = px(torch.lerp(x, lx, a))
    return _finish(loop, ans, max_iter - 1, False, a, rate)


@fp.register("peaceman_rachford")
def peaceman_rachford(problem: fp.FixedPointProblem, *, tol, max_iter, alpha, check_every
                      ) -> fp.FixedPointResult:
    """monDEQ Peaceman–Rachford splitting with the cached resolvent (I + α(I − A))⁻¹."""
    setup = _Setup(problem, "peaceman_rachford")
    a, rate = _rates(problem, setup, "pr", alpha)
    px = setup.prox(a)
    try:  # I + α(I − A) is invertible for every α > 0 only when A is monotone (m > 0)
        res = setup.resolvent(a)
    except RuntimeError:  # torch.linalg.LinAlgError: singular; reported as not converged
        res = None
    loop = fp._Loop(problem, tol, max_iter, check_every)
    u = setup.x0
    x = px(u)
    for k in range(max_iter):
        lx = setup.lin(x)
        done, ans = setup.check(loop, k, x, lx)
        if done or getattr(loop, "diverged", False) or res is None:
            return _finish(loop, ans, k, done, a, rate)
        if k + 1 < max_iter:
            u_half = 2 * x - u
            u = 2 * res(u_half + a * setup.wt) - u_half
            x = px(u)
    return _finish(loop, ans, max_iter - 1, False, a, rate)
