r"""Exact mixed-integer formulation of a piecewise-linear implicit network (docs/math.md §13).

For x = Φ(Ax + Bu + b), y = Cx + c (+ Du), Φ = ReLU or leaky ReLU (slope s), and an input box
U = [u̲, ū], the graph {(u, x*(u)) : u ∈ U} is the feasible set of a mixed-integer linear program.
With pre-activation bounds l ≤ z = Ax + Bu + b ≤ h valid for every fixed point over U:

* stable active   (l_i ≥ 0):  x_i = z_i (and x_i ≥ 0);
* stable inactive (h_i ≤ 0):  x_i = s·z_i, z_i ≤ 0      (ReLU: x_i = 0, z_i ≤ 0);
* unstable (l_i < 0 < h_i), one binary δ_i:
      x_i ≥ z_i,  x_i ≥ s·z_i,  x_i ≤ z_i − (1 − s)·l_i·(1 − δ_i),  x_i ≤ s·z_i + (1 − s)·h_i·δ_i.

Every feasible (u, x) satisfies x = Φ(Ax + Bu + b) exactly (δ = 1 forces x = z ≥ 0, δ = 0 forces
x = s·z, z ≤ 0, whatever l and h are), hence x = x*(u) by uniqueness (μ∞,η(A) < 1). Conversely
x*(u) is feasible for every u ∈ U *iff the bounds are valid*: that is where soundness lives, so
l, h come from the sound interval embedding (docs/math.md §12, :func:`lipdeq.robustness.interval_bounds`)
evaluated in float64, then widened outward for rounding (:meth:`ExactNetwork.pre_activation_bounds`).
Only unstable units get binaries. ``max y_j − y_k`` over this set is the exact worst-case margin.

:class:`ExactNetwork` is the float64 copy of a model's maps (the stored effective weights: for
``nemon`` the built A, for conv models the convolution as a sparse matrix), with a tight-tolerance
fixed point for re-checking counterexamples. :class:`MarginProblem` is the MILP of one input box,
solved with HiGHS through :func:`scipy.optimize.milp`. The pipeline is in :mod:`lipdeq.certify.verify`.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp

from ..deq.activations import LEAKY_SLOPE
from ..geometry import sign_split
from ..deq.implicit import implicit_fixed_point
from ..deq.model import ImplicitNetwork
from ..deq.operators import DenseOperator
from ..deq.protocols import DenseCapable, ImplicitModel

__all__ = ["VerificationUnsupported", "VerificationError", "ExactNetwork", "MarginProblem",
           "MarginOutcome", "SLOPES", "MAX_STATES", "MAX_NONZEROS"]

#: Piecewise-linear activations the formulation covers: name → slope s on z < 0.
SLOPES = {"relu": 0.0, "leaky_relu": LEAKY_SLOPE}
#: Largest state size / number of nonzeros of [A B] accepted (conv operators as sparse matrices).
MAX_STATES = 50_000
MAX_NONZEROS = 3_000_000
#: Tolerance of the float64 fixed point used to re-check counterexamples (and the box bounds).
RECHECK_TOL = 1e-12
RECHECK_MAX_ITER = 200_000
#: Absolute widening of the float64 state bounds: ≫ the float64 rounding of the residual that the
#: a-posteriori bound uses (≈ n·2⁻⁵³·scale/(1 − μ)), ≪ anything that changes stability.
STATE_PAD = 1e-9
_U = 2.0 ** -53  # unit roundoff of float64
#: HiGHS's small_matrix_value: matrix entries at most this large are ignored by the solver.
TINY = 1e-9


class VerificationUnsupported(ValueError):
    """The model cannot be written as a MILP (activation, operator or size); nothing was decided."""


class VerificationError(RuntimeError):
    """An internal contradiction (invalid bound, a counterexample that does not flip): a bug."""


def _np(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


class _Float64View:
    """The model protocol of :mod:`lipdeq.robustness` on float64 tensors (for interval bounds)."""

    def __init__(self, op, input_map, input_bounds, C, c, D, activation, solver_config, eta):
        self._op, self.input_map, self.input_bounds = op, input_map, input_bounds
        self.C, self.c, self.D = C, c, D
        self.activation, self.solver_config, self._eta = activation, solver_config, eta

    def operator(self):
        return self._op

    def norm_weights(self):
        return self._eta

    def readout_matrices(self):
        return self.C, self.c, self.D


class ExactNetwork:
    r"""Float64 copy of a ReLU / leaky-ReLU implicit network: sparse (A, B), dense (C, D), b, c.

    ``from_model`` takes the effective weights the model's fixed point uses (dense: ``weights()``,
    so ``nemon`` uses its built A; conv: the kernel's convolution probed column by column into a
    sparse matrix — exact, each probe entry is one kernel tap). Raises
    :class:`VerificationUnsupported` for other activations, other models, too large operators,
    or when no weight vector η gives μ∞,η(A) < 1 (then no fixed-point guarantee exists).
    """

    def __init__(self, view, A, B, b, C, c, D, slope: float):
        self.view = view
        self.A, self.B = A.tocsr(), B.tocsr()
        self.b, self.C, self.c, self.D = b, C, c, D
        self.slope = float(slope)
        self.n, self.p = self.B.shape
        self.q = C.shape[0]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model) -> "ExactNetwork":
        act = getattr(getattr(model, "activation", None), "name", None)
        if act not in SLOPES:
            raise VerificationUnsupported(f"exact verification needs a piecewise-linear activation "
                                          f"{sorted(SLOPES)}, got {act!r}")
        if not isinstance(model, ImplicitModel):
            raise VerificationUnsupported(f"exact verification does not support "
                                          f"{type(model).__name__} models")
        if isinstance(model, ImplicitNetwork):  # dense: its stored effective matrices
            return cls._dense(model, SLOPES[act])
        return cls._probed(model, SLOPES[act])

    @classmethod
    def _dense(cls, model, slope):
        w = {k: v.detach().cpu().double() for k, v in model.weights().items()}
        A, B, b, C, c, D = (w["A"], w["B"], w["b"], w["C"], w["c"], w.get("D"))
        op = DenseOperator(A)
        Bp, Bm = sign_split(B)
        view = _Float64View(op, lambda u: u @ B.T + b,
                            lambda lo, hi: (lo @ Bp.T + hi @ Bm.T + b, hi @ Bp.T + lo @ Bm.T + b),
                            C, c, D, model.activation, _config(model), _eta(model, op))
        return cls(view, sp.csr_matrix(A.numpy()), sp.csr_matrix(B.numpy()), b.numpy(),
                   C.numpy(), c.numpy(), None if D is None else D.numpy(), slope)

    @classmethod
    def _probed(cls, model, slope):
        import copy
        m = copy.deepcopy(model).cpu().double().requires_grad_(False)
        op = m.operator()
        n, p = int(op.n), int(m.in_features)
        if n > MAX_STATES:
            raise VerificationUnsupported(f"the state has {n} entries; exact verification is "
                                          f"limited to {MAX_STATES}")
        C, c, D = (None if t is None else t.detach() for t in m.readout_matrices())
        with torch.no_grad():
            b = m.input_map(torch.zeros(1, p, dtype=torch.float64))[0]
            A = _probe(op.multiply, n, n)
            B = _probe(lambda e: m.input_map(e) - b, p, n)
        if A.nnz + B.nnz > MAX_NONZEROS:
            raise VerificationUnsupported(f"[A B] has {A.nnz + B.nnz} nonzeros; exact "
                                          f"verification is limited to {MAX_NONZEROS}")
        view = _Float64View(op, m.input_map, m.input_bounds, C, c, D, m.activation,
                            _config(m), _eta(m, op))
        return cls(view, A, B, _np(b), _np(C), _np(c), None if D is None else _np(D), slope)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def logits(self, u: np.ndarray) -> np.ndarray:
        """y(u) in float64 (N, q), fixed point to ``RECHECK_TOL`` (docs/math.md §4.5 stopping rule)."""
        ut = torch.as_tensor(np.atleast_2d(u), dtype=torch.float64)
        v = self.view
        x = implicit_fixed_point(v.operator(), v.input_map(ut), v.activation, v.solver_config,
                                 eta=v.norm_weights())
        y = x.flatten(1) @ v.C.T + v.c
        if v.D is not None:
            y = y + ut @ v.D.T
        return y.numpy()

    def fixed_point(self, u: np.ndarray) -> np.ndarray:
        """x*(u) in float64 (N, n) to ``RECHECK_TOL``."""
        ut = torch.as_tensor(np.atleast_2d(u), dtype=torch.float64)
        v = self.view
        with torch.no_grad():
            x = implicit_fixed_point(v.operator(), v.input_map(ut), v.activation,
                                     v.solver_config, eta=v.norm_weights())
        return x.flatten(1).numpy()

    def state_bounds(self, lower: np.ndarray, upper: np.ndarray):
        """Sound (x̲, x̄) (N, n) over the boxes: the interval embedding in float64 (widened by its
        a-posteriori solver error) plus ``STATE_PAD``·(1 + |x|) for rounding."""
        from .robustness import interval_bounds
        lo, hi = (torch.as_tensor(np.atleast_2d(t), dtype=torch.float64) for t in (lower, upper))
        with torch.no_grad():
            x_lo, x_hi = interval_bounds(self.view, lo, hi, sound=True)
        x_lo, x_hi = x_lo.flatten(1).numpy(), x_hi.flatten(1).numpy()
        if not (np.isfinite(x_lo).all() and np.isfinite(x_hi).all()):
            raise VerificationUnsupported("the interval embedding gives no finite bounds "
                                          "(no weights eta with mu_inf(A) < 1)")
        return (x_lo - STATE_PAD * (1 + np.abs(x_lo)), x_hi + STATE_PAD * (1 + np.abs(x_hi)))

    def pre_activation_bounds(self, x_lo, x_hi, u_lo, u_hi):
        r"""(l, h) with l ≤ Ax + Bu + b ≤ h for x ∈ [x̲, x̄], u ∈ [u̲, ū] (rows: (N, n)).

        Interval arithmetic l = A⁺x̲ + A⁻x̄ + B⁺u̲ + B⁻ū + b (h alike), widened outward by
        2(k + 2)·2⁻⁵³·(|A| max(|x̲|, |x̄|) + |B| max(|u̲|, |ū|) + |b|), k the largest row length:
        the standard bound on the rounding error of a float64 dot product of length k.
        """
        A, B = self.A, self.B
        Ap, Am = A.maximum(0), A.minimum(0)
        Bp, Bm = B.maximum(0), B.minimum(0)
        x_lo, x_hi, u_lo, u_hi = (np.atleast_2d(t) for t in (x_lo, x_hi, u_lo, u_hi))
        lo = (Ap @ x_lo.T + Am @ x_hi.T + Bp @ u_lo.T + Bm @ u_hi.T).T + self.b
        hi = (Ap @ x_hi.T + Am @ x_lo.T + Bp @ u_hi.T + Bm @ u_lo.T).T + self.b
        k = int(np.diff(A.indptr).max(initial=0) + np.diff(B.indptr).max(initial=0))
        xa = np.maximum(np.abs(x_lo), np.abs(x_hi))
        ua = np.maximum(np.abs(u_lo), np.abs(u_hi))
        scale = (abs(A) @ xa.T + abs(B) @ ua.T).T + np.abs(self.b)
        pad = 2 * (k + 2) * _U * scale + 1e-300
        return lo - pad, hi + pad

    def phi(self, z: np.ndarray) -> np.ndarray:
        return np.where(z > 0, z, self.slope * z)


def _config(model):
    return dataclasses.replace(model.solver_config, solver="average", tol=RECHECK_TOL,
                               max_iter=RECHECK_MAX_ITER, alpha=None, strict=True)


def _eta(model, op):
    """η with μ∞,η(A) < 1: the model's own weights, η = 1, else the optimal weights."""
    eta = model.norm_weights()
    cands = [None if eta is None else eta.detach().cpu().double(), None]
    for cand in cands:
        if bool(op.mu_inf(cand) < 1):
            return cand
    if isinstance(op, DenseCapable) and op.n <= 4096:
        from ..geometry import optimal_inf_weights
        opt = optimal_inf_weights(op.dense().detach().double())
        if bool(op.mu_inf(opt) < 1):
            return opt
    raise VerificationUnsupported("no weights eta with mu_inf,eta(A) < 1 were found: the fixed "
                                  "point is not guaranteed unique, exact verification refuses")


