r"""AutoAttack at ℓ∞ (Croce & Hein 2020) on any lipdeq classifier, with two backends:
``backend="art"`` (default, the reference) runs the adversarial-robustness-toolbox's attacks
(ART; ``pip install -e ".[attacks]"``), ``backend="torch"`` runs lipdeq's own
:func:`lipdeq.certify.apgd.apgd` and :func:`lipdeq.certify.square.square` (no ART needed).

Threat model (as :mod:`lipdeq.attacks`): u ∈ [0, 1], u' ∈ {‖u' − u‖∞ ≤ ε, 0 ≤ u' ≤ 1}.

Why two: every forward pass of an implicit model is a fixed-point solve, so the attack's cost is
its number of model evaluations. ART's APGD evaluates the loss gradient twice per step and its
Square attack predicts about three times per query (counted on lipdeq models, ART 1.20); the
torch backend evaluates once per step (gradient, loss and prediction from one forward pass) and
once per query, about 2× (APGD) and 3× (Square) less CPU on the conv model
(``tests/test_apgd_square.py`` checks the counts and an exact oracle; docs/design.md §5).

The ART backend's attacks (:class:`art.attacks.evasion.AutoProjectedGradientDescent`,
:class:`art.attacks.evasion.SquareAttack`) run with the settings of the standard ℓ∞ AutoAttack
(the torch backend's are the same, with its targeted DLR loss as in the original APGD-T):

* ``apgd-ce``  — APGD on the cross-entropy, 100 iterations, 1 start, initial step 2ε.
* ``apgd-t``   — targeted APGD on ART's difference-of-logits-ratio loss, 100 iterations, against
  each of the ``n_target_classes`` (default 9) classes with the largest clean logits after the
  label (the original APGD-T target order), 1 start per target.
* ``apgd-dlr`` — untargeted APGD-DLR (not in the standard set; available on request).
* ``square``   — Square Attack, 5000 queries, p_init = 0.8, 1 start (score-based, no gradients,
  so it is not fooled by gradient masking).

FAB-T, the fourth attack of the standard set, is not offered by ART (1.17–1.20), so it is not run.
The attacks are chained as AutoAttack does: each runs only on the examples that every earlier
attack failed to break. ART's own ``AutoAttack`` class is not used because its ``generate``
imports ``multiprocess``, which ART does not declare as a dependency; the chaining is the few
lines in :func:`autoattack`.

To ART the model is an ordinary classifier: a ``PyTorchClassifier`` with ``clip_values=(0, 1)``,
images (C, H, W) channels-first (flattened to (N, p) before lipdeq's model sees them), logits out,
and input gradients through lipdeq's implicit backward (exact even for a model trained
Jacobian-free). The model runs in eval mode with its
parameters' ``requires_grad`` switched off for the call (restored afterwards), so parameter
``.grad`` stays untouched, as with the built-in attacks.

Nothing ART returns is taken on trust: every candidate is projected, in float64, onto the ε-box
∩ [0, 1] around the original input and rounded to u's dtype so that the stored value lies in the
box exactly (``max_box_excess`` reports how far ART's raw output had left it), and an example
counts as broken only if lipdeq's own forward pass misclassifies that stored point.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from torch import nn

from ..deq.implicit import exact_backward
from ..validate import check_positive_int

from .apgd import apgd
from .square import square

from .checks import _check_eps, _check_inputs, _check_label_range, _check_labels
from .attacks import _eval_mode

__all__ = ["autoattack", "AutoAttackResult", "AttackLibraryMissing", "ATTACK_NAMES",
           "STANDARD_ATTACKS"]

ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
BACKENDS = ("art", "torch")
STANDARD_ATTACKS = ("apgd-ce", "apgd-t", "square")
INSTALL_HINT = 'pip install -e ".[attacks]"'


class AttackLibraryMissing(ImportError):
    """The adversarial-robustness-toolbox package is not installed."""


def _import_art():
    try:
        import art
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import PyTorchClassifier
    except ImportError as exc:
        raise AttackLibraryMissing(
            f"AutoAttack needs the adversarial-robustness-toolbox package ({exc}); install it "
            f"with {INSTALL_HINT}") from exc
    return art.__version__, PyTorchClassifier, AutoProjectedGradientDescent, SquareAttack


def require_art() -> str:
    """The installed ART version, or :class:`AttackLibraryMissing` with the install command."""
    return _import_art()[0]


@dataclass(frozen=True)
class AutoAttackResult:
    """Outcome of :func:`autoattack` (all per-example tensors have length N).

    ``adversarial``: the returned inputs, u's shape and dtype, each in its ε-box ∩ [0, 1]
    (exactly, checked in float64); the clean input where no attack succeeded.
    ``robust``: lipdeq's forward classifies ``adversarial`` correctly (so ``~robust`` are the
    broken examples, including those misclassified without attack).
    ``broken_by``: "clean" (misclassified clean), the first attack that broke it, or None.
    """
    adversarial: torch.Tensor
    robust: torch.Tensor
    clean_correct: torch.Tensor
    broken_by: tuple
    attacks: tuple
    settings: dict = field(default_factory=dict)
    max_box_excess: float = 0.0
    seconds: float = 0.0

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.double().mean())


class _ArtView(nn.Module):
    """ART's view of a lipdeq model: images (N, C, H, W) → flatten → model → logits."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, x):
        return self.model(x.reshape(x.shape[0], -1).to(self.dtype))


