r"""Float64 cores of the certificates of :mod:`lipdeq.robustness` (sound in float32, at any tol).

The certificates are claims about the exact fixed point of the stored weights. These functions
take the state computed by the model's own solver (any tolerance, any dtype) and turn it into
float64 bounds on the exact fixed point, with the a-posteriori solver error of docs/math.md §4.5 and the
rounding margins of :mod:`lipdeq.sound`. The model protocol and the candidate weights η are
described in :mod:`lipdeq.robustness`, whose public functions wrap these.
"""
from __future__ import annotations

import math

import torch

from . import sound as sd
from .checks import _check_label_range, _per_sample
from .embedded import EmbeddedOperator
from ..deq.implicit import implicit_fixed_point
from ..deq.protocols import DenseCapable, StateReadout

#: Largest state size for which the optimal weights of the dense A are computed (an eigenproblem).
MAX_DENSE_OPTIMAL = 2048


# ----------------------------------------------------------------------------- model protocol
def _readout(model):
    C, c, D = model.readout_matrices()
    return C, c, D


def _eta_candidates(model, op, state_shape, dtype, device, weights: str) -> list:
    """Candidate norm weights (None = η = 1), each shaped like one state."""
    cands: list = [None]
    if weights == "unit":
        return cands
    eta = model.norm_weights()
    if eta is not None:
        cands.append(eta.detach().to(device=device, dtype=dtype).reshape(state_shape))
    if weights == "best" and isinstance(op, DenseCapable):
        n = math.prod(state_shape)
        if n <= MAX_DENSE_OPTIMAL:
            from ..geometry import optimal_inf_weights
            A = op.dense().detach()
            if A.ndim == 2 and A.shape == (n, n) and bool(torch.isfinite(A).all()):
                opt = optimal_inf_weights(A.double()).to(device=device, dtype=dtype)
                cands.append(opt.reshape(state_shape))
    return cands


def _input_gain(model, eta) -> torch.Tensor:
    """‖[η]⁻¹B‖∞ = maxᵢ Σⱼ |Bᵢⱼ|/ηᵢ (the model's ``input_gain_inf``, ImplicitModel protocol)."""
    return torch.as_tensor(model.input_gain_inf(eta))


def _forward(model, u: torch.Tensor):
    """(x̂, y): the state and logits of the forward pass users get, y = model(u) (one solve when
    the model has ``fixed_point`` and ``readout``; else a protocol solve plus model(u))."""
    if isinstance(model, StateReadout):
        x = model.fixed_point(u)
        return x, model.readout(x, u)
    x = implicit_fixed_point(model.operator(), model.input_map(u), model.activation,
                             model.solver_config, eta=model.norm_weights())
    return x, model(u)


def _readout64(m64, dtype):
    C, c, D = (None if t is None else t.detach().to(dtype) for t in _readout(m64))
    return C, c, D


def _logits(x_flat, u, C, c, D):
    y = x_flat @ C.T + c
    if D is not None:
        y = y + u.flatten(1) @ D.T
    return y


