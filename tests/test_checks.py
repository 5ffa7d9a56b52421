"""Self-checks: reference answers pass, typical mistakes fail with the right reason."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit import attacks
from robustkit.course import checks

# ------------------------------------------------------- answers, right and wrong


def fgsm(model, x, y, eps, sign=1.0, clamp=True):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    x_adv = x + sign * eps * grad.sign()
    return (x_adv.clamp(0, 1) if clamp else x_adv).detach()


def pgd(model, x, y, eps, alpha, steps, project_image=False):
    x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        if project_image:  # the mistake: the image, not delta = x_adv - x
            x_adv = x_adv.clamp(-eps, eps)
        else:
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def step(model, opt, x, y, attack, *, eval_mode=True, train_mode=True, zero=True):
    if eval_mode:
        model.eval()
    x_adv = attack(model, x, y)
    if train_mode:
        model.train()
    loss = F.cross_entropy(model(x_adv), y)
    if zero:
        opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()


def straight_through(transform):
    return lambda x: x + (transform(x) - x).detach()


class StraightThrough(nn.Module):
    def __init__(self, transform):
        super().__init__()
        self.transform = transform

    def forward(self, x):
        return x + (self.transform(x) - x).detach()


def margin_pgd(model, x, y, eps):
    return attacks.pgd(
        model, x, y, eps=eps, alpha=eps / 4, steps=20, loss_fn=attacks.margin
    )


def ce_pgd(model, x, y, eps):
    return attacks.pgd(model, x, y, eps=eps, alpha=eps / 4, steps=20)


def accuracy(model, x, y, *, dim=1, grad=False):
    with torch.set_grad_enabled(grad):
        return (model(x).argmax(dim) == y).float().mean().item()


def switches(mode):
    def fn(model, x, y):
        model.train(mode == "train")
        return accuracy(model, x, y)

    return fn


def worst_case(model, x, y, attack_set, *, clean=True, every=True, over_all=True):
    with torch.no_grad():
        pred = model(x).argmax(1)
    robust = pred == y if clean else torch.ones_like(y, dtype=torch.bool)
    survived = [model(a(model, x, y)).argmax(1) == y for a in attack_set.values()]
    together = torch.stack(survived).all(0) if every else torch.stack(survived).any(0)
    robust = robust & together
    return (
        robust.float().mean() if over_all else robust[pred == y].float().mean()
    ).item()


def min_over_attacks(model, x, y, attack_set):
    return min(accuracy(model, a(model, x, y), y) for a in attack_set.values())


def changed_prediction(model, x, y, attack_set):
    """The mistake: 'broken' means the prediction changed, not that it is wrong."""
    with torch.no_grad():
        pred = model(x).argmax(1)
        same = [model(a(model, x, y)).argmax(1) == pred for a in attack_set.values()]
    return torch.stack(same).all(0).float().mean().item()


def verdict(capsys, check, *args, **kwargs):
    """(returned bool, the printed line)."""
    ok = check(*args, **kwargs)
    line = capsys.readouterr().out.strip()
    assert line.startswith("PASS" if ok else "FAIL") and "\n" not in line
    return ok, line


def interval_linear(w, b, lower, upper, split=True, bias_in_radius=False, slack=0.0):
    """Interval bounds of h @ w.T + b over the box [lower, upper]."""
    if not split:  # the mistake: the ends of the box, whatever the weights' signs
        ends = lower @ w.T + b, upper @ w.T + b
        return torch.minimum(*ends), torch.maximum(*ends)
    mu, r = (upper + lower) / 2, (upper - lower) / 2
    radius = r @ w.abs().T + (b.abs() if bias_in_radius else 0) + slack
    return mu @ w.T + b - radius, mu @ w.T + b + radius


# ----------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "check, answer",
    [
        (checks.check_fgsm, fgsm),
        (checks.check_projection, lambda d, eps: attacks.project(d, eps, "linf")),
        (checks.check_pgd, pgd),
        (checks.check_adversarial_step, step),
        (checks.check_bpda, straight_through),
        (checks.check_bpda, StraightThrough),
        (checks.check_distillation_break, margin_pgd),
        (checks.check_interval_linear, interval_linear),
        (checks.check_accuracy, accuracy),
        (checks.check_worst_case, worst_case),
    ],
    ids=[
        "fgsm",
        "projection",
        "pgd",
        "step",
        "bpda",
        "bpda-module",
        "distill",
        "interval",
        "accuracy",
        "worst-case",
    ],  # fmt: skip
)
def test_reference_answers_pass_on_fresh_seeds(capsys, check, answer):
    args = (answer, "linf") if check is checks.check_projection else (answer,)
    for _ in range(3):
        ok, line = verdict(capsys, check, *args)
        assert ok, line


def test_projection_l2_and_an_already_wrapped_bpda_pass(capsys):
    l2 = lambda d, eps: attacks.project(d, eps, "l2")  # noqa: E731
    assert verdict(capsys, checks.check_projection, l2, "l2", seed=1)[0]
    quantize = lambda x: torch.round(x * 4) / 4  # noqa: E731
    wrapped = straight_through(quantize)
    assert verdict(capsys, checks.check_bpda, wrapped, transform=quantize)[0]


@pytest.mark.parametrize(
    "check, answer, reason",
    [
        (checks.check_fgsm, lambda *a: fgsm(*a, sign=-1.0), "wrong sign"),
        (checks.check_fgsm, lambda *a: fgsm(*a, clamp=False), "missing clamp"),
        (
            checks.check_pgd,
            lambda *a: pgd(*a, project_image=True),
            "projecting the image instead of the perturbation",
        ),
        (
            lambda fn, **kw: checks.check_projection(fn, "linf", **kw),
            lambda delta, eps: delta.clamp(0, 1),
            "projecting the image instead of the perturbation",
        ),
        (
            lambda fn, **kw: checks.check_projection(fn, "l2", **kw),
            lambda delta, eps: delta.clamp(-eps, eps),
            "clamped each coordinate",
        ),
        (
            checks.check_adversarial_step,
            lambda *a: step(*a, eval_mode=False),
            "call model.eval() before the attack",
        ),
        (
            checks.check_adversarial_step,
            lambda *a: step(*a, train_mode=False),
            "call model.train()",
        ),
        (
            checks.check_adversarial_step,
            lambda *a: step(*a, zero=False),
            "opt.zero_grad()",
        ),
        (checks.check_bpda, lambda t: t, "the gradient is zero"),
        (checks.check_distillation_break, ce_pgd, "its loss saturates"),
        (
            checks.check_interval_linear,
            lambda *a: interval_linear(*a, split=False),
            "split W by sign",
        ),
        (
            checks.check_interval_linear,
            lambda *a: interval_linear(*a, bias_in_radius=True),
            "does not widen the interval",
        ),
        (
            checks.check_interval_linear,
            lambda *a: interval_linear(*a, slack=0.5),
            "sound but loose",
        ),
        (
            checks.check_interval_linear,
            lambda *a: interval_linear(*a, slack=-0.5),
            "not sound",
        ),
        (checks.check_accuracy, lambda *a: 100 * accuracy(*a), "returned a percentage"),
        (
            checks.check_accuracy,
            lambda *a: len(a[2]) * accuracy(*a),
            "count of correct predictions",
        ),
        (checks.check_accuracy, lambda *a: 1 - accuracy(*a), "error rate 1 - accuracy"),
        (
            checks.check_accuracy,
            lambda *a: accuracy(*a, dim=0),
            "argmax over the wrong dimension",
        ),
        (checks.check_accuracy, switches("eval"), "switched the model to eval"),
        (checks.check_accuracy, switches("train"), "switched the model to train"),
        (checks.check_accuracy, lambda *a: accuracy(*a, grad=True), "torch.no_grad()"),
        (
            checks.check_worst_case,
            min_over_attacks,
            "minimum of the per-attack accuracies",
        ),
        (
            checks.check_worst_case,
            lambda *a: worst_case(*a, clean=False),
            "forgot the clean mistakes",
        ),
        (
            checks.check_worst_case,
            lambda *a: worst_case(*a, over_all=False),
            "forgot the clean mistakes",
        ),
        (checks.check_worst_case, changed_prediction, "forgot the clean mistakes"),
        (
            checks.check_worst_case,
            lambda *a: worst_case(*a, every=False),
            "AND over every attack",
        ),
    ],
    ids=[
        "fgsm-sign",
        "fgsm-clamp",
        "pgd-image",
        "projection-image",
        "projection-l2-as-linf",
        "step-eval",
        "step-train",
        "step-zero-grad",
        "bpda-true-gradient",
        "distill-ce",
        "interval-no-sign-split",
        "interval-bias-widens",
        "interval-loose",
        "interval-unsound",
        "accuracy-percent",
        "accuracy-count",
        "accuracy-error-rate",
        "accuracy-argmax-dim0",
        "accuracy-sets-eval",
        "accuracy-sets-train",
        "accuracy-no-grad",
        "worst-min-of-accuracies",
        "worst-no-clean",
        "worst-over-clean-correct",
        "worst-prediction-changed",
        "worst-any-attack",
    ],
)
def test_typical_mistakes_fail_with_their_reason(capsys, check, answer, reason):
    for seed in (0, 1):
        ok, line = verdict(capsys, check, answer, seed=seed)
        assert not ok and reason in line, line
        assert f"(seed {seed})" in line


def test_an_attack_that_modifies_its_input_or_the_mode_fails(capsys):
    def in_place(model, x, y, eps):
        return x.add_(eps).clamp_(0, 1)

    def train_mode(model, x, y, eps):
        model.train()
        return fgsm(model, x, y, eps)

    assert "in place" in verdict(capsys, checks.check_fgsm, in_place)[1]
    assert "train mode" in verdict(capsys, checks.check_fgsm, train_mode)[1]


def test_errors_fail_and_unfinished_exercises_show_their_hint(capsys):
    def broken(model, x, y, eps):
        return x + undefined_name  # noqa: F821

    ok, line = verdict(capsys, checks.check_fgsm, broken)
    assert not ok and "raised NameError" in line

    def stub(model, x, y, eps):
        raise NotImplementedError("take the sign of the gradient")

    assert checks.check_fgsm(stub) is False
    line = capsys.readouterr().out.strip()
    assert (
        line == "TODO  check_fgsm: not written yet. Hint: take the sign of the gradient"
    )


def test_checks_leave_the_global_rng_alone_and_repeat_with_a_seed(capsys):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    first = verdict(capsys, checks.check_pgd, pgd, seed=5)[1]
    torch.testing.assert_close(torch.rand(3), expected)
    assert verdict(capsys, checks.check_pgd, pgd, seed=5)[1] == first


def test_bad_norm_is_a_value_error():
    with pytest.raises(ValueError, match="'l1'"):
        checks.check_projection(lambda d, eps: d, "l1")
