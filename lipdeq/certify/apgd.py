r"""Auto-PGD at ℓ∞ in torch (Croce & Hein, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML 2020, Algorithm 1), written for models whose
every forward pass is a fixed-point solve.

Threat model (as :mod:`lipdeq.certify.attacks`): u ∈ [0, 1], u' ∈ box(u) = {‖u' − u‖∞ ≤ ε} ∩ [0, 1],
Π the projection (clipping) onto that box.

Iteration (N_iter = ``steps``, step η⁽⁰⁾ = 2ε, momentum α = 0.75, per sample):

    z⁽ᵏ⁺¹⁾ = Π(x⁽ᵏ⁾ + η⁽ᵏ⁾ sign ∇f(x⁽ᵏ⁾))
    x⁽ᵏ⁺¹⁾ = Π(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))      (α = 1 at k = 0)

At the checkpoints w_j = ⌈p_j N_iter⌉, p₀ = 0, p₁ = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03,
0.06), the step halves, and the iterate restarts from the best point x_max found so far, when

* condition 1: fewer than ρ (w_j − w_{j−1}) of the steps since w_{j−1} increased f (ρ = 0.75), or
* condition 2: neither η nor f_max changed since the previous checkpoint.

Losses f (logits z, label y, π the logits sorted in decreasing order, t the target class):

* ``"ce"`` — cross-entropy CE(z, y);
* ``"dlr"`` — −(z_y − max_{i≠y} z_i) / (π₁ − π₃);
* ``"dlr-targeted"`` — −(z_y − z_t) / (π₁ − (π₃ + π₄)/2) (with 3 classes, where π₄ does not
  exist, the denominator is π₁ − π₃, the untargeted one).

Cost: one forward + one backward solve per step (N_iter + 1 gradient evaluations, the first at the
random start), and nothing else: the loss and the prediction of a point come from the same
forward pass as its gradient. The model runs in eval mode with the exact implicit backward
(:func:`lipdeq.certify.attacks._eval_mode`); parameters' ``.grad`` are untouched. The attack
adds no host synchronisation inside the loop (the model's own fixed-point solve checks its
residual every ``check_every`` iterations).
"""
from __future__ import annotations

import math

import torch

import torch.nn.functional as F

from ..validate import check_positive_int
from .attacks import _eval_mode, _make_generator
from .checks import _attack_box, _check_eps, _check_inputs, _check_label_range, _check_labels, _per_sample

__all__ = ["apgd", "apgd_checkpoints", "APGD_LOSSES"]

