r"""``ImplicitNetwork``: x = Φ(Ax + Bu + b), y = Cx + c (+ Du), kept well-posed (docs/math.md §1, §3).

The condition (``lipdeq.conditions``) decides how A stays well-posed: ``mu_inf``/``norm_inf``
by projection after each optimizer step (:meth:`ImplicitNetwork.project_`), ``nemon``/
``monotone``/``lben`` through a parameterization of raw tensors, ``none`` not at all. The fixed
point and its gradient come from :func:`lipdeq.implicit.implicit_fixed_point`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from . import fixed_point as fp
from .activations import get_activation
from ..conditions.sets import get_condition
from .implicit import SolverConfig, implicit_fixed_point
from .operators import DenseOperator
from ..geometry import sign_split
from ..conditions.parametrization import parametrize_condition, raw_tensors


class IllPosedError(ValueError):
    """γ ≥ 1 (or another setting) gives no well-posedness guarantee and no override was given."""


def check_gamma(gamma: float, condition: str, allow_ill_posed: bool) -> float:
    g = float(gamma)
    if not math.isfinite(g):
        raise ValueError(f"gamma must be finite, got {gamma!r}")
    if condition != "none" and g >= 1 and not allow_ill_posed:
        raise IllPosedError(f"gamma={g} >= 1 gives no well-posedness guarantee; pass "
                            f"allow_ill_posed=True (CLI: --allow-ill-posed) to accept it")
    return g


class FixedPointModel(nn.Module):
    """What every implicit model shares: y = readout(x*(u), u) and the last solve's statistics.

    Subclasses define ``fixed_point(u)`` (which fills ``self._stats``) and ``readout(x, u)``.
    """

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.readout(self.fixed_point(u), u)

    def check_input(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` itself when it is a finite (N, in_features) tensor of the model's dtype and
        device; otherwise ``TypeError``/``ValueError`` saying which (one host sync: finiteness)."""
        if not isinstance(u, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(u).__name__}")
        if u.ndim != 2 or u.shape[1] != self.in_features:
            shape = getattr(self, "in_shape", None)
            what = f" (flattened {shape} images)" if shape else ""
            raise ValueError(f"input must have shape (N, {self.in_features}){what}, "
                             f"got {tuple(u.shape)}")
        if u.dtype != self.B.dtype:
            raise TypeError(f"input dtype {u.dtype} differs from the model's {self.B.dtype} "
                            f"(convert with u.to(model.B.dtype) or the model with .to(dtype))")
        if u.device != self.B.device:
            raise ValueError(f"input is on {u.device}, the model on {self.B.device}")
        if not bool(torch.isfinite(u).all()):
            raise ValueError("input contains NaN or Inf")
        return u

    @property
    def last_forward(self) -> fp.FixedPointResult | None:
        """Result of the last forward solve (iterations, residuals, converged, bound)."""
        return self._stats.get("forward")

    @property
    def last_backward(self) -> fp.FixedPointResult | None:
        """Result of the last adjoint solve (set when backward ran through the last forward)."""
        return self._stats.get("backward")


