"""Shared fixtures: tiny seeded models and data, and a private checkpoint cache."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test session trains into its own cache, never the user's `.cache`."""
    old = os.environ.get("ROBUSTKIT_CACHE")
    os.environ["ROBUSTKIT_CACHE"] = str(tmp_path_factory.mktemp("robustkit-cache"))
    yield
    if old is None:
        del os.environ["ROBUSTKIT_CACHE"]
    else:
        os.environ["ROBUSTKIT_CACHE"] = old


@pytest.fixture
def blobs():
    """A seeded 10-class problem on 1x8x8 'images' in [0, 1] that an MLP can learn."""
    gen = torch.Generator().manual_seed(0)
    centers = torch.rand(10, 1, 8, 8, generator=gen)
    y = torch.arange(10).repeat(40)
    x = (centers[y] + 0.15 * torch.randn(len(y), 1, 8, 8, generator=gen)).clamp(0, 1)
    return x, y


@pytest.fixture
def mlp():
    """A seeded 2-layer MLP on 1x8x8 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="session")
def mnist_baseline(private_cache):
    """The quick MNIST baseline (the config notebook 00 uses with QUICK parameters),
    trained once per session through the zoo, and 500 test images."""
    from functools import partial

    from robustkit import data, recipes, zoo

    cfg = recipes.config(n_train=5_000, epochs=5)
    model, _ = zoo.load_or_train(
        "baseline", cfg, partial(recipes.train, progress=False)
    )
    splits = data.load("mnist", n_train=0, n_test=500, seed=0)
    return model, splits.x_test, splits.y_test
