"""Defenses that act on the model's input or output (the outer problem is training's).

Input transformations preprocess x before the model sees it: the defended model is
h(t(x)). Each transform is a pure, batched function Tensor -> Tensor (x float
(N, C, H, W) in [0, 1]) that keeps shape, dtype, device and range, configured with
functools.partial, e.g. partial(jpeg, quality=50), and chained with `compose`.

| transform           | random | gradient d t / d x                                |
|---------------------|--------|---------------------------------------------------|
| `jpeg`              | no     | zero (piecewise constant; no autograd through it) |
| `bit_depth`         | no     | zero almost everywhere (rounding)                 |
| `median_filter`     | no     | exact: picks one pixel per window                 |
| `gaussian_blur`     | no     | exact (linear)                                    |
| `tv_denoise`        | no     | exact (unrolled iterations)                       |
| `gaussian_noise`    | yes    | exact for one draw                                |
| `random_resize_pad` | yes    | exact for one draw                                |

A zero gradient is the honest derivative of a quantizer, and it is exactly what
makes such defenses look strong against gradient attacks: gradient masking. The
adaptive attacks of Athalye et al. (2018) get past both failure modes, and both are
wrappers here, so every attack in `robustkit.attacks` can use them unchanged:
`InputTransform(model, t, bpda=True)` replaces the gradient of t by the identity's
(BPDA), and `EOT(model)` averages a randomized model over draws.

Every defense here is an nn.Module wrapping a model, so attacks see it as a model.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.io import decode_jpeg, encode_jpeg

from robustkit.types import Model, Transform


def softmax_with_temperature(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / T): T > 1 softens the distribution, T < 1 sharpens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.softmax(logits / temperature, dim=1)


class Temperature(nn.Module):
    """Outputs model(x) / temperature: the same predictions, rescaled logits.

    With a tiny temperature (e.g. 1e-3) the logits grow 1000-fold and the softmax
    saturates: cross-entropy and its input gradient underflow to exactly zero on
    confidently classified inputs, although nothing about the decision changed. That
    is gradient masking in its simplest form.
    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.model, self.temperature = model, temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature


# ---------------------------------------------------------- deterministic transforms


def jpeg(x: Tensor, *, quality: int = 75) -> Tensor:
    """JPEG compression and decompression: t(x) = decode(encode(x, quality)).

    Each image is rounded to 8 bits, encoded by libjpeg (torchvision.io) and decoded
    again; the lossy step quantizes the 8x8 block DCT coefficients, which removes
    much of a small high-frequency perturbation; colour images also have their
    chroma subsampled 2x (libjpeg's default, even at quality 100). Runs on the CPU
    (the tensors go there and back). t is piecewise constant, so its true gradient
    is zero: the output carries a zero gradient to x rather than none, and
    gradient attacks through it stall (use BPDA).

    Args:
        x: Images (N, C, H, W) in [0, 1] with C = 1 (grayscale) or 3 (RGB).
        quality: libjpeg quality, an int in 1..100 (100 compresses least).

    Returns:
        The decoded images, same shape, dtype and device as x.

    Reference:
        Guo et al., "Countering Adversarial Images using Input Transformations",
        ICLR 2018. https://arxiv.org/abs/1711.00117
    """
    _check_images(x)
    if x.shape[1] not in (1, 3):
        raise ValueError(f"jpeg needs 1 or 3 channels, got x of shape {tuple(x.shape)}")
    if not (isinstance(quality, int) and 1 <= quality <= 100):
        raise ValueError(f"quality must be an int in 1..100, got {quality!r}")
    pixels = (x.detach().clamp(0, 1) * 255).round().to("cpu", torch.uint8)
    with warnings.catch_warnings():  # torchvision >= 0.29 deprecates its image codecs
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = decode_jpeg(encode_jpeg(list(pixels), quality=quality))
    out = torch.stack(decoded).to(x.device, x.dtype) / 255
    return out + 0.0 * x  # the same values, attached to x with gradient zero