@contextmanager
def _frozen(model):
    """Switch off ``requires_grad`` of every parameter (ART back-propagates into them otherwise)
    and use the exact implicit backward (``exact_backward``) for the input gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with exact_backward(model):
            yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextmanager
def _numpy_seed(seed: int):
    """ART draws from numpy's global RNG: seed it for the call and restore the state after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _image_shape(model, p: int, image_shape) -> tuple[int, int, int]:
    if image_shape is None:
        shape = getattr(model, "in_shape", None)
        if shape is None:
            side = math.isqrt(p)
            shape = (1, side, side) if side * side == p else (1, 1, p)
    else:
        shape = image_shape
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (channels, height, width), got {image_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1 or shape[0] * shape[1] * shape[2] != p:
        raise ValueError(f"image_shape must be (channels, height, width) with {p} entries, got {shape}")
    return shape


def _check_attacks(attacks) -> tuple[str, ...]:
    if attacks is None:
        return STANDARD_ATTACKS
    if isinstance(attacks, str):
        attacks = (attacks,)
    names = tuple(attacks)
    bad = [a for a in names if a not in ATTACK_NAMES]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"attacks must be distinct names from {ATTACK_NAMES}, got {attacks!r}")
    return names


def _into_box(cand: torch.Tensor, u: torch.Tensor, e: torch.Tensor):
    """Project candidates onto {‖x − u‖∞ ≤ ε} ∩ [0, 1] in float64 and round to u's dtype so
    that the stored values pass the float64 test |x − u| ≤ ε, 0 ≤ x ≤ 1 (rounding may leave the
    box by an ulp: such entries step one ulp toward u, which passes the test itself).
    Returns (points, largest raw excess of ``cand`` over the box)."""
    u64, c64 = u.double(), cand.double()
    e64 = e.double().view(-1, *([1] * (u.ndim - 1)))
    lo, hi = (u64 - e64).clamp_min(0.0), (u64 + e64).clamp_max(1.0)
    excess = float(torch.maximum(c64 - hi, lo - c64).clamp_min(0.0).max()) if cand.numel() else 0.0
    x = torch.minimum(torch.maximum(c64, lo), hi).to(u.dtype)
    for _ in range(8):
        d = x.double() - u64
        up = (d > e64) | (x > 1)
        down = (d < -e64) | (x < 0)
        if not bool((up | down).any()):
            return x, excess
        x = torch.where(up, torch.nextafter(x, torch.full_like(x, -math.inf)), x)
        x = torch.where(down, torch.nextafter(x, torch.full_like(x, math.inf)), x)
    raise RuntimeError("adversarial point outside the threat-model box after projection")  # pragma: no cover


