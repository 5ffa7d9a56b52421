"""The API refuses what it cannot attack, evaluate, build or train correctly: each
bad input is a ValueError naming the value and how to fix it, raised before any
work is done, never a silent wrong answer or an error from deep inside."""

from __future__ import annotations

import copy
import dataclasses
import re
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from robustkit import attacks, datasets, evaluation, models, recipes, training


def conv_net(seed=0, classes=10):
    """A tiny seeded CNN on 1-channel images of any size >= 2x2."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


# every attack, with small budgets; extra keyword arguments go to the attack
ATTACKS = {
    "fgsm": partial(attacks.fgsm, eps=0.1),
    "pgd": partial(attacks.pgd, eps=0.1, alpha=0.05, steps=2),
    "pgd-l2": partial(attacks.pgd, eps=0.5, alpha=0.2, steps=2, norm="l2"),
    "mifgsm": partial(attacks.mifgsm, eps=0.1, alpha=0.05, steps=2),
    "trades_pgd": partial(attacks.trades_pgd, eps=0.1, alpha=0.05, steps=2),
    "apgd": partial(attacks.apgd, eps=0.1, steps=3),
    "apgd_t": partial(attacks.apgd_t, eps=0.1, steps=3, n_targets=2),
    "square": partial(attacks.square, eps=0.1, queries=5),
    "cw_l2": partial(attacks.cw_l2, steps=2),
    "cw_l2_search": partial(attacks.cw_l2_search, steps=2, search_steps=2),
    "transfer": partial(
        attacks.transfer,
        surrogate=conv_net(seed=1),
        attack=partial(attacks.pgd, eps=0.1, alpha=0.05, steps=2),
    ),
}


def batch(n=4, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 6, 6, generator=gen).to(dtype), torch.arange(n) % 10


# ------------------------------------------------------------------ x and y


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", ATTACKS)
def test_nan_or_inf_pixels_are_refused_with_their_count(name, value):
    x, y = batch()
    x[0, 0, :3, 0] = value  # 3 bad pixels
    with pytest.raises(ValueError, match="x holds 3 NaN or inf values"):
        ATTACKS[name](conv_net(), x, y)


@pytest.mark.parametrize("labels", [[0, 10], [-1, 3]])
@pytest.mark.parametrize("name", ATTACKS)
def test_labels_outside_the_models_classes_are_refused(name, labels):
    x, y = batch(2)[0], torch.tensor(labels)
    bad = [v for v in labels if not 0 <= v < 10]
    match = re.escape(f"labels {bad} outside the model's 10 classes")
    with pytest.raises(ValueError, match=match):
        ATTACKS[name](conv_net(), x, y)


def test_the_number_of_classes_comes_from_the_model():
    x, y = batch(2)[0], torch.tensor([0, 3])
    with pytest.raises(ValueError, match=r"\[3\] outside the model's 3 classes"):
        attacks.fgsm(conv_net(classes=3), x, y, eps=0.1)
    attacks.fgsm(conv_net(classes=4), x, y, eps=0.1)  # 3 is a class of 4


@pytest.mark.parametrize("name", ATTACKS)
def test_x_in_another_dtype_than_the_model_is_refused(name):
    x, y = batch(dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"x is float64 but the model computes in float32: pass x.to"
    ):
        ATTACKS[name](conv_net(), x, y)


def test_any_float_dtype_goes_with_a_model_of_that_dtype_or_without_parameters():
    x, y = batch(dtype=torch.float64)
    x_adv = attacks.pgd(conv_net().double(), x, y, eps=0.1, alpha=0.05, steps=2)
    assert x_adv.dtype == torch.float64
    linear = torch.randn(36, 10, dtype=torch.float64)
    x_adv = attacks.fgsm(lambda z: z.flatten(1) @ linear, x, y, eps=0.1)
    assert x_adv.dtype == torch.float64


# ------------------------------------------------------------------ numbers


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), True, -0.1, "0.1"])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd-l2", "apgd", "square"])
def test_eps_must_be_a_finite_number_not_a_bool(name, eps):
    x, y = batch()
    with pytest.raises(ValueError, match=r"eps must be a finite number >= 0, got"):
        ATTACKS[name](conv_net(), x, y, eps=eps)


@pytest.mark.parametrize(
    "name, arg",
    [
        ("pgd", "steps"),
        ("pgd", "restarts"),
        ("mifgsm", "steps"),
        ("trades_pgd", "steps"),
        ("apgd", "steps"),
        ("apgd", "restarts"),
        ("apgd_t", "n_targets"),
        ("square", "queries"),
        ("cw_l2", "steps"),
        ("cw_l2_search", "search_steps"),
    ],
)
@pytest.mark.parametrize("value", [2.5, True, "3", 0])
def test_counts_must_be_ints(name, arg, value):
    x, y = batch()
    with pytest.raises(ValueError, match=rf"{arg} must be an int >= 1, got"):
        ATTACKS[name](conv_net(), x, y, **{arg: value})


def test_train_patch_counts_must_be_ints():
    x = batch()[0]
    with pytest.raises(ValueError, match="steps must be an int >= 1, got True"):
        attacks.train_patch(conv_net(), x, target=1, size=2, steps=True)


# attack, its float arguments, its int arguments
NUMBERS = {
    "fgsm": (attacks.fgsm, dict(eps=0.1), {}),
    "pgd": (attacks.pgd, dict(eps=0.1, alpha=0.03), dict(steps=3, restarts=2)),
    "pgd-l2": (
        partial(attacks.pgd, norm="l2"),
        dict(eps=0.5, alpha=0.2),
        dict(steps=3),
    ),
    "mifgsm": (attacks.mifgsm, dict(eps=0.1, alpha=0.03, decay=0.5), dict(steps=3)),
    "trades_pgd": (attacks.trades_pgd, dict(eps=0.1, alpha=0.03), dict(steps=3)),
    "apgd": (attacks.apgd, dict(eps=0.1, rho=0.75), dict(steps=3)),
    "apgd_t": (attacks.apgd_t, dict(eps=0.1), dict(steps=3, n_targets=2)),
    "square": (attacks.square, dict(eps=0.1, p_init=0.5), dict(queries=5)),
    "cw_l2": (attacks.cw_l2, dict(c=2.0, lr=0.1, kappa=0.5), dict(steps=3)),
    "cw_l2_search": (
        attacks.cw_l2_search,
        dict(c_init=0.5, lr=0.1),
        dict(steps=2, search_steps=2),
    ),
}


@pytest.mark.parametrize(
    "scalar", [np.float32, np.float64, torch.tensor], ids=["np32", "np64", "0-d"]
)
@pytest.mark.parametrize("name", NUMBERS)
def test_numpy_and_0d_tensor_scalars_work_like_python_numbers(name, scalar):
    call, floats, ints = NUMBERS[name]
    x, y = batch()
    torch.manual_seed(0)
    expected = call(conv_net(), x, y, **floats, **ints)
    floats = {k: scalar(v) for k, v in floats.items()}
    ints = {k: np.int64(v) for k, v in ints.items()}
    torch.manual_seed(0)
    assert torch.equal(call(conv_net(), x, y, **floats, **ints), expected)


# ------------------------------------------------------------------ evaluation


def test_an_empty_loader_has_no_accuracy():
    model, (x, y) = conv_net(), batch()
    attack = partial(attacks.fgsm, eps=0.1)
    for loader in ([], [(x[:0], y[:0])]):
        with pytest.raises(ValueError, match="the loader yielded no examples"):
            evaluation.accuracy(model, loader)
        with pytest.raises(ValueError, match="the loader yielded no examples"):
            evaluation.robust_accuracy(model, loader, attack, progress=False)
        with pytest.raises(ValueError, match="the loader yielded no examples"):
            evaluation.worst_case(model, loader, {"fgsm": attack}, progress=False)


def test_sanity_checks_leave_batchnorm_statistics_and_mode_alone():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 10),
    ).train()
    state = copy.deepcopy(model.state_dict())
    x, y = batch(16)
    evaluation.sanity_checks(model, x, y, eps=0.1, steps=2, queries=5, noise_draws=2)
    assert model.training
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("arch", ["small_cnn", "mnist_cnn"])
def test_create_refuses_a_dataset_the_architecture_cannot_take(arch, monkeypatch):
    odd = dataclasses.replace(datasets.TABLE["mnist"], name="odd", shape=(1, 30, 30))
    monkeypatch.setitem(datasets.TABLE, "odd", odd)
    with pytest.raises(
        ValueError,
        match=f"{arch} takes images whose sides are multiples of 4 .*; odd has "
        "1x30x30: use preact_resnet18",
    ):
        models.create(arch, "odd")


@pytest.mark.parametrize(
    "arch, dataset, match",
    [
        ("resnet50", "mnist", "unknown architecture 'resnet50'"),
        (["small_cnn"], "mnist", "unknown architecture"),
        ("small_cnn", "svhn", "unknown dataset 'svhn'"),
    ],
)
def test_create_refuses_unknown_names(arch, dataset, match):
    with pytest.raises(ValueError, match=match):
        models.create(arch, dataset)


# ------------------------------------------------------------------ training config


@pytest.mark.parametrize(
    "key, value",
    [
        ("arch", "resnet50"),
        ("dataset", "imagenet"),
        ("n_train", -1),
        ("n_train", 0),
        ("n_train", 100.0),
        ("n_val", -5),
        ("n_val", "10"),
        ("epochs", 0),
        ("epochs", 2.5),
        ("epochs", True),
        ("batch_size", 0),
        ("lr", 0.0),
        ("lr", -1e-3),
        ("lr", "1e-3"),
        ("lr", float("nan")),
        ("lr", True),
        ("optimizer", "rmsprop"),
        ("schedule", "linear"),
        ("guard", "always"),
        ("eps", -0.1),
        ("eps", float("inf")),
        ("alpha", -0.01),
        ("alpha", float("inf")),
        ("attack_steps", 0),
        ("attack_steps", 2.0),
        ("eps_warmup", 1.5),
        ("eps_warmup", -0.1),
        ("temperature", 0.0),
        ("beta", -1.0),
        ("seed", -1),
        ("seed", 1.5),
        ("seed", False),
        ("random_start", 1),
    ],
)
def test_config_refuses_values_training_cannot_use(key, value):
    allowed = str(recipes.CONFIG_RULES[key][1])
    match = re.escape(f"{key}={value!r} (use {allowed})")
    with pytest.raises(ValueError, match=match):
        recipes.config("pgd", **{key: value})


def test_config_guard_needs_validation_examples():
    with pytest.raises(ValueError, match="guard='best' with n_val=0"):
        recipes.config("pgd", n_val=0)
    assert recipes.config("pgd", n_val=0, guard=None)["n_val"] == 0


def test_config_rules_cover_every_key_and_every_schedule():
    assert set(recipes.CONFIG_RULES) == set(recipes.DEFAULT_CONFIG)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    for kind in training.SCHEDULES:
        training.lr_schedule(opt, kind, epochs=1, steps_per_epoch=1)
    with pytest.raises(ValueError, match="unknown schedule"):
        training.lr_schedule(opt, "linear", epochs=1, steps_per_epoch=1)
    for recipe in recipes.RECIPES:  # the defaults themselves pass, on every dataset
        for name in datasets.names():
            assert recipes.config(recipe, dataset=name)["dataset"] == name
