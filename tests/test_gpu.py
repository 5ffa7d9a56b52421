"""The CUDA paths: data on the GPU, bfloat16 mixed-precision training, attacks and
evaluation on GPU tensors, shipped models on the GPU. Skipped without CUDA (CI has
none); run them with `pytest -m gpu` on a machine that has one.
ROBUSTKIT_TEST_DEVICE=cpu runs the same checks on the CPU, to check the tests."""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch

from robustkit import attacks, data, evaluation, models, precision, training, zoo

DEVICE = torch.device(os.environ.get("ROBUSTKIT_TEST_DEVICE", "cuda"))
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs CUDA"
    ),
]


def on_device(t):
    return t.device.type == DEVICE.type


@pytest.fixture(scope="module")
def mnist():
    return data.load("mnist", n_train=2_000, n_val=200, n_test=500, device=DEVICE)


@pytest.fixture(scope="module")
def trained(mnist):
    """A small CNN trained for two epochs with bfloat16 autocast, as on CUDA."""
    torch.manual_seed(0)
    model = models.create("small_cnn", "mnist").to(DEVICE)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    loader = data.Batches(mnist.x_train, mnist.y_train, batch_size=100, shuffle=True)
    history = training.fit(model, loader, opt=opt, epochs=2, amp=True, progress=False)
    return model.eval(), history


def test_data_loads_onto_the_gpu(mnist):
    for t in (mnist.x_train, mnist.y_train, mnist.x_val, mnist.x_test):
        assert on_device(t)
    assert mnist.x_train.dtype == torch.float32
    assert 0.0 <= mnist.x_train.min() and mnist.x_train.max() <= 1.0
    cpu = data.load("mnist", n_train=2_000, n_val=200, n_test=500)
    # the same seeded subsets; pixels may differ in the last bit (CUDA divides by 255
    # as a multiplication by its reciprocal)
    assert torch.equal(mnist.y_test.cpu(), cpu.y_test)
    torch.testing.assert_close(mnist.x_test.cpu(), cpu.x_test, rtol=0, atol=1e-7)


def test_mixed_precision_training_learns_and_keeps_float32_weights(mnist, trained):
    model, history = trained
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    test = data.Batches(mnist.x_test, mnist.y_test, batch_size=250)
    assert evaluation.accuracy(model, test) > 0.85


ATTACKS = {
    "fgsm": partial(attacks.fgsm, eps=0.3),
    "pgd": partial(attacks.pgd, eps=0.3, alpha=0.075, steps=10),
    "pgd_l2": partial(attacks.pgd, eps=2.0, alpha=0.5, steps=10, norm="l2"),
    "apgd": partial(attacks.apgd, eps=0.3, steps=20),
    "apgd_t": partial(attacks.apgd_t, eps=0.3, steps=20, n_targets=2),
    "square": partial(attacks.square, eps=0.3, queries=100),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attacks_run_on_gpu_tensors_inside_the_ball(mnist, trained, name):
    model, _ = trained
    x, y = mnist.x_test[:200], mnist.y_test[:200]
    x_adv = ATTACKS[name](model, x, y)
    assert on_device(x_adv) and x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert 0.0 <= x_adv.min() and x_adv.max() <= 1.0
    delta = (x_adv - x).flatten(1)
    if name == "pgd_l2":
        assert delta.norm(dim=1).max() <= 2.0 + 1e-4
    else:
        assert delta.abs().max() <= 0.3 + 1e-6
    clean = evaluation.predict(model, x) == y
    fooled = evaluation.predict(model, x_adv) != y
    assert (fooled & clean).float().mean() > 0.3  # an undefended model falls


def test_cw_on_gpu_finds_small_l2_examples(mnist, trained):
    model, _ = trained
    x, y = mnist.x_test[:100], mnist.y_test[:100]
    x_adv = attacks.cw_l2(model, x, y, c=10.0, steps=100)
    assert on_device(x_adv)
    fooled = evaluation.predict(model, x_adv) != y
    assert fooled.float().mean() > 0.5
    assert (x_adv - x).flatten(1).norm(dim=1)[fooled].median() < 3.0


def test_worst_case_evaluation_on_gpu(mnist, trained):
    model, _ = trained
    loader = data.Batches(mnist.x_test[:200], mnist.y_test[:200], batch_size=100)
    result = evaluation.worst_case(
        model,
        loader,
        evaluation.strong_attacks(0.3, steps=20, n_targets=2, queries=100),
        progress=False,
    )
    assert 0.0 <= result.robust_accuracy < 0.2 < result.clean_accuracy


def test_shipped_models_load_onto_the_gpu():
    def no_training(model, config):
        raise AssertionError("a shipped model was retrained")

    model, metrics = zoo.load_or_train(
        "pgd", zoo.config("pgd"), no_training, device=DEVICE
    )
    assert on_device(next(model.parameters()))
    splits = data.load("mnist", n_train=0, n_test=1_000, device=DEVICE)
    loader = data.Batches(splits.x_test, splits.y_test, batch_size=500)
    assert evaluation.accuracy(model, loader) >= 0.98


@pytest.mark.parametrize("name", ["baseline", "pgd", "trades"])
def test_bf16_robust_accuracy_matches_float32_within_half_a_point(name):
    """Issue 15's bar: PGD-20 on the full MNIST test set, a shipped model, float32
    against `precision.autocast(model, "bf16")`: within 0.5 points."""
    splits = data.load("mnist", n_train=0, device=DEVICE)
    loader = data.Batches(splits.x_test, splits.y_test, batch_size=1_000)
    net, _ = zoo.model(name, "mnist", device=DEVICE)
    eps = 0.05 if name == "baseline" else 0.3
    pgd = partial(attacks.pgd, eps=eps, alpha=2.5 * eps / 20, steps=20)
    results = []
    for model in (net, precision.autocast(net, "bf16")):
        torch.manual_seed(0)
        results.append(evaluation.robust_accuracy(model, loader, pgd, progress=False))
    assert abs(results[0] - results[1]) <= 0.005, results
