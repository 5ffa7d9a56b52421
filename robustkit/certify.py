"""Certified robustness: proofs that no perturbation in the ball changes a prediction.

Interval bound propagation (IBP; Gowal et al. 2018) pushes the box
[x - eps, x + eps] through the network layer by layer, as a centre mu and a radius
r: an affine layer z = W h + b maps them to W mu + b and |W| r, a monotone layer
(ReLU, pooling) maps the box's ends. The result bounds every logit over the whole
L-inf ball, so an example whose worst-case margin z_y - z_k is positive for every
k != y is *verified*: no attack, present or future, can flip it.

Randomized smoothing (Cohen, Rosenfeld & Kolter 2019) certifies in L2 instead: the
smoothed classifier g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I),
is constant within radius sigma * Phi^-1(p_A) of x whenever the top class has
probability >= p_A; `certify` estimates a lower bound on p_A from samples (a
Clopper-Pearson bound, from scipy) and abstains when it cannot.

    lower, upper = certify.interval_bounds(model, x - eps, x + eps)
    certify.verified_accuracy(model, loader, eps=0.3)
    cert = certify.certify(model, x, sigma=0.25, n0=100, n=10_000, alpha=0.001)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustkit import distributed
from robustkit.models import Normalize
from robustkit.progress import bar
from robustkit.types import Bounds, Loader

ABSTAIN = -1  # the class `predict` and `certify` return when they do not decide
SUPPORTED = (Normalize, nn.Conv2d, nn.Linear, nn.ReLU, nn.Flatten, nn.MaxPool2d,
             nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.BatchNorm2d, nn.BatchNorm1d,
             nn.Identity, nn.Dropout, nn.Sequential)  # fmt: skip

# ------------------------------------------------------------ interval bounds


def layers(model: nn.Module, _path: str = "") -> list[nn.Module]:
    """The model's layers in order, nested nn.Sequential flattened; a layer interval
    bound propagation cannot pass is a ValueError naming it."""
    if not isinstance(model, nn.Sequential):
        model = nn.Sequential(model)
    found = []
    for i, layer in enumerate(model):
        where = f"{_path}{i}"
        if isinstance(layer, nn.Sequential):
            found += layers(layer, f"{where}.")
        elif isinstance(layer, SUPPORTED):
            found.append(layer)
        else:
            names = ", ".join(t.__name__ for t in SUPPORTED)
            raise ValueError(
                f"interval bounds cannot pass layer {where} ({type(layer).__name__}):"
                f" the supported layers are {names}; certify a model built of them "
                "(e.g. models.create('small_cnn', ...))"
            )
    return found


def interval_bounds(
    model: nn.Module, lower: Tensor, upper: Tensor
) -> tuple[Tensor, Tensor]:
    """Elementwise bounds (l, u) on model(x) over every x with lower <= x <= upper."""
    return layer_bounds(model, lower, upper)[-1]


def layer_bounds(
    model: nn.Module, lower: Tensor, upper: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """The bounds (l, u) after each of the model's `layers`, in order: how the box
    grows through the network (the last pair bounds the logits)."""
    if not torch.all(lower <= upper):
        raise ValueError("interval_bounds needs lower <= upper everywhere")
    mu, r = (upper + lower) / 2, (upper - lower) / 2
    out = []
    for layer in layers(model):
        mu, r = _layer(layer, mu, r)
        out.append((mu - r, mu + r))
    return out


def _layer(layer: nn.Module, mu: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """One layer on the box (centre mu, radius r): affine maps move the centre and
    scale the radius by |W|; monotone maps send the ends to the ends."""
    if isinstance(layer, nn.Linear):
        return F.linear(mu, layer.weight, layer.bias), F.linear(r, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        conv = dict(stride=layer.stride, padding=layer.padding,
                    dilation=layer.dilation, groups=layer.groups)  # fmt: skip
        if layer.padding_mode != "zeros":
            raise ValueError(f"{layer}: only zero padding is supported")
        return (
            F.conv2d(mu, layer.weight, layer.bias, **conv),
            F.conv2d(r, layer.weight.abs(), None, **conv),
        )
    if isinstance(layer, Normalize):
        return (mu - layer.mean) / layer.std, r / layer.std
    if isinstance(layer, (nn.BatchNorm2d, nn.BatchNorm1d)):
        if layer.training:
            raise ValueError(f"{layer} is in training mode: call model.eval() first")
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        shift = layer.bias - layer.running_mean * scale
        shape = (1, -1) + (1,) * (mu.dim() - 2)
        scale, shift = scale.view(shape), shift.view(shape)
        return mu * scale + shift, r * scale.abs()
    if isinstance(layer, (nn.Flatten, nn.Identity)) or (
        isinstance(layer, nn.Dropout) and not layer.training
    ):
        return layer(mu), layer(r)
    if isinstance(layer, nn.Dropout):
        raise ValueError(f"{layer} is in training mode: call model.eval() first")
    # monotone elementwise or pooling maps: the box's ends go to the new box's ends
    low, high = layer(mu - r), layer(mu + r)
    return (high + low) / 2, (high - low) / 2


def margin_lower_bounds(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0)
) -> Tensor:
    """Lower bounds, over the L-inf ball of radius eps around each x (within
    `bounds`), on the margins z_y - z_k, shape (N, K); +inf at k = y.

    When the last layer is linear, the margins z_y - z_k = (W_y - W_k) h + b_y - b_k
    are bounded from the box of its input h directly (Gowal et al.'s elision of the
    last layer), which is tighter than subtracting the logits' bounds."""
    _check_eps(eps)
    lower = (x - eps).clamp(*bounds)
    upper = (x + eps).clamp(*bounds)
    *body, last = layers(model)
    if isinstance(last, nn.Linear):
        low, high = interval_bounds(nn.Sequential(*body), lower, upper)
        mu, r = (high + low) / 2, (high - low) / 2
        w = last.weight[y].unsqueeze(1) - last.weight.unsqueeze(0)  # (N, K, H)
        b = 0.0 if last.bias is None else last.bias[y].unsqueeze(1) - last.bias
        centre = torch.einsum("nkh,nh->nk", w, mu.flatten(1)) + b
        margin = centre - torch.einsum("nkh,nh->nk", w.abs(), r.flatten(1))
    else:
        low, high = interval_bounds(model, lower, upper)
        margin = low.gather(1, y[:, None]) - high
    return margin.scatter(1, y[:, None], torch.inf)


