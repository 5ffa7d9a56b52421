"""Carlini-Wagner L2: the smallest L2 perturbation that changes the prediction."""

from __future__ import annotations

import torch
from torch import Tensor

from robustkit.attacks.core import (
    check_args,
    checked_number,
    margin,
    restores_buffers,
)
from robustkit.types import Bounds, Model


@restores_buffers
def cw_l2(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    c: float | Tensor = 1.0,
    kappa: float = 0.0,
    steps: int = 100,
    lr: float = 0.1,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Carlini-Wagner L2 attack with a fixed constant c (per example if a tensor).

    Minimizes ||x' - x||_2^2 + c * f(x') with Adam over w, where
    x' = low + (high - low) * (tanh(w) + 1) / 2 keeps x' in bounds without clipping,
    and f(x') = max(z_y - max_{i != y} z_i, -kappa) (targeted: max(max_{i != t} z_i
    - z_t, -kappa)) works on logits, so a saturated softmax does not hide the gradient.
    Each example keeps the smallest successful x' seen; one never fooled returns x.

    Args:
        model: Maps inputs in `bounds` to logits (N, K).
        x: Clean inputs (N, C, H, W) in `bounds`.
        y: True labels (N,), or target labels when targeted=True.
        c: Weight of the misclassification term; larger finds more, bigger examples.
        kappa: Confidence margin required of a success.
        steps: Adam iterations.
        lr: Adam learning rate (in w space); 0.1 converges in ~100 steps on MNIST.
        targeted: Reach class y instead of leaving it.
        bounds: Valid input range.

    Returns:
        x_adv (detached): the smallest-L2 success per example, or x where none.

    Reference:
        Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
        IEEE S&P 2017. https://arxiv.org/abs/1608.04644
    """
    steps, lr, kappa = check_args(
        model, x, y, bounds=bounds, steps=steps, lr=lr, kappa=kappa
    )
    if isinstance(c, Tensor) and c.dim() > 0:
        if c.shape != (len(x),) or (c < 0).any():
            raise ValueError(
                f"c must be a float or a (N,) tensor >= 0, got shape {tuple(c.shape)}"
            )
    else:
        c = checked_number("c", c, zero_ok=True)
    if not len(x):
        return x.clone()
    lo, hi = bounds
    mid, half = x.new_tensor((hi + lo) / 2), (hi - lo) / 2
    # x' = mid + half * tanh(w); start at w = atanh((x - mid) / half), shrunk a little
    # so pixels at the bounds stay finite
    w = torch.atanh((x - mid) / half * (1 - 1e-6)).detach().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr, fused=_fused_ok(x))
    best, best_l2 = x.clone(), torch.full((len(x),), float("inf"), device=x.device)
    for _ in range(steps):
        x_adv = torch.add(mid, torch.tanh(w), alpha=half)
        logits = model(x_adv)
        l2_sq = (x_adv - x).flatten(1).pow(2).sum(1)
        gap = margin(logits, y) * (-1.0 if targeted else 1.0)  # > 0 iff success
        loss = (l2_sq + c * (-gap).clamp_min(-kappa)).sum()
        (w.grad,) = torch.autograd.grad(loss, w)
        opt.step()
        with torch.no_grad():
            better = (gap > 0) & (gap >= kappa) & (l2_sq < best_l2)
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
            best_l2 = torch.where(better, l2_sq, best_l2)
    return best.detach()


@restores_buffers
def cw_l2_search(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    c_init: float = 1.0,
    search_steps: int = 5,
    steps: int = 100,
    lr: float = 0.1,
    kappa: float = 0.0,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Carlini-Wagner L2 with a per-example binary search over the constant c.

    After each run of `cw_l2`: a success lowers the upper bound on c (smaller
    perturbations next), a failure raises the lower bound (c x 10 until a success
    brackets it). The smallest successful perturbation over all runs is kept.

    Args:
        c_init: First constant tried for every example.
        search_steps: Runs of cw_l2 (each `steps` Adam iterations).
        (the rest as in cw_l2)

    Returns:
        x_adv (detached): smallest-L2 success per example, or x where none.
    """
    c_init, search_steps, steps, lr, kappa = check_args(
        model,
        x,
        y,
        bounds=bounds,
        c_init=c_init,
        search_steps=search_steps,
        steps=steps,
        lr=lr,
        kappa=kappa,
    )
    if not len(x):
        return x.clone()
    c = torch.full((len(x),), float(c_init), device=x.device)
    c_lo, c_hi = torch.zeros_like(c), torch.full_like(c, float("inf"))
    best, best_l2 = x.clone(), torch.full_like(c, float("inf"))
    for _ in range(search_steps):
        x_adv = cw_l2(
            model,
            x,
            y,
            c=c,
            kappa=kappa,
            steps=steps,
            lr=lr,
            targeted=targeted,
            bounds=bounds,
        )
        with torch.no_grad():
            pred = model(x_adv).argmax(1)
        success = (pred == y) if targeted else (pred != y)
        l2 = (x_adv - x).flatten(1).norm(dim=1)
        better = success & (l2 < best_l2)
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
        best_l2 = torch.where(better, l2, best_l2)
        c_hi = torch.where(success, torch.minimum(c_hi, c), c_hi)
        c_lo = torch.where(success, c_lo, torch.maximum(c_lo, c))
        c = torch.where(torch.isinf(c_hi), c * 10, (c_lo + c_hi) / 2)
    return best.detach()


def _fused_ok(x: Tensor) -> bool | None:
    """Use the fused Adam kernel where PyTorch has one for this device and dtype."""
    return (
        True if x.device.type in ("cpu", "cuda") and x.dtype == torch.float32 else None
    )
