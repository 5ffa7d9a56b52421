"""A `Normalize` first layer and small reference models.

Every model here starts with `Normalize`, so it takes inputs in [0, 1] pixel space
and an attack's `eps` means the same thing whatever the data statistics are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustkit import datasets


class Normalize(nn.Module):
    """Map x in [0, 1] to (x - mean) / std per channel, as the model's first layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {mean!r} and std {std!r} must match; std > 0")
        # Buffers, so they follow .to(device) and are saved with the state dict.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def mnist_cnn(dataset: str) -> nn.Sequential:
    """The MNIST network of Madry et al. (2018): 2 conv (32, 64 filters, 5x5, max-pool)
    + 2 fully connected layers (1024, classes). About 3.3 M parameters on 28x28.
    Its channels, classes and first fc layer follow the dataset (H, W divisible by 4).

    Reference:
        Madry et al., "Towards Deep Learning Models Resistant to Adversarial
        Attacks", ICLR 2018. https://arxiv.org/abs/1706.06083
    """
    ds = datasets.get(dataset)
    c, h, w = ds.shape
    return nn.Sequential(
        Normalize(ds.mean, ds.std),
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 1024),
        nn.ReLU(),
        nn.Linear(1024, ds.n_classes),
    )


def small_cnn(dataset: str) -> nn.Sequential:
    """A fast CNN for CPU runs: 2 strided conv (16, 32 filters, 4x4) + 2 fc (100,
    classes). Its channels, classes and first fc layer follow the dataset (H, W
    divisible by 4).

    The network of Wong et al.'s MNIST experiments; about 0.17 M parameters on
    28x28 and roughly 20x fewer multiply-adds than `mnist_cnn`.

    Reference:
        Wong, Rice & Kolter, "Fast is better than free: Revisiting adversarial
        training", ICLR 2020. https://arxiv.org/abs/2001.03994
    """
    ds = datasets.get(dataset)
    c, h, w = ds.shape
    return nn.Sequential(
        Normalize(ds.mean, ds.std),
        nn.Conv2d(c, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * (h // 4) * (w // 4), 100),
        nn.ReLU(),
        nn.Linear(100, ds.n_classes),
    )


class PreActBlock(nn.Module):
    """Pre-activation residual block: BN-ReLU-conv-BN-ReLU-conv, plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(c_in), nn.BatchNorm2d(c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False)
            if stride != 1 or c_in != c_out
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


def preact_resnet18(dataset: str) -> nn.Sequential:
    """PreAct ResNet-18 (the fast-AT CIFAR-10 network), for any image size (adaptive
    pooling) and the dataset's channels and classes.

    Reference:
        He et al., "Identity Mappings in Deep Residual Networks", ECCV 2016.
        https://arxiv.org/abs/1603.05027
    """
    ds = datasets.get(dataset)
    blocks, c_in = [], 64
    for c_out, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        blocks += [PreActBlock(c_in, c_out, stride), PreActBlock(c_out, c_out, 1)]
        c_in = c_out
    return nn.Sequential(
        Normalize(ds.mean, ds.std),
        nn.Conv2d(ds.shape[0], 64, 3, 1, 1, bias=False),
        *blocks,
        nn.BatchNorm2d(512),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, ds.n_classes),
    )


ARCHITECTURES = {
    "mnist_cnn": mnist_cnn,
    "small_cnn": small_cnn,
    "preact_resnet18": preact_resnet18,
}
# What each architecture needs of an image: H and W divisible by this (the two
# stride-2 stages of the small CNNs), and at least this many pixels a side.
SIDE_MULTIPLE = {"mnist_cnn": 4, "small_cnn": 4, "preact_resnet18": 1}
MIN_SIDE = {"mnist_cnn": 4, "small_cnn": 4, "preact_resnet18": 8}


def create(arch: str, dataset: str) -> nn.Sequential:
    """Build the architecture named `arch` for `dataset`: its Normalize layer, input
    channels, image size and number of classes come from the dataset's row.

    Raises ValueError for an unknown name, or an architecture that cannot take the
    dataset's images (the message says which ones can).
    """
    if not (isinstance(arch, str) and arch in ARCHITECTURES):
        raise ValueError(
            f"unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)}"
        )
    check_fits(arch, dataset)
    return ARCHITECTURES[arch](dataset)


def check_fits(arch: str, dataset: str) -> None:
    """Raise ValueError unless architecture `arch` can take `dataset`'s images."""
    if arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {arch!r}: use one of {sorted(ARCHITECTURES)}"
        )
    shape = datasets.get(dataset).shape
    if not _fits(arch, shape):
        fits = [name for name in ARCHITECTURES if _fits(name, shape)]
        raise ValueError(
            f"{arch} takes images whose sides are multiples of {SIDE_MULTIPLE[arch]} "
            f"and at least {MIN_SIDE[arch]}; {dataset} has {_shape(shape)}: "
            f"use {' or '.join(fits)}"
        )


def _fits(arch: str, shape: tuple[int, int, int]) -> bool:
    return all(s % SIDE_MULTIPLE[arch] == 0 and s >= MIN_SIDE[arch] for s in shape[1:])


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
