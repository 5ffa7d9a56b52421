"""The parts every gradient attack is built from, and the losses they maximize.

An attack approximately solves  max_{delta in Delta} loss(h(x + delta), y)  with
Delta = {delta : ||delta||_p <= eps, x + delta in bounds}. The parts, after Madry et
al.: `input_gradient` (d loss / d x), `steepest_ascent` (the best unit step for the
norm), `project` (back into the eps-ball) and `random_init` (a start inside it).
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    d = math.prod(x.shape[1:])
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

INTEGERS = ("steps", "restarts", "queries", "n_targets", "search_steps", "batch_size")
AT_LEAST_ZERO = ("eps", "c", "kappa", "decay")  # every other number must be > 0
Fn = TypeVar("Fn", bound=Callable[..., object])


def check_args(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "linf",
    bounds: Bounds = (0.0, 1.0),
    **numbers: object,
) -> tuple:
    """Refuse what an attack cannot attack correctly (shared by every attack).

    Raises ValueError naming the first bad argument: x not a float tensor in the
    model's dtype, y not int64 (N,), an unknown norm, bad bounds, a bad number (see
    `checked_number`), x with NaN, inf or values outside `bounds`, or labels outside
    the model's classes. The data checks run once per call: one forward pass on
    x[:2] (for the number of classes) and one host sync.

    Args:
        model, x, y, norm, bounds: As the attack was given them.
        **numbers: The attack's numeric arguments, eps first where it has one.

    Returns:
        The values of `numbers` in the order given, as Python ints or floats.
    """
    if not (isinstance(x, Tensor) and torch.is_floating_point(x)):
        raise ValueError(f"x must be a float tensor, got {getattr(x, 'dtype', x)!r}")
    if not (isinstance(y, Tensor) and y.dtype == torch.int64 and y.shape == (len(x),)):
        got = f"{y.dtype} {tuple(y.shape)}" if isinstance(y, Tensor) else repr(y)
        raise ValueError(f"y must be int64 of shape ({len(x)},), got {got}")
    if norm not in NORMS:
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    lo, hi = bounds
    if not lo < hi:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    values: dict[str, float | int] = {}
    for name, value in numbers.items():
        # eps = 0: nothing to search, so a zero step size is fine (alpha = eps / 4)
        zero_ok = name in AT_LEAST_ZERO or (name == "alpha" and values.get("eps") == 0)
        values[name] = checked_number(name, value, zero_ok=zero_ok)
    dtype = _model_dtype(model)
    if dtype is not None and x.dtype != dtype:
        raise ValueError(
            f"x is {str(x.dtype)[6:]} but the model computes in {str(dtype)[6:]}: "
            f"pass x.to({dtype})"
        )
    if len(x):
        _check_data(model, x, y, bounds)
    return tuple(values.values())


def checked_number(name: str, value: object, *, zero_ok: bool = False) -> float | int:
    """`value` as a Python int (names in INTEGERS: >= 1) or a finite float (> 0, or
    >= 0 with zero_ok); NumPy scalars and 0-d tensors are converted, bools refused."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        value = value.item()
    is_bool = isinstance(value, bool)
    if name in INTEGERS:
        if is_bool or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        return int(value)
    ok = not is_bool and isinstance(value, numbers.Real) and math.isfinite(value)
    if not (ok and (value >= 0 if zero_ok else value > 0)):
        raise ValueError(
            f"{name} must be a finite number {'>=' if zero_ok else '>'} 0, got "
            f"{value!r}" + (" (a bool is not a number here)" if is_bool else "")
        )
    return float(value)


def restores_buffers(fn: Fn) -> Fn:
    """Decorate fn(model, ...) so that it leaves the model's buffers as it found them.

    A module in train mode updates buffers at every forward pass (BatchNorm's
    running mean and variance, and its batch counter); an attack or an evaluation
    must not retrain the model it measures. The buffers of train-mode modules are
    copied before fn and restored after; a model in eval mode costs nothing. Only
    an nn.Module model is covered (not a function that calls one).
    """

    @functools.wraps(fn)
    def wrapper(model: Model, *args: object, **kwargs: object) -> object:
        saved = [
            (module, name, buffer.clone())
            for module in (model.modules() if isinstance(model, nn.Module) else ())
            if module.training
            for name, buffer in module.named_buffers(recurse=False)
        ]
        try:
            return fn(model, *args, **kwargs)
        finally:
            with torch.no_grad():
                for module, name, value in saved:
                    getattr(module, name).copy_(value)

    return wrapper  # type: ignore[return-value]


def _model_dtype(model: Model) -> torch.dtype | None:
    """The dtype of the model's first floating parameter or buffer, if it has one."""
    if isinstance(model, nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return None


@torch.no_grad()
def _check_data(model: Model, x: Tensor, y: Tensor, bounds: Bounds) -> None:
    """x finite and in bounds, y among the model's classes (x non-empty)."""
    # two examples: BatchNorm in train mode needs more than one. The probe draws no
    # random numbers, so a randomized model (noise, EOT) sees the same draws as it
    # would without the check.
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        logits = model(x[:2])
    if logits.dim() != 2:
        raise ValueError(
            f"the model must map x to logits (N, K), got shape {tuple(logits.shape)}"
        )
    k = logits.shape[1]  # known on the host: no sync
    stats = (~torch.isfinite(x)).sum(), x.amin(), x.amax(), y.amin(), y.amax()
    # one host sync for all five; float64 keeps counts and labels exact
    n_bad, x_lo, x_hi, y_lo, y_hi = torch.stack([s.double() for s in stats]).tolist()
    if n_bad:
        raise ValueError(
            f"x holds {int(n_bad):,} NaN or inf values (of {x.numel():,}): no attack "
            "can search from them; fix or drop those images (see torch.isfinite)"
        )
    if x_lo < bounds[0] or x_hi > bounds[1]:
        raise ValueError(
            f"x lies outside bounds {bounds!r} (min {x_lo:.3g}, max {x_hi:.3g}); "
            "scale inputs to the bounds first"
        )
    if y_lo < 0 or y_hi >= k:
        bad = y[(y < 0) | (y >= k)].unique()[:10].tolist()
        raise ValueError(
            f"y holds labels {bad} outside the model's {k} classes: labels must be "
            f"in [0, {k - 1}]"
        )
