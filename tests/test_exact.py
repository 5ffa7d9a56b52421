"""Exact values of the attack parts, the evaluation counts and the training guards.

Every expected value here is worked out by hand: the models are fixed maps (the
logits are the input itself, or a Linear layer with set weights), the attacks are
scripted to return chosen inputs, and the training "weights" move by exactly one per
step, so the tests hold on any machine, thread count and seed. Written to kill the
mutants `bench/mutation.py` found surviving the behavioural tests.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit import attacks, evaluation, recipes, training

K = 3  # classes of the scripted problems


def onehot(labels: list[int] | torch.Tensor) -> torch.Tensor:
    """Inputs (N, 1, 1, K) that a model returning its input as logits labels so."""
    return F.one_hot(torch.as_tensor(labels), K).float().view(-1, 1, 1, K)


LOGITS = nn.Flatten()  # h(x) = x: the prediction is the argmax of the input


def fool(labels: set[int], calls: list | None = None, name: str = ""):
    """A scripted attack: examples whose label is in `labels` move to the next class,
    the others are returned unchanged; `calls` records (name, batch size)."""

    def attack(model, x, y):
        if calls is not None:
            calls.append((name, len(x)))
        hit = torch.tensor([int(label) in labels for label in y])
        return torch.where(hit.view(-1, 1, 1, 1), onehot((y + 1) % K), x)

    return attack


def heal(model, x, y):
    """A scripted 'attack' that makes every example correct, even a clean mistake."""
    return onehot(y)


# ---------------------------------------------------------------------- attack parts


def test_norms_steps_and_projections_of_hand_made_deltas():
    delta = torch.tensor([[3.0, -4.0, 0.0, 0.0], [0.5, 0.5, 0.5, -0.5], [0.0] * 4])
    delta = delta.view(3, 1, 2, 2)
    assert attacks.lp_norm(delta, "linf").tolist() == [4.0, 0.5, 0.0]
    assert attacks.lp_norm(delta, "l2").tolist() == [5.0, 1.0, 0.0]
    step = attacks.steepest_ascent(delta, "l2")
    assert step.shape == delta.shape
    torch.testing.assert_close(step[0].flatten(), torch.tensor([0.6, -0.8, 0.0, 0.0]))
    torch.testing.assert_close(step[1], delta[1])  # already a unit vector
    assert torch.equal(step[2], delta[2])  # a zero gradient gives a zero step
    assert torch.equal(attacks.steepest_ascent(delta, "linf"), delta.sign())
    # L2: scaled onto the ball when outside, untouched inside; L-inf: clamped
    torch.testing.assert_close(
        attacks.project(delta, 2.0, "l2"),
        torch.stack([delta[0] * 0.4, delta[1], delta[2]]),
    )
    linf = attacks.project(delta, 0.5, "linf").flatten(1)
    assert linf[0].tolist() == [0.5, -0.5, 0.0, 0.0]
    assert torch.equal(linf[1:], delta[1:].flatten(1))


def test_threat_set_is_the_projection_onto_ball_and_bounds():
    x = torch.tensor([0.1, 0.5, 0.95, 0.7]).view(1, 1, 2, 2)
    into = attacks.threat_set(x, 0.2, "linf", (0.0, 1.0))
    far = torch.tensor([-1.0, 2.0, 2.0, 0.55]).view(1, 1, 2, 2)
    torch.testing.assert_close(into(far).flatten(), torch.tensor([0.0, 0.7, 1.0, 0.55]))
    torch.testing.assert_close(
        into(-far).flatten(), torch.tensor([0.3, 0.3, 0.75, 0.5])
    )
    # L2: v - x = (0, 0.6, 0, 0.8) has norm 1, so it halves onto the ball of radius
    # 0.5; then the last pixel, 0.7 + 0.4, is clipped to the bound 1
    into = attacks.threat_set(x, 0.5, "l2", (0.0, 1.0))
    v = x + torch.tensor([0.0, 0.6, 0.0, 0.8]).view(1, 1, 2, 2)
    torch.testing.assert_close(into(v).flatten(), torch.tensor([0.1, 0.8, 0.95, 1.0]))


def test_linf_random_init_fills_the_box_on_both_sides():
    r = attacks.random_init(torch.zeros(1000, 1, 2, 2), 0.25, "linf")
    assert r.abs().max() <= 0.25
    # 4000 uniform draws: all above -0.2 (or below 0.2) has probability 0.9^4000
    assert r.min() < -0.2 and r.max() > 0.2


def test_l2_random_init_of_a_single_example():
    r = attacks.random_init(torch.zeros(1, 1, 2, 2), 0.5, "l2")
    assert r.shape == (1, 1, 2, 2) and 0 < attacks.lp_norm(r, "l2").item() <= 0.5


# ------------------------------------------------------------------ training guards


class Counter(nn.Module):
    """Logits = the input; one parameter w, with d loss / d w = 1 under `objective`,
    so SGD with lr 1 takes w to -1, -2, ... after each (single-batch) epoch: w tells
    which epoch's weights the model holds."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x.flatten(1) + 0 * self.w


