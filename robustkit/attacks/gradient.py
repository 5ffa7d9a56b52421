"""Gradient attacks with a fixed budget: FGSM, PGD (L-inf and L2), MI-FGSM."""

from __future__ import annotations

import torch
from torch import Tensor

from robustkit.attacks.core import (
    check_args,
    clip_to_bounds,
    cross_entropy,
    input_gradient,
    lp_norm,
    random_init,
    restores_buffers,
    steepest_ascent,
    threat_set,
)
from robustkit.types import Bounds, LossFn, Model, Norm


@restores_buffers
def fgsm(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    targeted: bool = False,
    loss_fn: LossFn = cross_entropy,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Fast gradient sign method: one step of size eps along the gradient's sign.

    x_adv = clip(x + eps * sign(grad_x loss(h(x), y))), or x - eps * sign(...) with
    targeted=True, which descends the loss towards the target labels y.

    Args:
        model: Maps inputs in `bounds` to logits (N, K).
        x: Clean inputs (N, C, H, W) in `bounds`.
        y: True labels (N,), or target labels when targeted=True.
        eps: L-inf radius, in input units (e.g. 0.3 or 8 / 255).
        targeted: Move towards y instead of away from it.
        loss_fn: Per-example loss (logits, y) -> (N,).
        bounds: Valid input range.

    Returns:
        x_adv, detached, with ||x_adv - x||_inf <= eps.

    Reference:
        Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
        Examples", ICLR 2015. https://arxiv.org/abs/1412.6572
    """
    (eps,) = check_args(model, x, y, bounds=bounds, eps=eps)
    if eps == 0 or not len(x):
        return x.clone()
    sign = -1.0 if targeted else 1.0
    grad = input_gradient(model, x, y, loss_fn)
    return clip_to_bounds(torch.add(x, grad.sign(), alpha=sign * eps), bounds).detach()


@restores_buffers
def pgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: Norm = "linf",
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss_fn: LossFn = cross_entropy,
    bounds: Bounds = (0.0, 1.0),
    init: Tensor | None = None,
) -> Tensor:
    """Projected gradient descent on the loss, inside the eps-ball around x.

    x_adv <- P(x_adv + alpha * steepest_ascent(grad)), where P projects onto the
    eps-ball around x and clips to `bounds` (`core.threat_set`); `targeted` descends
    the loss towards y instead. With
    restarts > 1 each example keeps its worst case over the restarts: a success
    (misclassified, or the target reached) if any restart found one, else the
    highest loss. pgd(steps=1, alpha=eps, random_start=False) equals fgsm.

    Args:
        model: Maps inputs in `bounds` to logits (N, K).
        x: Clean inputs (N, C, H, W) in `bounds`.
        y: True labels (N,), or target labels when targeted=True.
        eps: Radius of the threat model, in input units.
        alpha: Step size per iteration (in the norm's units).
        steps: Number of iterations.
        norm: "linf" or "l2".
        random_start: Start each restart from a uniform draw in the ball.
        restarts: Independent runs; the worst case per example is kept.
        targeted: Move towards y instead of away from it.
        loss_fn: Per-example loss (logits, y) -> (N,): cross_entropy, margin, dlr.
        bounds: Valid input range.
        init: The first restart's start delta (N, C, H, W), used instead of the
            random draw: a caller that splits a batch over processes draws the
            start for the whole batch, as one process would, and passes each its rows.

    Returns:
        x_adv, detached, with ||x_adv - x|| <= eps.

    Reference:
        Madry et al., "Towards Deep Learning Models Resistant to Adversarial
        Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
    """
    eps, alpha, steps, restarts = check_args(
        model,
        x,
        y,
        norm=norm,
        bounds=bounds,
        eps=eps,
        alpha=alpha,
        steps=steps,
        restarts=restarts,
    )
    if eps == 0 or not len(x):
        return x.clone()
    sign = -1.0 if targeted else 1.0
    into_set = threat_set(x, eps, norm, bounds)
    best, best_success, best_loss = x.clone(), None, None
    for restart in range(restarts):
        if init is not None and restart == 0:
            x_adv = into_set(x + _checked_init(init, x))
        else:
            x_adv = into_set(x + random_init(x, eps, norm)) if random_start else x
        for _ in range(steps):
            grad = input_gradient(model, x_adv, y, loss_fn)
            x_adv = into_set(
                torch.add(x_adv, steepest_ascent(grad, norm), alpha=sign * alpha)
            )
        x_adv = x_adv.detach()
        if restarts == 1:
            return x_adv
        success, loss = _success_and_loss(model, x_adv, y, loss_fn, targeted)
        if best_success is None:
            best, best_success, best_loss = x_adv, success, loss
            continue
        # a success beats a failure; between equals, the higher loss wins
        better = (success & ~best_success) | (
            (success == best_success) & (loss > best_loss)
        )
        best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), x_adv, best)
        best_success, best_loss = (
            best_success | success,
            torch.where(better, loss, best_loss),
        )
    return best


@restores_buffers
def mifgsm(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    decay: float = 1.0,
    targeted: bool = False,
    loss_fn: LossFn = cross_entropy,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Momentum iterative FGSM (L-inf): sign steps along an accumulated gradient.

    g <- decay * g + grad / ||grad||_1 ;  x_adv <- P(x_adv + alpha * sign(g)).
    The momentum stabilizes the direction, which helps examples transfer to other
    models (black-box transfer attacks).

    Reference:
        Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018.
        https://arxiv.org/abs/1710.06081
    """
    eps, alpha, steps, decay = check_args(
        model, x, y, bounds=bounds, eps=eps, alpha=alpha, steps=steps, decay=decay
    )
    if eps == 0 or not len(x):
        return x.clone()
    sign = -1.0 if targeted else 1.0
    into_set = threat_set(x, eps, "linf", bounds)
    x_adv, g = x, torch.zeros_like(x)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, loss_fn)
        l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
        g = decay * g + grad / l1.view(-1, *[1] * (x.dim() - 1))
        x_adv = into_set(torch.add(x_adv, g.sign(), alpha=sign * alpha))
    return x_adv.detach()


@restores_buffers
def trades_pgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    steps: int,
    bounds: Bounds = (0.0, 1.0),
    init: Tensor | None = None,
) -> Tensor:
    """TRADES' inner maximization: L-inf PGD on KL(softmax h(x) || softmax h(x')).

    Starts from x + 0.001 * N(0, I) (the KL is flat at x' = x), or from x + `init`
    when given (as in `pgd`), and ignores y: it pushes the prediction away from the
    model's own clean prediction.

    Reference:
        Zhang et al., "Theoretically Principled Trade-off between Robustness and
        Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573
    """
    eps, alpha, steps = check_args(
        model, x, y, bounds=bounds, eps=eps, alpha=alpha, steps=steps
    )
    if eps == 0 or not len(x):
        return x.clone()
    with torch.no_grad():
        p_clean = torch.softmax(model(x), 1)

    def kl(logits: Tensor, _: Tensor) -> Tensor:  # per example
        return (p_clean * (p_clean.clamp_min(1e-12).log() - logits.log_softmax(1))).sum(
            1
        )

    into_set = threat_set(x, eps, "linf", bounds)
    start = 0.001 * torch.randn_like(x) if init is None else _checked_init(init, x)
    x_adv = into_set(x + start)
    for _ in range(steps):
        grad = input_gradient(model, x_adv, y, kl)
        x_adv = into_set(torch.add(x_adv, grad.sign(), alpha=alpha))
    return x_adv.detach()