class ImplicitNetwork(FixedPointModel):
    """Implicit network with a well-posedness condition on A.

    Parameters ``A (n,n), B (n,p), b (n,), C (q,n), c (q,)`` (+ ``D (q,p)`` with feedthrough).
    For parameterized conditions (nemon, mu_inf_weighted, pf, monotone, lben) ``A`` is a
    ``torch.nn.utils.parametrize`` parametrization of raw tensors (``A_raw`` names them;
    :mod:`lipdeq.conditions.parametrization`); for projected ones it is a plain leaf Parameter.
    ``backward``: ``"implicit"`` (the exact adjoint solve) or ``"jacobian-free"`` (one
    Jacobian-transpose application, a biased gradient; bound in :mod:`lipdeq.deq.implicit`).
    """

    def __init__(self, in_features: int, hidden: int, out_features: int, *,
                 activation: str = "relu", gamma: float = 0.95, condition: str = "mu_inf",
                 solver: str | None = None, tol: float = 1e-4, max_iter: int = 300,
                 backward_solver: str | None = None, feedthrough: bool = False,
                 allow_ill_posed: bool = False, alpha: float | None = None,
                 strict: bool = False, condition_options: dict | None = None,
                 backward: str = "implicit"):
        super().__init__()
        for name, v in (("in_features", in_features), ("hidden", hidden),
                        ("out_features", out_features)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.in_features, self.hidden, self.out_features = int(in_features), int(hidden), int(out_features)
        self.activation = get_activation(activation)
        self.gamma = check_gamma(gamma, condition, allow_ill_posed)
        self.allow_ill_posed = bool(allow_ill_posed)
        self.condition_options = dict(condition_options or {})
        self.condition = get_condition(condition, self.gamma, **self.condition_options)
        self.solver_config = SolverConfig(solver=solver or self.condition.default_solver,
                                          tol=tol, max_iter=max_iter,
                                          backward_solver=backward_solver, alpha=alpha,
                                          strict=strict, backward=backward).validate()
        self.feedthrough = bool(feedthrough)
        n, p, q = self.hidden, self.in_features, self.out_features
        A0 = _uniform((n, n), n * n)  # row abs-sums ≈ 1/2: well inside the polytope
        self.B = nn.Parameter(_uniform((n, p), p))
        self.b = nn.Parameter(_uniform((n,), p))
        self.C = nn.Parameter(_uniform((q, n), n))
        self.c = nn.Parameter(_uniform((q,), n))
        self.A = nn.Parameter(A0)
        if self.condition.training == "parameterize":
            # LBEN with lipschitz=L builds A from (raw, B, C): its ℓ2 bound couples all three
            parametrize_condition(self, "A", self.condition, coupled=self._couples_BC())
        self.register_load_state_dict_pre_hook(_rename_legacy_raw_keys)
        if self.feedthrough:
            self.D = nn.Parameter(torch.zeros(q, p))
        self._stats: dict = {}
        self.project_()

    # ----------------------------------------------------------------- structure
    def config(self) -> dict:
        """Constructor arguments (JSON-serializable) to rebuild this model."""
        s = self.solver_config
        return dict(in_features=self.in_features, hidden=self.hidden,
                    out_features=self.out_features, activation=self.activation.name,
                    gamma=self.gamma, condition=self.condition.name, solver=s.solver, tol=s.tol,
                    max_iter=s.max_iter, backward_solver=s.backward_solver,
                    feedthrough=self.feedthrough, allow_ill_posed=self.allow_ill_posed,
                    alpha=s.alpha, strict=s.strict, backward=s.backward,
                    condition_options={k: (v.tolist() if hasattr(v, "tolist") else v)
                                       for k, v in self.condition_options.items()})

    def effective_A(self) -> torch.Tensor:
        """The matrix A of the fixed point (``self.A``; computed from the raw tensors when the
        condition is a parameterization)."""
        return self.A

    @property
    def A_raw(self) -> dict:
        """The raw Parameters of a parameterized A, by the condition's names ({} otherwise)."""
        return raw_tensors(self, "A")

    def _couples_BC(self) -> bool:
        return getattr(self.condition, "lipschitz", None) is not None

    def norm_weights(self, *, differentiable: bool = False) -> torch.Tensor | None:
        """Weights η of the ∞-norm in which A is certified (nemon: e⁻ᵈ; else the condition's).

        Detached unless ``differentiable``: for parameterized conditions η = e⁻ᵈ is a function of
        the raw tensor d, and a bound that uses η (:meth:`lipschitz_bound`) must see that."""
        raw = self.A_raw or None
        eta = self.condition.norm_weights(raw)
        if eta is None:
            return None
        if raw is None:  # fixed weights: one copy per device and dtype, not one per forward
            cached = self.__dict__.get("_eta_on_device")  # (source η, device, dtype, copy)
            if (cached is None or cached[0] is not eta or cached[1] != self.B.device
                    or cached[2] != self.B.dtype):
                cached = (eta, self.B.device, self.B.dtype,
                          eta.to(self.B.device, self.B.dtype).detach())
                self._eta_on_device = cached
            return cached[3]
        eta = eta.to(self.B.device, self.B.dtype)
        return eta if differentiable else eta.detach()

    def weights(self) -> dict:
        """Effective dense tensors {A, B, b, C, c[, D]} (detached), as stored in checkpoints."""
        out = {"A": self.effective_A().detach(), "B": self.B.detach(), "b": self.b.detach(),
               "C": self.C.detach(), "c": self.c.detach()}
        if self.feedthrough:
            out["D"] = self.D.detach()
        return out

    @torch.no_grad()
    def project_(self) -> "ImplicitNetwork":
        """Put A onto the condition's set in place (exact projection, no autograd history).

        A no-op for parameterized and unconstrained conditions. Re-checks the γ guard.
        """
        check_gamma(self.condition.gamma, self.condition.name, self.allow_ill_posed)
        if self.condition.training == "project":
            self.condition.project(self.A.data, out=self.A.data)
        return self

    # ----------------------------------------------------------------- forward
    def operator(self) -> DenseOperator:
        """The linear operator A of the fixed point (what solvers and interval bounds use)."""
        return DenseOperator(self.effective_A())

    def input_map(self, u: torch.Tensor) -> torch.Tensor:
        """w = Bu + b in batch form, shape (N, n)."""
        return u @ self.B.T + self.b

    def input_bounds(self, lower: torch.Tensor, upper: torch.Tensor):
        """Box bounds (w̲, w̄) of Bu + b over u ∈ [lower, upper]: B⁺u̲ + B⁻ū + b, B⁺ū + B⁻u̲ + b."""
        Bp, Bm = sign_split(self.B)
        return (lower @ Bp.T + upper @ Bm.T + self.b, upper @ Bp.T + lower @ Bm.T + self.b)

    def readout_matrices(self):
        """(C, c, D or None): y = xCᵀ + c (+ uDᵀ), with C dense over the flattened state."""
        return self.C, self.c, (self.D if self.feedthrough else None)

    def input_gain_inf(self, eta: torch.Tensor | None = None) -> torch.Tensor:
        """‖[η]⁻¹B‖∞ = maxᵢ Σⱼ |Bᵢⱼ| / ηᵢ (η = 1 when None), without gradient."""
        rows = self.B.detach().abs().sum(-1)
        if eta is not None:
            rows = rows / eta.detach().flatten().to(rows)
        return rows.amax()

    def fixed_point(self, u: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """The hidden state x*(u), shape (N, n); differentiable by the implicit function theorem."""
        if check:
            self.check_input(u)
        self._stats = {}
        return implicit_fixed_point(self.operator(), self.input_map(u), self.activation,
                                    self.solver_config, eta=self.norm_weights(),
                                    stats=self._stats)

    def readout(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        y = x @ self.C.T + self.c
        if self.feedthrough:
            y = y + u @ self.D.T
        return y

    # ----------------------------------------------------------------- bounds
    def mu_inf(self, weighted: bool = False) -> torch.Tensor:
        """μ∞(A) (or μ∞,η(A) with the model's certified weights η when ``weighted``), in float64."""
        from ..geometry import mu_inf
        A = self.effective_A().detach().double()
        eta = self.norm_weights() if weighted else None
        return mu_inf(A, None if eta is None else eta.double())

    def lipschitz_bound(self, norm: str = "inf") -> torch.Tensor:
        """Differentiable ℓ∞ bound ‖C[η]‖∞‖[η]⁻¹B‖∞/(1 − μ∞,η(A)) + ‖D‖∞ (docs/math.md §6.1).

        η is the model's certified weights (η = 1 for projected models), kept in the graph: for
        ``nemon``/``mu_inf_weighted``/``pf`` η = e⁻ᵈ moves with d, so ∂L/∂d includes the η terms
        (detaching η gave ∂L/∂d the wrong sign). Returns +inf when μ∞,η(A) ≥ 1. For the best
        of η = 1, the μ-optimal η and this η use :func:`lipdeq.lipschitz.linf_bound`.
        """
        if norm != "inf":
            raise ValueError(f"lipschitz_bound supports norm='inf' (see lipschitz.l2_bound), got {norm!r}")
        from ..certify.lipschitz import linf_bound_tensors
        return linf_bound_tensors(self.effective_A(), self.B, self.C,
                                  self.D if self.feedthrough else None,
                                  self.norm_weights(differentiable=True))

    @classmethod
    def from_checkpoint(cls, path: Any, map_location: Any = "cpu") -> "ImplicitNetwork":
        """Rebuild a model of this class from a ``lipdeq`` checkpoint.

        :func:`lipdeq.load_checkpoint` is the one entry point (it returns whichever class the
        checkpoint holds); this classmethod calls it and raises ``TypeError`` when the checkpoint
        holds another class (e.g. a conv model), instead of returning a surprise.
        """
        from ..training.checkpoint import load_checkpoint  # the package above, loaded on use
        model = load_checkpoint(path, map_location=map_location)
        if not isinstance(model, cls):
            raise TypeError(f"checkpoint {str(path)!r} holds a {type(model).__name__}, not a "
                            f"{cls.__name__}: use lipdeq.load_checkpoint(path)")
        return model


def _rename_legacy_raw_keys(module, state_dict, prefix, *args) -> None:
    """Checkpoints written before A became a parametrization stored the raw tensors as
    ``A_raw.<name>``; map them to ``parametrizations.A.original<i>``."""
    for i, key in enumerate(module.A_raw):
        old = f"{prefix}A_raw.{key}"
        if old in state_dict:
            state_dict[f"{prefix}parametrizations.A.original{i}"] = state_dict.pop(old)


def _uniform(shape: tuple, fan_in: int) -> torch.Tensor:
    bound = 1.0 / math.sqrt(fan_in)
    return torch.empty(shape).uniform_(-bound, bound)