def objective(model, x, x_adv, y):
    logits = model(x_adv)
    return F.cross_entropy(logits, y) + model.w, logits


VAL = (onehot([0, 1, 2, 0]), torch.tensor([0, 1, 2, 0]))  # 4 examples, all correct


def val_scores(scores: list[float]):
    """A `val_attack` giving robust validation accuracy scores[k] at epoch k + 1:
    it fools the first (1 - score) * 4 of the 4 validation examples."""
    epoch = iter(scores)

    def attack(model, x, y):
        n_fooled = round((1 - next(epoch)) * len(x))
        x_adv = x.clone()
        x_adv[:n_fooled] = onehot((y[:n_fooled] + 1) % K)
        return x_adv

    return attack


def fit(scores: list[float] | None = None, epochs: int | None = None, **kwargs):
    """`training.fit` of a Counter on VAL for len(scores) epochs; (history, epoch of
    the weights held at the end)."""
    model = Counter()
    epochs = len(scores) if epochs is None else epochs
    history = training.fit(
        model,
        [VAL],
        opt=torch.optim.SGD(model.parameters(), lr=1.0),
        epochs=epochs,
        objective=objective,
        val=VAL,
        val_attack=None if scores is None else val_scores(scores),
        progress=False,
        **kwargs,
    )
    return history, round(-model.w.item())


def test_keep_best_restores_the_first_of_tied_best_epochs():
    history, held = fit([0.25, 0.75, 0.75, 0.5], keep_best=True)
    assert [r["val_robust_accuracy"] for r in history] == [0.25, 0.75, 0.75, 0.5]
    assert held == 2


def test_collapse_needs_a_drop_of_more_than_collapse_drop():
    # 0.25 is exactly 0.25 below the best: not a collapse; 0.0 is one
    history, held = fit([0.5, 0.25, 0.0, 1.0, 1.0], collapse_drop=0.25)
    assert len(history) == 3 and held == 1


def test_val_without_val_attack_is_not_measured():
    history, held = fit(epochs=2)
    assert [r["val_robust_accuracy"] for r in history] == [None, None] and held == 2


def test_guards_need_both_val_and_val_attack():
    model = Counter()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    for kwargs in [
        dict(keep_best=True, val=VAL),
        dict(keep_best=True, val_attack=heal),
        dict(collapse_drop=0.1, val=VAL),
        dict(collapse_drop=0.1, val_attack=heal),
    ]:
        with pytest.raises(ValueError, match="need `val` and `val_attack`"):
            training.fit(model, [VAL], opt=opt, epochs=1, progress=False, **kwargs)


def test_zero_epochs_is_an_empty_history():
    history, held = fit([], epochs=0)
    assert history == [] and held == 0


