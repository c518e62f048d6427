r"""Adversarial ℓ∞ attacks on classifiers (docs/math.md §6.3).

Inputs ``u`` lie in [0, 1] (docs/design.md §8) and the threat model at radius ε is the box
{u' : ‖u' − u‖∞ ≤ ε, 0 ≤ u' ≤ 1}; ``eps`` is a number or a tensor of shape (N,) (one radius per
sample), finite and ≥ 0 (checks in :mod:`lipdeq._checks`). The certificates for the same threat
model are in :mod:`lipdeq.robustness`, which re-exports these attacks.

Attacks (any classifier ``nn.Module`` returning logits (N, q)):

* :func:`fgsm` — u' = clip₀¹(u + ε·sign ∇ᵤ CE(f(u), k)).
* :func:`pgd`  — projected sign-gradient ascent on a loss ℓ, step s (default 2.5ε/steps),
  u' ← Π_box(u' + s·sign ∇ ℓ), with ℓ the cross-entropy (``loss="ce"``) or the margin (CW) loss
  ℓ = max_{j≠k} f_j − f_k (``loss="margin"``), and ``restarts`` random starts. Per sample it
  returns the best point it evaluated (the clean input, every start and every iterate; a
  misclassified point beats a correct one, then the larger loss wins), so it is never weaker than
  its first start nor than the clean input.
* :func:`attack_accuracy` — the fraction still classified correctly after an attack.

Attacks run the model with eval-mode semantics (the ``training`` flag is switched off for the
call and restored afterwards) and with the exact implicit backward even for a model trained
Jacobian-free (``lipdeq.deq.implicit.exact_backward``: a biased gradient makes a weaker attack),
and only take gradients with respect to the input: the parameters' ``.grad`` are left untouched.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any

import torch

import torch.nn.functional as F

from ..deq.implicit import exact_backward
from ..validate import check_positive_int

from .checks import (_attack_box, _check_eps, _check_inputs, _check_label_range, _check_labels,
                      _per_sample)

__all__ = ["fgsm", "pgd", "attack_accuracy", "ATTACKS", "PGD_LOSSES"]

ATTACKS = ("fgsm", "pgd")
PGD_LOSSES = ("ce", "margin")


@contextmanager
def _eval_mode(model):
    """Eval-mode semantics and exact input gradients (``exact_backward``) for the call."""
    was = getattr(model, "training", False)
    if was:
        model.eval()
    try:
        with exact_backward(model):
            yield
    finally:
        if was:
            model.train(True)


def _margin_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample CW margin max_{j≠k} f_j − f_k (> 0 iff misclassified, ties aside)."""
    true = logits.gather(1, labels[:, None])[:, 0]
    others = logits.scatter(1, labels[:, None], -math.inf)
    return others.amax(1) - true


def _loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    if loss == "margin":
        return _margin_loss(logits, labels)
    return F.cross_entropy(logits, labels, reduction="none")


def _loss_and_grad(model, x: torch.Tensor, labels: torch.Tensor, check: bool = False,
                   loss: str = "ce"):
    """Per-sample loss (CE or margin), logits and ∇ₓ Σ loss at x (gradient only w.r.t. x)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        logits = model(x)
        if check:
            _check_label_range(labels, logits.shape[-1])
        value = _loss(logits, labels, loss)
        grad, = torch.autograd.grad(value.sum(), x)
    return value.detach(), logits.detach(), grad


def fgsm(model, u: torch.Tensor, labels: torch.Tensor, eps) -> torch.Tensor:
    """Fast gradient sign attack: u' = clip₀¹(u + ε·sign ∇ᵤ CE(model(u), labels)).

    ``u`` (N, …) in [0, 1], ``labels`` (N,) integers, ``eps`` ≥ 0 (number or (N,) tensor).
    Returns the adversarial inputs (detached), ‖u' − u‖∞ ≤ ε exactly (in float64: the point is
    clamped into the inward-rounded box). An input the model already misclassifies is returned
    as it is: the step could otherwise "repair" it and count it as robust.
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    lo, hi = _attack_box(u, eps)
    with _eval_mode(model):
        _, logits, grad = _loss_and_grad(model, u, labels, check=True)
    adv = torch.minimum(torch.maximum(u.detach() + _per_sample(e, u) * grad.sign(), lo), hi)
    wrong = _per_sample(logits.detach().argmax(-1) != labels, u)
    return torch.where(wrong, u.detach(), adv)


def _make_generator(seed, generator):
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return generator
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return torch.Generator(device="cpu").manual_seed(seed)