APGD_LOSSES = ("ce", "dlr", "dlr-targeted")
RHO = 0.75
MOMENTUM = 0.75


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ⌈p_j · steps⌉ (j ≥ 1, p_j ≤ 1) at which the step size may halve."""
    p = [0.0, 0.22]
    while p[-1] + max(p[-1] - p[-2] - 0.03, 0.06) <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(pj * steps - 1e-9) for pj in p[1:] if math.ceil(pj * steps - 1e-9) > 0})


def _apgd_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str,
               targets: torch.Tensor | None) -> torch.Tensor:
    """Per-sample loss to maximise (module docstring)."""
    if loss == "ce":
        return F.cross_entropy(logits, labels, reduction="none")
    srt = logits.sort(-1, descending=True).values
    true = logits.gather(1, labels[:, None])[:, 0]
    if loss == "dlr":
        other = logits.scatter(1, labels[:, None], -math.inf).amax(1)
        return -(true - other) / (srt[:, 0] - srt[:, 2] + 1e-12)
    target = logits.gather(1, targets[:, None])[:, 0]
    fourth = srt[:, min(3, srt.shape[1] - 1)]
    return -(true - target) / (srt[:, 0] - 0.5 * (srt[:, 2] + fourth) + 1e-12)


def apgd(model, u: torch.Tensor, labels: torch.Tensor, eps, *, loss: str = "ce",
         targets: torch.Tensor | None = None, steps: int = 100, seed: int | None = 0,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """One random start of APGD (module docstring); returns u's shape, detached, in the box.

    Per sample the returned point is the first misclassified iterate if any (argmax ≠ label),
    else the iterate of largest loss. ``targets`` (N,) are the target classes of
    ``loss="dlr-targeted"`` (a target equal to the label is refused). The random start
    x⁽⁰⁾ = Π(u + ε t/‖t‖∞), t ~ U[−1, 1], is drawn from ``generator``, else a CPU generator
    seeded with ``seed``, else the global RNG.
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    steps = check_positive_int("steps", steps)
    if loss not in APGD_LOSSES:
        raise ValueError(f"loss must be one of {APGD_LOSSES}, got {loss!r}")
    if (loss == "dlr-targeted") != (targets is not None):
        raise ValueError('targets are needed by loss="dlr-targeted", and only by it')
    if targets is not None:
        targets = _check_labels(targets, u.shape[0])
        if bool((targets == labels).any()):
            raise ValueError("a target class must differ from the label")
    u = u.detach()
    lo, hi = _attack_box(u, eps)
    ee = _per_sample(e, u)
    gen = _make_generator(seed, generator)
    t = (torch.rand(u.shape, generator=gen, dtype=u.dtype) if gen is not None
         else torch.rand(u.shape, dtype=u.dtype)).to(u.device) * 2 - 1
    t = t / t.flatten(1).abs().amax(1).clamp_min(1e-12).view_as(ee)
    marks = set(apgd_checkpoints(steps))

    def clip(x):
        return torch.minimum(torch.maximum(x, lo), hi)

    def evaluate(x):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = model(x)
            value = _apgd_loss(logits, labels, loss, targets)
            grad, = torch.autograd.grad(value.sum(), x)
        return value.detach(), logits.detach().argmax(-1) != labels, grad

    with _eval_mode(model):
        q_min = 2 if loss == "ce" else 3
        with torch.no_grad():
            q = model(u[:1]).shape[-1]
        _check_label_range(labels, q)
        if targets is not None:
            _check_label_range(targets, q)
        if q < q_min:
            raise ValueError(f'loss="{loss}" needs at least {q_min} classes, got {q}')
        x = clip(u + ee * t)
        value, wrong, grad = evaluate(x)
        step = 2.0 * ee.clone()
        found = wrong.clone()                          # a misclassified iterate was seen
        adv = x.clone()                                # first misclassified, else x_max
        x_max, f_max, g_max = x.clone(), value.clone(), grad.clone()
        x_prev, prev_value = x.clone(), value.clone()
        successes = torch.zeros_like(value)
        last_mark, last_step, last_f_max = 0, step.clone(), f_max.clone()
        for k in range(steps):
            with torch.no_grad():
                z = clip(x + step * grad.sign())
                a = 1.0 if k == 0 else MOMENTUM
                x, x_prev = clip(x + a * (z - x) + (1 - a) * (x - x_prev)), x
            value, wrong, grad = evaluate(x)
            with torch.no_grad():
                new = wrong & ~found
                found |= wrong
                successes += (value > prev_value).to(value.dtype)
                prev_value = value
                better = value > f_max
                x_max = torch.where(_per_sample(better, x), x, x_max)
                g_max = torch.where(_per_sample(better, x), grad, g_max)
                f_max = torch.where(better, value, f_max)
                adv = torch.where(_per_sample(new | (~found & better), x), x, adv)
                if k + 1 in marks:
                    cond1 = successes < RHO * (k + 1 - last_mark)
                    cond2 = (last_step.flatten(1)[:, 0] == step.flatten(1)[:, 0]) & (last_f_max == f_max)
                    halve = _per_sample(cond1 | cond2, x)
                    last_step, last_f_max, last_mark = step.clone(), f_max.clone(), k + 1
                    step = torch.where(halve, step / 2, step)
                    x = torch.where(halve, x_max, x)
                    x_prev = torch.where(halve, x_max, x_prev)
                    grad = torch.where(halve, g_max, grad)
                    prev_value = torch.where(cond1 | cond2, f_max, prev_value)
                    successes.zero_()
    return adv
