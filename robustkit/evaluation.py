"""Honest evaluation: clean and robust accuracy, eps sweeps, the worst case over
attacks, and automatic sanity checks for gradient masking (Carlini et al. 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from robustkit import attacks
from robustkit.attacks.core import restores_buffers
from robustkit.progress import bar
from robustkit.types import Attack, Bounds, Loader, Model, Norm

NO_EXAMPLES = "the loader yielded no examples: an accuracy needs at least one"


@torch.no_grad()
def predict(model: Model, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Predicted classes argmax_k h(x)_k, shape (N,), computed in batches."""
    if not len(x):
        return torch.zeros(0, dtype=torch.long, device=x.device)
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    )


def accuracy(model: Model, loader: Loader, *, progress: bool = False) -> float:
    """Fraction of examples in `loader` that the model classifies correctly.

    Raises ValueError if the loader yields no examples (there is nothing to count).
    """
    correct = total = 0
    for x, y in bar(loader, desc="accuracy", disable=not progress, unit="batch"):
        correct += (predict(model, x) == y).sum().item()
        total += len(y)
    if not total:
        raise ValueError(NO_EXAMPLES)
    return correct / total


def robust_accuracy(
    model: Model, loader: Loader, attack: Attack, *, progress: bool = True
) -> float:
    """Fraction of examples classified correctly both clean and after `attack`.

    An example counts as robust only if h(x) = y and h(attack(x)) = y, so the result
    never exceeds clean accuracy. The attack runs with gradients enabled.

    Args:
        model: Maps inputs to logits; put it in eval mode first.
        loader: Iterable of (x, y) batches.
        attack: Called as attack(model, x, y) -> x_adv (e.g. a functools.partial).
        progress: Show a progress bar over batches.
    """
    return worst_case(
        model, loader, {"attack": attack}, progress=progress, desc="robust accuracy"
    ).robust_accuracy


def robust_accuracy_curve(
    model: Model,
    loader: Loader,
    make_attack: Callable[[float], Attack],
    eps_values: Sequence[float],
    *,
    progress: bool = True,
) -> list[float]:
    """Robust accuracy at each eps: the security curve of Foolbox and Carlini et al.

    Args:
        make_attack: Builds the attack for a given eps, e.g.
            lambda eps: partial(attacks.pgd, eps=eps, alpha=eps / 4, steps=10).
        eps_values: Budgets to evaluate (eps = 0 gives the clean accuracy).

    Returns:
        One robust accuracy per eps, in order.
    """
    return [
        accuracy(model, loader)  # no budget: the clean accuracy, by definition
        if eps == 0
        else robust_accuracy(model, loader, make_attack(eps), progress=False)
        for eps in bar(eps_values, desc="eps", disable=not progress, unit="eps")
    ]


class WorstCase(NamedTuple):
    """Result of `worst_case`; accuracies are fractions in [0, 1]."""

    clean_accuracy: float
    robust_accuracy: float  # mean over examples of the min over attacks
    per_attack: dict[str, float]  # see `worst_case`
    robust: Tensor  # (N,) bool: clean-correct and survived every attack


def worst_case(
    model: Model,
    loader: Loader,
    attack_set: dict[str, Attack],
    *,
    independent: bool = False,
    progress: bool = True,
    desc: str = "worst case",
) -> WorstCase:
    """Robust accuracy against a set of attacks, counted per example.

    An example is robust only if it is classified correctly clean and after every
    attack: mean_x min_a, which can be much lower than min_a mean_x. By default each
    attack runs only on the examples that survived the previous ones (as AutoAttack
    does), and `per_attack[name]` is the accuracy left after that attack. With
    `independent=True` every attack runs on every clean-correct example and
    `per_attack[name]` is its accuracy alone. An empty loader is a ValueError.
    """
    if not attack_set:
        raise ValueError("attack_set is empty: give at least one attack")
    counts, clean_parts, robust_parts = dict.fromkeys(attack_set, 0), [], []
    for x, y in bar(loader, desc=desc, disable=not progress, unit="batch"):
        clean = predict(model, x) == y
        robust = clean.clone()
        for name, attack in attack_set.items():
            todo = clean if independent else robust
            survived = todo.clone()
            idx = todo.nonzero().squeeze(1)
            if len(idx):
                survived[idx] = predict(model, attack(model, x[idx], y[idx])) == y[idx]
            robust &= survived
            counts[name] += int(survived.sum())
        clean_parts.append(clean)
        robust_parts.append(robust)
    n = sum(len(part) for part in clean_parts)
    if not n:
        raise ValueError(NO_EXAMPLES)
    clean, robust = torch.cat(clean_parts), torch.cat(robust_parts)
    return WorstCase(
        int(clean.sum()) / n,
        int(robust.sum()) / n,
        {name: count / n for name, count in counts.items()},
        robust,
    )