def bit_depth(x: Tensor, *, bits: int = 1) -> Tensor:
    """Bit-depth reduction (feature squeezing): t(x) = round(x (2^b - 1)) / (2^b - 1).

    Quantizes every pixel to 2^b evenly spaced levels in [0, 1]; b = 1 binarizes at
    1/2. A perturbation that moves no pixel across a rounding boundary is removed
    entirely. The gradient of round is zero almost everywhere, so gradient attacks
    through it stall (use BPDA).

    Args:
        x: Images (N, C, H, W) in [0, 1].
        bits: Bits per pixel b, an int >= 1 (8 keeps 8-bit images as they are).

    Reference:
        Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
        Neural Networks", NDSS 2018. https://arxiv.org/abs/1704.01155
    """
    _check_images(x)
    if not (isinstance(bits, int) and bits >= 1):
        raise ValueError(f"bits must be an int >= 1, got {bits!r}")
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def gaussian_blur(
    x: Tensor, *, sigma: float = 1.0, kernel_size: int | None = None
) -> Tensor:
    """Gaussian smoothing: t(x) = k * x, a convolution with a Gaussian kernel.

    k_ij is proportional to exp(-(i^2 + j^2) / (2 sigma^2)). The kernel is
    separable, so it runs as two 1-D convolutions per channel, with reflect padding
    at the borders. Linear, hence exactly differentiable: attacks see through it,
    and only the lost high frequencies make them work harder.

    Args:
        x: Images (N, C, H, W) in [0, 1].
        sigma: Standard deviation in pixels, >= 0 (0 returns a copy of x).
        kernel_size: Odd width of the kernel; default 2 ceil(3 sigma) + 1.

    Reference:
        Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
        Neural Networks", NDSS 2018. https://arxiv.org/abs/1704.01155
    """
    _check_images(x)
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    if kernel_size is None:
        kernel_size = 2 * math.ceil(3 * sigma) + 1
    _check_window(x, kernel_size, "kernel_size")
    if sigma == 0:
        return x.clone()
    n, c, h, w = x.shape
    r = kernel_size // 2
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    z = F.pad(x.reshape(n * c, 1, h, w), (r, r, r, r), mode="reflect")
    z = F.conv2d(F.conv2d(z, k.view(1, 1, 1, -1)), k.view(1, 1, -1, 1))
    return z.view(n, c, h, w).clamp(0, 1)


def median_filter(x: Tensor, *, size: int = 3) -> Tensor:
    """Median smoothing: t(x)_ij = median of x over the size x size window at (i, j).

    Per channel, with reflect padding. Removes isolated outlier pixels (salt and
    pepper) while keeping edges. Its gradient is exact: 1 at the window's median
    pixel, 0 elsewhere.

    Args:
        x: Images (N, C, H, W) in [0, 1].
        size: Odd window width (1 returns a copy of x).

    Reference:
        Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in Deep
        Neural Networks", NDSS 2018. https://arxiv.org/abs/1704.01155
    """
    _check_images(x)
    _check_window(x, size, "size")
    n, c, h, w = x.shape
    r = size // 2
    windows = F.unfold(F.pad(x, (r, r, r, r), mode="reflect"), size)  # (N, C*s*s, H*W)
    return windows.view(n, c, size * size, h * w).median(2).values.view(n, c, h, w)