def test_history_rows_hold_the_measured_values():
    x, y = onehot([0, 1, 2, 1]), torch.tensor([0, 1, 1, 1])  # 3 of 4 correct
    model = Counter()
    start = time.perf_counter()
    history = training.fit(
        model,
        [(x, y)],
        opt=torch.optim.SGD(model.parameters(), lr=1.0),
        epochs=2,
        objective=objective,
        test_loader=[(x, y)],
        eval_attack=fool({0}),  # fools the one correct example of class 0
        progress=False,
    )
    elapsed = time.perf_counter() - start
    ce = F.cross_entropy(x.flatten(1), y).item()
    for epoch, row in enumerate(history, 1):
        assert row["epoch"] == epoch and row["lr"] == 1.0
        assert row["train_loss"] == pytest.approx(ce - (epoch - 1), abs=1e-6)
        assert row["train_accuracy"] == row["test_accuracy"] == 0.75
        assert row["test_robust_accuracy"] == 0.5
        assert row["val_robust_accuracy"] is None
        assert 0 < row["seconds"] <= elapsed
    assert sum(r["seconds"] for r in history) <= elapsed


def test_run_epoch_of_one_batch_uses_the_attack_output():
    x, y = onehot([0, 1, 2, 1]), torch.tensor([0, 1, 1, 1])
    result = training.run_epoch(LOGITS, [(x, y)], progress=False)
    assert result.accuracy == 0.75
    assert result.loss == pytest.approx(F.cross_entropy(x.flatten(1), y).item())
    attacked = training.run_epoch(LOGITS, [(x, y)], attack=fool({1}), progress=False)
    assert attacked.accuracy == 0.25  # only the example of class 0 is left correct


def test_ramped_grows_eps_and_alpha_linearly_over_warmup_calls():
    seen = []

    def attack(model, x, y, *, eps, alpha):
        seen.append((eps, alpha))
        return x

    ramped = recipes._ramped(attack, 0.4, 0.1, recipes.Ramp(4))
    x = torch.zeros(1)
    assert all(ramped(None, x, None) is x for _ in range(6))
    expected = [(0.4 * s, 0.1 * s) for s in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)]
    assert seen == expected  # the same products as in _ramped: exactly equal
    seen.clear()
    for warmup in (0, 1):  # the full budget from the first call
        recipes._ramped(attack, 0.4, 0.1, recipes.Ramp(warmup))(None, None, None)
    assert seen == [(0.4, 0.1), (0.4, 0.1)]


# ------------------------------------------------------------------------ evaluation

# Two batches; examples 4 and 5 are clean mistakes (class 2 for label 1, 0 for 2).
X, Y = onehot([0, 1, 2, 0, 2, 0]), torch.tensor([0, 1, 2, 0, 1, 2])
BATCHES = [(X[:4], Y[:4]), (X[4:], Y[4:])]


def test_predict_in_batches_and_accuracy_over_batches():
    assert evaluation.predict(LOGITS, X, batch_size=4).tolist() == [0, 1, 2, 0, 2, 0]
    assert evaluation.accuracy(LOGITS, BATCHES) == 4 / 6
    assert evaluation.accuracy(LOGITS, [(X[:1], Y[:1])]) == 1.0


def test_worst_case_never_counts_a_clean_mistake():
    """`heal` makes every input correct: only the clean-correct examples may count."""
    clean = torch.tensor([True, True, True, True, False, False])
    assert evaluation.robust_accuracy(LOGITS, BATCHES, heal, progress=False) == 4 / 6
    for independent in (False, True):
        result = evaluation.worst_case(
            LOGITS, BATCHES, {"heal": heal}, independent=independent, progress=False
        )
        assert torch.equal(result.robust, clean)
        assert result.per_attack == {"heal": 4 / 6} and result.robust_accuracy == 4 / 6