def verified(
    model: nn.Module, x: Tensor, y: Tensor, *, eps: float, bounds: Bounds = (0.0, 1.0)
) -> Tensor:
    """Per example: True when IBP proves the prediction is y on the whole ball."""
    with torch.no_grad():
        return (
            margin_lower_bounds(model, x, y, eps=eps, bounds=bounds).min(1).values > 0
        )


def verified_accuracy(
    model: nn.Module,
    loader: Loader,
    *,
    eps: float,
    bounds: Bounds = (0.0, 1.0),
    progress: bool = False,
) -> float:
    """Fraction of examples IBP verifies at eps: a lower bound on the accuracy of any
    attack within the ball (and verified implies correct, so it is <= clean)."""
    count = total = 0
    for x, y in bar(loader, desc=f"IBP eps={eps:g}", disable=not progress,
                    unit="batch"):  # fmt: skip
        count += int(verified(model, x, y, eps=eps, bounds=bounds).sum())
        total += len(y)
    if not total:
        raise ValueError(
            "the loader yielded no examples: an accuracy needs at least one"
        )
    return count / total


def ibp_loss(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    kappa: float,
    bounds: Bounds = (0.0, 1.0),
) -> tuple[Tensor, Tensor]:
    """Gowal et al.'s IBP objective kappa * CE(z(x), y) + (1 - kappa) * CE(z_hat, y),
    where z_hat_k = -(lower bound of z_y - z_k) are the worst-case logits over the
    ball; returns the loss and the clean logits."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if eps > 0 and kappa < 1:
        # through the bare layers (under torchrun `model` is DDP, which the
        # gradient all-reduce needs for the forward pass above)
        bare = distributed.bare(model)
        worst = -margin_lower_bounds(bare, x, y, eps=eps, bounds=bounds)
        worst = worst.scatter(1, y[:, None], 0.0)
        loss = kappa * loss + (1 - kappa) * F.cross_entropy(worst, y)
    return loss, logits


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")


# ------------------------------------------------------- randomized smoothing


class Certificate(NamedTuple):
    """`certify`'s answer per example: the smoothed prediction (ABSTAIN when it does
    not decide), the certified L2 radius (0 where it abstains) and the lower
    confidence bound on the top class's probability under noise."""

    prediction: Tensor
    radius: Tensor
    p_lower: Tensor


