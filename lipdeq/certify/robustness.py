r"""Certified ℓ∞ robustness of implicit networks (SPEC §6.3, §12); the attacks re-exported.

Everything here is about ℓ∞ input perturbations of inputs in pixel units: an input ``u`` lies in
[0, 1] (CONVENTIONS §1) and the threat model at radius ε is the box
{u' : ‖u' − u‖∞ ≤ ε, 0 ≤ u' ≤ 1}. ``eps`` is a number or a tensor of shape (N,) (one radius per
sample); it must be finite and ≥ 0.

Attacks: :func:`fgsm`, :func:`pgd`, :func:`attack_accuracy` and ``ATTACKS`` are defined in
:mod:`lipdeq.attacks` and re-exported here (``lipdeq.robustness.{fgsm, pgd}``, CONVENTIONS §5).
The input checks both modules use are in :mod:`lipdeq._checks`.

Certificates. They use only this *model protocol* (so a convolutional model can implement it):

* ``operator()`` → an operator with ``multiply``, ``multiply_transpose``, ``mu_inf(eta)``,
  ``min_diagonal()``, ``requires_grad``, ``metzler_split()`` (→ ⌈A⌉, ⌊A⌋ as operators) and,
  optionally, ``dense()`` (→ the (n, n) matrix);
* ``input_map(u)`` → w = Bu + b and ``input_bounds(lower, upper)`` → (w̲, w̄) = (B⁺u̲ + B⁻ū + b,
  B⁺ū + B⁻u̲ + b), both shaped like the state x (batch first);
* ``readout_matrices()`` → (C, c, D or None) with y = x_flat Cᵀ + c (+ u_flat Dᵀ);
* ``activation`` (monotone, slopes in [0, 1]; ``.fn`` and ``.derivative``), ``solver_config``,
  ``norm_weights()`` → η (shaped like one state) or None;
* for the Lipschitz certificate, the input gain ‖[η]⁻¹B‖∞ = maxᵢ Σⱼ |Bᵢⱼ|/ηᵢ: the method
  ``input_gain_inf(eta)`` when the model has it (a convolutional model must provide it),
  else computed from the dense ``model.B`` (n, p).

Weights η. Every bound below holds for any η > 0 with μ∞,η(A) < 1, so the certificates take the
*best* of several candidates: η = 1, the model's certified ``norm_weights()``, and (when
``operator().dense()`` exists and n ≤ ``MAX_DENSE_OPTIMAL``) the optimal weights
:func:`lipdeq.geometry.optimal_inf_weights` of the dense A, which attain α(M(A)) = inf_η μ∞,η(A).
Candidates with μ∞,η(A) ≥ 1 certify nothing. ``weights="unit"`` / ``"model"`` restrict the set.

Solver error. The fixed points are computed to the model's tolerance, not exactly. The
certificates are made sound with the a-posteriori bound of SPEC §4.5: for the computed x and the
residual r = Φ(Ax + w) − x, ‖x − x*‖∞,η ≤ ‖r‖∞,η / (1 − μ⁺_η) =: e_η, so each state entry is
off by at most e_η·ηᵢ. Margins are lowered, and interval bounds widened, by these amounts
(the smallest over the candidate η), so a certificate speaks about the exact network.

Lipschitz certificate (SPEC §6.3, pairwise). With logits y, label k, rows c_k of C, d_k of D:

    L_kj(η) = ‖(c_k − c_j)ᵀ[η]‖₁ · ‖[η]⁻¹B‖∞ / (1 − μ∞,η(A)) + ‖d_k − d_j‖₁,
    radius = min_{j≠k} max_η (y_k − y_j − ‖(c_k − c_j)ᵀ[η]‖₁·e_η) / L_kj(η),

(norms: input ℓ∞, state ‖·‖∞,η, so a logit difference r·x is ‖rᵀ[η]‖₁-Lipschitz in the state).
A sample is certified at ε when its radius (w.r.t. its label) is > ε, i.e. y_k − y_j > ε·L_kj
(after the solver-error correction) for every j ≠ k. The global radius m/(2L), L of SPEC §6.1,
is never larger (``pairwise=False`` gives it).

Interval certificate (SPEC §12). For the box [u̲, ū] = [max(u − ε, 0), min(u + ε, 1)], the
embedded network with 2n states

    x̲ = Φ(⌈A⌉x̲ + ⌊A⌋x̄ + w̲),   x̄ = Φ(⌈A⌉x̄ + ⌊A⌋x̲ + w̄)

has matrix [[⌈A⌉, ⌊A⌋], [⌊A⌋, ⌈A⌉]], whose weighted rows (η stacked twice) are those of μ∞,η(A):
it is contracting under the model's own condition and is solved by the same registered solver
with the same α*, and x̲* ≤ x*(u') ≤ x̄* for every u' in the box (mixed monotonicity). Its
gradient comes from the implicit backward of SPEC §5 on the 2n-state system
(:class:`EmbeddedOperator`, defined in :mod:`lipdeq.embedded` and re-exported here, +
:func:`lipdeq.implicit.implicit_fixed_point`). Logit differences are bounded row-wise:
r·x ≤ r⁺x̄ + r⁻x̲ (SPEC §12.3). Interval training uses κ·CE(y, k) + (1 − κ)·CE(z, k) with z_j
the upper bound of y_j − y_k, z_k = 0 (SPEC §12.4).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .checks import (_box, _check_eps, _check_inputs, _check_label_range, _check_labels,
                      _per_sample)
from .attacks import ATTACKS, attack_accuracy, fgsm, pgd
from .embedded import EmbeddedOperator
from ..deq.implicit import implicit_fixed_point

__all__ = ["fgsm", "pgd", "attack_accuracy", "certified_lipschitz", "certified_radius_lipschitz",
           "interval_bounds", "output_bounds", "worst_case_logits", "certified_interval",
           "interval_loss", "EmbeddedOperator", "ATTACKS", "MAX_DENSE_OPTIMAL"]

WEIGHTS = ("best", "unit", "model")
#: Largest state size for which the optimal weights of the dense A are computed (an eigenproblem).
MAX_DENSE_OPTIMAL = 2048


def _check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return weights


# ----------------------------------------------------------------------------- model protocol
def _readout(model):
    C, c, D = model.readout_matrices()
    return C, c, D


def _eta_candidates(model, op, state_shape, dtype, device, weights: str) -> list:
    """Candidate norm weights (None = η = 1), each shaped like one state."""
    cands: list = [None]
    if weights == "unit":
        return cands
    eta = model.norm_weights() if hasattr(model, "norm_weights") else None
    if eta is not None:
        cands.append(eta.detach().to(device=device, dtype=dtype).reshape(state_shape))
    if weights == "best" and hasattr(op, "dense"):
        n = math.prod(state_shape)
        if n <= MAX_DENSE_OPTIMAL:
            from ..geometry import optimal_inf_weights
            A = op.dense().detach()
            if A.ndim == 2 and A.shape == (n, n) and bool(torch.isfinite(A).all()):
                opt = optimal_inf_weights(A.double()).to(device=device, dtype=dtype)
                cands.append(opt.reshape(state_shape))
    return cands


def _input_gain(model, eta) -> torch.Tensor:
    """‖[η]⁻¹B‖∞ = maxᵢ Σⱼ |Bᵢⱼ|/ηᵢ (model.input_gain_inf(eta) when the model has it)."""
    if hasattr(model, "input_gain_inf"):
        return torch.as_tensor(model.input_gain_inf(eta))
    B = model.B.detach()
    rows = B.abs().sum(-1)
    if eta is not None:
        rows = rows / eta.flatten()
    return rows.amax()


def _state_and_residual(model, u: torch.Tensor):
    """(x, r) with x the computed fixed point and r = Φ(Ax + w) − x, both (N, …) (no grad)."""
    op = model.operator()
    w = model.input_map(u)
    x = implicit_fixed_point(op, w, model.activation, model.solver_config,
                             eta=model.norm_weights())
    r = model.activation.fn(op.multiply(x) + w) - x
    return op, x, r


def _error_bound(op, r: torch.Tensor, eta) -> torch.Tensor:
    """Per-sample e_η ≥ ‖x − x*‖∞,η (SPEC §4.5): ‖r‖∞,η / (1 − μ⁺_η); +inf when μ⁺_η ≥ 1."""
    mu_plus = op.mu_inf(eta).to(r.dtype).clamp_min(0.0)
    norm = (r.abs() if eta is None else r.abs() / eta).flatten(1).amax(1)
    out = norm / (1.0 - mu_plus).clamp_min(1e-300)
    return torch.where(mu_plus < 1, out, torch.full_like(out, math.inf))


def _logits(x_flat, u, C, c, D):
    y = x_flat @ C.T + c
    if D is not None:
        y = y + u.flatten(1) @ D.T
    return y


# ----------------------------------------------------------------------------- Lipschitz
@torch.no_grad()
def certified_radius_lipschitz(model, u: torch.Tensor, labels: torch.Tensor | None = None, *,
                               pairwise: bool = True, weights: str = "best") -> torch.Tensor:
    r"""Certified ℓ∞ radius per sample from the Lipschitz bounds of SPEC §6.1/§6.3, shape (N,).

    With k = ``labels`` (default: the predicted class), logits y of the exact network (bounded via
    the computed ones and the a-posteriori solver error e_η, see the module docstring):

    * ``pairwise=True``:  min_{j≠k} max_η (y_k − y_j − ‖(c_k − c_j)ᵀ[η]‖₁·e_η) / L_kj(η),
      L_kj(η) = ‖(c_k − c_j)ᵀ[η]‖₁·‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) + ‖d_k − d_j‖₁;
    * ``pairwise=False``: max_η (m − 2‖C[η]‖∞·e_η) / (2 L_η), m = y_k − max_{j≠k} y_j and
      L_η = ‖C[η]‖∞‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) + ‖D‖∞ (never larger than the pairwise radius).

    The radius is 0 where the (certified) margin is not positive, e.g. for misclassified samples.
    η ranges over the candidates of ``weights`` ∈ {best, unit, model} (module docstring).
    """
    u = _check_inputs(u)
    weights = _check_weights(weights)
    op, x, r = _state_and_residual(model, u)
    C, c, D = (t.detach() if t is not None else None for t in _readout(model))
    xf = x.flatten(1)
    y = _logits(xf, u, C, c, D)
    q = y.shape[-1]
    if labels is None:
        labels = y.argmax(-1)
    else:
        labels = _check_labels(labels, u.shape[0])
    _check_label_range(labels, q)
    idx = torch.arange(u.shape[0], device=u.device)
    margins = y[idx, labels].unsqueeze(-1) - y                       # (N, q): y_k − y_j
    other = torch.ones_like(margins, dtype=torch.bool)
    other[idx, labels] = False
    dd = None if D is None else (D.unsqueeze(1) - D.unsqueeze(0)).abs().sum(-1)   # (q, q)
    diff = C.unsqueeze(1) - C.unsqueeze(0)                            # (q, q, n): c_k − c_j
    best = torch.full_like(margins, -math.inf)                        # max over η, per pair
    for eta in _eta_candidates(model, op, x.shape[1:], x.dtype, x.device, weights):
        mu = op.mu_inf(eta).to(x.dtype)
        if not bool(mu < 1):
            continue
        gain = _input_gain(model, eta).to(x.dtype) / (1.0 - mu)
        err = _error_bound(op, r, eta)                                # (N,)
        ef = None if eta is None else eta.flatten()
        if pairwise:
            a = diff.abs() if ef is None else diff.abs() * ef
            a = a.sum(-1)                                             # (q, q): ‖(c_k−c_j)[η]‖₁
            L = a * gain + (0 if dd is None else dd)
            a_k, L_k = a[labels], L[labels]                           # (N, q)
            num = margins - a_k * err.unsqueeze(-1)
        else:
            Ce = C.abs() if ef is None else C.abs() * ef
            K = Ce.sum(-1).amax()
            L_k = 2 * (K * gain + (0 if D is None else D.abs().sum(-1).amax()))
            m = margins.masked_fill(~other, math.inf).amin(-1, keepdim=True)
            num = (m - 2 * K * err.unsqueeze(-1)).expand_as(margins)
            L_k = L_k.expand_as(margins)
        rad = torch.where(L_k > 0, num / L_k.clamp_min(1e-300),
                          torch.where(num > 0, math.inf, -math.inf))
        best = torch.maximum(best, rad)
    radius = best.masked_fill(~other, math.inf).amin(-1)
    return radius.clamp_min(0.0)


@torch.no_grad()
def certified_lipschitz(model, u: torch.Tensor, labels: torch.Tensor, eps, *,
                        weights: str = "best") -> torch.Tensor:
    r"""Boolean (N,): the label is predicted and certified at ε by the pairwise Lipschitz bound.

    Certified ⇔ for all j ≠ k: y_k − y_j > ε·L_kj (SPEC §6.3, with the solver-error correction of
    the module docstring) ⇔ ε < :func:`certified_radius_lipschitz`. A positive radius implies
    that the prediction equals the label. ``eps`` is a number or an (N,) tensor.
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    radius = certified_radius_lipschitz(model, u, labels, weights=weights)
    return radius > e