def test_worst_case_runs_each_attack_on_the_survivors_only():
    calls = []
    attack_set = {"A": fool({0}, calls, "A"), "B": fool({1}, calls, "B")}
    seq = evaluation.worst_case(LOGITS, BATCHES, attack_set, progress=False)
    # A fools examples 0 and 3 (label 0); B then only meets 1 and 2, and fools 1
    assert calls == [("A", 4), ("B", 2)]  # never called on an empty batch
    assert seq.robust.tolist() == [False, False, True, False, False, False]
    assert seq.per_attack == {"A": 2 / 6, "B": 1 / 6}
    assert (seq.clean_accuracy, seq.robust_accuracy) == (4 / 6, 1 / 6)
    calls.clear()
    alone = evaluation.worst_case(
        LOGITS, BATCHES, attack_set, independent=True, progress=False
    )
    assert calls == [("A", 4), ("B", 4)]  # every clean-correct example, each time
    assert alone.per_attack == {"A": 2 / 6, "B": 3 / 6}
    assert alone.robust.tolist() == seq.robust.tolist()
    one = evaluation.worst_case(LOGITS, [(X[:1], Y[:1])], attack_set, progress=False)
    assert (one.clean_accuracy, one.robust_accuracy) == (1.0, 0.0)


def test_curve_is_clean_accuracy_at_eps_zero_and_attacks_elsewhere():
    def make_attack(eps):
        assert eps > 0, "no attack is built for eps = 0"
        return fool({0} if eps < 1 else {0, 1})

    curve = evaluation.robust_accuracy_curve(
        LOGITS, BATCHES, make_attack, [0.0, 0.5, 1.0], progress=False
    )
    assert curve == [4 / 6, 2 / 6, 1 / 6]


# ---------------------------------------------------------------- sanity checks


def image(labels: torch.Tensor, margin: float = 0.6) -> torch.Tensor:
    """2x2 images whose pixels are LOGITS' 4 logits: the label's pixel `margin` above
    the other three. Under L-inf eps = 0.1 an attack moves that gap by at most 0.2,
    so margin 0.6 can never be fooled and margin 0.1 always is, by FGSM and PGD
    alike: the gradient's sign is the same everywhere (down on the label's pixel)."""
    low = (1 - margin) / 2
    return low + margin * F.one_hot(labels, 4).float().view(-1, 1, 2, 2)


SANITY_Y = torch.tensor([0, 1, 2, 3])
SANITY_X = image(SANITY_Y)
# budget of each call make_attack(e) -> examples the scripted attack fools, in order
FOOLED = {0.025: 0, 0.05: 1, 0.1: 2, 0.2: 3, 1.0: 4}  # eps 0.1 x the fractions, huge


def scripted_make_attack(fooled: dict, surrogate: nn.Module | None = None):
    """make_attack whose attack at budget e fools the first fooled[e] examples (one
    more when it is crafted on `surrogate`, i.e. a transfer that beats white-box)."""

    def make_attack(e):
        def attack(model, x, y):
            n = fooled[round(e, 6)] + (model is surrogate)
            x_adv = x.clone()
            x_adv[:n] = image((y[:n] + 1) % 4)
            return x_adv

        return attack

    return make_attack


def table(report):
    return [(c.name, c.passed, c.value) for c in report]


def test_sanity_checks_report_the_measured_numbers():
    surrogate = nn.Flatten()
    report = evaluation.sanity_checks(
        LOGITS,
        SANITY_X,
        SANITY_Y,
        eps=0.1,
        make_attack=scripted_make_attack(FOOLED, surrogate),
        surrogate=surrogate,
        queries=50,
    )
    curve = "1.00 1.00 0.75 0.50 0.25 at eps x [0.0, 0.25, 0.5, 1.0, 2.0]"
    assert table(report) == [
        ("outputs are logits", True, "outputs look like logits"),
        ("forward pass is deterministic", True, "max change between two passes 0"),
        (
            "input gradients finite and non-zero",
            True,
            "0.0% of examples with an all-zero gradient",
        ),
        ("accuracy non-increasing in eps", True, curve),
        ("unbounded attack reaches chance", True, "0.000 at eps=1 (chance 0.25)"),
        ("iterative attack beats FGSM", True, "attack 0.500 vs FGSM 1.000"),
        (
            "more steps and restarts change little",
            True,
            "attack 0.500 vs 4x steps, 5 restarts 1.000",
        ),
        (
            "white-box beats random noise per example",
            True,
            "0.000 of examples fooled by random noise only",
        ),
        (
            "white-box beats black-box (Square) per example",
            True,
            "0.000 of examples fooled by black-box (Square) only",
        ),
        (
            "white-box beats transfer per example",
            False,
            "0.250 of examples fooled by transfer only",
        ),
    ]
    assert report.failed() == ["white-box beats transfer per example"]