@restores_buffers
def n_fgsm(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    alpha: float,
    noise: float = 2.0,
    bounds: Bounds = (0.0, 1.0),
    init: Tensor | None = None,
) -> Tensor:
    """N-FGSM's training example: one signed-gradient step from a noisy point, not
    projected back into the eps-ball.

    x_adv = clip(x + eta + alpha * sign(grad_x L(h(x + eta), y))), with eta drawn
    uniformly from [-noise * eps, noise * eps]^d (or `init`), clipped to `bounds`
    only, so ||x_adv - x||_inf reaches noise * eps + alpha: a perturbation for
    training (single-step training without catastrophic overfitting, at the cost
    of one FGSM), not an attack inside the threat model. The paper's defaults:
    noise 2, alpha = eps.

    Reference:
        de Jorge et al., "Make Some Noise: Reliable and Efficient Single-Step
        Adversarial Training", NeurIPS 2022. https://arxiv.org/abs/2202.01181
    """
    eps, alpha, noise = check_args(
        model, x, y, bounds=bounds, eps=eps, alpha=alpha, noise=noise
    )
    if eps == 0 or not len(x):
        return x.clone()
    if init is None:
        init = random_init(x, noise * eps, "linf")
    start = (x + _checked_init(init, x)).clamp(*bounds)
    grad = input_gradient(model, start, y, cross_entropy)
    return torch.add(start, grad.sign(), alpha=alpha).clamp(*bounds).detach()


def _checked_init(init: Tensor, x: Tensor) -> Tensor:
    """`init` if it is a start delta for x (same shape), else a ValueError."""
    if not isinstance(init, Tensor) or init.shape != x.shape:
        shape = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
        raise ValueError(
            f"init must be a delta shaped like x {tuple(x.shape)}, got {shape}"
        )
    return init.to(x)


@torch.no_grad()
def _success_and_loss(
    model: Model, x_adv: Tensor, y: Tensor, loss_fn: LossFn, targeted: bool
) -> tuple[Tensor, Tensor]:
    """Per example: did the attack succeed, and its loss (higher = better attack)."""
    logits = model(x_adv)
    pred = logits.argmax(1)
    success = (pred == y) if targeted else (pred != y)
    return success, loss_fn(logits, y) * (-1.0 if targeted else 1.0)


def perturbation_norm(x_adv: Tensor, x: Tensor, norm: Norm = "linf") -> Tensor:
    """Per-example ||x_adv - x|| (N,), handy for checking an attack stays in budget."""
    return lp_norm(x_adv - x, norm)
