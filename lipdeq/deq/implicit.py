r"""The implicit layer x* = Φ(Ax* + w) with its implicit-function-theorem backward (docs/math.md §4–§5).

Forward: the fixed point is solved under ``no_grad`` by a registered solver (``fixed_point``).
Backward: one differentiable application x = Φ(z), z = Ax* + w, carries the graph to A and w
(hence B, b, u); a hook on x replaces the incoming gradient g_x by the adjoint solution

    w_adj = AᵀG w_adj + g_x,   G = diag(φ'(z*)),       (docs/math.md §5.2, iterated in the w-form)

so autograd's step through Φ yields v = G w_adj = ∂ℓ/∂z and the products of docs/math.md §5.3. The
adjoint contracts in ‖·‖₁,η with the same factor 1 − α(1 − μ⁺) (docs/math.md §5.4). Nothing of the
forward iterations is kept for backward: memory does not grow with the iteration count.

The adjoint's stopping rule is relative: its error bound ≤ tol·max(‖g‖₁,η, ‖w_adj‖₁,η) (max
over the batch; ``fixed_point`` module docstring), so the gradient's relative accuracy does not
depend on the scale of the loss (``mean`` vs ``sum``).

First order only. w_adj is computed without a graph, so a second derivative through it
(``create_graph=True`` followed by another backward, e.g. a Hessian-vector product or a
gradient penalty) would silently miss its dependence on A, w and g. The gradient returned under
``create_graph=True`` is correct to first order but carries a node that raises
:class:`DoubleBackwardError` when it is differentiated again (as ``once_differentiable`` does).

Jacobian-free backward (``backward="jacobian-free"``; Fung et al., AAAI 2022). The hook is not
registered: the incoming g = ∂ℓ/∂x is used as the adjoint, i.e. the backward is one application
of the layer's Jacobian-transpose at x* instead of the adjoint solve. With J = GA at the fixed
point the exact gradient (w.r.t. anything entering z) is gᵀ(I − J)⁻¹ ∂Φ/∂θ, the Jacobian-free
one gᵀ ∂Φ/∂θ: a **biased** direction, not the gradient. Bound of the bias in the dual ℓ1 norm
(η = 1 here; ‖·‖₁,η with weights): the exact adjoint w_adj solves w = Jᵀw + g, a map of which
the a-posteriori bound of docs/math.md §4.5/§5.4 holds in ‖·‖₁ with the same μ⁺ = max(μ∞(A), 0) < 1
(G = diag(φ') ∈ [0, 1] keeps I − GA row-diagonally dominant with margin ≥ 1 − μ⁺). Evaluated at
the Jacobian-free adjoint g, whose residual is Jᵀg:

    ‖w_adj − g‖₁ ≤ ‖Jᵀg‖₁ / (1 − μ⁺) ≤ ‖GA‖∞ ‖g‖₁ / (1 − μ⁺) ≤ ‖A‖∞ ‖g‖₁ / (1 − μ⁺),

per sample; the gradient w.r.t. w = Bu + b differs by G(w_adj − g), no larger in ‖·‖₁, and
every parameter gradient is a fixed linear image of that difference. So the relative error is
small only when ‖A‖∞ is small against 1 − μ⁺. Fung et al. show that −(JFB direction) is a
descent direction when the layer contracts strongly enough relative to the conditioning of
∂Φ/∂θ; it is still not the exact gradient, and training with it is a heuristic that is
measured, not guaranteed (experiments/bench_training_conv.py). No adjoint solve runs, so
``stats["backward"]`` is not set (0 backward iterations).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from . import fixed_point as fp
from ..validate import check_positive, check_positive_int
from .activations import Activation


class DoubleBackwardError(RuntimeError):
    """A second derivative through the implicit layer was asked for (not supported)."""


DOUBLE_BACKWARD_MESSAGE = (
    "the implicit layer is differentiable once: a second derivative through its fixed point "
    "(create_graph=True followed by another backward, e.g. a Hessian-vector product or a "
    "gradient penalty) is not supported")


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on the adjoint solution ``v``, tied to ``anchor`` (which depends on every input
    of the layer); differentiating through it raises :class:`DoubleBackwardError`."""

    @staticmethod
    def forward(ctx, v, anchor):
        return v.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise DoubleBackwardError(DOUBLE_BACKWARD_MESSAGE)


BACKWARDS = ("implicit", "jacobian-free")


@dataclass
class SolverConfig:
    """Settings of the forward and adjoint solves (nothing here persists between calls)."""
    solver: str = "average"
    tol: float = 1e-4
    max_iter: int = 300
    backward_solver: str | None = None  # None: same as the forward solver
    backward_tol: float | None = None   # None: same as tol
    alpha: float | None = None          # None: α* (docs/math.md §4.2)
    strict: bool = False
    check_every: int | None = None
    backward: str = "implicit"          # or "jacobian-free" (module docstring: biased)

    def validate(self, operator_solvers: tuple[str, ...] | None = None) -> "SolverConfig":
        """Check every setting now (``ValueError`` naming it) rather than at the first solve.

        ``operator_solvers``: the solvers the model's operator supports (conv operators have no
        resolvent or affordable dense form, so the splittings are refused for them)."""
        fp.check_solver_name(self.solver)
        if self.backward_solver is not None:
            fp.check_solver_name(self.backward_solver)
        if operator_solvers is not None:
            for name in {self.solver, self.backward_solver or self.solver} - set(operator_solvers):
                raise ValueError(f"solver {name!r} is not available for this model's operator "
                                 f"(it supports {list(operator_solvers)})")
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        check_positive("tol", self.tol)
        if self.backward_tol is not None:
            check_positive("backward_tol", self.backward_tol)
        check_positive_int("max_iter", self.max_iter)
        if self.check_every is not None:
            check_positive_int("check_every", self.check_every)
        if self.alpha is not None:
            check_positive("alpha", self.alpha)
            if self.alpha != 1 and "picard" in (self.solver, self.backward_solver):
                raise ValueError(f"alpha must be None or 1 with solver 'picard' (use 'average' "
                                 f"for another step), got {self.alpha!r}")
        return self