# ------------------------------------------------------------------ sanity checks


class Check(NamedTuple):
    """One line of the sanity-check table."""

    name: str
    passed: bool
    value: str  # the measurement behind the verdict
    reason: str  # what it means, and what to do when it fails


class SanityReport(list):
    """The list of Checks from `sanity_checks`, shown as a table in notebooks."""

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self)

    def failed(self) -> list[str]:
        return [check.name for check in self if not check.passed]

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        width = max(len(c.name) for c in self)
        return "\n".join(
            f"{'PASS' if c.passed else 'FAIL'}  {c.name:{width}}  {c.value}"
            f"  {'' if c.passed else '-> ' + c.reason}"
            for c in self
        )

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{'✓ pass' if c.passed else '✗ FAIL'}</td><td>{c.name}</td>"
            f"<td>{c.value}</td><td>{'' if c.passed else c.reason}</td></tr>"
            for c in self
        )
        return (
            "<table><tr><th>verdict</th><th>check</th><th>measured</th>"
            f"<th>what it means</th></tr>{rows}</table>"
        )


@restores_buffers
def sanity_checks(
    model: Model,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: Norm = "linf",
    make_attack: Callable[[float], Attack] | None = None,
    steps: int = 20,
    surrogate: Model | None = None,
    queries: int = 500,
    noise_draws: int = 20,
    tolerance: float = 0.02,
    bounds: Bounds = (0.0, 1.0),
) -> SanityReport:
    """Run the Carlini et al. (2019) checklist on an evaluation and say what fails.

    Evaluates `make_attack(eps)` (default: PGD on cross-entropy, `steps` steps) on
    (x, y) and checks that: outputs are logits, not probabilities; the forward pass
    is deterministic (else EOT is needed); input gradients are finite and non-zero;
    accuracy does not increase with eps; an unbounded attack reaches chance; the
    iterative attack beats FGSM; 4x the steps and 5 restarts change little; and, per
    example, the white-box attack beats Square (black-box), transfer from
    `surrogate` (if given) and random noise. An honest model passes; a model with
    masked gradients fails some of these.

    Args:
        model: The model under evaluation, in eval mode.
        x, y: A batch of a few hundred examples (more is slower, not more telling).
        eps: The budget of the evaluation.
        make_attack: eps -> attack being evaluated.
        steps: PGD steps of the default attack.
        surrogate: A separately trained model for the transfer check.
        queries: Square Attack queries (L-inf only).
        noise_draws: Random points of the eps-ball tried per example.
        tolerance: Slack, as a fraction of examples, before a comparison fails.
        bounds: Valid input range.
    """
    if make_attack is None:
        make_attack = partial(_default_pgd, steps=steps, norm=norm, bounds=bounds)
    n_classes = _probe_classes(model, x)
    checks = SanityReport(
        [
            _check_logits(model, x),
            _check_deterministic(model, x),
            _check_gradients(model, x, y),
        ]
    )
    acc = lambda x_adv: float((predict(model, x_adv) == y).float().mean())  # noqa: E731
    fooled = lambda x_adv: predict(model, x_adv) != y  # noqa: E731
    x_attack = make_attack(eps)(model, x, y)
    a_attack = acc(x_attack)

    fractions = [0.0, 0.25, 0.5, 1.0, 2.0]
    curve = [
        acc(x)
        if f == 0
        else a_attack
        if f == 1
        else acc(make_attack(f * eps)(model, x, y))
        for f in fractions
    ]
    rises = max(b - a for a, b in zip(curve, curve[1:]))
    checks.append(
        Check(
            "accuracy non-increasing in eps",
            rises <= tolerance,
            " ".join(f"{a:.2f}" for a in curve) + f" at eps x {fractions}",
            "accuracy rose with a larger budget: the attack is not optimizing "
            "well (masked or noisy gradients); use a stronger, adaptive attack",
        )
    )
    huge = (bounds[1] - bounds[0]) * (
        1.0 if norm == "linf" else math.sqrt(x[0].numel())
    )
    a_huge = acc(make_attack(huge)(model, x, y))
    checks.append(
        Check(
            "unbounded attack reaches chance",
            a_huge <= 1.0 / n_classes + tolerance,
            f"{a_huge:.3f} at eps={huge:.3g} (chance {1 / n_classes:.2f})",
            "with the whole input space allowed every example can be changed; "
            "if the attack fails, its gradients are useless (masking)",
        )
    )
    if norm == "linf":
        a_fgsm = acc(attacks.fgsm(model, x, y, eps=eps, bounds=bounds))
        checks.append(
            Check(
                "iterative attack beats FGSM",
                a_attack <= a_fgsm + tolerance,
                f"attack {a_attack:.3f} vs FGSM {a_fgsm:.3f}",
                "one step beat many: the loss surface is not smooth near x "
                "(gradient masking); the iterative attack is misconfigured",
            )
        )
    x_strong = attacks.pgd(
        model,
        x,
        y,
        eps=eps,
        alpha=2.5 * eps / (4 * steps),
        steps=4 * steps,
        norm=norm,
        restarts=5,
        bounds=bounds,
    )
    a_strong = acc(x_strong)
    checks.append(
        Check(
            "more steps and restarts change little",
            a_strong >= a_attack - tolerance,
            f"attack {a_attack:.3f} vs 4x steps, 5 restarts {a_strong:.3f}",
            "the attack has not converged: report the stronger number, "
            "and keep increasing the budget until it stops falling",
        )
    )
    others = {"random noise": _noise(model, x, y, eps, norm, noise_draws, bounds)}
    if norm == "linf":
        others["black-box (Square)"] = attacks.square(
            model, x, y, eps=eps, queries=queries, bounds=bounds
        )
    if surrogate is not None:
        others["transfer"] = attacks.transfer(
            model, x, y, surrogate=surrogate, attack=make_attack(eps)
        )
    worst = fooled(x_attack) | fooled(x_strong)
    for name, x_other in others.items():
        gap = float((fooled(x_other) & ~worst).float().mean())
        checks.append(
            Check(
                f"white-box beats {name} per example",
                gap <= tolerance,
                f"{gap:.3f} of examples fooled by {name} only",
                f"{name} succeeds where gradients fail: the gradients are "
                "masked; use a margin loss, BPDA or EOT, or a stronger attack",
            )
        )
    return checks


