from functools import partial

import pytest
import torch

from robustkit import attacks, data, evaluation, models, recipes, training


def train_blobs(mlp, blobs, epochs=5, **kwargs):
    x, y = blobs
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    loader = data.Batches(x, y, batch_size=50, shuffle=True)
    return training.fit(
        mlp,
        loader,
        opt=opt,
        epochs=epochs,
        test_loader=data.Batches(x, y),
        progress=False,
        **kwargs,
    )


def test_fit_lowers_the_loss_and_reports_fixed_keys(mlp, blobs):
    history = train_blobs(mlp, blobs)
    assert [tuple(row) for row in history] == [training.HISTORY_KEYS] * 5
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["test_accuracy"] > 0.9
    assert all(0 <= r["train_accuracy"] <= 1 and r["seconds"] > 0 for r in history)
    assert history[0]["test_robust_accuracy"] is None  # no eval_attack given


def test_same_seed_gives_identical_metrics_on_cpu(blobs):
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        history = train_blobs(mlp, blobs, epochs=2)
        runs.append(
            [
                (r["train_loss"], r["train_accuracy"], r["test_accuracy"])
                for r in history
            ]
        )
    assert runs[0] == runs[1]


def test_run_epoch_without_opt_evaluates_only(mlp, blobs):
    before = [p.clone() for p in mlp.parameters()]
    mlp.train()
    result = training.run_epoch(mlp, data.Batches(*blobs), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, mlp.parameters()))
    assert 0 <= result.accuracy <= 1 and result.loss > 0
    assert not mlp.training  # evaluation leaves the model in eval mode


def test_run_epoch_averages_over_examples_with_an_uneven_last_batch(mlp, blobs):
    x, y = blobs  # 400 examples in batches of 150, 150 and 100
    result = training.run_epoch(mlp, data.Batches(x, y, batch_size=150), progress=False)
    with torch.no_grad():
        logits = mlp(x)
    expected_loss = torch.nn.functional.cross_entropy(logits, y).item()
    expected_accuracy = (logits.argmax(1) == y).float().mean().item()
    assert result.loss == pytest.approx(expected_loss, rel=1e-5)
    assert result.accuracy == pytest.approx(expected_accuracy)
    assert training.run_epoch(mlp, [], progress=False) == (0.0, 0.0)


def test_run_epoch_crafts_in_eval_mode_and_steps_in_train_mode(mlp, blobs):
    modes = []

    def attack(model, x, y):
        modes.append(("attack", model.training))
        return x

    def objective(model, x, x_adv, y):
        modes.append(("step", model.training))
        return training.cross_entropy_objective(model, x, x_adv, y)

    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    training.run_epoch(
        mlp,
        data.Batches(*blobs, batch_size=200),
        opt=opt,
        attack=attack,
        objective=objective,
        progress=False,
    )
    assert modes == [("attack", False), ("step", True)] * 2


@pytest.mark.parametrize("kind", ["constant", "step", "cyclic", "cosine"])
def test_lr_schedules(kind, mlp):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.2)
    sched = training.lr_schedule(opt, kind, epochs=4, steps_per_epoch=25)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) <= 0.2 + 1e-12 and min(lrs) >= 0
    if kind == "cyclic":
        peak = lrs.index(max(lrs))
        assert 35 <= peak <= 45 and lrs[0] < 0.01 and lrs[-1] < 0.01
    if kind == "step":
        assert (
            lrs[0] == 0.2
            and lrs[60] == pytest.approx(0.02)
            and lrs[90] == pytest.approx(0.002)
        )


def test_bad_arguments(mlp):
    opt = torch.optim.SGD(mlp.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="triangle"):
        training.lr_schedule(opt, "triangle", epochs=1, steps_per_epoch=1)
    with pytest.raises(ValueError, match="epochs"):
        training.fit(mlp, [], opt=opt, epochs=-1)
    with pytest.raises(ValueError, match="n_epochs"):
        recipes.config(n_epochs=3)
    with pytest.raises(ValueError, match="magic"):
        recipes.config(recipe="magic")


