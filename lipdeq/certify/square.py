r"""Square Attack at ℓ∞ in torch (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a
query-efficient black-box adversarial attack via random search", ECCV 2020), untargeted, on the
margin loss; score-based (no gradients), so gradient masking cannot fool it.

Threat model (as :mod:`lipdeq.certify.attacks`): u ∈ [0, 1], u' ∈ {‖u' − u‖∞ ≤ ε} ∩ [0, 1].
Images are (C, H, W) (``image_shape``); u is given flattened, (N, C·H·W).

Per sample, minimise the margin m(x) = z_y(x) − max_{j≠y} z_j(x) (m < 0: misclassified):

1. start (query 1): vertical stripes, x = clip₀¹(u + ε s), s ∈ {−1, +1} drawn per (channel,
   column);
2. query i = 2 … ``queries``: pick a square window of side h⁽ⁱ⁾ = max(round(√(p⁽ⁱ⁾ H W)), 1)
   (at most H − 1) at a uniformly random position, set δ = x − u inside it to ε s_c (one random
   sign per channel, redrawn while the window would not change), x_new = clip₀¹(u + δ), and keep
   x_new iff m(x_new) < m(x);
3. stop a sample once m(x) < 0.

p⁽ⁱ⁾ = ``p_init`` halved at the fractions {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000}/10,000
of the query budget (:func:`square_fraction`). ``queries`` counts the stripe start, so the
reference implementations' loop index is i − 1 here: each halving comes one query earlier than
theirs (immaterial at 1,000+ queries; kept so that reported runs stay reproducible). Cost: one forward pass per query and still-robust
sample; the still-robust set is re-read from the device every ``check_every`` queries (the only
host synchronisation).
"""
from __future__ import annotations

import math

import torch

from ..validate import check_positive_int
from .attacks import _eval_mode, _make_generator
from .checks import _attack_box, _check_eps, _check_inputs, _check_label_range, _check_labels

__all__ = ["square", "square_fraction"]

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, i: int, queries: int) -> float:
    """p⁽ⁱ⁾: ``p_init`` / 2^(number of HALVINGS ≤ i·10,000/queries)."""
    scaled = int(i / queries * 10000)
    return p_init / 2 ** sum(scaled > h for h in HALVINGS)


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, labels[:, None])[:, 0]
    return true - logits.scatter(1, labels[:, None], -math.inf).amax(1)


def square(model, u: torch.Tensor, labels: torch.Tensor, eps, *, image_shape, queries: int = 5000,
           p_init: float = 0.8, seed: int | None = 0, generator: torch.Generator | None = None,
           check_every: int = 10) -> torch.Tensor:
    """Square Attack (module docstring); returns u's shape, detached, each row in its box.

    Per sample the returned point is the last accepted one (the first misclassified point found,
    or the point of smallest margin). Randomness comes from ``generator``, else a CPU generator
    seeded with ``seed``, else the global RNG.
    """
    u = _check_inputs(u)
    if u.ndim != 2:
        raise ValueError(f"u must be flattened inputs (N, p), got shape {tuple(u.shape)}")
    labels = _check_labels(labels, u.shape[0])
    e = _check_eps(eps, u)
    queries = check_positive_int("queries", queries)
    check_every = check_positive_int("check_every", check_every)
    if not (isinstance(p_init, (int, float)) and 0 < p_init <= 1):
        raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}")
    C, H, W = (int(s) for s in image_shape)
    if C * H * W != u.shape[1] or min(H, W) < 2:
        raise ValueError(f"image_shape {tuple(image_shape)} does not fit inputs with {u.shape[1]} "
                         f"entries (and needs H, W ≥ 2)")
    gen = _make_generator(seed, generator)

    def draw(fn, *shape, **kw):  # CPU draws (reproducible on every device), then moved
        return (fn(*shape, generator=gen, **kw) if gen is not None else fn(*shape, **kw)).to(u.device)

    N = u.shape[0]
    u0 = u.detach().view(N, C, H, W)
    ee = e.view(N, 1, 1, 1)
    signs = draw(torch.randint, 0, 2, (N, C, 1, W), dtype=torch.int64).to(u.dtype) * 2 - 1
    lo, hi = (t.view(N, C, H, W) for t in _attack_box(u, eps))
    x = torch.minimum(torch.maximum(u0 + ee * signs, lo), hi)
    rows = torch.arange(H, device=u.device).view(1, 1, H, 1)
    cols = torch.arange(W, device=u.device).view(1, 1, 1, W)
    with _eval_mode(model), torch.no_grad():
        logits = model(x.view(N, -1))
        _check_label_range(labels, logits.shape[-1])
        margin = _margin(logits, labels)
        active = torch.arange(N, device=u.device)
        for i in range(1, queries):
            if (i - 1) % check_every == 0:
                active = active[margin[active] > 0]
                if active.numel() == 0:
                    break
            n = active.numel()
            side = min(max(int(round(math.sqrt(square_fraction(p_init, i, queries) * H * W))), 1), H - 1, W - 1)
            r0 = draw(torch.randint, 0, H - side + 1, (n,)).view(n, 1, 1, 1)
            c0 = draw(torch.randint, 0, W - side + 1, (n,)).view(n, 1, 1, 1)
            window = (rows >= r0) & (rows < r0 + side) & (cols >= c0) & (cols < c0 + side)
            ua, xa, ea, la, ha = u0[active], x[active], ee[active], lo[active], hi[active]
            s = draw(torch.randint, 0, 2, (n, C, 1, 1), dtype=torch.int64).to(u.dtype) * 2 - 1
            cand = torch.where(window, torch.minimum(torch.maximum(ua + ea * s, la), ha), xa)
            # a window that would not change: flip its signs (the only other value it can take)
            same = ((cand - xa).abs().flatten(1).amax(1) == 0).view(n, 1, 1, 1)
            cand = torch.where(window & same, torch.minimum(torch.maximum(ua - ea * s, la), ha), cand)
            m_new = _margin(model(cand.view(n, -1)), labels[active])
            better = m_new < margin[active]
            x[active] = torch.where(better.view(n, 1, 1, 1), cand, xa)
            margin[active] = torch.where(better, m_new, margin[active])
    return x.view(N, -1)
