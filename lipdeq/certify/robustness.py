r"""Certified ℓ∞ robustness of implicit networks (docs/math.md §6.3, §12); the attacks re-exported.

Everything here is about ℓ∞ input perturbations of inputs in pixel units: an input ``u`` lies in
[0, 1] (docs/design.md §8) and the threat model at radius ε is the box
{u' : ‖u' − u‖∞ ≤ ε, 0 ≤ u' ≤ 1}. ``eps`` is a number or a tensor of shape (N,) (one radius per
sample); it must be finite and ≥ 0.

Attacks: :func:`fgsm`, :func:`pgd`, :func:`attack_accuracy` and ``ATTACKS`` are defined in
:mod:`lipdeq.attacks` and re-exported here (``lipdeq.robustness.{fgsm, pgd}``, docs/design.md §8).
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
certificates are made sound with the a-posteriori bound of docs/math.md §4.5: for the computed x and the
residual r = Φ(Ax + w) − x, ‖x − x*‖∞,η ≤ ‖r‖∞,η / (1 − μ⁺_η) =: e_η, so each state entry is
off by at most e_η·ηᵢ. Margins are lowered, and interval bounds widened, by these amounts
(the smallest over the candidate η), so a certificate speaks about the exact network.
Float32 and rounding (:mod:`lipdeq.sound`, cores in :mod:`lipdeq.certified64`): r, μ∞,η(A),
margins and bounds are evaluated in float64 on the stored weights (a float64 copy of the model;
float32 weights convert exactly), with a rounding margin on every residual entry — also where r
rounds to 0 — and outward rounding, so the claims hold for float32 models at any tolerance.

Certificates and the forward pass. The claims are about the exact fixed point x* of the stored
weights. The forward pass model(u), which clean and attacked accuracy use, returns a state within
the solver tolerance of x* (docs/math.md §4.5). :func:`certified_lipschitz` and
:func:`certified_interval` count a sample as certified only when, in addition, model(u) predicts
its label; so certified accuracy ≤ clean accuracy always. An attack point u' can still be
misclassified by the *inexact* forward pass of a certified sample when the exact margin at u' is
smaller than the forward pass's own error (a tolerance effect, not a wrong certificate).

Lipschitz certificate (docs/math.md §6.3, pairwise). With logits y, label k, rows c_k of C, d_k of D:

    L_kj(η) = ‖(c_k − c_j)ᵀ[η]‖₁ · ‖[η]⁻¹B‖∞ / (1 − μ∞,η(A)) + ‖d_k − d_j‖₁,
    radius = min_{j≠k} max_η (y_k − y_j − ‖(c_k − c_j)ᵀ[η]‖₁·e_η) / L_kj(η),

(norms: input ℓ∞, state ‖·‖∞,η, so a logit difference r·x is ‖rᵀ[η]‖₁-Lipschitz in the state).
A sample is certified at ε when its radius (w.r.t. its label) is > ε, i.e. y_k − y_j > ε·L_kj
(after the solver-error correction) for every j ≠ k. The global radius m/(2L), L of docs/math.md §6.1,
is never larger (``pairwise=False`` gives it).

Interval certificate (docs/math.md §12). For the box [u̲, ū] = [max(u − ε, 0), min(u + ε, 1)], the
embedded network with 2n states

    x̲ = Φ(⌈A⌉x̲ + ⌊A⌋x̄ + w̲),   x̄ = Φ(⌈A⌉x̄ + ⌊A⌋x̲ + w̄)

has matrix [[⌈A⌉, ⌊A⌋], [⌊A⌋, ⌈A⌉]], whose weighted rows (η stacked twice) are those of μ∞,η(A):
it is contracting under the model's own condition and is solved by the same registered solver
with the same α*, and x̲* ≤ x*(u') ≤ x̄* for every u' in the box (mixed monotonicity). Its
gradient comes from the implicit backward of docs/math.md §5 on the 2n-state system
(:class:`EmbeddedOperator`, defined in :mod:`lipdeq.embedded` and re-exported here, +
:func:`lipdeq.implicit.implicit_fixed_point`). Logit differences are bounded row-wise:
r·x ≤ r⁺x̄ + r⁻x̲ (docs/math.md §12.3). Interval training uses κ·CE(y, k) + (1 − κ)·CE(z, k) with z_j
the upper bound of y_j − y_k, z_k = 0 (docs/math.md §12.4).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import sound as sd
from .checks import (_box, _check_eps, _check_inputs, _check_label_range, _check_labels,
                      _per_sample)
from .attacks import ATTACKS, attack_accuracy, fgsm, pgd
from .certified64 import MAX_DENSE_OPTIMAL, _readout, _readout64, lipschitz64, sound_states
from .embedded import EmbeddedOperator
from ..geometry import sign_split
from ..deq.implicit import implicit_fixed_point

__all__ = ["fgsm", "pgd", "attack_accuracy", "certified_lipschitz", "certified_radius_lipschitz",
           "certified_margins", "interval_bounds", "output_bounds", "worst_case_logits",
           "certified_interval", "interval_loss", "EmbeddedOperator", "ATTACKS",
           "MAX_DENSE_OPTIMAL"]

WEIGHTS = ("best", "unit", "model")


def _check_weights(weights: str) -> str:
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    return weights


@torch.no_grad()
def certified_radius_lipschitz(model, u: torch.Tensor, labels: torch.Tensor | None = None, *,
                               pairwise: bool = True, weights: str = "best") -> torch.Tensor:
    r"""Certified ℓ∞ radius per sample from the Lipschitz bounds of docs/math.md §6.1/§6.3, shape (N,).

    With k = ``labels`` (default: the class predicted by the forward pass model(u)), logits y of
    the *exact* fixed point of the stored weights, bounded via the computed state and the
    a-posteriori solver error e_η in float64 (module docstring, "Solver error"):

    * ``pairwise=True``:  min_{j≠k} max_η (y_k − y_j − ‖(c_k − c_j)ᵀ[η]‖₁·e_η) / L_kj(η),
      L_kj(η) = ‖(c_k − c_j)ᵀ[η]‖₁·‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) + ‖d_k − d_j‖₁;
    * ``pairwise=False``: max_η (m − 2‖C[η]‖∞·e_η) / (2 L_η), m = y_k − max_{j≠k} y_j and
      L_η = ‖C[η]‖∞‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) + ‖D‖∞ (never larger than the pairwise radius).

    Every quantity is rounded outward (margins down, L and μ up); the result is returned in the
    model's dtype rounded down. The radius is 0 where the certified margin is not positive,
    e.g. for misclassified samples. It is a claim about the exact network; the forward pass is
    within the solver tolerance of it (see :func:`certified_lipschitz` for what counts).
    η ranges over the candidates of ``weights`` ∈ {best, unit, model} (module docstring).
    """
    u = _check_inputs(u)
    weights = _check_weights(weights)
    if labels is not None:
        labels = _check_labels(labels, u.shape[0])
    radius, _, y_fwd, _ = lipschitz64(model, u, labels, pairwise=pairwise, weights=weights)
    return sd.narrow_down(radius, y_fwd.dtype)


@torch.no_grad()
def certified_margins(model, u: torch.Tensor, labels: torch.Tensor | None = None, *,
                      weights: str = "best") -> torch.Tensor:
    r"""Lower bounds (N, q) of the exact margins y*_k − y*_j at u (+inf at j = k), in float64.

    y* are the logits of the exact fixed point of the stored weights; the bound is
    max_η (y_k − y_j − ‖(c_k − c_j)ᵀ[η]‖₁·e_η) at the computed state, rounded outward (the
    numerator of :func:`certified_radius_lipschitz`). k = ``labels`` (default: model(u)'s class).
    """
    u = _check_inputs(u)
    weights = _check_weights(weights)
    if labels is not None:
        labels = _check_labels(labels, u.shape[0])
    return lipschitz64(model, u, labels, pairwise=True, weights=weights)[1]


@torch.no_grad()
def certified_lipschitz(model, u: torch.Tensor, labels: torch.Tensor, eps, *,
                        weights: str = "best") -> torch.Tensor:
    r"""Boolean (N,): certified at ε by the pairwise Lipschitz bound, and predicted by model(u).

    Certified ⇔ for all j ≠ k: y*_k − y*_j > ε·L_kj for the exact network (docs/math.md §6.3, with the
    solver-error and rounding corrections of the module docstring) ⇔ ε < the float64 radius of
    :func:`certified_radius_lipschitz`, compared in float64 (``eps`` a number or an (N,)
    tensor) — *and* the forward pass model(u) predicts the label. The certificate is about the
    exact fixed point; the forward pass is within the solver tolerance of it, so a sample whose
    forward prediction is wrong is never counted as certified.
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    weights = _check_weights(weights)
    e = _check_eps(eps, u.detach().double())
    radius, _, y_fwd, _ = lipschitz64(model, u, labels, pairwise=True, weights=weights)
    return (radius > e.to(radius.dtype)) & (y_fwd.argmax(-1) == labels)


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


def _interval_bounds(model, lower, upper, sound: bool, weights: str = "best", box64=None):
    """(x̲, x̄) of the computed embedded fixed point (model dtype, differentiable) and, with
    ``sound``, the float64 enclosure of the exact one (else None). ``box64``: the box the claim
    is about in float64 (default: lower, upper converted exactly)."""
    op = model.operator()
    emb = EmbeddedOperator(op)
    w_lo, w_hi = model.input_bounds(lower, upper)
    W = torch.cat([w_lo, w_hi], dim=1)
    eta = model.norm_weights()
    eta2 = None if eta is None else torch.cat([eta, eta], dim=0)
    X = implicit_fixed_point(emb, W, model.activation, model.solver_config, eta=eta2)
    x_lo, x_hi = X.chunk(2, dim=1)
    if not sound:
        return (x_lo, x_hi), None
    if box64 is None:
        box64 = (lower.detach().double(), upper.detach().double())
    with torch.no_grad():
        return (x_lo, x_hi), sound_states(model, X, *box64, weights)


def _bounds_value(lo, hi, graph):
    """Sound float64 (lo, hi) in the graph tensors' dtype (rounded outward), with their gradients."""
    return (sd.attach(sd.narrow_down(lo, graph[0].dtype), graph[0]),
            sd.attach(sd.narrow_up(hi, graph[1].dtype), graph[1]))


def interval_bounds(model, lower: torch.Tensor, upper: torch.Tensor, *, sound: bool = True):
    r"""(x̲, x̄) with x̲ ≤ x*(u) ≤ x̄ for every u in the box [lower, upper] (docs/math.md §12.2).

    Solves the embedded network x̲ = Φ(⌈A⌉x̲ + ⌊A⌋x̄ + w̲), x̄ = Φ(⌈A⌉x̄ + ⌊A⌋x̲ + w̄),
    (w̲, w̄) = ``model.input_bounds(lower, upper)``, with the model's solver (η stacked twice) and
    differentiates it by the implicit backward of docs/math.md §5 on the 2n-state system. With ``sound``
    the bounds are widened by the a-posteriori solver error (docs/math.md §4.5; e_η·ηᵢ per entry, the
    smallest over the candidate weights), with the residual and μ∞,η(A) evaluated in float64 on
    the stored weights plus a rounding margin, and rounded outward to the model's dtype
    (:mod:`lipdeq.sound`): they enclose the *exact* embedded fixed point of the stored weights
    for the box as given, at any solver tolerance and in float32 (±inf where no candidate η has
    μ∞,η(A) < 1). The widening is a detached constant: the gradient is that of the computed
    bounds. With ``sound=False`` they are the computed embedded fixed point.
    The box is exact at lower = upper (up to the solver tolerance). Inputs need not be in [0, 1].
    """
    lower, upper = _check_box(lower, upper)
    (x_lo, x_hi), exact = _interval_bounds(model, lower, upper, sound)
    return (x_lo, x_hi) if exact is None else _bounds_value(*exact, (x_lo, x_hi))


def _output_formula(x_lo, x_hi, lower, upper, C, c, D):
    Cp, Cm = sign_split(C)
    lo = x_lo.flatten(1) @ Cp.T + x_hi.flatten(1) @ Cm.T + c
    hi = x_hi.flatten(1) @ Cp.T + x_lo.flatten(1) @ Cm.T + c
    if D is not None:
        Dp, Dm = sign_split(D)
        lo = lo + lower.flatten(1) @ Dp.T + upper.flatten(1) @ Dm.T
        hi = hi + upper.flatten(1) @ Dp.T + lower.flatten(1) @ Dm.T
    return lo, hi


def _nan_to(t, value):
    # infinite state bounds (no η certifies the contraction) give 0·inf = nan: report ∓inf
    return torch.where(torch.isnan(t), torch.full_like(t, value), t)


def _abs_max(a, b):
    return torch.maximum(a.abs(), b.abs())


def output_bounds(model, lower: torch.Tensor, upper: torch.Tensor, *, sound: bool = True):
    r"""(y̲, ȳ) elementwise logit bounds over the box: y̲ = C⁺x̲ + C⁻x̄ + c + D⁺u̲ + D⁻ū and
    ȳ = C⁺x̄ + C⁻x̲ + c + D⁺ū + D⁻u̲ (docs/math.md §12.3 with r the rows of C, D).

    With ``sound`` (default) this is evaluated in float64 on the sound state bounds of
    :func:`interval_bounds`, with a rounding margin, and rounded outward to the model's dtype:
    it encloses the logits of the exact fixed point of the stored weights for every u in the
    box (the gradient is that of the formula at the computed bounds)."""
    lower, upper = _check_box(lower, upper)
    (x_lo, x_hi), exact = _interval_bounds(model, lower, upper, sound)
    lo, hi = _output_formula(x_lo, x_hi, lower, upper, *_readout(model))
    if exact is None:
        return _nan_to(lo, -math.inf), _nan_to(hi, math.inf)
    with torch.no_grad():
        s_lo, s_hi = exact
        C, c, D = _readout64(sd.float64_model(model), s_lo.dtype)
        l64, u64 = lower.detach().to(s_lo.dtype), upper.detach().to(s_lo.dtype)
        lo64, hi64 = _output_formula(s_lo, s_hi, l64, u64, C, c, D)
        scale = _abs_max(s_lo, s_hi).flatten(1) @ C.abs().T + c.abs()
        if D is not None:
            scale = scale + _abs_max(l64, u64).flatten(1) @ D.abs().T
        k, ur = s_lo[0].numel() + l64[0].numel(), sd.unit_roundoff(s_lo.dtype)
        lo64 = sd.down(lo64 - sd.slack(k, lo64.dtype) * scale - 4 * ur * lo64.abs() - sd.TINY)
        hi64 = sd.up(hi64 + sd.slack(k, hi64.dtype) * scale + 4 * ur * hi64.abs() + sd.TINY)
        lo64, hi64 = _nan_to(lo64, -math.inf), _nan_to(hi64, math.inf)
    return _bounds_value(lo64, hi64, (_nan_to(lo, -math.inf), _nan_to(hi, math.inf)))


def _z_formula(x_lo, x_hi, lower, upper, C, c, D, labels):
    """(N, q): R⁺x̄ + R⁻x̲ + S⁺ū + S⁻u̲ + (c_j − c_k), R = C_j − C_k, S = D_j − D_k (k = label)."""
    q, N = C.shape[0], labels.shape[0]
    idx = torch.arange(N, device=labels.device)

    def upper_bound(R, lo_, hi_):
        # R (q, q, m) with R[k, j] = row_j − row_k; returns (N, q): R⁺·hi + R⁻·lo at k = label.
        m = R.shape[-1]
        Rp, Rm = sign_split(R.reshape(q * q, m))
        out = hi_.flatten(1) @ Rp.T + lo_.flatten(1) @ Rm.T
        return out.view(N, q, q)[idx, labels]

    z = upper_bound(C.unsqueeze(0) - C.unsqueeze(1), x_lo, x_hi)
    z = z + (c.unsqueeze(0) - c.unsqueeze(1))[labels]
    if D is not None:
        z = z + upper_bound(D.unsqueeze(0) - D.unsqueeze(1), lower, upper)
    return z


def _worst_case(model, lower, upper, labels, sound, box64=None):
    """(z in the model's dtype (differentiable), sound float64 z or None) (docs/math.md §12.4)."""
    (x_lo, x_hi), exact = _interval_bounds(model, lower, upper, sound, box64=box64)
    C, c, D = _readout(model)
    q = C.shape[0]
    _check_label_range(labels, q)
    own = torch.nn.functional.one_hot(labels, q).bool()
    z = _z_formula(x_lo, x_hi, lower, upper, C, c, D, labels).masked_fill(own, 0.0)
    if exact is None:
        return z, None
    with torch.no_grad():
        s_lo, s_hi = exact
        dt = s_lo.dtype
        C, c, D = _readout64(sd.float64_model(model), dt)
        l64, u64 = box64 if box64 is not None else (lower.detach(), upper.detach())
        l64, u64 = l64.to(dt), u64.to(dt)
        z64 = _z_formula(s_lo, s_hi, l64, u64, C, c, D, labels)
        xm, um = _abs_max(s_lo, s_hi), _abs_max(l64, u64)
        scale = (xm.flatten(1) @ C.abs().T + c.abs()
                 + (0 if D is None else um.flatten(1) @ D.abs().T))
        scale = scale + scale.gather(1, labels[:, None])
        k = s_lo[0].numel() + l64[0].numel()
        z64 = sd.up(z64 + sd.slack(k, dt) * scale + 4 * sd.unit_roundoff(dt) * z64.abs() + sd.TINY)
        z64 = _nan_to(z64, math.inf).masked_fill(own, 0.0)
    return z, z64


def worst_case_logits(model, lower: torch.Tensor, upper: torch.Tensor, labels: torch.Tensor, *,
                      sound: bool = True) -> torch.Tensor:
    r"""z (N, q): z_j = upper bound of y_j − y_k over the box (k = label), z_k = 0 (docs/math.md §12.4).

    With r = c_j − c_k and s = d_j − d_k: z_j = r⁺x̄ + r⁻x̲ + s⁺ū + s⁻u̲ + (c_j − c_k)
    (docs/math.md §12.3). The label is certified on the box iff z_j < 0 for all j ≠ k. Differentiable.
    With ``sound`` (default) the value is computed in float64 from the sound state bounds with a
    rounding margin and rounded up to the model's dtype: an upper bound for the exact fixed point
    of the stored weights (the gradient is that of the formula at the computed bounds).
    """
    lower, upper = _check_box(lower, upper)
    labels = _check_labels(labels, lower.shape[0])
    z, z64 = _worst_case(model, lower, upper, labels, sound)
    if z64 is None:
        return z
    return sd.attach(sd.narrow_up(z64, z.dtype), z)


@torch.no_grad()
def certified_interval(model, u: torch.Tensor, labels: torch.Tensor, eps) -> torch.Tensor:
    r"""Boolean (N,): certified by interval bounds on the box [max(u − ε, 0), min(u + ε, 1)],
    and predicted by the forward pass model(u).

    Certified ⇔ r⁺x̲ + r⁻x̄ + s⁺u̲ + s⁻ū + (c_k − c_j) > 0 for all j ≠ k, r = c_k − c_j,
    s = d_k − d_j (docs/math.md §12.3), evaluated in float64 on the sound bounds of the exact embedded
    fixed point (solver error and rounding, module docstring) over the box rounded outward in
    float64 — *and* model(u) predicts the label. The bounds are about the exact fixed point of
    the stored weights; the forward pass is within the solver tolerance of it, so a sample whose
    forward prediction is wrong is never counted as certified. Certification then implies that
    the exact network predicts the label everywhere in the box (u included).
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    lower, upper = _box(u, e)
    u64 = u.detach().double()
    e64 = _per_sample(_check_eps(eps, u64), u64)
    box64 = (sd.down(u64 - e64).clamp_min(0.0), sd.up(u64 + e64).clamp_max(1.0))
    _, z64 = _worst_case(model, lower, upper, labels, True, box64)
    other = ~torch.nn.functional.one_hot(labels, z64.shape[-1]).bool()
    certified = (z64.masked_fill(~other, -math.inf) < 0).all(-1)
    return certified & (model(u).argmax(-1) == labels)


def interval_loss(model, u: torch.Tensor, labels: torch.Tensor, eps, kappa: float = 0.5, *,
                  reduction: str = "mean", logits: torch.Tensor | None = None) -> torch.Tensor:
    r"""Interval training loss κ·CE(y, k) + (1 − κ)·CE(z, k) (docs/math.md §12.4), differentiable.

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
    z, _ = _worst_case(model, lower, upper, labels, sound=False)
    loss = (1.0 - k) * F.cross_entropy(z, labels, reduction=reduction)
    if k > 0:
        y = model(u) if logits is None else logits
        if y.shape != z.shape:
            raise ValueError(f"logits must have shape {tuple(z.shape)}, got {tuple(y.shape)}")
        loss = loss + k * F.cross_entropy(y, labels, reduction=reduction)
    return loss