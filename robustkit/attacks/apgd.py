"""Auto-PGD (Croce & Hein 2020): PGD with momentum and a step size that tunes itself."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from robustkit.attacks.core import (
    LOSSES,
    check_args,
    dlr_targeted,
    random_init,
    restores_buffers,
    steepest_ascent,
    threat_set,
)
from robustkit.types import Bounds, LossFn, Model, Norm


@restores_buffers
def apgd(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    norm: Norm = "linf",
    loss_fn: LossFn | str = "ce",
    restarts: int = 1,
    rho: float = 0.75,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """Auto-PGD: no step size to tune, momentum, and the best point kept.

    Starts with step eta = 2 eps. Each iteration takes a projected steepest-ascent
    step z = P(x_k + eta * s(grad)), then x_{k+1} = P(x_k + 0.75 (z - x_k)
    + 0.25 (x_k - x_{k-1})). At checkpoints (22% of the budget, then shrinking
    intervals) an example halves its eta and restarts from its best point if fewer
    than `rho` of its steps since the last checkpoint raised the loss, or if its best
    loss did not improve and eta was not just halved.

    Args:
        model: Maps inputs in `bounds` to logits (N, K).
        x: Clean inputs (N, C, H, W) in `bounds`.
        y: True labels (N,), or target labels when targeted=True.
        eps: Radius of the threat model.
        steps: Iterations (100 in AutoAttack).
        norm: "linf" or "l2".
        loss_fn: "ce", "dlr" or "margin", or a per-example loss (logits, y) -> (N,).
        restarts: Runs from new random starts, on the examples not yet broken.
        rho: Fraction of loss increases below which the step size is halved.
        targeted: Descend the loss towards the target labels y.
        bounds: Valid input range.

    Returns:
        x_adv (detached): the first success found per example, else its highest-loss
        point; ||x_adv - x|| <= eps.

    Reference:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an
        ensemble of diverse parameter-free attacks", ICML 2020.
        https://arxiv.org/abs/2003.01690
    """
    eps, steps, restarts, rho = check_args(
        model,
        x,
        y,
        norm=norm,
        bounds=bounds,
        eps=eps,
        steps=steps,
        restarts=restarts,
        rho=rho,
    )
    if isinstance(loss_fn, str):
        if loss_fn not in LOSSES:
            raise ValueError(
                f"loss_fn must be one of {sorted(LOSSES)} or a function, "
                f"got {loss_fn!r}"
            )
        loss_fn = LOSSES[loss_fn]
    if eps == 0 or not len(x):
        return x.clone()
    sign = -1.0 if targeted else 1.0

    def objective(logits: Tensor) -> Tensor:
        return sign * loss_fn(logits, y)

    def success(logits: Tensor) -> Tensor:
        return (logits.argmax(1) == y) if targeted else (logits.argmax(1) != y)

    return _with_restarts(
        model,
        x,
        objective,
        success,
        restarts,
        eps=eps,
        steps=steps,
        norm=norm,
        rho=rho,
        bounds=bounds,
    )


@restores_buffers
def apgd_t(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int = 100,
    norm: Norm = "linf",
    n_targets: int = 9,
    restarts: int = 1,
    rho: float = 0.75,
    bounds: Bounds = (0.0, 1.0),
) -> Tensor:
    """APGD-T: targeted APGD on the targeted DLR loss, over the top `n_targets` classes.

    For each of the n_targets classes ranked highest by the clean logits (after the
    prediction itself), runs APGD maximizing (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4)/2)
    on the examples still classified correctly. Any misclassification counts. This
    is the targeted attack of AutoAttack's standard ensemble.

    Args:
        y: True labels (N,) (targets are chosen inside).
        n_targets: Target classes tried per example (at most K - 1).
        (the rest as in apgd)

    Returns:
        x_adv (detached), misclassified wherever any target run succeeded.
    """
    eps, steps, n_targets, restarts, rho = check_args(
        model,
        x,
        y,
        norm=norm,
        bounds=bounds,
        eps=eps,
        steps=steps,
        n_targets=n_targets,
        restarts=restarts,
        rho=rho,
    )
    x_adv = x.clone()
    if eps == 0 or not len(x):
        return x_adv
    with torch.no_grad():
        logits = model(x)
    if not 1 <= n_targets <= logits.shape[1] - 1:
        raise ValueError(
            f"n_targets must be in [1, {logits.shape[1] - 1}], got {n_targets}"
        )
    ranked = logits.argsort(1, descending=True)  # (N, K)
    robust = logits.argmax(1) == y
    for j in range(1, n_targets + 1):
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        x_i, y_i, t_i = x[idx], y[idx], ranked[idx, j]
        objective = lambda z, y_i=y_i, t_i=t_i: dlr_targeted(z, y_i, t_i)  # noqa: E731
        success = lambda z, y_i=y_i: z.argmax(1) != y_i  # noqa: E731
        adv = _with_restarts(
            model,
            x_i,
            objective,
            success,
            restarts,
            eps=eps,
            steps=steps,
            norm=norm,
            rho=rho,
            bounds=bounds,
        )
        with torch.no_grad():
            broken = model(adv).argmax(1) != y_i
        x_adv[idx[broken]] = adv[broken]
        robust[idx[broken]] = False
    return x_adv


def _with_restarts(
    model: Model,
    x: Tensor,
    objective: Callable[[Tensor], Tensor],
    success: Callable[[Tensor], Tensor],
    restarts: int,
    **kwargs,
) -> Tensor:
    """Run _apgd, then re-run it from new starts on the examples not yet broken."""
    x_adv, done = _apgd(model, x, objective, success, **kwargs)
    for _ in range(restarts - 1):
        idx = (~done).nonzero().squeeze(1)
        if len(idx) == 0:
            break
        adv, hit = _apgd(
            model,
            x[idx],
            _subset(objective, idx, len(x)),
            _subset(success, idx, len(x)),
            **kwargs,
        )
        x_adv[idx[hit]] = adv[hit]
        done[idx[hit]] = True
    return x_adv


def _subset(
    fn: Callable[[Tensor], Tensor], idx: Tensor, n: int
) -> Callable[[Tensor], Tensor]:
    """fn evaluated on a subset of the batch: scatter the rows into place first."""

    def on_subset(logits: Tensor) -> Tensor:
        full = logits.new_zeros(n, logits.shape[1]).index_copy(0, idx, logits)
        return fn(full)[idx]

    return on_subset


def _apgd(
    model: Model,
    x: Tensor,
    objective: Callable[[Tensor], Tensor],
    success: Callable[[Tensor], Tensor],
    *,
    eps: float,
    steps: int,
    norm: Norm,
    rho: float,
    bounds: Bounds,
) -> tuple[Tensor, Tensor]:
    """One APGD run. Returns (x_adv, success flags)."""
    n = len(x)
    expand = lambda t: t.view(-1, *[1] * (x.dim() - 1))  # noqa: E731

    def loss_and_grad(x_k: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x_k = x_k.detach().requires_grad_(True)
        logits = model(x_k)
        loss = objective(logits)
        return loss.detach(), torch.autograd.grad(loss.sum(), x_k)[0], logits.detach()

    to_ball = threat_set(x, eps, norm, bounds)  # P: into the eps-ball, then the bounds
    x_k = to_ball(x + random_init(x, eps, norm))
    loss, grad, logits = loss_and_grad(x_k)
    hit = success(logits)
    x_best_adv = torch.where(expand(hit), x_k, x).clone()
    x_best, loss_best, grad_best = x_k.clone(), loss.clone(), grad.clone()
    eta = torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype)
    # checkpoints: after 22% of the budget, then intervals shrinking by 3% down to 6%
    period = max(int(0.22 * steps), 1)
    min_period, shrink = max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    since_check, increases = 0, torch.zeros(n, device=x.device)
    loss_best_at_check = loss_best.clone()
    halved_at_check = torch.zeros(n, dtype=torch.bool, device=x.device)
    x_prev = x_k
    for i in range(steps):
        z = to_ball(torch.addcmul(x_k, expand(eta), steepest_ascent(grad, norm)))
        if i == 0:  # no momentum on the first step
            x_prev, x_k = x_k, z
        else:  # x_k + a (z - x_k) + (1 - a)(x_k - x_prev) = lerp(2 x_k - x_prev, z, a)
            momentum = torch.sub(x_k, x_prev).add_(x_k)
            x_prev, x_k = x_k, to_ball(momentum.lerp_(z, 0.75))
        prev_loss = loss
        loss, grad, logits = loss_and_grad(x_k)
        hit_now = success(logits)
        x_best_adv = torch.where(expand(hit_now & ~hit), x_k, x_best_adv)
        hit = hit | hit_now
        increases += (loss > prev_loss).float()
        improved = loss > loss_best
        x_best = torch.where(expand(improved), x_k, x_best)
        grad_best = torch.where(expand(improved), grad, grad_best)
        loss_best = torch.where(improved, loss, loss_best)
        since_check += 1
        if since_check == period:
            stalled = ~halved_at_check & (loss_best_at_check >= loss_best)
            halve = (increases <= rho * period) | stalled
            eta = torch.where(halve, eta / 2, eta)
            x_k = torch.where(expand(halve), x_best, x_k)
            grad = torch.where(expand(halve), grad_best, grad)
            halved_at_check, loss_best_at_check = halve, loss_best.clone()
            since_check, increases = 0, torch.zeros_like(increases)
            period = max(period - shrink, min_period)
    return torch.where(expand(hit), x_best_adv, x_best).detach(), hit
