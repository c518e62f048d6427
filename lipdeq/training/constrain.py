r"""Keep any square weight of any module on a well-posedness set by projected optimizer steps.

:func:`constrain` registers a condition of :mod:`lipdeq.conditions` (one whose set is convex, so
it has a projection: ``mu_inf``, ``norm_inf``, ``monotone``; ``lben`` with a fixed Λ) on a
square weight of a module — e.g. the ``nn.Linear(n, n)`` that plays A inside a fixed-point layer
someone else wrote — and projects it once right away. :func:`ProjectedStep` hooks an optimizer: ``.step()`` runs the optimizer's
step, then puts every registered weight among its parameters back onto its set, in place.

Design (docs/design.md §8):

* The weight stays the module's own leaf ``nn.Parameter`` (no ``torch.nn.utils.parametrize``
  wrapper, no re-parameterization): the projection overwrites its values under ``no_grad``, on the
  weight's own device and dtype, so ``state_dict`` keys, optimizer state and DDP are unchanged.
* Registrations live in a module-level ``torch.utils.weak.WeakIdKeyDictionary`` keyed by the
  Parameter object (nothing is stored on the user's parameter or module; an entry disappears with
  its parameter). ``Module.to(...)``/``.cuda()`` and ``load_state_dict`` keep the Parameter
  object, hence the registration; a ``copy.deepcopy`` of the module makes new Parameters, which
  are *not* registered (call :func:`constrain` on the copy), and so do
  ``load_state_dict(..., assign=True)`` and ``.double()``/``.to()`` under
  ``torch.__future__.set_overwrite_module_params_on_conversion(True)`` (call :func:`constrain`
  again after them). Each process registers its own.
* ``mu_inf`` and ``norm_inf`` run the exact closed-form projection of ``solvers.projection``
  with every argument check done once at registration, so a projected step issues **no host
  synchronization** (nothing is read back from the device; on CUDA the step stays asynchronous).
  The result is feasible in float64 on the stored tensor (docs/design.md §8). Other conditions call
  ``condition.project`` (``monotone``: an eigendecomposition of the symmetric part, whose input
  checks and float64 re-check read about 7 values back per step, measured by review).
* γ ≥ 1 is refused unless ``allow_ill_posed=True`` (the well-posedness guard of the model side).
* Only the weight is constrained: the rest of the layer (its solver, its step size, how it
  differentiates) is the user's; the conditions' guarantees are about A alone (docs/math.md §2).

Example (README)::

    import torch
    from torch import nn
    from lipdeq import constrain, ProjectedStep

    class FixedPointLayer(nn.Module):  # x = relu(A x + B u), written without lipdeq
        def __init__(self, n, p):
            super().__init__()
            self.A, self.B = nn.Linear(n, n, bias=False), nn.Linear(p, n)

        def forward(self, u, iters=30):
            A = self.A.weight  # averaged iteration, step 1/(1 - min(diag A, 0)):
            alpha = 1 / (1 - A.diagonal().min().clamp(max=0))  # contracts when mu_inf(A) < 1
            x = torch.zeros(u.shape[0], A.shape[0])
            for _ in range(iters):
                x = (1 - alpha) * x + alpha * torch.relu(self.A(x) + self.B(u))
            return x

    layer = FixedPointLayer(20, 5)
    constrain(layer.A, "weight", condition="mu_inf", gamma=0.9)  # projects once, right away
    opt = ProjectedStep(torch.optim.Adam(layer.parameters(), lr=0.05))
    u, target = torch.randn(64, 5), torch.rand(64, 20)
    for _ in range(20):
        opt.zero_grad()
        ((layer(u) - target) ** 2).mean().backward()
        opt.step()  # Adam step, then A <- nearest matrix with mu_inf(A) <= 0.9, in place
    from lipdeq.geometry import mu_inf
    assert mu_inf(layer.A.weight.detach().double()) <= 0.9

:func:`ProjectedStep` returns the optimizer it is given, with one step post-hook added, so LR
schedulers, closures and state dicts are the optimizer's own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.weak import WeakIdKeyDictionary

from ..solvers.arrays import weight_vector
from ..solvers.projection import project_exact_unchecked

from ..conditions.sets import CONDITIONS, Condition, MuInf, NormInf, get_condition

__all__ = ["constrain", "unconstrain", "ProjectedStep", "remove_projection", "project_registered", "constraint_of",
           "Constraint"]

#: Parameter -> Constraint. Keyed by object identity; entries vanish with their Parameter.
_REGISTRY: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def _projectable() -> list[str]:
    """Names whose set is convex with a projection (``lben`` too, given a fixed ``Lambda=``)."""
    return sorted(name for name, cls in CONDITIONS.items()
                  if cls.project is not Condition.project and getattr(cls, "convex", True))


def _supported(cond: Condition) -> bool:
    if not cond.has_projection:
        return False
    # lben: the union over Λ is not convex, but the set of one fixed Λ is (an SDP projection).
    return bool(getattr(cond, "convex", True) or getattr(cond, "Lambda", None) is not None)


@dataclass(eq=False)
class Constraint:
    """One registration: the condition (with its γ and, for ``mu_inf``, weights η) of a weight.

    ``where`` names the weight for messages (``"Linear.weight"``); ``fast`` is True for the
    sync-free closed-form path (``mu_inf``/``norm_inf``).
    """
    condition: Condition
    n: int
    where: str
    fast: bool
    signed_diag: bool = True
    eta64: torch.Tensor | None = None  # float64 CPU weights, validated once
    _ratios: dict = field(default_factory=dict, repr=False)

    @property
    def gamma(self) -> float:
        return self.condition.gamma

    def _weights_on(self, device: torch.device, dtype: torch.dtype):
        """(W64, W) with W[i, j] = η_j/η_i in float64 and in the weight's dtype, cached per
        (device, dtype); (None, None) for η = 1."""
        if self.eta64 is None:
            return None, None
        key = (device, dtype)
        if key not in self._ratios:
            W64 = self.eta64.unsqueeze(-2) / self.eta64.unsqueeze(-1)  # on the CPU
            W = W64.to(dtype)
            if not (bool(torch.isfinite(W).all()) and bool((W > 0).all())):  # checked on the CPU
                raise ValueError(f"weights of {self.where}: the ratios eta_j/eta_i overflow or "
                                 f"underflow in {dtype}")
            self._ratios[key] = (W64.to(device), W.to(device))  # one copy per device and dtype
        return self._ratios[key]

    @torch.no_grad()
    def project_(self, weight: torch.Tensor) -> None:
        """Project ``weight`` onto the set, in place, on its own device."""
        V = weight.detach()
        if not self.fast:
            self.condition.project(V, out=V)
            return
        W64, W = self._weights_on(V.device, V.dtype)
        g = self.condition.gamma
        # project_mu_inf/project_norm_inf's core without their per-call argument checks (done
        # once in constrain()): no host sync.
        V.copy_(project_exact_unchecked(V, g, W, W64, self.signed_diag))


def _describe(module: nn.Module, name: str) -> str:
    return f"{type(module).__name__}.{name}"


def constrain(module: nn.Module, name: str = "weight", condition: str | Condition = "mu_inf",
              gamma: float = 0.95, weights: Any = None, *, allow_ill_posed: bool = False,
              **condition_options: Any) -> nn.Module:
    """Register ``condition`` (γ = ``gamma``) on the square weight ``module.<name>`` and project
    it once, now. Returns ``module``.

    Parameters
    ----------
    module : any ``nn.Module``; ``module.<name>`` must be an ``nn.Parameter`` of shape (n, n)
        (a plain float tensor, not a parametrized attribute). ``nn.Linear(n, n)`` computes
        ``x @ weight.T``, i.e. ``weight`` is A in x ↦ Ax: exactly the matrix the conditions bound.
    name : the attribute name (default ``"weight"``).
    condition : a name from :data:`lipdeq.conditions.CONDITIONS` whose set has a projection
        (``mu_inf``, ``norm_inf``, ``monotone``), or a ``Condition`` instance (then ``gamma``
        and ``weights`` must be left at their defaults).
    gamma : the bound γ on the condition's measure; γ ≥ 1 needs ``allow_ill_posed=True``.
    weights : for ``mu_inf`` only, a positive vector η of length n (μ∞,η(A) ≤ γ).
    **condition_options : further options of the condition's constructor (e.g. ``Lambda=…``
        for ``lben``, whose set for one fixed diagonal Λ is convex: an SDP projection per step).

    Registering a weight again replaces its constraint. Raises ``ValueError`` naming the problem:
    no such attribute, not a Parameter, not square, not floating point, a condition without a
    projection, bad γ or weights.
    """
    from ..deq.model import check_gamma

    if not isinstance(module, nn.Module):
        raise TypeError(f"constrain needs an nn.Module, got {type(module).__name__}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty attribute name, got {name!r}")
    where = _describe(module, name)
    try:
        parametrized = torch.nn.utils.parametrize.is_parametrized(module, name)
    except Exception:  # pragma: no cover - defensive
        parametrized = False
    if parametrized:
        raise ValueError(f"{where} is parametrized (torch.nn.utils.parametrize); constrain "
                         f"needs the plain leaf Parameter")
    if not hasattr(module, name):
        params = [k for k, _ in module.named_parameters(recurse=False)]
        raise ValueError(f"{type(module).__name__} has no attribute {name!r} "
                         f"(its own parameters: {params or 'none'})")
    weight = getattr(module, name)
    if not isinstance(weight, nn.Parameter):
        raise ValueError(f"{where} must be an nn.Parameter, got {type(weight).__name__}")
    if weight.ndim != 2 or weight.shape[0] != weight.shape[1]:
        raise ValueError(f"{where} must be a square (n, n) matrix, got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"{where} must be floating point, got {weight.dtype}")
    n = int(weight.shape[0])

    if isinstance(condition, Condition):
        if gamma != 0.95 or weights is not None or condition_options:
            raise ValueError("pass gamma, weights and options to the Condition instance, "
                             "not to constrain")
        cond = condition
    elif isinstance(condition, str):
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {_projectable()} (conditions with a "
                             f"projection), got {condition!r}")
        options = dict(condition_options)
        if weights is not None:
            options["weights"] = weights
        try:
            cond = get_condition(condition, gamma, **options)
        except TypeError as exc:
            what = "weights (they apply to 'mu_inf')" if weights is not None else "these options"
            raise ValueError(f"condition {condition!r} does not take {what}: "
                             f"{' '.join(str(exc).split())}") from None
    else:
        raise ValueError(f"condition must be a condition name or a Condition, got "
                         f"{type(condition).__name__}")
    if not _supported(cond):
        raise ValueError(f"condition {cond.name!r} has no projection (its set is not convex); "
                         f"constrain supports {_projectable()} (and 'lben' with a fixed Lambda=)")
    if not math.isfinite(cond.gamma):
        raise ValueError(f"gamma must be finite, got {cond.gamma!r}")
    check_gamma(cond.gamma, cond.name, allow_ill_posed)
    if isinstance(cond, NormInf) and cond.gamma < 0:
        raise ValueError(f"gamma must be >= 0 for norm_inf (the set is empty), got {cond.gamma}")

    eta64 = None
    if isinstance(cond, MuInf) and cond.weights is not None:
        eta64 = weight_vector(cond.weights, n, torch.empty(0), dtype=torch.float64)
    fast = type(cond) in (MuInf, NormInf)
    c = Constraint(cond, n, where, fast, signed_diag=not isinstance(cond, NormInf), eta64=eta64)
    with torch.no_grad():
        from ..solvers.arrays import check_finite
        check_finite(weight.detach(), where)
    c.project_(weight)  # validates the weight ratios for this device/dtype too
    _REGISTRY[weight] = c
    return module


def unconstrain(module: nn.Module, name: str = "weight") -> nn.Module:
    """Remove the constraint of ``module.<name>`` (the values stay as they are).
    ``ValueError`` if it has none."""
    weight = getattr(module, name, None)
    if not isinstance(weight, nn.Parameter) or weight not in _REGISTRY:
        raise ValueError(f"{_describe(module, name)} is not constrained")
    del _REGISTRY[weight]
    return module


def constraint_of(weight: torch.Tensor) -> Constraint | None:
    """The :class:`Constraint` registered on a Parameter, or None."""
    return _REGISTRY.get(weight)


@torch.no_grad()
def project_registered(params) -> int:
    """Project every registered weight among ``params`` (an iterable of tensors, or of
    optimizer param-group dicts) in place; returns how many were projected."""
    count = 0
    seen: set[int] = set()
    for item in params:
        group = item["params"] if isinstance(item, dict) else [item]
        for p in group:
            c = _REGISTRY.get(p)
            if c is not None and id(p) not in seen:
                seen.add(id(p))
                c.project_(p)
                count += 1
    return count


# Optimizers that already carry the projection hook, so that ProjectedStep(opt) twice projects once.
_HOOKED: "WeakIdKeyDictionary" = WeakIdKeyDictionary()


def _project_hook(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    project_registered(optimizer.param_groups)


def ProjectedStep(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:  # noqa: N802 (public name)
    """Make every ``optimizer.step()`` end with the projection of each weight registered with
    :func:`constrain` among the optimizer's parameters (in place, under ``no_grad``, on the
    weight's device; no host sync for ``mu_inf``/``norm_inf``).

    A thin layer over ``Optimizer.register_step_post_hook``: it registers one post-step hook that
    calls :func:`project_registered` on ``optimizer.param_groups`` and returns **the same
    optimizer**, so state dicts, LR schedulers, closures and other hooks are the optimizer's own.
    Calling it again on the same optimizer registers nothing more. Hooks registered earlier run
    before the projection, hooks registered later see the projected weights. To project outside a
    step (e.g. after loading weights): ``project_registered(optimizer.param_groups)``; to stop
    projecting: :func:`remove_projection`.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"ProjectedStep takes a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if optimizer not in _HOOKED:
        _HOOKED[optimizer] = optimizer.register_step_post_hook(_project_hook)
    return optimizer


def remove_projection(optimizer: torch.optim.Optimizer) -> bool:
    """Remove the hook of :func:`ProjectedStep` from ``optimizer``; returns whether there was one."""
    handle = _HOOKED.pop(optimizer, None)
    if handle is None:
        return False
    handle.remove()
    return True