def test_train_from_config_reaches_95_percent_quickly_on_mnist():
    """The quick baseline: a few thousand MNIST images, >= 95% test accuracy."""
    from robustkit import models

    torch.manual_seed(0)
    cfg = recipes.config(n_train=5_000, epochs=5)
    model = models.create(cfg["arch"], cfg["dataset"])
    metrics = recipes.train(model, cfg, progress=False)
    assert metrics["test_accuracy"] >= 0.95
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]


def scripted_val_attack(peak_epoch):
    """A `val_attack` whose robust accuracy peaks at `peak_epoch`: it returns x then,
    and every other epoch another example's image (so mostly the wrong class)."""
    calls = []

    def attack(model, x, y):
        calls.append(1)
        return x if len(calls) == peak_epoch else x.roll(1, dims=0)

    return attack


def snapshots(model):
    """A callback keeping the weights after every epoch, and the list it fills."""
    states = []

    def callback(row):
        states.append({k: v.clone() for k, v in model.state_dict().items()})

    return states, callback


def same_weights(model, state):
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_keep_best_restores_the_epoch_with_the_best_robust_validation(mlp, blobs):
    states, callback = snapshots(mlp)
    history = train_blobs(
        mlp,
        blobs,
        epochs=4,
        val=blobs,
        val_attack=scripted_val_attack(peak_epoch=2),
        keep_best=True,
        callback=callback,
    )
    scores = [r["val_robust_accuracy"] for r in history]
    assert len(history) == 4 and scores.index(max(scores)) == 1
    assert same_weights(mlp, states[1])  # epoch 2's weights, not epoch 4's
    assert not same_weights(mlp, states[3])


def test_without_guards_the_last_epoch_is_kept(mlp, blobs):
    states, callback = snapshots(mlp)
    train_blobs(
        mlp,
        blobs,
        epochs=3,
        val=blobs,
        val_attack=scripted_val_attack(peak_epoch=1),
        callback=callback,
    )
    assert same_weights(mlp, states[-1])


@pytest.mark.parametrize("epochs", [5, 3], ids=["early", "on the last epoch"])
def test_collapse_guard_stops_and_rolls_back(mlp, blobs, epochs):
    states, callback = snapshots(mlp)
    history = train_blobs(
        mlp,
        blobs,
        epochs=epochs,
        val=blobs,
        val_attack=scripted_val_attack(peak_epoch=2),
        collapse_drop=0.2,
        callback=callback,
    )
    assert len(history) == 3  # the drop after the peak stops training at once
    assert same_weights(mlp, states[1])  # rolled back, on the last epoch too


def forced_fgsm_run(seed, *, n_train, epochs, drop=0.1):
    """FGSM without a random start at a high learning rate (Wong et al. 2020), the
    collapse guard on, validated with a deterministic PGD (no random start), so the
    restored weights can be re-measured exactly. Returns (scores, re-measured)."""
    splits = data.load("mnist", n_train=n_train, n_val=500, n_test=0, seed=0)
    val = (splits.x_val, splits.y_val)
    val_attack = partial(
        attacks.pgd, eps=0.15, alpha=0.15 / 8, steps=20, random_start=False
    )
    torch.manual_seed(seed)
    model = models.create("small_cnn", "mnist")
    history = training.fit(
        model,
        data.Batches(splits.x_train, splits.y_train, batch_size=100, shuffle=True),
        opt=torch.optim.Adam(model.parameters(), lr=1e-2),
        epochs=epochs,
        attack=partial(attacks.fgsm, eps=0.15),
        val=val,
        val_attack=val_attack,
        collapse_drop=drop,
        progress=False,
    )
    scores = [r["val_robust_accuracy"] for r in history]
    return scores, evaluation.robust_accuracy(model, [val], val_attack, progress=False)


