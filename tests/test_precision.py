"""bf16 attacks through one wrapper: float32 logits, the attack contract intact."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from robustkit import attacks, data, evaluation, precision, zoo


def test_float32_is_the_model_itself_and_a_bad_precision_is_named(mlp):
    assert precision.autocast(mlp, "float32") is mlp
    with pytest.raises(ValueError, match="'bf17'"):
        precision.autocast(mlp, "bf17")


def test_bf16_logits_come_back_in_float32_close_to_the_exact_ones(mlp, blobs):
    x = blobs[0][:64]
    fast = precision.autocast(mlp.eval(), "bf16")
    logits = fast(x)
    assert logits.dtype == torch.float32
    exact = mlp(x)
    assert not torch.equal(logits, exact)  # bf16 really ran
    torch.testing.assert_close(logits, exact, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "attack",
    [
        partial(attacks.fgsm, eps=0.1),
        partial(attacks.pgd, eps=0.1, alpha=0.025, steps=10),
        partial(attacks.pgd, eps=1.0, alpha=0.25, steps=10, norm="l2"),
        partial(attacks.apgd, eps=0.1, steps=10),
        partial(attacks.cw_l2, steps=10),
    ],
    ids=["fgsm", "pgd", "pgd-l2", "apgd", "cw"],
)
def test_attacks_keep_their_contract_in_bf16(attack, mlp, blobs):
    x, y = blobs[0][:64], blobs[1][:64]
    fast = precision.autocast(mlp.eval(), "bf16")
    x_adv = attack(fast, x, y)
    assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert mlp.training is False
    assert all(p.grad is None for p in mlp.parameters())


@pytest.mark.parametrize("name, eps", [("baseline", 0.05), ("pgd", 0.3)])
def test_bf16_robust_accuracy_is_near_float32_on_shipped_models(name, eps):
    """PGD-10 on 300 MNIST test images, shipped models: bf16 within 3 points of
    float32 (measured here: within 0.8 on 500 images), a CPU stand-in for the GPU
    bar of 0.5 points on the full test set (tests/test_gpu.py)."""
    splits = data.load("mnist", n_train=0, n_test=300)
    loader = data.Batches(splits.x_test, splits.y_test, batch_size=300)
    net, _ = zoo.model(name, "mnist")
    pgd = partial(attacks.pgd, eps=eps, alpha=2.5 * eps / 10, steps=10)
    torch.manual_seed(0)
    exact = evaluation.robust_accuracy(net, loader, pgd, progress=False)
    torch.manual_seed(0)
    fast = precision.autocast(net, "bf16")
    lower = evaluation.robust_accuracy(fast, loader, pgd, progress=False)
    assert abs(lower - exact) <= 0.03, (exact, lower)