def _default_pgd(eps: float, *, steps: int, norm: Norm, bounds: Bounds) -> Attack:
    return partial(
        attacks.pgd,
        eps=eps,
        alpha=2.5 * eps / steps,
        steps=steps,
        norm=norm,
        bounds=bounds,
    )


@torch.no_grad()
def _probe_classes(model: Model, x: Tensor) -> int:
    return model(x[:1]).shape[1]


@torch.no_grad()
def _check_logits(model: Model, x: Tensor) -> Check:
    out = model(x)
    sums_to_one = torch.allclose(
        out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3
    )
    is_probs = bool((out >= 0).all() and (out <= 1).all() and sums_to_one)
    is_log_probs = bool((out <= 0).all()) and torch.allclose(
        out.logsumexp(1), torch.zeros(len(out), device=out.device), atol=1e-3
    )
    kind = (
        "probabilities"
        if is_probs
        else "log-probabilities"
        if is_log_probs
        else "logits"
    )
    return Check(
        "outputs are logits",
        kind == "logits",
        f"outputs look like {kind}",
        "attacks and their losses expect logits: remove the final softmax",
    )


@torch.no_grad()
def _check_deterministic(model: Model, x: Tensor) -> Check:
    diff = float((model(x) - model(x)).abs().max())
    return Check(
        "forward pass is deterministic",
        diff == 0.0,
        f"max change between two passes {diff:.3g}",
        "the model is randomized: attack the expectation (EOT, average the "
        "gradient over draws) and check it with the randomness fixed",
    )