def test_sanity_checks_pass_ties_at_zero_tolerance():
    fooled = dict.fromkeys(FOOLED, 0) | {1.0: 3}  # at the huge budget: chance, 1 / 4
    report = evaluation.sanity_checks(
        LOGITS,
        SANITY_X,
        SANITY_Y,
        eps=0.1,
        make_attack=scripted_make_attack(fooled),
        queries=50,
        tolerance=0.0,
    )
    assert report.passed, str(report)


def test_sanity_checks_fail_a_rising_curve_and_a_weak_attack():
    # examples 2 and 3 have margin 0.1: FGSM and the stronger PGD fool exactly them
    x = torch.cat([SANITY_X[:2], image(SANITY_Y[2:], margin=0.1)])
    fooled = {0.025: 1, 0.05: 0, 0.1: 0, 0.2: 1, 1.0: 2}
    report = evaluation.sanity_checks(
        LOGITS,
        x,
        SANITY_Y,
        eps=0.1,
        make_attack=scripted_make_attack(fooled),
        queries=50,
    )
    values = dict((name, value) for name, _, value in table(report))
    assert report.failed() == [
        "accuracy non-increasing in eps",
        "unbounded attack reaches chance",
        "iterative attack beats FGSM",
        "more steps and restarts change little",
    ]
    assert values["accuracy non-increasing in eps"].startswith("1.00 0.75 1.00 1.00 ")
    assert values["unbounded attack reaches chance"] == "0.500 at eps=1 (chance 0.25)"
    assert values["iterative attack beats FGSM"] == "attack 1.000 vs FGSM 0.500"


def test_sanity_checks_default_tolerance_is_two_points():
    y = torch.arange(40) % 4
    fooled = dict.fromkeys(FOOLED, 0) | {0.025: 1, 1.0: 40}  # a rise of 1 / 40
    report = evaluation.sanity_checks(
        LOGITS,
        image(y),
        y,
        eps=0.1,
        make_attack=scripted_make_attack(fooled),
        queries=5,
    )
    assert report.failed() == ["accuracy non-increasing in eps"]


def test_sanity_checks_tolerance_is_slack_on_both_sides():
    x = torch.cat([SANITY_X[:2], image(SANITY_Y[2:], margin=0.1)])
    fooled = dict.fromkeys(FOOLED, 0) | {1.0: 2}  # attack 1.0, FGSM and PGD 0.5
    report = evaluation.sanity_checks(
        LOGITS,
        x,
        SANITY_Y,
        eps=0.1,
        make_attack=scripted_make_attack(fooled),
        queries=50,
        tolerance=0.5,
    )
    assert report.passed, str(report)


def test_sanity_checks_run_the_attacks_they_describe(monkeypatch):
    """The defaults: PGD-20 (alpha 2.5 eps / 20) evaluated, PGD-80 with 5 restarts
    as the stronger attack, FGSM, Square with 500 queries, 20 noise draws."""
    calls = []

    def recorder(name):
        def attack(*args, **kwargs):
            calls.append((name, kwargs))
            x = args[0] if name == "random_init" else args[1]
            return torch.zeros_like(x) if name == "random_init" else x.clone()

        return attack

    for name in ("pgd", "fgsm", "square", "random_init"):
        monkeypatch.setattr(attacks, name, recorder(name))
    evaluation.sanity_checks(LOGITS, SANITY_X, SANITY_Y, eps=0.1)
    bounds = dict(norm="linf", bounds=(0.0, 1.0))
    budgets = (0.1, 0.025, 0.05, 0.2, 1.0)  # eps, eps x 0.25, 0.5, 2, "unbounded"
    default = [
        ("pgd", dict(eps=e, alpha=2.5 * e / 20, steps=20) | bounds) for e in budgets
    ]
    strong = dict(eps=0.1, alpha=2.5 * 0.1 / 80, steps=80, restarts=5) | bounds
    assert calls == [
        *default,
        ("fgsm", dict(eps=0.1, bounds=(0.0, 1.0))),
        ("pgd", strong),
        *[("random_init", {})] * 20,
        ("square", dict(eps=0.1, queries=500, bounds=(0.0, 1.0))),
    ]