def tv_denoise(x: Tensor, *, weight: float = 0.1, steps: int = 20) -> Tensor:
    """Total-variation denoising: t(x) = argmin_u ||u - x||^2 / 2 + weight TV(u).

    TV(u) = sum_ij ||grad u_ij||_2 (isotropic, per channel) favours piecewise
    constant images, so noise goes and edges stay. Solved by `steps` iterations of
    Chambolle's dual projection: with f = x / weight and the gradient g of
    div p - f, p <- (p + g / 4) / (1 + |g| / 4), and u = x - weight div p. Made of
    differentiable tensor ops, so the gradient goes through the unrolled steps.

    Args:
        x: Images (N, C, H, W) in [0, 1].
        weight: Strength of the smoothing, >= 0 (0 returns a copy of x).
        steps: Iterations, an int >= 1.

    References:
        Guo et al., "Countering Adversarial Images using Input Transformations",
        ICLR 2018. https://arxiv.org/abs/1711.00117
        Chambolle, "An Algorithm for Total Variation Minimization and
        Applications", J. Math. Imaging Vis. 20, 2004.
    """
    _check_images(x)
    if not (isinstance(weight, (int, float)) and weight >= 0):
        raise ValueError(f"weight must be a number >= 0, got {weight!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if weight == 0:
        return x.clone()
    p_h, p_w = torch.zeros_like(x), torch.zeros_like(x)
    for _ in range(steps):
        g_h, g_w = _grad(_div(p_h, p_w) - x / weight)
        scale = 1 + 0.25 * (g_h**2 + g_w**2 + 1e-12).sqrt()
        p_h, p_w = (p_h + 0.25 * g_h) / scale, (p_w + 0.25 * g_w) / scale
    return (x - weight * _div(p_h, p_w)).clamp(0, 1)


def _grad(u: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences along H and W, zero at the last row / column."""
    g_h = F.pad(u[:, :, 1:] - u[:, :, :-1], (0, 0, 0, 1))
    g_w = F.pad(u[..., 1:] - u[..., :-1], (0, 1))
    return g_h, g_w


def _div(p_h: Tensor, p_w: Tensor) -> Tensor:
    """Divergence, minus the adjoint of `_grad` (backward differences)."""
    d_h = p_h - F.pad(p_h[:, :, :-1], (0, 0, 1, 0))
    d_w = p_w - F.pad(p_w[..., :-1], (1, 0))
    return d_h + d_w


# -------------------------------------------------------------- random transforms


def gaussian_noise(x: Tensor, *, sigma: float = 0.1) -> Tensor:
    """Additive Gaussian noise: t(x) = clip(x + sigma z), z ~ N(0, I).

    A new z per call, from the global torch RNG. A randomized defense: attack it
    with EOT, which averages the model over draws of z.

    Args:
        x: Images (N, C, H, W) in [0, 1].
        sigma: Standard deviation of the noise, >= 0.

    Reference:
        Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
        Security", ICML 2018. https://arxiv.org/abs/1802.00420
    """
    _check_images(x)
    if not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"sigma must be a number >= 0, got {sigma!r}")
    return (x + sigma * torch.randn_like(x)).clamp(0, 1)


def random_resize_pad(x: Tensor, *, max_extra: int = 4) -> Tensor:
    """Random resizing and padding, resampled back to the input size.

    Per image: resize the H x W image to (H + r) x (W + r), r uniform in
    {0, ..., max_extra}; place it at a uniformly random offset on a zero canvas of
    (H + max_extra) x (W + max_extra); resize the canvas back to H x W, so the model
    sees its usual input size. The three steps are one affine map, done as a single
    bilinear resampling (affine_grid + grid_sample): exactly differentiable for one
    draw. Uses the global torch RNG; attack it with EOT.

    Args:
        x: Images (N, C, H, W) in [0, 1].
        max_extra: Largest enlargement r in pixels, an int >= 0 (0: x, resampled).

    Reference:
        Xie et al., "Mitigating Adversarial Effects Through Randomization",
        ICLR 2018. https://arxiv.org/abs/1711.01991
    """
    _check_images(x)
    if not (isinstance(max_extra, int) and max_extra >= 0):
        raise ValueError(f"max_extra must be an int >= 0, got {max_extra!r}")
    n, _, h, w = x.shape
    kw = {"device": x.device, "dtype": x.dtype}
    r = torch.randint(0, max_extra + 1, (n,), device=x.device).to(x.dtype)
    # offsets (top, left) uniform in {0, ..., max_extra - r}, per image
    top, left = ((max_extra - r + 1) * torch.rand(2, n, **kw)).floor()
    # output coordinate u in [-1, 1] over the canvas -> coordinate in the image:
    # v = (S / s) u + (S - 2 offset) / s - 1, with canvas size S and image size s
    theta = torch.zeros(n, 2, 3, **kw)
    for row, size, offset in ((0, w, left), (1, h, top)):
        canvas, scaled = size + max_extra, size + r
        theta[:, row, row] = canvas / scaled
        theta[:, row, 2] = (canvas - 2 * offset) / scaled - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    return out.clamp(0, 1)


# ----------------------------------------------------------------------- composing


def compose(*transforms: Transform) -> Transform:
    """The chain x -> t_k(... t_2(t_1(x))): transforms apply in the order given.

    Example: compose(partial(bit_depth, bits=4), partial(median_filter, size=3)).
    """
    if not transforms:
        raise ValueError("compose needs at least one transform, got none")
    for t in transforms:
        if not callable(t):
            raise ValueError(f"every transform must be callable, got {t!r}")
    return partial(_chain, transforms=transforms)


def _chain(x: Tensor, *, transforms: tuple[Transform, ...]) -> Tensor:
    for t in transforms:
        x = t(x)
    return x


# ------------------------------------------------------ defended models, adaptively


class _BPDA(torch.autograd.Function):
    """Forward: t(x). Backward: the incoming gradient unchanged, as if t(x) = x."""

    @staticmethod
    def forward(ctx, x: Tensor, transform: Transform) -> Tensor:
        return transform(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad, None


class InputTransform(nn.Module):
    """The defended model x -> h(t(x)): preprocess the input, then classify.

    With bpda=False the input gradient is the true one, grad_x L(h(t(x))) =
    J_t(x)^T grad_z L(h(z)) at z = t(x): zero for `jpeg` and `bit_depth`, which is
    why gradient attacks fail on them (masking, not robustness). With bpda=True the
    forward pass is the same but the backward pass takes J_t = I (Backward Pass
    Differentiable Approximation, for t(x) close to x):

        grad_x L ~ grad_z L(h(z)) at z = t(x).

    Evaluate accuracy on the model with bpda=False and attack the one with
    bpda=True: they make the same predictions.

    Args:
        model: The classifier h, mapping inputs in [0, 1] to logits.
        transform: t, Tensor -> Tensor, e.g. partial(jpeg, quality=75).
        bpda: Differentiate t as the identity in the backward pass.

    Reference:
        Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
        Security", ICML 2018. https://arxiv.org/abs/1802.00420
    """

    def __init__(
        self, model: Model, transform: Transform, *, bpda: bool = False
    ) -> None:
        super().__init__()
        if not callable(transform):
            raise ValueError(f"transform must be callable, got {transform!r}")
        self.model, self.transform, self.bpda = model, transform, bpda

    def forward(self, x: Tensor) -> Tensor:
        z = _BPDA.apply(x, self.transform) if self.bpda else self.transform(x)
        return self.model(z)

    def extra_repr(self) -> str:
        return f"transform={self.transform!r}, bpda={self.bpda}"


class EOT(nn.Module):
    """Expectation over Transformation: the mean logits of a randomized model.

    Outputs (1/S) sum_{s=1..S} h_s(x), the logits of `samples` independent forward
    passes (fresh randomness in each). Its input gradient is the average of the
    per-draw logit gradients, a Monte Carlo estimate of grad_x E_t[h(t(x))], so an
    attack on EOT(model) ascends the expected model rather than one random draw
    (strictly, the loss of the averaged logits, close to Athalye et al.'s average
    of the loss gradients). Every attack gets EOT by being handed EOT(model); to
    measure it, let the attack see EOT(model) and the evaluation see the model:
    partial(attacks.transfer, surrogate=EOT(model), attack=...). Combine with BPDA
    as EOT(InputTransform(h, t, bpda=True)).

    Args:
        model: A randomized model (e.g. InputTransform(h, gaussian_noise)).
        samples: Forward passes S averaged per call, an int >= 1.

    Reference:
        Athalye, Engstrom, Ilyas & Kwok, "Synthesizing Robust Adversarial
        Examples", ICML 2018. https://arxiv.org/abs/1707.07397
        Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
        Security", ICML 2018. https://arxiv.org/abs/1802.00420
    """

    def __init__(self, model: Model, *, samples: int = 10) -> None:
        super().__init__()
        if not (isinstance(samples, int) and samples >= 1):
            raise ValueError(f"samples must be an int >= 1, got {samples!r}")
        self.model, self.samples = model, samples

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"


# ------------------------------------------------------------------ argument checks


def _check_images(x: Tensor) -> None:
    if not (torch.is_floating_point(x) and x.dim() == 4):
        raise ValueError(
            f"x must be a float tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}"
        )


def _check_window(x: Tensor, size: int, name: str) -> None:
    """An odd window that reflect padding can serve (half-width < H and < W)."""
    if not (isinstance(size, int) and size >= 1 and size % 2 == 1):
        raise ValueError(f"{name} must be an odd int >= 1, got {size!r}")
    if size // 2 >= min(x.shape[2:]):
        raise ValueError(
            f"{name}={size} is too large for images of size {tuple(x.shape[2:])}"
        )