def _probe(fn, cols: int, rows: int, chunk: int = 256) -> sp.csr_matrix:
    """The sparse matrix M (rows, cols) of a linear map given in batch form (x ↦ x Mᵀ)."""
    parts = []
    for s in range(0, cols, chunk):
        k = min(chunk, cols - s)
        E = torch.zeros(k, cols, dtype=torch.float64)
        E[torch.arange(k), s + torch.arange(k)] = 1.0
        parts.append(sp.csr_matrix(fn(E).reshape(k, rows).numpy()))
    return sp.vstack(parts).T.tocsr()


@dataclasses.dataclass
class MarginOutcome:
    """One MILP max_{u ∈ U} y_j − y_k: ``bound`` ≥ the true maximum (from HiGHS's dual bound),
    ``value`` and ``u`` the best feasible point found (None if none), ``status`` from HiGHS."""
    bound: float
    value: float | None
    u: np.ndarray | None
    status: int
    message: str
    seconds: float


class MarginProblem:
    r"""The MILP of the module docstring for one input box; :meth:`maximize` per wrong class.

    Variables v = (u (p), x (n), z_U (m), δ (m)), U the m unstable units, z_U their
    pre-activations (one dense row z_i = A_i x + B_i u + b_i each, then only sparse big-M rows).
    ``x_lo, x_hi, z_lo, z_hi`` (n,) are the bounds for this box; the x bounds are tightened to
    [max(x̲, Φ(l)), min(x̄, Φ(h))]. Rows that the uniqueness argument makes redundant are left
    out: stable units carry no sign constraint on z (x = z, resp. x = s·z, is the fixed point of
    the network with Φ_i replaced by the identity, resp. s·id, still slope-restricted, so it has
    the unique solution x*(u), which satisfies the sign anyway); for ReLU the inactive units are
    x_i = 0 by their bounds, and x ≥ s·z is the bound x ≥ 0.
    """

    def __init__(self, net: ExactNetwork, lower, upper, x_lo, x_hi, z_lo, z_hi):
        self.net = net
        s = net.slope
        n, p = net.n, net.p
        self.lower, self.upper = np.asarray(lower, float), np.asarray(upper, float)
        xl = np.maximum(x_lo, net.phi(z_lo))
        xh = np.minimum(x_hi, net.phi(z_hi))
        if not (np.all(xl <= xh) and np.all(z_lo <= z_hi)):
            raise VerificationError("empty state bounds: the interval bounds are inconsistent")
        active, inactive = z_lo >= 0, z_hi <= 0
        U = np.flatnonzero(~(active | inactive))
        self.unstable = U
        m = U.size
        self.m, self.n_active, self.n_inactive = m, int(active.sum()), int(inactive.sum())
        nv = p + n + 2 * m
        W = sp.hstack([net.B, net.A], format="csr")           # w-rows: A_i x + B_i u
        # HiGHS silently ignores |entries| ≤ 1e-9: drop them here and widen those rows by
        # ρ_i = Σ_dropped |a_ij|·max|v_j| instead (a superset of the exact set, still sound)
        vmax = np.concatenate([np.maximum(abs(self.lower), abs(self.upper)),
                               np.maximum(abs(xl), abs(xh))])
        tiny = W.copy()
        tiny.data = np.where(np.abs(tiny.data) <= TINY, np.abs(tiny.data), 0.0)
        rho = tiny @ vmax
        rho = np.where(rho > 0, rho * (1 + 1e-12) + 1e-300, 0.0)
        W.data = np.where(np.abs(W.data) <= TINY, 0.0, W.data)
        W.eliminate_zeros()
        self.vmax = vmax  # max |v| of the u and x variables (the decision row's widening)
        pad = sp.csr_matrix((n, 2 * m))
        Zrow = sp.hstack([W, pad], format="csr")

        def unit(cols, coef, k):
            return sp.csr_matrix((np.broadcast_to(coef, (k,)).astype(float),
                                  (np.arange(k), cols)), shape=(k, nv))

        rows, lo_, hi_ = [], [], []

        def add(M, lo, hi):
            rows.append(M)
            lo_.append(np.broadcast_to(lo, (M.shape[0],)).astype(float))
            hi_.append(np.broadcast_to(hi, (M.shape[0],)).astype(float))

        b = net.b
        a = np.flatnonzero(active)
        if a.size:                                            # x_i − (A_i x + B_i u) = b_i
            add(unit(p + a, 1.0, a.size) - Zrow[a], b[a] - rho[a], b[a] + rho[a])
        ia = np.flatnonzero(inactive)
        if ia.size and s != 0:                                # x_i − s(A_i x + B_i u) = s b_i
            add(unit(p + ia, 1.0, ia.size) - s * Zrow[ia], s * (b[ia] - rho[ia]),
                s * (b[ia] + rho[ia]))
        if m:
            l, h = z_lo[U], z_hi[U]
            X, Zv, D = (unit(p + U, 1.0, m), unit(p + n + np.arange(m), 1.0, m),
                        unit(p + n + m + np.arange(m), 1.0, m))
            add(Zv - Zrow[U], b[U] - rho[U], b[U] + rho[U])   # z_i = A_i x + B_i u + b_i
            add(X - Zv, 0.0, np.inf)                          # x ≥ z
            if s != 0:
                add(X - s * Zv, 0.0, np.inf)                  # x ≥ s z
            # x − z − (1−s) l δ ≤ −(1−s) l          (x ≤ z − (1−s) l (1 − δ))
            add(X - Zv - sp.diags((1 - s) * l) @ D, -np.inf, -(1 - s) * l)
            # x − s z − (1−s) h δ ≤ 0               (x ≤ s z + (1−s) h δ)
            add(X - s * Zv - sp.diags((1 - s) * h) @ D, -np.inf, 0.0)
            z_l, z_h = l, h
        else:
            z_l = z_h = np.zeros(0)
        if rows:
            self.constraint = [LinearConstraint(sp.vstack(rows, format="csr"),
                                                np.concatenate(lo_), np.concatenate(hi_))]
        else:
            self.constraint = []
        self.var_bounds = Bounds(np.concatenate([self.lower, xl, z_l, np.zeros(m)]),
                                 np.concatenate([self.upper, xh, z_h, np.ones(m)]))
        self.integrality = np.concatenate([np.zeros(p + n + m), np.ones(m)])
        self.nv = nv

    def maximize(self, k: int, j: int, time_limit: float, *, relax: bool = False,
                 at_least: float | None = None, mip_rel_gap: float = 1e-4) -> MarginOutcome:
        """max y_j − y_k over the box by HiGHS; ``bound`` is +inf when HiGHS proves nothing.

        ``relax``: the LP relaxation (δ ∈ [0, 1]), whose optimum also bounds the MILP's.
        ``at_least``: the decision form — add the row y_j − y_k ≥ ``at_least`` and stop at the
        first feasible point. "Infeasible" then means HiGHS's branch and bound pruned every node
        (each node's LP, with the row, is infeasible, i.e. its LP bound on y_j − y_k is below
        ``at_least``): ``bound`` = ``at_least`` and ``status`` 2. Without it an infeasible answer
        is a contradiction (the box's fixed points are feasible) and raises.
        """
        net = self.net
        n, p = net.n, net.p
        obj = np.zeros(self.nv)
        obj[p:p + n] = -(net.C[j] - net.C[k])
        if net.D is not None:
            obj[:p] = -(net.D[j] - net.D[k])
        const = float(net.c[j] - net.c[k])
        constraints = list(self.constraint)
        if at_least is not None:                      # −obj·v + const ≥ at_least
            row = -obj  # entries HiGHS would ignore (≤ TINY) are dropped, the bound widened
            tiny = np.abs(row[:p + n]) <= TINY
            rho = float(np.abs(row[:p + n][tiny]) @ self.vmax[tiny])
            rho = rho * (1 + 1e-12) + 1e-300 if rho > 0 else 0.0
            row[:p + n][tiny] = 0.0
            constraints.append(LinearConstraint(sp.csr_matrix(row[None]),
                                                float(at_least) - const - rho, np.inf))
            mip_rel_gap = 1e9                         # any feasible point ends the search
        t0 = time.perf_counter()
        res = milp(obj, integrality=0 * self.integrality if relax else self.integrality,
                   bounds=self.var_bounds, constraints=constraints,
                   options={"time_limit": max(float(time_limit), 1e-6), "disp": False,
                            "mip_rel_gap": mip_rel_gap})
        secs = time.perf_counter() - t0
        if res.status == 2:
            if at_least is not None:
                return MarginOutcome(float(at_least), None, None, 2, str(res.message), secs)
            raise VerificationError(f"HiGHS reports the MILP infeasible ({res.message}); the "
                                    f"true fixed point of every input in the box is feasible, so "
                                    f"the bounds or the formulation are wrong")
        dual = getattr(res, "mip_dual_bound", None)
        if relax or self.m == 0:      # an LP: its optimal value is the bound
            bound = const - float(res.fun) if res.status == 0 else math.inf
        elif at_least is not None:    # stopped at the first point: its dual bound means little
            bound = math.inf
        else:
            bound = math.inf if dual is None or not np.isfinite(dual) else const - float(dual)
        value = None if res.x is None else const - float(res.fun)
        u = None if res.x is None else np.clip(res.x[:p], self.lower, self.upper)
        return MarginOutcome(bound, value, u, int(res.status), str(res.message), secs)