def noise_counts(
    model: nn.Module, x: Tensor, *, sigma: float, n: int, batch_size: int = 1_000
) -> Tensor:
    """How often f(x + delta), delta ~ N(0, sigma^2 I), predicts each class: (N, K)
    counts over n draws per example, several examples per batch when n is small."""
    _check_sampling(sigma, n, batch_size)
    per_batch = max(1, batch_size // n)
    rows = []
    with torch.no_grad():
        for i in range(0, len(x), per_batch):
            xs = x[i : i + per_batch]
            counts, left = 0, n
            while left:
                draws = min(left, max(1, batch_size // len(xs)))
                batch = xs.repeat_interleave(draws, 0)
                logits = model(batch + sigma * torch.randn_like(batch))
                votes = F.one_hot(logits.argmax(1), logits.shape[1])
                counts = counts + votes.view(len(xs), draws, -1).sum(1)
                left -= draws
            rows.append(counts)
    return torch.cat(rows)


def predict(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float,
    n: int = 1_000,
    alpha: float = 0.001,
    batch_size: int = 1_000,
) -> Tensor:
    """Cohen et al.'s PREDICT: the smoothed classifier's class per example, or
    ABSTAIN when a two-sided binomial test cannot tell the top two classes apart at
    level alpha (then the answer is wrong with probability at most alpha)."""
    from scipy.stats import binomtest

    counts = noise_counts(model, x, sigma=sigma, n=n, batch_size=batch_size).cpu()
    top2 = counts.topk(2, dim=1)
    out = []
    for (n_a, n_b), c in zip(top2.values.tolist(), top2.indices[:, 0].tolist()):
        p = binomtest(n_a, n_a + n_b, 0.5).pvalue
        out.append(c if p <= alpha else ABSTAIN)
    return torch.tensor(out, device=x.device)


def certify(
    model: nn.Module,
    x: Tensor,
    *,
    sigma: float,
    n0: int = 100,
    n: int = 10_000,
    alpha: float = 0.001,
    batch_size: int = 1_000,
) -> Certificate:
    """Cohen et al.'s CERTIFY: guess the top class c_A from n0 noisy draws, estimate
    p_A = P(f(x + delta) = c_A) from n fresh draws, and take its one-sided
    Clopper-Pearson lower bound at level alpha (scipy's exact interval). If that
    bound is above 1/2, the smoothed classifier predicts c_A everywhere within
    L2 radius sigma * Phi^-1(p_A_lower) of x, with probability >= 1 - alpha over
    the draws; otherwise it abstains."""
    from scipy.stats import binomtest, norm

    guess = noise_counts(model, x, sigma=sigma, n=n0, batch_size=batch_size).argmax(1)
    counts = noise_counts(model, x, sigma=sigma, n=n, batch_size=batch_size)
    hits = counts.gather(1, guess[:, None]).squeeze(1).tolist()
    p_lower = [
        binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha).low for k in hits
    ]
    p = torch.tensor(p_lower, dtype=torch.float64)
    decided = p > 0.5
    radius = torch.where(decided, sigma * torch.from_numpy(norm.ppf(p.numpy())), 0.0)
    prediction = torch.where(decided, guess.cpu(), ABSTAIN)
    return Certificate(
        prediction.to(x.device), radius.float().to(x.device), p.float().to(x.device)
    )


def certified_accuracy(cert: Certificate, y: Tensor, radii: list[float]) -> list[float]:
    """Per radius r: the fraction of examples certified correct at radius >= r (at
    r = 0, the smoothed classifier's accuracy counting abstentions as errors)."""
    correct = cert.prediction == y
    return [int((correct & (cert.radius >= r)).sum()) / len(y) for r in radii]


def _check_sampling(sigma: float, n: int, batch_size: int) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0, got {sigma!r}")
    for name, v in (("n", n), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")


class Noisy(nn.Module):
    """f(x + delta), delta ~ N(0, sigma^2 I), a fresh draw per call and no clipping:
    the base classifier as smoothing sees it. An attack on the smoothed classifier
    ascends EOT(Noisy(f, sigma)) (Salman et al. 2019)."""

    def __init__(self, model: nn.Module, *, sigma: float) -> None:
        super().__init__()
        _check_sampling(sigma, 1, 1)
        self.model, self.sigma = model, sigma

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x + self.sigma * torch.randn_like(x))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
