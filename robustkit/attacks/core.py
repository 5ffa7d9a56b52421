"""The parts every gradient attack is built from, and the losses they maximize.

An attack approximately solves  max_{delta in Delta} loss(h(x + delta), y)  with
Delta = {delta : ||delta||_p <= eps, x + delta in bounds}. The parts, after Madry et
al.: `input_gradient` (d loss / d x), `steepest_ascent` (the best unit step for the
norm), `project` (back into the eps-ball) and `random_init` (a start inside it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from robustkit.types import Bounds, LossFn, Model, Norm

NORMS = ("linf", "l2")


# ------------------------------------------------------------------------- losses
# Each loss maps logits (N, K) and labels (N,) to per-example losses (N,), larger
# meaning "more wrong" for the label given. Attacks sum them to take gradients and
# use them per example to keep the best point.


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """Per-example cross-entropy -log softmax(z)_y."""
    return F.cross_entropy(logits, y, reduction="none")


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """Carlini-Wagner margin on logits: max_{i != y} z_i - z_y (> 0 iff misclassified).

    Unlike cross-entropy it does not saturate when the softmax does, which is why
    it sees through defenses that only scale the logits up.

    Reference:
        Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks",
        IEEE S&P 2017. https://arxiv.org/abs/1608.04644
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return others.amax(1) - z_y


def dlr(logits: Tensor, y: Tensor) -> Tensor:
    """Difference of logits ratio: -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3).

    pi sorts the logits in decreasing order. Dividing by z_pi1 - z_pi3 makes the loss
    invariant to shifting and rescaling the logits. Needs at least 3 classes.

    Reference:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an
        ensemble of diverse parameter-free attacks", ICML 2020.
        https://arxiv.org/abs/2003.01690
    """
    z = logits.sort(1, descending=True).values
    return margin(logits, y) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), t the target class.

    Larger when the target's logit overtakes the true class's. Needs 4 classes.
    """
    z = logits.sort(1, descending=True).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return (z_t - z_y) / (z[:, 0] - 0.5 * (z[:, 2] + z[:, 3]) + 1e-12)


LOSSES = {"ce": cross_entropy, "margin": margin, "dlr": dlr}


# --------------------------------------------------------------------- primitives


def input_gradient(model: Model, x: Tensor, y: Tensor, loss_fn: LossFn) -> Tensor:
    """Gradient of sum_i loss_fn(h(x_i), y_i) with respect to x (not the parameters)."""
    x = x.detach().requires_grad_(True)
    loss = loss_fn(model(x), y).sum()
    return torch.autograd.grad(loss, x)[0]


def lp_norm(delta: Tensor, norm: Norm) -> Tensor:
    """Per-example norm of delta (N, ...) -> (N,)."""
    flat = delta.flatten(1)  # (N, C*H*W)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def steepest_ascent(grad: Tensor, norm: Norm) -> Tensor:
    """The unit step v maximizing <grad, v> over ||v|| <= 1: sign(g), or g / ||g||_2."""
    if norm == "linf":
        return grad.sign()
    return grad / _per_example(lp_norm(grad, "l2").clamp_min(1e-12), grad)


def project(delta: Tensor, eps: float, norm: Norm) -> Tensor:
    """Euclidean projection of each delta onto the ball ||delta|| <= eps."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / lp_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
    return delta * _per_example(scale, delta)


def random_init(x: Tensor, eps: float, norm: Norm) -> Tensor:
    """A delta drawn uniformly from the eps-ball (by volume, for both norms)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    # uniform in the L2 ball: a uniform direction times eps * U^(1/d)
    direction = torch.randn_like(x)
    direction = direction / _per_example(lp_norm(direction, "l2").clamp_min(1e-12), x)
    d = x[0].numel()
    radius = eps * torch.rand(len(x), device=x.device, dtype=x.dtype) ** (1.0 / d)
    return direction * _per_example(radius, x)


def clip_to_bounds(x: Tensor, bounds: Bounds) -> Tensor:
    """Clamp x into the valid input range."""
    return x.clamp(*bounds)


def threat_set(
    x: Tensor, eps: float, norm: Norm, bounds: Bounds
) -> Callable[[Tensor], Tensor]:
    """P(v): map a point v back into {x' : ||x' - x|| <= eps, x' in bounds}.

    For L-inf the ball and the bounds are both boxes, so P is one clamp between
    precomputed limits, the exact projection onto their intersection. For L2, v is
    projected onto the ball around x, then clipped to the bounds.
    """
    if norm == "linf":
        low, high = (x - eps).clamp_min(bounds[0]), (x + eps).clamp_max(bounds[1])
        return lambda v: torch.clamp(v, low, high)
    return lambda v: clip_to_bounds(x + project(v - x, eps, "l2"), bounds)


def _per_example(values: Tensor, like: Tensor) -> Tensor:
    """Reshape (N,) to (N, 1, 1, ...) to broadcast against `like`."""
    return values.view(-1, *([1] * (like.dim() - 1)))


# ------------------------------------------------------------------ argument checks


def check_args(
    x: Tensor,
    y: Tensor,
    *,
    eps: float | None = None,
    norm: str = "linf",
    bounds: Bounds = (0.0, 1.0),
    **positive: float,
) -> None:
    """Raise ValueError naming the first bad argument (shared by every attack)."""
    if not torch.is_floating_point(x):
        raise ValueError(f"x must be a float tensor, got dtype {x.dtype}")
    if y.dtype != torch.int64 or y.shape != (len(x),):
        raise ValueError(
            f"y must be int64 of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}"
        )
    if norm not in NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if eps is not None and not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    lo, hi = bounds
    if not lo < hi:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    if len(x) and (x.min() < lo or x.max() > hi):
        raise ValueError(
            f"x lies outside bounds {bounds!r} (min {x.min().item():.3g}, "
            f"max {x.max().item():.3g}); scale inputs to the bounds first"
        )
    if eps == 0:  # nothing to search: a zero step size is fine (e.g. alpha = eps / 4)
        positive.pop("alpha", None)
    for name, value in positive.items():
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be > 0, got {value!r}")
