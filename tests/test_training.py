from functools import partial

import pytest
import torch

from robustkit import attacks, data, evaluation, models, training


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
        training.config(n_epochs=3)
    with pytest.raises(ValueError, match="magic"):
        training.config(recipe="magic")


def test_train_from_config_reaches_95_percent_quickly_on_mnist():
    """The quick baseline: a few thousand MNIST images, >= 95% test accuracy."""
    from robustkit import models

    torch.manual_seed(0)
    cfg = training.config(n_train=5_000, epochs=5)
    model = models.create(cfg["arch"], cfg["dataset"])
    metrics = training.train_from_config(model, cfg, progress=False)
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


def test_collapse_guard_stops_and_rolls_back(mlp, blobs):
    states, callback = snapshots(mlp)
    history = train_blobs(
        mlp,
        blobs,
        epochs=5,
        val=blobs,
        val_attack=scripted_val_attack(peak_epoch=2),
        collapse_drop=0.2,
        callback=callback,
    )
    assert len(history) == 3  # the drop after the peak stops training at once
    assert same_weights(mlp, states[1])


def test_catastrophic_overfitting_is_detected_when_forced():
    """FGSM without a random start at a high learning rate (Wong et al. 2020): PGD
    accuracy on held-out images rises, then collapses while training goes on. The
    guard stops there and rolls back to the best epoch."""
    splits = data.load("mnist", n_train=5_000, n_val=500, n_test=0, seed=0)
    val = (splits.x_val, splits.y_val)
    val_attack = partial(attacks.pgd, eps=0.15, alpha=0.15 / 8, steps=20)
    torch.manual_seed(0)
    model = models.create("small_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = training.fit(
        model,
        data.Batches(splits.x_train, splits.y_train, batch_size=100, shuffle=True),
        opt=opt,
        epochs=8,
        attack=partial(attacks.fgsm, eps=0.15),  # no random start
        val=val,
        val_attack=val_attack,
        collapse_drop=0.1,
        progress=False,
    )
    scores = [r["val_robust_accuracy"] for r in history]
    assert len(history) < 8, scores  # stopped early
    assert scores[-1] < max(scores) - 0.1 and max(scores) > 0.3
    restored = evaluation.robust_accuracy(model, [val], val_attack)
    assert restored == pytest.approx(max(scores), abs=0.03)