def pgd(model, u: torch.Tensor, labels: torch.Tensor, eps, *, steps: int = 20,
        step_size: float | None = None, random_start: bool = True, seed: int | None = None,
        generator: torch.Generator | None = None, init: torch.Tensor | None = None,
        restarts: int = 1, loss: str = "ce") -> torch.Tensor:
    """ℓ∞ projected gradient ascent (Madry et al.) on ``loss``, returns inputs (detached).

    ``loss``: "ce" (cross-entropy, default) or "margin" (the CW loss max_{j≠k} f_j − f_k,
    unbounded by softmax saturation). First start: ``init`` (projected onto the box) if given,
    else u + U[−ε, ε] noise when ``random_start`` (from ``generator``, else a generator seeded
    with ``seed``, else the global RNG), else u. Each of the ``restarts − 1`` further starts is
    u + U[−ε, ε] noise from the same source (``restarts`` > 1 needs ``random_start``; the first
    start is drawn first, so it is the same point a single-start call with the same seed uses).
    From every start, ``steps`` times u' ← Π(u' + s·sign ∇ loss(model(u'), labels)) with
    s = ``step_size`` (default 2.5·ε/steps) and Π the projection (clipping) onto
    {‖u' − u‖∞ ≤ ε} ∩ [0, 1].

    Per sample the returned point is the best one evaluated — the clean input, all starts and
    all iterates: a misclassified point beats a correctly classified one, and within the same
    status the larger loss wins. Hence the attack is never weaker than its first start (started
    from an FGSM point it breaks every point FGSM breaks; with restarts it breaks every point the
    single-start call with the same seed breaks) and never "repairs" a misclassified input.
    No host synchronisation happens inside a start's loop (one check between starts skips the
    remaining starts once every sample is misclassified).
    """
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    steps = check_positive_int("steps", steps)
    restarts = check_positive_int("restarts", restarts)
    if loss not in PGD_LOSSES:
        raise ValueError(f"loss must be one of {PGD_LOSSES}, got {loss!r}")
    if restarts > 1 and not random_start:
        raise ValueError("restarts > 1 needs random_start=True (every start would be the same)")
    if step_size is None:
        s = 2.5 * e / steps
    else:
        try:
            sv = float(step_size)
        except (TypeError, ValueError):
            raise ValueError(f"step_size must be a positive number, got {step_size!r}") from None
        if not (math.isfinite(sv) and sv > 0):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        s = torch.full_like(e, sv)
    s = _per_sample(s, u)
    u = u.detach()
    lo, hi = _attack_box(u, eps)
    gen = _make_generator(seed, generator)
    if init is not None:
        init = _check_inputs(init, "init", unit_box=False)
        if init.shape != u.shape:
            raise ValueError(f"init must have the shape of u {tuple(u.shape)}, got {tuple(init.shape)}")

    def random_point():
        if gen is not None:
            noise = torch.rand(u.shape, generator=gen, dtype=u.dtype, device=gen.device).to(u.device)
        else:
            noise = torch.rand(u.shape, dtype=u.dtype, device=u.device)
        return torch.minimum(torch.maximum(u + (2 * noise - 1) * _per_sample(e, u), lo), hi)

    def better(value, wrong, best_value, best_wrong):
        return (wrong & ~best_wrong) | ((wrong == best_wrong) & (value > best_value))

    with _eval_mode(model):
        with torch.no_grad():
            logits = model(u)
        _check_label_range(labels, logits.shape[-1])
        best = u.clone()
        best_loss = _loss(logits, labels, loss)
        best_wrong = logits.argmax(-1) != labels
        for r in range(restarts):
            if r == 0 and init is not None:
                x = torch.minimum(torch.maximum(init.detach().to(u.dtype), lo), hi)
            elif random_start:
                x = random_point()
            else:
                x = u.clone()
            if r > 0 and bool(best_wrong.all()):
                break
            for k in range(steps + 1):
                if k < steps:
                    value, logits, grad = _loss_and_grad(model, x, labels, loss=loss)
                else:
                    with torch.no_grad():
                        logits = model(x)
                        value = _loss(logits, labels, loss)
                wrong = logits.argmax(-1) != labels
                take = better(value, wrong, best_loss, best_wrong)
                best = torch.where(_per_sample(take, x), x, best)
                best_loss = torch.where(take, value, best_loss)
                best_wrong = best_wrong | wrong
                if k < steps:
                    x = torch.minimum(torch.maximum(x + s * grad.sign(), lo), hi)
    return best


def attack_accuracy(model, u: torch.Tensor, labels: torch.Tensor, eps, attack: str = "pgd", *,
                    batch_size: int | None = None, **attack_options: Any) -> float:
    """Fraction of samples (in [0, 1]) still classified correctly after ``attack`` ∈ {fgsm, pgd}.

    ``attack_options`` go to :func:`pgd` (steps, step_size, random_start, seed, generator,
    restarts, loss);
    ``batch_size`` splits the data into chunks (the whole batch at once by default).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
    u = _check_inputs(u)
    labels = _check_labels(labels, u.shape[0])
    _check_eps(eps, u)  # validated once, before any chunk runs
    if attack == "fgsm" and attack_options:
        raise ValueError(f"fgsm takes no options, got {sorted(attack_options)}")
    N = u.shape[0]
    bs = N if batch_size is None else check_positive_int("batch_size", batch_size)
    correct = torch.zeros((), dtype=torch.long, device=u.device)
    for i in range(0, N, bs):
        # the caller's ε itself (not e, rounded to u's dtype): the attacks' box is exact in it
        eb = eps[i:i + bs] if isinstance(eps, torch.Tensor) and eps.ndim == 1 else eps
        ub, lb = u[i:i + bs], labels[i:i + bs]
        adv = fgsm(model, ub, lb, eb) if attack == "fgsm" else pgd(model, ub, lb, eb, **attack_options)
        with _eval_mode(model), torch.no_grad():
            correct += (model(adv).argmax(-1) == lb).sum()
    return float(correct) / N
