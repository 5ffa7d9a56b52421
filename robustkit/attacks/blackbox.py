"""Black-box attacks: Square (scores only, no gradients) and transfer (a surrogate)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robustkit.attacks.core import check_args, margin, restores_buffers
from robustkit.types import Attack, Bounds, Model


@restores_buffers
@torch.no_grad()
def square(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    queries: int = 1000,
    p_init: float = 0.8,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Square Attack (L-inf): random search with square updates, using only scores.

    Starts from vertical stripes of +-eps. Each iteration draws, for every example
    not yet fooled, a random square window of side ~ sqrt(p * H * W) and sets it to
    +-eps per channel; the change is kept if it lowers the margin
    z_y - max_{i != y} z_i (targeted: raises the target's margin). p shrinks on a
    fixed schedule. One forward pass per iteration on the unsolved examples; the
    model's gradients are never used, so gradient masking cannot stop it.

    Args:
        model: Maps inputs in `bounds` to logits (N, K); only its outputs are used.
        x: Clean inputs (N, C, H, W) in `bounds`.
        y: True labels (N,), or target labels when targeted=True.
        eps: L-inf radius.
        queries: Iterations (model queries per example), including the start.
        p_init: Initial fraction of pixels changed per iteration.
        targeted: Reach class y instead of leaving it.
        bounds: Valid input range.

    Returns:
        x_adv (detached) with ||x_adv - x||_inf <= eps.

    Reference:
        Andriushchenko et al., "Square Attack: a query-efficient black-box
        adversarial attack via random search", ECCV 2020.
        https://arxiv.org/abs/1912.00049
    """
    eps, queries, p_init = check_args(
        model, x, y, bounds=bounds, eps=eps, queries=queries, p_init=p_init
    )
    if eps == 0 or not len(x):
        return x.clone()
    n, c, h, w = x.shape
    lo, hi = bounds
    sign = 1.0 if targeted else -1.0  # we minimize `score`: <= 0 means fooled

    def score(x_q: Tensor, y_q: Tensor) -> Tensor:
        return sign * margin(model(x_q), y_q)

    stripes = (
        eps * torch.randint(0, 2, (n, c, 1, w), device=x.device).to(x.dtype) * 2 - eps
    )
    x_adv = (x + stripes).clamp(lo, hi)
    best = score(x_adv, y)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    for i in range(1, queries):
        active = (best > 0).nonzero().squeeze(1)
        if len(active) == 0:
            break
        side = max(int(round(math.sqrt(_p_schedule(p_init, i, queries) * h * w))), 1)
        side = min(side, h - 1, w - 1)
        m = len(active)
        top = torch.randint(0, h - side + 1, (m, 1, 1, 1), device=x.device)
        left = torch.randint(0, w - side + 1, (m, 1, 1, 1), device=x.device)
        window = (
            (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        )
        values = eps * (torch.randint(0, 2, (m, c, 1, 1), device=x.device) * 2 - 1).to(
            x.dtype
        )
        x_a, current = x[active], x_adv[active]
        candidate = torch.where(window, (x_a + values).clamp(lo, hi), current)
        # a draw equal to what the window already holds wastes a query: flip its sign
        same = (candidate == current).flatten(1).all(1).view(-1, 1, 1, 1)
        values = torch.where(same, -values, values)
        candidate = torch.where(window, (x_a + values).clamp(lo, hi), current)
        new = score(candidate, y[active])
        better = new < best[active]
        x_adv[active[better]] = candidate[better]
        best[active[better]] = new[better]
    return x_adv


def _p_schedule(p_init: float, i: int, queries: int) -> float:
    """Fraction of pixels per update, halved at fixed points of a 10,000-query run
    (rescaled to the actual budget)."""
    i = int(i / queries * 10_000)
    limits = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
    halvings = sum(i > limit for limit in limits)
    return p_init / 2**halvings


def transfer(
    model: Model, x: Tensor, y: Tensor, *, surrogate: Model, attack: Attack
) -> Tensor:
    """Transfer attack: craft x_adv with `attack` on `surrogate`, ignoring `model`.

    The target model is never queried; the examples rely on transferring from a
    similar model the attacker can differentiate. Pass it where an attack goes,
    e.g. partial(transfer, surrogate=other, attack=partial(pgd, eps=0.3, ...)).

    Reference:
        Papernot et al., "Practical Black-Box Attacks against Machine Learning",
        AsiaCCS 2017. https://arxiv.org/abs/1602.02697
    """
    return attack(surrogate, x, y)
