"""Adversarial patches: one universal "sticker" that forces a class wherever it sits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from robustkit.attacks.core import checked_number, restores_buffers
from robustkit.progress import bar
from robustkit.types import Bounds, Model


def apply_patch(
    x: Tensor,
    patch: Tensor,
    *,
    top: Tensor | None = None,
    left: Tensor | None = None,
    margin: int = 0,
) -> Tensor:
    """Paste `patch` (C, s, s) onto every image of x (N, C, H, W).

    The patch replaces the pixels under it (a sticker, not a perturbation). Its
    top-left corner is (top[i], left[i]) for image i; positions not given are drawn
    uniformly among those keeping the patch at least `margin` pixels inside the
    border (on the object, like a sticker on a sign). Differentiable in `patch`.
    """
    n, c, h, w = x.shape
    s = patch.shape[-1]
    if patch.shape != (c, s, s) or s > min(h, w):
        raise ValueError(
            f"patch must be (C={c}, s, s) with s <= {min(h, w)}, "
            f"got {tuple(patch.shape)}"
        )
    if not (isinstance(margin, int) and 0 <= margin and s + 2 * margin <= min(h, w)):
        raise ValueError(
            f"margin={margin!r} leaves no room for a {s}x{s} patch in {h}x{w}"
        )
    if top is None:
        top = torch.randint(margin, h - s - margin + 1, (n,), device=x.device)
    if left is None:
        left = torch.randint(margin, w - s - margin + 1, (n,), device=x.device)
    ar = torch.arange(s, device=x.device)
    pixel = (
        (top.view(n, 1, 1) + ar.view(1, s, 1)) * w
        + left.view(n, 1, 1)
        + ar.view(1, 1, s)
    )
    index = pixel.view(n, 1, s * s).expand(n, c, s * s)  # (N, C, s*s) flat pixel ids
    src = patch.reshape(1, c, s * s).expand(n, c, s * s).to(x.dtype)
    return x.flatten(2).scatter(2, index, src).view_as(x)


@restores_buffers
def train_patch(
    model: Model,
    x: Tensor,
    *,
    target: int,
    size: int,
    steps: int = 500,
    batch_size: int = 128,
    lr: float = 0.03,
    margin: int = 0,
    bounds: Bounds = (0.0, 1.0),
    progress: bool = True,
) -> Tensor:
    """Learn a universal patch that makes the model predict `target` wherever it sits.

    Minimizes E_{x, position} CE(h(apply_patch(x, patch)), target) over the patch's
    pixels with Adam, drawing a random batch of images and random positions each
    step (an expectation over placements, as for a physical sticker), and keeps the
    pixels in `bounds`.

    Args:
        model: Maps inputs to logits; left in its current mode.
        x: Images to train over (N, C, H, W) in `bounds`.
        target: Class the patch should force.
        size: Side of the square patch, in pixels.
        steps: Adam steps.
        batch_size: Images per step.
        lr: Adam learning rate.
        margin: Keep the patch this many pixels inside the border (see apply_patch).
        bounds: Valid pixel range.
        progress: Show a progress bar.

    Returns:
        The patch (C, size, size), detached, in `bounds`.

    Reference:
        Brown et al., "Adversarial Patch", 2017. https://arxiv.org/abs/1712.09665
    """
    side_ok = isinstance(size, int) and not isinstance(size, bool)
    if not (side_ok and 0 < size <= min(x.shape[-2:])):
        raise ValueError(
            f"size must be an int in [1, {min(x.shape[-2:])}], got {size!r}"
        )
    steps = checked_number("steps", steps)
    batch_size = checked_number("batch_size", batch_size)
    lr = checked_number("lr", lr)
    lo, hi = bounds
    patch = torch.empty(x.shape[1], size, size, device=x.device).uniform_(lo, hi)
    patch.requires_grad_(True)
    opt = torch.optim.Adam([patch], lr=lr)
    for _ in bar(range(steps), desc="patch", disable=not progress, unit="step"):
        batch = x[torch.randint(0, len(x), (batch_size,), device=x.device)]
        logits = model(apply_patch(batch, patch, margin=margin))
        loss = F.cross_entropy(
            logits, torch.full_like(logits[:, 0], target, dtype=torch.long)
        )
        (patch.grad,) = torch.autograd.grad(loss, patch)
        opt.step()
        with torch.no_grad():
            patch.clamp_(lo, hi)
    return patch.detach()