def _predict(model, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def autoattack(model, u: torch.Tensor, labels: torch.Tensor, eps, *, attacks=None,
               batch_size: int = 500, seed: int = 0, apgd_steps: int = 100,
               square_queries: int = 5000, n_target_classes: int = 9, image_shape=None,
               backend: str = "art", verbose: bool = False) -> AutoAttackResult:
    """Standard ℓ∞ AutoAttack (APGD-CE, APGD-T, Square; see the module docstring).

    ``backend``: "art" (ART's attacks, the reference) or "torch" (lipdeq's own
    :func:`~lipdeq.certify.apgd.apgd` and :func:`~lipdeq.certify.square.square`, same settings,
    one model evaluation per step or query; no ART needed).

    ``u`` (N, p) flattened inputs in [0, 1] (as every lipdeq model takes them), ``labels`` (N,)
    integers, ``eps`` ≥ 0 (number or (N,) tensor; examples are grouped by ε, and at ε = 0 only
    the clean prediction counts). ``attacks``: names from :data:`ATTACK_NAMES` in the order to
    run (default :data:`STANDARD_ATTACKS`). ``image_shape`` (C, H, W) is what Square tiles
    (default: the model's ``in_shape``, else a square single-channel image when p is a square).
    ``seed`` seeds numpy's global RNG, which ART draws from, for the call only.
    Raises :class:`AttackLibraryMissing` (an ``ImportError``) without ART, ``ValueError`` on
    bad input.
    """
    u = _check_inputs(u)
    if u.ndim != 2:
        raise ValueError(f"u must be flattened inputs (N, p), got shape {tuple(u.shape)}")
    labels = _check_labels(labels, u.shape[0])
    _check_eps(eps, u)
    # ε exactly as given (float64), not rounded to u's dtype: the box is checked in float64
    e = (eps.detach().to(device=u.device, dtype=torch.float64) if isinstance(eps, torch.Tensor)
         else torch.tensor(float(eps), dtype=torch.float64, device=u.device)).expand(u.shape[0])
    names = _check_attacks(attacks)
    batch_size = check_positive_int("batch_size", batch_size)
    apgd_steps = check_positive_int("apgd_steps", apgd_steps)
    square_queries = check_positive_int("square_queries", square_queries)
    n_target_classes = check_positive_int("n_target_classes", n_target_classes)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shape = _image_shape(model, u.shape[1], image_shape)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "art":
        version, PyTorchClassifier, APGD, Square = _import_art()
        library = f"adversarial-robustness-toolbox {version}"
    else:
        library = "lipdeq.certify.apgd + lipdeq.certify.square (torch)"
        gen = torch.Generator(device="cpu").manual_seed(seed)
    p_init = 0.8
    if "square" in names:
        tile = max(int(round(math.sqrt(p_init * shape[1] * shape[2]))), 1)
        if min(shape[1], shape[2]) <= tile:
            raise ValueError(f"square needs images larger than its first tile ({tile} pixels); "
                             f"image_shape {shape} is too small")
    u = u.detach()
    t0 = time.perf_counter()
    with _eval_mode(model), _frozen(model), _numpy_seed(seed):
        clean_logits = _predict(model, u, batch_size)
        q = clean_logits.shape[-1]
        _check_label_range(labels, q)
        if q < 3 and any(a in ("apgd-t", "apgd-dlr") for a in names):
            raise ValueError(f"the DLR loss of apgd-t/apgd-dlr needs at least 3 classes, got {q}")
        dtype = next((p.dtype for p in model.parameters()), u.dtype)
        device = next((p.device for p in model.parameters()), u.device)
        if backend == "art":
            clf = PyTorchClassifier(_ArtView(model, dtype), loss=nn.CrossEntropyLoss(),
                                    input_shape=shape, nb_classes=q, clip_values=(0.0, 1.0),
                                    channels_first=True,
                                    device_type="gpu" if device.type == "cuda" else "cpu")
        clean_correct = clean_logits.argmax(-1) == labels
        robust = clean_correct.clone()
        adv = u.clone()
        broken_by = ["clean" if not c else None for c in clean_correct.tolist()]
        excess = 0.0
        # examples ranked by clean logit, label excluded: APGD-T's target classes
        order = clean_logits.masked_fill(
            nn.functional.one_hot(labels, q).bool(), -math.inf).argsort(-1, descending=True)

        def accept(idx: torch.Tensor, cand: torch.Tensor, name: str) -> None:
            nonlocal excess
            x, ex = _into_box(cand.reshape(len(idx), -1).to(u.device), u[idx], e[idx])
            excess = max(excess, ex)
            wrong = _predict(model, x, batch_size).argmax(-1) != labels[idx]
            hit = idx[wrong]
            adv[hit] = x[wrong]
            robust[hit] = False
            for i in hit.tolist():
                broken_by[i] = name

        def run(make, name, eps_value, group, targets=None):
            idx = group[robust[group]]
            if idx.numel() == 0:
                return
            if backend == "torch":
                t = None if targets is None else targets[idx]
                cand = torch.cat([make(eps_value, idx[i:i + batch_size],
                                       None if t is None else t[i:i + batch_size])
                                  for i in range(0, len(idx), batch_size)])
                accept(idx, cand, name)
                return
            x = u[idx].detach().cpu().numpy().astype(np.float32).reshape(len(idx), *shape)
            y = (targets if targets is not None else labels)[idx].cpu().numpy()
            y = np.eye(q, dtype=np.float32)[y]
            accept(idx, torch.from_numpy(make(eps_value).generate(x=x, y=y)), name)

        def native(name, loss=None):
            """The torch backend's attack ``name`` as run()'s ``make``."""
            if name == "square":
                return lambda ev, i, t: square(model, u[i], labels[i], ev, image_shape=shape,
                                               queries=square_queries, p_init=p_init,
                                               generator=gen)
            return lambda ev, i, t: apgd(model, u[i], labels[i], ev, loss=loss, targets=t,
                                         steps=apgd_steps, generator=gen)

        for eps_value in torch.unique(e).tolist():
            if eps_value == 0:
                continue  # the box is the point itself: the clean prediction decides
            group = torch.nonzero(e == eps_value).flatten()
            step = 2.0 * eps_value
            for name in names:
                if backend == "torch":
                    loss = {"apgd-ce": "ce", "apgd-dlr": "dlr", "apgd-t": "dlr-targeted"}.get(name)
                    if name == "apgd-t":
                        for k in range(min(n_target_classes, q - 1)):
                            run(native(name, loss), name, eps_value, group, targets=order[:, k])
                    else:
                        run(native(name, loss), name, eps_value, group)
                elif name in ("apgd-ce", "apgd-dlr"):
                    loss = "cross_entropy" if name == "apgd-ce" else "difference_logits_ratio"
                    run(lambda ev, loss=loss: APGD(clf, norm=np.inf, eps=ev, eps_step=step,
                                                   max_iter=apgd_steps, targeted=False,
                                                   nb_random_init=1, batch_size=batch_size,
                                                   loss_type=loss, verbose=verbose),
                        name, eps_value, group)
                elif name == "apgd-t":
                    for k in range(min(n_target_classes, q - 1)):
                        run(lambda ev: APGD(clf, norm=np.inf, eps=ev, eps_step=step,
                                            max_iter=apgd_steps, targeted=True, nb_random_init=1,
                                            batch_size=batch_size,
                                            loss_type="difference_logits_ratio", verbose=verbose),
                            name, eps_value, group, targets=order[:, k])
                else:
                    run(lambda ev: Square(clf, norm=np.inf, eps=ev, max_iter=square_queries,
                                          p_init=p_init, nb_restarts=1, batch_size=batch_size,
                                          verbose=verbose),
                        name, eps_value, group)
        # final independent check of everything returned
        final, _ = _into_box(adv, u, e)
        robust = _predict(model, final, batch_size).argmax(-1) == labels
    for i in torch.nonzero(robust).flatten().tolist():
        broken_by[i] = None
    settings = dict(library=library, backend=backend, norm="inf",
                    apgd_steps=apgd_steps, apgd_restarts=1, apgd_initial_step="2*eps",
                    n_target_classes=min(n_target_classes, q - 1), square_queries=square_queries,
                    square_p_init=p_init, image_shape=list(shape), seed=seed,
                    not_run={"fab-t": "not implemented (ART does not offer it either)"})
    return AutoAttackResult(adversarial=final, robust=robust, clean_correct=clean_correct,
                            broken_by=tuple(broken_by), attacks=names, settings=settings,
                            max_box_excess=excess, seconds=time.perf_counter() - t0)
