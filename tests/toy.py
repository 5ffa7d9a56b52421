"""The tests' tiny seeded problem and model (the `blobs` and `mlp` fixtures), as
plain functions for fixtures of any scope."""

from __future__ import annotations

import torch
from torch import nn


def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded 10-class problem on 1x8x8 'images' in [0, 1] that an MLP can learn."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(10, 1, 8, 8, generator=gen)
    y = torch.arange(10).repeat(40)
    x = (centers[y] + 0.15 * torch.randn(len(y), 1, 8, 8, generator=gen)).clamp(0, 1)
    return x, y


def mlp() -> nn.Sequential:
    """A seeded 2-layer MLP on 1x8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
