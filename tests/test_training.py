import pytest
import torch

from robustkit import data, training


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