# ----------------------------------------------------------------------------- intervals
def _check_box(lower, upper):
    lower = _check_inputs(lower, "lower", unit_box=False)
    upper = _check_inputs(upper, "upper", unit_box=False)
    if lower.shape != upper.shape:
        raise ValueError(f"lower and upper must have the same shape, got {tuple(lower.shape)} "
                         f"and {tuple(upper.shape)}")
    if bool((lower > upper).any()):
        raise ValueError("upper must be >= lower elementwise")
    return lower, upper


def _interval_bounds(model, lower, upper, sound: bool, weights: str = "best"):
    op = model.operator()
    emb = EmbeddedOperator(op)
    w_lo, w_hi = model.input_bounds(lower, upper)
    W = torch.cat([w_lo, w_hi], dim=1)
    eta = model.norm_weights()
    eta2 = None if eta is None else torch.cat([eta, eta], dim=0)
    X = implicit_fixed_point(emb, W, model.activation, model.solver_config, eta=eta2)
    x_lo, x_hi = X.chunk(2, dim=1)
    if sound:
        with torch.no_grad():
            Xd, Wd = X.detach(), W.detach()
            r = model.activation.fn(emb.multiply(Xd) + Wd) - Xd
            pad = torch.full_like(Xd[:, : Xd.shape[1] // 2], math.inf)
            for cand in _eta_candidates(model, op, x_lo.shape[1:], X.dtype, X.device, weights):
                c2 = None if cand is None else torch.cat([cand, cand], dim=0)
                e = _per_sample(_error_bound(emb, r, c2), pad)
                pad = torch.minimum(pad, e if cand is None else e * cand)
        x_lo, x_hi = x_lo - pad, x_hi + pad
    return x_lo, x_hi


def interval_bounds(model, lower: torch.Tensor, upper: torch.Tensor, *, sound: bool = True):
    r"""(x̲, x̄) with x̲ ≤ x*(u) ≤ x̄ for every u in the box [lower, upper] (SPEC §12.2).

    Solves the embedded network x̲ = Φ(⌈A⌉x̲ + ⌊A⌋x̄ + w̲), x̄ = Φ(⌈A⌉x̄ + ⌊A⌋x̲ + w̄),
    (w̲, w̄) = ``model.input_bounds(lower, upper)``, with the model's solver (η stacked twice) and
    differentiates it by the implicit backward of SPEC §5 on the 2n-state system. With ``sound``
    the bounds are widened by the a-posteriori solver error (SPEC §4.5; e_η·ηᵢ per entry, the
    smallest over the candidate weights, a detached constant), so they enclose the *exact*
    embedded fixed point (±inf where no candidate η has μ∞,η(A) < 1); with ``sound=False`` they
    are the computed embedded fixed point.
    The box is exact at lower = upper (up to the solver tolerance). Inputs need not be in [0, 1].
    """
    lower, upper = _check_box(lower, upper)
    return _interval_bounds(model, lower, upper, sound)


def output_bounds(model, lower: torch.Tensor, upper: torch.Tensor, *, sound: bool = True):
    r"""(y̲, ȳ) elementwise logit bounds over the box: y̲ = C⁺x̲ + C⁻x̄ + c + D⁺u̲ + D⁻ū and
    ȳ = C⁺x̄ + C⁻x̲ + c + D⁺ū + D⁻u̲ (SPEC §12.3 with r the rows of C, D)."""
    lower, upper = _check_box(lower, upper)
    x_lo, x_hi = _interval_bounds(model, lower, upper, sound)
    C, c, D = _readout(model)
    Cp, Cm = C.clamp_min(0.0), C.clamp_max(0.0)
    lo = x_lo.flatten(1) @ Cp.T + x_hi.flatten(1) @ Cm.T + c
    hi = x_hi.flatten(1) @ Cp.T + x_lo.flatten(1) @ Cm.T + c
    if D is not None:
        Dp, Dm = D.clamp_min(0.0), D.clamp_max(0.0)
        lo = lo + lower.flatten(1) @ Dp.T + upper.flatten(1) @ Dm.T
        hi = hi + upper.flatten(1) @ Dp.T + lower.flatten(1) @ Dm.T
    # infinite state bounds (no η certifies the contraction) give 0·inf = nan: report ∓inf
    return lo.nan_to_num(nan=-math.inf), hi.nan_to_num(nan=math.inf)


def _worst_case(model, lower, upper, labels, sound):
    x_lo, x_hi = _interval_bounds(model, lower, upper, sound)
    C, c, D = _readout(model)
    q = C.shape[0]
    _check_label_range(labels, q)
    N = labels.shape[0]
    idx = torch.arange(N, device=labels.device)

    def upper_bound(R, lo_, hi_):
        # R (q, q, m) with R[k, j] = row_j − row_k; returns (N, q): R⁺·hi + R⁻·lo at k = label.
        m = R.shape[-1]
        out = hi_.flatten(1) @ R.clamp_min(0.0).reshape(q * q, m).T \
            + lo_.flatten(1) @ R.clamp_max(0.0).reshape(q * q, m).T
        return out.view(N, q, q)[idx, labels]

    z = upper_bound(C.unsqueeze(0) - C.unsqueeze(1), x_lo, x_hi)
    z = z + (c.unsqueeze(0) - c.unsqueeze(1))[labels]
    if D is not None:
        z = z + upper_bound(D.unsqueeze(0) - D.unsqueeze(1), lower, upper)
    return z.masked_fill(torch.nn.functional.one_hot(labels, q).bool(), 0.0)


def worst_case_logits(model, lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor, *,
                      sound: bool = True) -> torch.Tensor:
    r"""z (N, q): z_j = upper bound of y_j − y_k over the box (k = label), z_k = 0 (SPEC §12.4).

    With r = c_j − c_k and s = d_j − d_k: z_j = r⁺x̄ + r⁻x̲ + s⁺ū + s⁻u̲ + (c_j − c_k)
    (SPEC §12.3). The label is certified on the box iff z_j < 0 for all j ≠ k. Differentiable.
    """
    lower, upper = _check_box(lower, upper)
    labels = _check_labels(labels, lower.shape[0])
    return _worst_case(model, lower, upper, labels, sound)


@torch.no_grad()
def certified_interval(model, u: torch.Tensor, labels: torch.Tensor, eps) -> torch.Tensor:
    r"""Boolean (N,): certified by interval bounds on the box [max(u − ε, 0), min(u + ε, 1)].

    Certified ⇔ r⁺x̲ + r⁻x̄ + s⁺u̲ + s⁻ū + (c_k − c_j) > 0 for all j ≠ k, r = c_k − c_j,
    s = d_k − d_j (SPEC §12.3), with the sound (solver-error widened) bounds. Certification
    implies that the label is predicted everywhere in the box (u included).
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    lower, upper = _box(u, e)
    z = _worst_case(model, lower, upper, labels, sound=True)
    other = ~torch.nn.functional.one_hot(labels, z.shape[-1]).bool()
    return (z.masked_fill(~other, -math.inf) < 0).all(-1)


def interval_loss(model, u: torch.Tensor, labels: torch.Tensor, eps, kappa: float = 0.5, *,
                  reduction: str = "mean", logits: torch.Tensor | None = None) -> torch.Tensor:
    r"""Interval training loss κ·CE(y, k) + (1 − κ)·CE(z, k) (SPEC §12.4), differentiable.

    y = model(u) are the clean logits, z the worst-case logit differences of
    :func:`worst_case_logits` on the box [max(u − ε, 0), min(u + ε, 1)] (not widened: the
    gradient is that of the embedded fixed point). κ ∈ [0, 1]; at ε = 0, CE(z, k) = CE(y, k).
    ``reduction`` ∈ {mean, sum, none}. Uses the model as it is (train or eval mode).
    ``logits``: the clean logits model(u) when the caller already has them (saves one forward
    solve; they must be those of ``u``, with their graph for training).
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    try:
        k = float(kappa)
    except (TypeError, ValueError):
        raise ValueError(f"kappa must be a number in [0, 1], got {kappa!r}") from None
    if not (0.0 <= k <= 1.0):
        raise ValueError(f"kappa must be in [0, 1], got {kappa!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    lower, upper = _box(u, e)
    z = _worst_case(model, lower, upper, labels, sound=False)
    loss = (1.0 - k) * F.cross_entropy(z, labels, reduction=reduction)
    if k > 0:
        y = model(u) if logits is None else logits
        if y.shape != z.shape:
            raise ValueError(f"logits must have shape {tuple(z.shape)}, got {tuple(y.shape)}")
        loss = loss + k * F.cross_entropy(y, labels, reduction=reduction)
    return loss