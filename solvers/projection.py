r"""Frobenius projections onto the row-wise polytopes {μ∞,η(A) ≤ γ} and {‖A‖∞,η ≤ γ}.

Both sets are intersections of one constraint per row, so the projection splits by row
(docs/math.md §7.1). Row i of V, with off-diagonal weights w_j = η_j/η_i, solves

    min_a ½‖a − v‖²   s.t.   s(a_i) + Σ_{j≠i} w_j |a_j| ≤ γ,

with s(a_i) = a_i (signed diagonal: the one-sided Lipschitz constant μ∞,η, docs/math.md §2.1) or
s(a_i) = |a_i| (the induced norm ‖·‖∞,η, docs/math.md §7.7). The KKT solution is a soft threshold

    a_j = sign(v_j)·max(|v_j| − λ w_j, 0)  (j ≠ i),   a_i = v_i − λ  (signed)  or soft-thresholded,

with λ = max(0, max_k λ_k) over the sorted breakpoints t_j = |v_j|/w_j (docs/math.md §7.2–7.3):

    signed:  λ_k = (v_i − γ + Σ_{l≤k} w_(l)|v_(l)|) / (1 + Σ_{l≤k} w_(l)²),   k = 0, …, n−1
    norm:    λ_k = (Σ_{l≤k} w_(l)|v_(l)| − γ) / Σ_{l≤k} w_(l)²,              k = 1, …, n

One sort per row, all rows of all batch entries at once; no Python loop and no host sync,
so it runs as is on CUDA. ``method="qp"`` and ``"lp"`` route through CVXPY (``solvers.cvx``).

Feasibility is guaranteed in float64 arithmetic on the *stored* result (docs/design.md §8), with
the weights η as given (their ratios ηⱼ/ηᵢ taken in float64, even for float32 A): rows of A that
are feasible in that sense are returned bit for bit; every other row, after the closed form (or
the CVXPY solve, whose tolerance is not exact), is re-measured in float64 and, if rounding or the
solver left it above γ, nudged inside by a few ulps (the diagonal, rounded downwards, for μ∞ —
with weights η the excess is first taken off the off-diagonal entries in proportion to their
weights, the least Euclidean change; a row scaling, rounded towards zero, for ‖·‖∞). Weighted
and half-precision rows are computed in float64 and rounded inward (the weights magnify a
float32 cancellation; half precision overflows in the row sums); a projection that does not fit
the dtype's range is refused with ``ValueError``. The projection is not differentiable: it runs
under ``torch.no_grad()``, so ``out=`` may be a leaf Parameter.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .arrays import check_scalar, ratio_matrix, to_tensor, weight_vector

METHODS = ("exact", "qp", "lp")


def row_measure(A: torch.Tensor, W: torch.Tensor | None = None, *, signed_diag: bool = True
                ) -> torch.Tensor:
    r"""Per-row value s(a_ii) + Σ_{j≠i} W_ij |a_ij| of a batch of square matrices, shape (..., n).

    ``signed_diag=True`` gives the rows of μ∞,η (diagonal signed), ``False`` those of ‖A‖∞,η.
    ``W[i, j] = η_j/η_i`` (None for η = 1). The max over the last axis is the measure.
    """
    absA = A.abs()
    if W is not None:
        absA = absA * W
    total = absA.sum(-1)
    if signed_diag:
        d = A.diagonal(dim1=-2, dim2=-1)
        total = total - d.abs() + d
    return total


def project_mu_inf(A: Any, gamma: float, *, weights: Any = None, method: str = "exact",
                   solver: str | None = None, out: Any = None, **solver_options: Any) -> Any:
    r"""Frobenius-nearest matrix with μ∞,η(X) = maxᵢ (xᵢᵢ + Σ_{j≠i} |xᵢⱼ| ηⱼ/ηᵢ) ≤ γ.

    Parameters
    ----------
    A : (..., n, n) numpy array or torch tensor (any device/dtype); batches are projected
        matrix by matrix. The result has A's type, device and shape, and A's dtype when A is
        floating point; integer and bool input is projected (and returned) as float — float64
        for numpy, torch's default dtype for torch. The projection is a step, not a
        differentiable function: the result never requires grad, even when A does (A's autograd
        graph is neither extended nor modified; it is computed under ``torch.no_grad``).
    gamma : any finite real (γ < 1 is what well-posedness needs; that guard lives on the model).
    weights : optional positive vector η of length n (docs/math.md §1.2); ``None`` means η = 1.
    method : ``"exact"`` (closed form, default), ``"qp"`` (CVXPY QP, same problem) or ``"lp"``
        (nearest point in entrywise ℓ1 distance — an LP whose solution need not be unique).
    solver : CVXPY solver name for ``qp``/``lp`` (default Clarabel / HiGHS; ``ValueError`` if not
        installed). Passing ``solver`` or solver options with ``method="exact"`` is a ValueError.
    out : optional array/tensor to write the result into (may be A itself): a torch tensor of
        A's shape, dtype and device for torch A, else a writeable numpy array of the result's
        shape and dtype. It is written only after every check and solve has succeeded.
    **solver_options : passed to ``cvxpy.Problem.solve``; they update the default tight
        tolerances (e.g. ``max_iters=…``).

    Raises ``ValueError``/``TypeError`` naming the bad argument (nothing is modified) and
    ``solvers.SolverError`` when a CVXPY solve is not optimal.
    """
    return _project(A, gamma, weights, method, solver, out, solver_options, signed_diag=True)


def project_norm_inf(A: Any, gamma: float, *, weights: Any = None, method: str = "exact",
                     solver: str | None = None, out: Any = None, **solver_options: Any) -> Any:
    r"""Frobenius-nearest matrix with ‖X‖∞,η = maxᵢ Σⱼ |xᵢⱼ| ηⱼ/ηᵢ ≤ γ (row-wise weighted ℓ1 balls).

    The older, smaller condition (docs/math.md §2.3 E1, §7.7): the diagonal is shrunk like every other
    entry. Same interface as :func:`project_mu_inf`; γ must be ≥ 0 (the set is empty otherwise).
    """
    return _project(A, gamma, weights, method, solver, out, solver_options, signed_diag=False)


@torch.no_grad()
def _project(A, gamma, weights, method, solver, out, solver_options, *, signed_diag):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    V, back = to_tensor(A, "A")
    g = check_scalar(gamma, "gamma")
    if not signed_diag and g < 0:
        raise ValueError(f"gamma must be >= 0 for the norm ball (the set is empty), got {g}")
    if signed_diag and g < -torch.finfo(V.dtype).max:  # the diagonal would have to be -inf
        raise ValueError(f"gamma={g} is below the range of {V.dtype}: no finite matrix of that "
                         f"dtype has mu_inf <= gamma")
    n = V.shape[-1]
    # η is kept in float64: feasibility is judged in float64 (docs/design.md §8), with the
    # weights the caller gave, not with their rounding to A's dtype.
    eta64 = weight_vector(weights, n, V, dtype=torch.float64)
    W64 = ratio_matrix(eta64, n, V)
    W = None if W64 is None else W64.to(V.dtype)
    if W is not None and not (bool(torch.isfinite(W).all()) and bool((W > 0).all())):
        raise ValueError(f"weights: the ratios eta_j/eta_i overflow or underflow in {V.dtype}")
    if method == "exact" and solver_options:
        raise ValueError(f"unexpected keyword argument(s) {', '.join(sorted(solver_options))} "
                        f"(method='exact' takes no solver options; they apply to 'qp' or 'lp')")
    if method == "exact" and solver is not None:
        raise ValueError("solver applies to method='qp' or 'lp', not 'exact'")
    if out is not None:
        _check_out(out, A, V)
    if method == "exact":
        X = project_exact_unchecked(V, g, W, W64, signed_diag)
    else:
        from .cvx import project_cvxpy  # CVXPY is imported only when asked for
        X = _finish(V, g, W64, signed_diag, lambda feasible: project_cvxpy(
            V, g, eta64, kind=method, signed_diag=signed_diag, solver=solver,
            options=solver_options, feasible=feasible))
    if out is None:
        return back(_check_representable(X, V))
    _check_representable(X, V)
    if isinstance(out, torch.Tensor):
        out.copy_(X)
    else:
        out[...] = X.detach().cpu().numpy()
    return out


def _check_representable(X: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """``ValueError`` when the projection of a finite matrix does not fit V's dtype (a diagonal
    pushed below its range, e.g. float16 rows summing past 65504): −inf is "feasible" but not
    the projection. One host read per public call (the per-step path, ``lipdeq.constrain``,
    uses :func:`project_exact_unchecked` and skips it)."""
    if not bool(torch.isfinite(X).all()):
        raise ValueError(f"the projection is not representable in {V.dtype}: an entry falls "
                         f"outside its range (project in a wider dtype)")
    return X


def project_exact_unchecked(V: torch.Tensor, gamma: float, W: torch.Tensor | None,
                            W64: torch.Tensor | None, signed_diag: bool = True) -> torch.Tensor:
    """The exact projection without argument checks (callers validate once; no host sync).

    ``W``/``W64``: the ratio matrix ηⱼ/ηᵢ in V's dtype and in float64 (None for η = 1).
    Used by :func:`project_mu_inf` and by ``lipdeq.constrain`` for its per-step projection.
    """
    if V.dtype != torch.float64 and (W is not None or V.dtype.itemsize < 4):
        # A weighted row keeps |vᵢⱼ| − λ·wᵢⱼ: below float64 that difference loses ~eps·|vᵢⱼ|,
        # which the weight multiplies in the measure (a 1e6 ratio in float32 moved the diagonal
        # by 0.04); half precision overflows in the row sums (100 entries of 1000: -inf). Solve
        # in float64, then round every entry toward the set.
        def rows(feasible):
            X64 = _project_exact(V.double(), gamma, W64, signed_diag, feasible)
            X = _round_toward_zero(X64, V.dtype)
            if signed_diag:
                X.diagonal(dim1=-2, dim2=-1).copy_(_round_down(X64.diagonal(dim1=-2, dim2=-1), V.dtype))
            return X
        return _finish(V, gamma, W64, signed_diag, rows)
    return _finish(V, gamma, W64, signed_diag,
                   lambda feasible: _project_exact(V, gamma, W, signed_diag, feasible))


def _finish(V, gamma, W64, signed_diag, project_rows):
    """Rows feasible in float64 are returned bit for bit (their projection is themselves);
    the others come from ``project_rows(feasible)`` and are made float64-feasible."""
    feasible = row_measure(V.double(), W64, signed_diag=signed_diag) <= gamma
    X = torch.where(feasible.unsqueeze(-1), V, project_rows(feasible))
    return _repair_rounding(X, gamma, W64, signed_diag, moved=~feasible)


def _check_out(out: Any, A: Any, V: torch.Tensor) -> None:
    if isinstance(A, torch.Tensor):
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor like A, got {type(out).__name__}")
    elif not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray (the type the result has), got {type(out).__name__}")
    if tuple(out.shape) != tuple(V.shape):
        raise ValueError(f"out must have shape {tuple(V.shape)}, got {tuple(out.shape)}")
    if isinstance(out, torch.Tensor):
        if out.dtype != V.dtype or out.device != V.device:
            raise ValueError(f"out must have dtype {V.dtype} on {V.device}, got {out.dtype} on {out.device}")
    else:
        want = torch.empty(0, dtype=V.dtype).numpy().dtype
        if out.dtype != want:
            raise ValueError(f"out must have dtype {want} (a cast could break feasibility), got {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")


@torch.no_grad()
def _sorted_descending(t: torch.Tensor) -> torch.Tensor:
    """Values of each row sorted in decreasing order. On CPU numpy's values-only sort is used
    (torch.sort also materializes an int64 index tensor: about 3x slower at n = 1024)."""
    if t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(-np.sort(-t.numpy(), axis=-1))
    return torch.sort(t, dim=-1, descending=True).values


def _project_exact(V: torch.Tensor, gamma: float, W: torch.Tensor | None, signed_diag: bool,
                   feasible: torch.Tensor | None = None) -> torch.Tensor:
    n = V.shape[-1]
    absV = V.abs()
    diag = V.diagonal(dim1=-2, dim2=-1)
    eye = torch.eye(n, dtype=torch.bool, device=V.device)
    # Breakpoint values; the (signed) diagonal takes no part in the sort: giving it value 0
    # only adds candidates λ_k that are never larger than the true λ (docs/math.md §7.2).
    terms = absV.masked_fill(eye, 0.0) if signed_diag else absV
    if W is None:
        wv = _sorted_descending(terms)
        c1 = wv.cumsum(-1)
        c2 = torch.arange(1, n + 1, device=V.device, dtype=V.dtype)
    else:
        Wb = W.expand_as(V)
        order = torch.argsort(terms / Wb, dim=-1, descending=True)
        c1 = torch.gather(terms * Wb, -1, order).cumsum(-1)
        c2 = torch.gather(Wb * Wb, -1, order).cumsum(-1)
    if signed_diag:
        base = diag - gamma
        lam = torch.maximum(base, ((base.unsqueeze(-1) + c1) / (1.0 + c2)).amax(-1))
    else:
        lam = ((c1 - gamma) / c2).amax(-1)
    lam = lam.clamp_min(0.0)
    if feasible is not None:
        lam = lam.masked_fill(feasible, 0.0)
    step = lam.unsqueeze(-1) if W is None else lam.unsqueeze(-1) * W
    X = V.sign() * (absV - step).clamp_min(0.0)
    if signed_diag:
        X.diagonal(dim1=-2, dim2=-1).copy_(diag - lam)
    if feasible is not None:  # the caller repairs (with float64 weights)
        return X
    return _repair_rounding(X, gamma, W, signed_diag, moved=lam > 0)


def _repair_rounding(X: torch.Tensor, gamma: float, W: torch.Tensor | None, signed_diag: bool,
                     moved: torch.Tensor) -> torch.Tensor:
    """Make every projected row feasible when measured in float64 (docs/design.md §8)."""
    X64 = X.double()
    W64 = None if W is None else W.double()
    rows = row_measure(X64, W64, signed_diag=signed_diag)
    scale = X64.abs().sum(-1) if W64 is None else (X64.abs() * W64).sum(-1)
    slack = 8 * torch.finfo(torch.float64).eps * (scale + abs(gamma))
    excess = rows - gamma
    fix = (excess > 0) | (moved & (excess > -slack))
    if signed_diag and W64 is not None:  # no-op on rows that need no fix (no host sync)
        X, rows = _spread_excess(X, X64, W64, (excess + slack).clamp_min(0.0) * fix, fix)
        X64 = X.double()
        slack = 8 * torch.finfo(torch.float64).eps * ((X64.abs() * W64).sum(-1) + abs(gamma))
        excess = rows - gamma
    if signed_diag:
        d64 = X64.diagonal(dim1=-2, dim2=-1)
        target = d64 - (excess + slack).clamp_min(0.0)
        d_new = _round_down(target, X.dtype)
        X.diagonal(dim1=-2, dim2=-1).copy_(torch.where(fix, d_new, X.diagonal(dim1=-2, dim2=-1)))
    else:
        factor = ((gamma - slack) / rows.clamp_min(torch.finfo(torch.float64).tiny)).clamp(0.0, 1.0)
        shrunk = _round_toward_zero(X64 * factor.unsqueeze(-1), X.dtype)
        X = torch.where(fix.unsqueeze(-1), shrunk, X)
    return X


def _spread_excess(X, X64, W64, need, fix):
    """Weighted rows: take a rounding excess ``need`` off each fixed row with the least
    Euclidean change, |xᵢⱼ| reduced by need·wᵢⱼ/(1 + Σₖ wᵢₖ²) (capped at |xᵢⱼ|), rounded toward
    zero; the diagonal takes the rest in the caller. With large weight ratios this is a change
    of need/wᵢⱼ in one entry instead of need on the diagonal. Returns (X, row measures)."""
    n = X64.shape[-1]
    off = ~torch.eye(n, dtype=torch.bool, device=X64.device)
    w = (W64.expand_as(X64) * off) * (X64 != 0)
    delta = need.unsqueeze(-1) * w / (1.0 + (w * w).sum(-1, keepdim=True))
    delta = torch.where(torch.isfinite(delta), delta, 0.0)  # ratios past 1e154: w² overflows
    # an entry reduced to within rounding of zero becomes zero (its remainder, times a huge
    # weight, would be a new excess)
    left = torch.where(delta >= X64.abs() * (1 - 8 * torch.finfo(torch.float64).eps), 0.0,
                       X64.abs() - delta)
    shrunk = _round_toward_zero(X64.sign() * left, X.dtype)
    X = torch.where(off & fix.unsqueeze(-1), shrunk, X)
    return X, row_measure(X.double(), W64, signed_diag=True)


def _round_down(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = x64.to(dtype)
    return torch.where(y.double() > x64, torch.nextafter(y, torch.full_like(y, -float("inf"))), y)


def _round_toward_zero(x64: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    y = x64.to(dtype)
    return torch.where(y.double().abs() > x64.abs(), torch.nextafter(y, torch.zeros_like(y)), y)
