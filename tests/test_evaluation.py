from functools import partial

import torch

from robustkit import attacks, data, defenses, evaluation


def test_accuracy_and_robust_accuracy(mnist_baseline):
    model, x, y = mnist_baseline
    loader = data.Batches(x, y, batch_size=128)
    clean = evaluation.accuracy(model, loader)
    assert clean == (evaluation.predict(model, x) == y).sum().item() / len(y)
    attack = partial(attacks.pgd, eps=0.1, alpha=0.025, steps=10)
    robust = evaluation.robust_accuracy(model, loader, attack, progress=False)
    assert 0 <= robust < clean
    # eps = 0 makes the robust accuracy the clean accuracy
    assert (
        evaluation.robust_accuracy(
            model, loader, partial(attacks.fgsm, eps=0.0), progress=False
        )
        == clean
    )


def test_robust_accuracy_never_counts_a_clean_mistake():
    """The attack hands back, for every example, an input the model classifies as
    its label: only the clean-correct mask keeps clean mistakes out of the count."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(3))  # predicts the brightest of 3 pixels
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    wrong = torch.tensor([1, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    x = torch.nn.functional.one_hot(torch.where(wrong, (y + 1) % 3, y), 3).float()
    x = x.view(8, 1, 1, 3)
    prototype = torch.nn.functional.one_hot(y, 3).float().view(8, 1, 1, 3)

    def fixes_everything(model, x, y):
        return prototype[: len(x)] if len(x) == 8 else prototype[~wrong]

    clean = evaluation.accuracy(model, [(x, y)])
    assert clean == 5 / 8
    robust = evaluation.robust_accuracy(
        model, [(x, y)], fixes_everything, progress=False
    )
    assert robust == clean
    alone = evaluation.worst_case(
        model, [(x, y)], {"a": fixes_everything}, independent=True, progress=False
    )
    assert alone.robust_accuracy == clean and alone.robust.tolist() == (~wrong).tolist()


def test_curve_starts_at_clean_accuracy_and_does_not_increase(mnist_baseline):
    model, x, y = mnist_baseline
    loader = data.Batches(x, y, batch_size=250)
    make = lambda eps: partial(attacks.pgd, eps=eps, alpha=eps / 4, steps=10)  # noqa: E731
    curve = evaluation.robust_accuracy_curve(
        model, loader, make, [0.0, 0.05, 0.1, 0.2], progress=False
    )
    assert curve[0] == evaluation.accuracy(model, loader)
    assert all(b <= a + 0.01 for a, b in zip(curve, curve[1:])) and curve[-1] < 0.2


def test_worst_case_is_per_example_and_below_every_attack(mnist_baseline):
    model, x, y = mnist_baseline
    loader = data.Batches(x, y, batch_size=250)
    attack_set = {
        "fgsm": partial(attacks.fgsm, eps=0.1),
        "pgd": partial(attacks.pgd, eps=0.1, alpha=0.025, steps=10),
        "square": partial(attacks.square, eps=0.1, queries=100),
    }
    torch.manual_seed(0)
    alone = evaluation.worst_case(
        model, loader, attack_set, independent=True, progress=False
    )
    torch.manual_seed(0)
    seq = evaluation.worst_case(model, loader, attack_set, progress=False)
    assert alone.robust.shape == (len(x),) and alone.robust.dtype == torch.bool
    assert alone.robust_accuracy <= min(alone.per_attack.values())
    assert alone.robust_accuracy == alone.robust.sum().item() / len(x)
    # sequential: accuracy left after each attack only falls, and ends at the worst case
    left = list(seq.per_attack.values())
    assert (
        all(b <= a for a, b in zip(left, left[1:])) and left[-1] == seq.robust_accuracy
    )
    assert abs(seq.robust_accuracy - alone.robust_accuracy) <= 0.02  # randomness aside
    assert seq.clean_accuracy == alone.clean_accuracy >= seq.robust_accuracy


def test_sanity_checks_pass_an_honest_model_and_fail_a_masked_one(mnist_baseline):
    model, x, y = mnist_baseline
    x, y = x[:150], y[:150]
    torch.manual_seed(0)
    honest = evaluation.sanity_checks(model, x, y, eps=0.1, steps=10, queries=300)
    assert honest.passed, str(honest)
    masked = defenses.Temperature(model, temperature=1e-3)  # same decisions, saturated
    torch.manual_seed(0)
    report = evaluation.sanity_checks(masked, x, y, eps=0.1, steps=10, queries=300)
    assert not report.passed
    assert {
        "input gradients finite and non-zero",
        "white-box beats black-box (Square) per example",
    } <= set(report.failed())
    assert "FAIL" in str(report) and "<table>" in report._repr_html_()


def test_sanity_checks_flag_probabilities_and_randomness(mnist_baseline):
    model, x, y = mnist_baseline
    x, y = x[:64], y[:64]
    probs = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
    report = evaluation.sanity_checks(probs, x, y, eps=0.1, steps=5, queries=50)
    assert "outputs are logits" in report.failed()

    class Noisy(torch.nn.Module):
        def forward(self, x):
            return model((x + 0.05 * torch.randn_like(x)).clamp(0, 1))

    report = evaluation.sanity_checks(Noisy(), x, y, eps=0.1, steps=5, queries=50)
    assert "forward pass is deterministic" in report.failed()


def test_temperature_keeps_decisions_and_rejects_bad_values(mnist_baseline):
    model, x, _ = mnist_baseline
    scaled = defenses.Temperature(model, 1e-3)
    assert torch.equal(evaluation.predict(scaled, x), evaluation.predict(model, x))
    import pytest

    with pytest.raises(ValueError, match="temperature"):
        defenses.Temperature(model, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        defenses.softmax_with_temperature(torch.zeros(1, 3), -1.0)