def test_logit_check_tells_probabilities_and_log_probabilities_apart():
    # exact one-hot outputs are probabilities; log-softmax outputs reaching 0 too
    log_probs = nn.Sequential(nn.Flatten(), nn.LogSoftmax(1))
    for model, x, kind in [
        (LOGITS, X, "probabilities"),
        (log_probs, 200 * (X - 1), "log-probabilities"),
        (LOGITS, SANITY_X, "logits"),
    ]:
        check = evaluation._check_logits(model, x)
        assert (check.passed, check.value) == (
            kind == "logits",
            f"outputs look like {kind}",
        )


def test_strong_attacks_keep_their_settings():
    attack_set = evaluation.strong_attacks(0.3)
    assert list(attack_set) == ["APGD-CE", "APGD-T (DLR)", "Square"]
    assert attack_set["APGD-CE"].keywords == dict(
        eps=0.3, steps=100, norm="linf", bounds=(0.0, 1.0)
    )
    assert attack_set["APGD-T (DLR)"].keywords == dict(
        eps=0.3, steps=100, norm="linf", n_targets=9, bounds=(0.0, 1.0)
    )
    assert attack_set["Square"].keywords == dict(
        eps=0.3, queries=5000, bounds=(0.0, 1.0)
    )
    assert list(evaluation.strong_attacks(0.5, norm="l2")) == [
        "APGD-CE",
        "APGD-T (DLR)",
    ]


def test_presets_name_the_settings_and_given_values_override_them():
    cpu = evaluation.strong_attacks(0.3, preset="cpu")
    assert cpu["APGD-T (DLR)"].keywords["n_targets"] == 3
    assert cpu["Square"].keywords["queries"] == 1000
    assert cpu["APGD-CE"].keywords["steps"] == 100
    aa = evaluation.strong_attacks(0.3, preset="autoattack", queries=20)
    assert aa["APGD-T (DLR)"].keywords["n_targets"] == 9
    assert aa["Square"].keywords["queries"] == 20
    with pytest.raises(ValueError, match="unknown preset 'aa'"):
        evaluation.strong_attacks(0.3, preset="aa")


def test_determinism_and_gradient_checks_measure_exactly():
    class Flaky(nn.Module):
        """One logit of one example grows by 1 per call: the rest are repeatable."""

        calls = 0

        def forward(self, x):
            self.calls += 1
            return (
                x.flatten(1)
                + F.one_hot(torch.tensor(0), x[0].numel())
                * (torch.arange(len(x)) == 0)[:, None]
                * self.calls
            )

    check = evaluation._check_deterministic(Flaky(), SANITY_X)
    assert (check.passed, check.value) == (False, "max change between two passes 1")
    # x 1000: the softmax of the margin-0.6 examples is exactly one-hot in float32
    # (exp(-480) underflows), so their input gradient is exactly zero
    x = torch.cat([SANITY_X[:2], image(SANITY_Y[2:], margin=0.01)])
    saturated = nn.Sequential(nn.Flatten(), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        saturated[1].weight.copy_(1000 * torch.eye(4))
    check = evaluation._check_gradients(saturated, x, SANITY_Y)
    assert (check.passed, check.value) == (
        False,
        "50.0% of examples with an all-zero gradient",
    )


def test_the_sanity_report_table():
    report = evaluation.SanityReport(
        [
            evaluation.Check("a", True, "1", "why"),
            evaluation.Check("bbb", False, "2", "do"),
        ]
    )
    assert str(report) == repr(report) == "PASS  a    1  \nFAIL  bbb  2  -> do"
    assert not report.passed and report.failed() == ["bbb"]
    assert evaluation.SanityReport(report[:1]).passed
    html = report._repr_html_()
    assert html.count("<tr>") == 3 and "<td>do</td>" in html and "<td>why" not in html