def check_guard_on_a_real_run(scores, restored, epochs, drop=0.1):
    """What the guard promises on any trajectory: it stops at the first epoch whose
    score fell more than `drop` below the best before it, and only there, and it
    leaves the weights of the best epoch (re-measured: exactly the best score)."""
    collapsed = [e for e in range(1, len(scores)) if scores[e] < max(scores[:e]) - drop]
    if collapsed:  # on the last epoch too
        assert collapsed == [len(scores) - 1], scores  # stopped at the first collapse
        assert restored == max(scores), (restored, scores)  # rolled back to the best
    else:
        assert len(scores) == epochs, scores  # no collapse, no stop
    return bool(collapsed)


def test_the_collapse_guard_keeps_its_promise_on_a_real_fgsm_run():
    """One short real run, whatever its trajectory (it may or may not collapse on a
    given CPU): the guard's stop and rollback are checked, not the outcome."""
    scores, restored = forced_fgsm_run(0, n_train=2_000, epochs=4)
    check_guard_on_a_real_run(scores, restored, epochs=4)


@pytest.mark.slow
def test_forced_catastrophic_overfitting_happens_and_is_caught_across_seeds():
    """A statistical property over seeds 0-4 (one run can stay at chance, collapse or
    not depending on the CPU and thread count): the guard keeps its promise in every
    run, and the forced regime collapses, and is caught, in at least one of them."""
    caught = [
        check_guard_on_a_real_run(*forced_fgsm_run(seed, n_train=5_000, epochs=8), 8)
        for seed in range(5)
    ]
    assert any(caught), caught


# ------------------------------------------------------------------- GradAlign


def test_gradient_misalignment_is_zero_where_the_loss_is_linear_in_direction():
    """For a two-class linear model the input gradient of CE is always a positive
    multiple of (w_y - w_other): aligned everywhere, whatever eps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 2, (8,))
    assert recipes.gradient_misalignment(model, x, y, eps=0.3).item() < 1e-6


def test_gradient_misalignment_of_a_relu_net_is_positive_and_trains(mlp, blobs):
    x, y = blobs[0][:64], blobs[1][:64]
    assert recipes.gradient_misalignment(mlp, x, y, eps=0.0).item() < 1e-6
    reg = recipes.gradient_misalignment(mlp, x, y, eps=0.3)
    assert 0 < reg.item() <= 2
    reg.backward()  # double backpropagation reaches the weights
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())


@pytest.mark.parametrize("align", [0.0, 0.5])
def test_grad_align_is_fgsm_cross_entropy_plus_the_weighted_regularizer(
    align, mlp, blobs
):
    x, y = blobs[0][:32], blobs[1][:32]
    assert recipes.config("grad_align", dataset="mnist")["alpha"] == 0.3  # alpha = eps
    cfg = recipes.config("grad_align", dataset="mnist", eps=0.2, alpha=0.2,
                         eps_warmup=0, align=align)  # fmt: skip
    assert cfg["attack_steps"] == 1
    attack, objective = recipes.recipe_parts(cfg)
    x_adv = attack(mlp, x, y)
    fgsm = attacks.fgsm(mlp, x, y, eps=0.2)
    torch.testing.assert_close(x_adv, fgsm)
    with torch.random.fork_rng():
        loss, logits = objective(mlp, x, x_adv, y)
    ce = torch.nn.functional.cross_entropy(mlp(x_adv), y)
    reg = recipes.gradient_misalignment(mlp, x, y, eps=0.2)  # the same eta draw
    torch.testing.assert_close(loss, ce + align * reg)
    torch.testing.assert_close(logits, mlp(x_adv))


def test_grad_align_trains_through_fit(mlp, blobs):
    cfg = recipes.config("grad_align", dataset="mnist", eps=0.1, epochs=2)
    attack, objective = recipes.recipe_parts(cfg, steps_per_epoch=8)
    history = train_blobs(mlp, blobs, epochs=2, attack=attack, objective=objective)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
