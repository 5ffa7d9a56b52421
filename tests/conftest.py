"""Shared fixtures: tiny seeded models and data, and a private checkpoint cache."""

from __future__ import annotations

import os

import pytest
import torch
import toy


def pytest_configure(config):
    """Under pytest-xdist (`make test` runs a worker per core), a worker and the
    notebook kernels it starts use its share of the cores instead of all of them:
    the workers would otherwise fight over every core. OMP_NUM_THREADS set by the
    caller wins."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // int(workers))))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_collection_modifyitems(config, items):
    """The notebook runs (a minute each) first, so that the workers share out the
    short tests at the end rather than wait on one long run."""
    items.sort(key=lambda item: item.get_closest_marker("notebook") is None)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Every test session trains into its own cache, never the user's `.cache`.
    The workers of one xdist session share it (the zoo's file locks make a worker
    wait for a model another is training, then load it)."""
    old = os.environ.get("ROBUSTKIT_CACHE")
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's base, above each worker's
    cache = root / "robustkit-cache"
    cache.mkdir(exist_ok=True)
    os.environ["ROBUSTKIT_CACHE"] = str(cache)
    yield
    if old is None:
        del os.environ["ROBUSTKIT_CACHE"]
    else:
        os.environ["ROBUSTKIT_CACHE"] = old


@pytest.fixture
def blobs():
    """A seeded 10-class problem on 1x8x8 'images' in [0, 1] that an MLP can learn."""
    return toy.blobs()


@pytest.fixture
def mlp():
    """A seeded 2-layer MLP on 1x8x8 inputs."""
    return toy.mlp()


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