@sd.ordinary_sums
def lipschitz64(model, u, labels, *, pairwise: bool, weights: str):
    """Sound float64 pieces of the Lipschitz certificate (module docstring, "Solver error").

    Returns (radius (N,), margin lower bounds (N, q) of y*_k − y*_j (+inf at j = k), the forward
    logits model(u), labels), all about the exact fixed point of the stored weights.
    """
    x_hat, y_fwd = _forward(model, u)
    q = y_fwd.shape[-1]
    labels = y_fwd.argmax(-1) if labels is None else labels
    _check_label_range(labels, q)
    m64 = sd.float64_model(model)
    op = m64.operator()
    dt = torch.float64 if isinstance(model, torch.nn.Module) else x_hat.dtype
    u64, x = u.detach().to(dt), x_hat.detach().to(dt)
    n, p = x[0].numel(), u[0].numel()
    ur = sd.unit_roundoff(dt)
    scale = sd.abs_product_bound(op, x.abs()) + sd.input_scale(m64, u64.abs())
    rb = sd.residual_bound(m64, op, x, m64.input_map(u64), scale, n + p)
    C, c, D = _readout64(m64, dt)
    xf = x.flatten(1)
    y = _logits(xf, u64, C, c, D)
    yabs = _logits(xf.abs(), u64.abs(), C.abs(), c.abs(), None if D is None else D.abs())
    idx = torch.arange(u.shape[0], device=u.device)
    margins = y[idx, labels].unsqueeze(-1) - y                       # (N, q): y_k − y_j
    rounding = sd.slack(n + p, dt) * (yabs[idx, labels].unsqueeze(-1) + yabs) \
        + 4 * ur * margins.abs() + sd.TINY
    m_lo = margins - rounding                                         # ≤ the margin at x̂
    other = torch.ones_like(margins, dtype=torch.bool)
    other[idx, labels] = False
    grow = lambda k: 1 + sd.slack(k, dt)                              # noqa: E731
    dd = None if D is None else (D.unsqueeze(1) - D.unsqueeze(0)).abs().sum(-1) * grow(p)
    diff = C.unsqueeze(1) - C.unsqueeze(0)                            # (q, q, n): c_k − c_j
    best = torch.full_like(margins, -math.inf)                        # max over η, per pair
    best_m = torch.full_like(margins, -math.inf)
    for eta in _eta_candidates(m64, op, x.shape[1:], dt, x.device, weights):
        mu = sd.mu_upper(op, eta, n, dt)
        if not bool(mu < 1):
            continue
        gain = _input_gain(m64, eta).to(dt) * grow(p) / (1.0 - mu) * (1 + 4 * ur)
        err = sd.error_bound(op, rb, eta, n).unsqueeze(-1)            # (N, 1)
        ef = None if eta is None else eta.flatten()
        a = (diff.abs() if ef is None else diff.abs() * ef).sum(-1) * grow(n)   # ‖(c_k−c_j)[η]‖₁
        a_k = a[labels]                                               # (N, q)
        m_eta = m_lo - a_k * err * (1 + 4 * ur)                       # ≤ y*_k − y*_j
        best_m = torch.maximum(best_m, sd.down(m_eta))
        if pairwise:
            L_k = (a * gain + (0 if dd is None else dd))[labels] * (1 + 4 * ur)
            num = sd.down(m_eta)
        else:
            Ce = C.abs() if ef is None else C.abs() * ef
            K = Ce.sum(-1).amax() * grow(n)
            Dm = 0 if D is None else D.abs().sum(-1).amax() * grow(p)
            L_k = (2 * (K * gain + Dm) * (1 + 4 * ur)).expand_as(margins)
            m = m_lo.masked_fill(~other, math.inf).amin(-1, keepdim=True)
            num = sd.down(m - 2 * K * err * (1 + 4 * ur)).expand_as(margins)
        rad = torch.where(L_k > 0, sd.down(num / L_k.clamp_min(sd.TINY)),
                          torch.where(num > 0, math.inf, -math.inf))
        best = torch.maximum(best, rad)
    radius = best.masked_fill(~other, math.inf).amin(-1).clamp_min(0.0)
    return radius, best_m.masked_fill(~other, math.inf), y_fwd, labels


@sd.ordinary_sums
def sound_states(model, X, lower64, upper64, weights: str):
    """Float64 (x̲, x̄) enclosing the exact embedded fixed point of the box [lower64, upper64]:
    the computed X widened by e_η·ηᵢ (residual and rounding of :mod:`lipdeq.sound`), the
    smallest over the candidate η, rounded outward; ∓inf where no candidate η has μ̄ < 1."""
    m64 = sd.float64_model(model)
    dt = torch.float64 if isinstance(model, torch.nn.Module) else X.dtype
    op = m64.operator()
    emb = EmbeddedOperator(op)
    Xd = X.detach().to(dt)
    lo64, hi64 = lower64.to(dt), upper64.to(dt)
    W = torch.cat(m64.input_bounds(lo64, hi64), dim=1)
    x_lo, x_hi = Xd.chunk(2, dim=1)
    n, p = x_lo[0].numel(), lower64[0].numel()
    half = sd.abs_product_bound(op, x_lo.abs() + x_hi.abs()) \
        + sd.input_scale(m64, torch.maximum(lo64.abs(), hi64.abs()))
    rb = sd.residual_bound(m64, emb, Xd, W, torch.cat([half, half], dim=1), 2 * n + p)
    pad = torch.full_like(x_lo, math.inf)
    for cand in _eta_candidates(m64, op, x_lo.shape[1:], dt, Xd.device, weights):
        c2 = None if cand is None else torch.cat([cand, cand], dim=0)
        e = _per_sample(sd.error_bound(emb, rb, c2, 2 * n), pad)
        pad = torch.minimum(pad, sd.up(e if cand is None else e * cand))
    return sd.down(x_lo - pad), sd.up(x_hi + pad)