def _check_gradients(model: Model, x: Tensor, y: Tensor) -> Check:
    grad = attacks.input_gradient(model, x, y, attacks.cross_entropy)
    finite = bool(torch.isfinite(grad).all())
    zero = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    return Check(
        "input gradients finite and non-zero",
        finite and zero <= 0.01,
        f"{zero:.1%} of examples with an all-zero gradient"
        + ("" if finite else ", some NaN or inf"),
        "the loss is flat or broken at x (saturated softmax, quantization, "
        "non-differentiable steps): use the margin loss on logits, or BPDA",
    )


def _noise(
    model: Model,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: Norm,
    draws: int,
    bounds: Bounds,
) -> Tensor:
    """Per example, a random point of the eps-ball that fools the model, if any."""
    found = x.clone()
    for _ in range(draws):
        x_rand = attacks.clip_to_bounds(x + attacks.random_init(x, eps, norm), bounds)
        hit = predict(model, x_rand) != y
        found[hit] = x_rand[hit]
    return found


# The settings of `strong_attacks` by name. "autoattack": Croce & Hein's standard
# version (APGD-CE, APGD-T on 9 targets, Square with 5,000 queries; FAB-T left out),
# for a GPU. "cpu": 3 targets and 1,000 queries, what fits a CPU in minutes; on the
# shipped MNIST models it reads 0.2-2.3 points higher (README, "Against AutoAttack's
# settings"), nearly all of it Square's.
PRESETS = {
    "autoattack": dict(steps=100, n_targets=9, queries=5_000),
    "cpu": dict(steps=100, n_targets=3, queries=1_000),
}


def attack_settings(preset: str | None = None, **given: int | None) -> dict:
    """The steps, n_targets and queries of PRESETS[preset] ("autoattack" if None),
    with those given (not None) instead; an unknown preset is a ValueError."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)}")
    return PRESETS[preset or "autoattack"] | {
        k: v for k, v in given.items() if v is not None
    }


def strong_attacks(
    eps: float,
    *,
    preset: str | None = None,
    norm: Norm = "linf",
    steps: int | None = None,
    n_targets: int | None = None,
    queries: int | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> dict[str, Attack]:
    """The attack set of a strong evaluation, for `worst_case`: APGD on
    cross-entropy, targeted APGD on the DLR loss, and Square (scores only, L-inf).

    `preset` names the settings (PRESETS: "autoattack", the default, or "cpu");
    `steps`, `n_targets` and `queries` given override it. "autoattack" is
    AutoAttack's standard ensemble less FAB-T (which rarely adds anything once
    APGD-T has run). A lighter setting makes it cheaper on a CPU; say so when
    reporting the number.

    Reference:
        Croce & Hein, "Reliable evaluation of adversarial robustness with an
        ensemble of diverse parameter-free attacks", ICML 2020.
        https://arxiv.org/abs/2003.01690
    """
    settings = attack_settings(
        preset, steps=steps, n_targets=n_targets, queries=queries
    )
    steps, n_targets, queries = (settings[k] for k in ("steps", "n_targets", "queries"))
    attack_set = {
        "APGD-CE": partial(
            attacks.apgd, eps=eps, steps=steps, norm=norm, bounds=bounds
        ),
        "APGD-T (DLR)": partial(
            attacks.apgd_t,
            eps=eps,
            steps=steps,
            norm=norm,
            n_targets=n_targets,
            bounds=bounds,
        ),
    }
    if norm == "linf":
        attack_set["Square"] = partial(
            attacks.square, eps=eps, queries=queries, bounds=bounds
        )
    return attack_set