def linf_norm(eta: torch.Tensor | None):
    """Per-sample ‖x‖∞,η = maxᵢ |xᵢ|/ηᵢ over all non-batch dims."""
    if eta is None:
        return lambda x: x.flatten(1).abs().amax(1)
    return lambda x: (x.abs() / eta).flatten(1).amax(1)


def l1_norm(eta: torch.Tensor | None):
    """Per-sample ‖x‖₁,η = Σᵢ ηᵢ|xᵢ| (the dual norm, used by the adjoint)."""
    if eta is None:
        return lambda x: x.flatten(1).abs().sum(1)
    return lambda x: (x.abs() * eta).flatten(1).sum(1)


def contraction_data(op, eta):
    """(μ⁺, α*) of the operator in the weighted ∞-norm, as 0-d tensors (no host sync)."""
    mu_plus = op.mu_inf(eta).clamp_min(0.0)
    alpha_star = 1.0 / (1.0 - op.min_diagonal().clamp_max(0.0))
    return mu_plus, alpha_star


def implicit_fixed_point(op, w: torch.Tensor, activation: Activation, config: SolverConfig, *,
                         eta: torch.Tensor | None = None, x0: torch.Tensor | None = None,
                         stats: dict | None = None) -> torch.Tensor:
    """Solve x* = Φ(op.multiply(x*) + w); differentiable by the implicit function theorem.

    ``w`` is Bu + b in batch form; ``eta`` the weights of the norm in which op contracts;
    ``stats`` (a dict, optional) receives ``forward`` and, after backward, ``backward``
    :class:`~lipdeq.fixed_point.FixedPointResult` objects.
    """
    phi = activation.fn
    mu_plus, alpha_star = contraction_data(op, eta)
    with torch.no_grad():
        wd = w.detach()
        problem = fp.FixedPointProblem(
            F=lambda x: phi(op.multiply(x) + wd),
            x0=torch.zeros_like(wd) if x0 is None else x0.detach(),
            norm=linf_norm(eta), mu_plus=mu_plus, alpha_star=alpha_star, operator=op,
            extra={"w": wd, "activation": activation})
        result = fp.solve(config.solver, problem, tol=config.tol, max_iter=config.max_iter,
                          alpha=config.alpha, check_every=config.check_every,
                          strict=config.strict, label="forward")
    if stats is not None:
        stats["forward"] = result
    x_star = result.x
    if not torch.is_grad_enabled() or not (w.requires_grad or op.requires_grad):
        return x_star
    z = op.multiply(x_star) + w
    x = phi(z)
    if config.backward == "jacobian-free":
        return x  # g = ∂ℓ/∂x is taken as the adjoint (module docstring: biased, bounded)
    G = activation.derivative(z.detach())
    back_name = config.backward_solver or config.solver
    back_tol = config.backward_tol or config.tol

    def adjoint(g: torch.Tensor | None) -> torch.Tensor | None:
        if g is None:
            return None
        second_order = torch.is_grad_enabled()  # create_graph=True: see the module docstring
        with torch.no_grad():
            gd = g.detach()
            norm = l1_norm(eta)
            adj = fp.FixedPointProblem(
                F=lambda v: op.multiply_transpose(G * v) + gd, x0=gd, norm=norm,
                mu_plus=mu_plus, alpha_star=alpha_star, operator=None,
                extra={"G": G, "g": gd, "transpose_of": op},
                scale_floor=_max_or_zero(norm(gd)).clamp_min(torch.finfo(gd.dtype).tiny))
            res = fp.solve(back_name, adj, tol=back_tol, max_iter=config.max_iter,
                           alpha=config.alpha, check_every=config.check_every,
                           strict=config.strict, label="adjoint")
        if stats is not None:
            stats["backward"] = res
        if second_order:
            return _FirstOrderOnly.apply(res.x, z)
        return res.x

    x.register_hook(adjoint)
    return x


def _max_or_zero(values: torch.Tensor) -> torch.Tensor:
    """max of ``values``, 0 for an empty batch (whose reduction is undefined)."""
    return values.amax() if values.numel() else values.new_zeros(())


@contextmanager
def exact_backward(model):
    """Within the block, ``model``'s fixed point back-propagates by the implicit function theorem
    (the exact gradient, docs/math.md §5) even if it was built with ``backward="jacobian-free"``.

    Attacks need the true input gradient: the Jacobian-free direction is biased (docs/math.md
    §5.6) and an attack following it is weaker than it should be. A model without a lipdeq
    ``SolverConfig`` (any other classifier) is left as it is. Every lipdeq layer inside the model
    is switched (``nn.Sequential``, DDP and other wrappers included). Restored on exit.
    """
    parts = model.modules() if isinstance(model, torch.nn.Module) else [model]
    saved = [(m, m.solver_config) for m in parts
             if isinstance(getattr(m, "solver_config", None), SolverConfig)
             and m.solver_config.backward != "implicit"]
    for m, config in saved:
        m.solver_config = replace(config, backward="implicit")
    try:
        yield model
    finally:
        for m, config in saved:
            m.solver_config = config
