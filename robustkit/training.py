"""Training loops: one epoch (`run_epoch`), several with history (`fit`), LR schedules.

Training solves the outer problem min_theta E[ loss(h_theta(x'), y) ], where x' is
the clean input (standard training) or an attack's output (adversarial training).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustkit import data, evaluation
from robustkit.types import Attack, Loader

# objective(model, x, x_adv, y) -> (loss, logits used for the accuracy)
Objective = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
HISTORY_KEYS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "test_accuracy",
    "test_robust_accuracy",
    "seconds",
)


class EpochResult(NamedTuple):
    """Mean loss and accuracy (a fraction in [0, 1]) over one epoch."""

    loss: float
    accuracy: float


def cross_entropy_objective(
    model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor
) -> tuple[Tensor, Tensor]:
    """The standard (or Madry) objective: cross-entropy of h(x_adv) against y."""
    logits = model(x_adv)
    return F.cross_entropy(logits, y), logits


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when `enabled`; a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def run_epoch(
    model: nn.Module,
    loader: Loader,
    *,
    opt: torch.optim.Optimizer | None = None,
    attack: Attack | None = None,
    objective: Objective = cross_entropy_objective,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    amp: bool = False,
    progress: bool = True,
    desc: str = "",
) -> EpochResult:
    """One pass over `loader`: trains iff `opt` is given, attacks iff `attack` is.

    The attack is crafted with the model in eval mode (BatchNorm statistics frozen,
    no dropout); the training step then runs in train mode. `scheduler` steps once
    per batch. Batches stay on the device they come on.

    Args:
        model: The network; its mode is switched visibly here.
        loader: Iterable of (x, y) batches, x in [0, 1].
        opt: Optimizer; None evaluates without updating.
        attack: attack(model, x, y) -> x_adv; None uses clean inputs.
        objective: objective(model, x, x_adv, y) -> (loss, logits).
        scheduler: Per-batch learning-rate schedule.
        amp: bfloat16 autocast for the training forward pass on CUDA.
        progress: Show a progress bar.
        desc: Label of the progress bar.

    Returns:
        EpochResult(loss, accuracy) averaged over examples.
    """
    total_loss, correct, n = 0.0, 0, 0
    for x, y in tqdm(loader, desc=desc, leave=False, disable=not progress):
        x_adv = x
        if attack is not None:
            model.eval()
            x_adv = attack(model, x, y)
        model.train(opt is not None)
        with torch.set_grad_enabled(opt is not None), autocast(x.device, amp):
            loss, logits = objective(model, x, x_adv, y)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
        # .item() syncs with the GPU; one sync per batch is the price of the numbers.
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        n += len(y)
    model.eval()
    return EpochResult(total_loss / max(n, 1), correct / max(n, 1))


def lr_schedule(
    opt: torch.optim.Optimizer, kind: str, *, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-batch schedule scaling the optimizer's base learning rate.

    "constant": 1. "step": 1, then 0.1 after half the epochs and 0.01 after three
    quarters. "cyclic": linear from 0 up to 1 at 40% of training, then down to 0
    (the one-cycle schedule of fast adversarial training). "cosine": half a cosine.
    """
    total = max(epochs * steps_per_epoch, 1)
    factors = {
        "constant": lambda t: 1.0,
        "step": lambda t: 1.0 if t < 0.5 else 0.1 if t < 0.75 else 0.01,
        "cyclic": lambda t: t / 0.4 if t < 0.4 else max(0.0, (1 - t) / 0.6),
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t)),
    }
    if kind not in factors:
        raise ValueError(f"unknown schedule {kind!r}: use one of {sorted(factors)}")
    # LambdaLR applies the factor at step 0 too; evaluate mid-step so cyclic starts > 0.
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: factors[kind](min((step + 0.5) / total, 1.0))
    )


def fit(
    model: nn.Module,
    train_loader: Loader,
    *,
    opt: torch.optim.Optimizer,
    epochs: int,
    test_loader: Loader | None = None,
    attack: Attack | None = None,
    objective: Objective = cross_entropy_objective,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    eval_attack: Attack | None = None,
    amp: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Train for `epochs` epochs and return one history row per epoch.

    Each row has the keys of HISTORY_KEYS: epoch (1-based), lr (at the epoch's end),
    train_loss, train_accuracy (on the inputs trained on, adversarial if `attack`),
    test_accuracy and test_robust_accuracy (under `eval_attack`; None when either is
    missing), seconds (training time of the epoch, evaluation excluded).
    `callback(row)` is called after each epoch (e.g. a live plot).
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    history = []
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress):
        start = time.perf_counter()
        train = run_epoch(
            model,
            train_loader,
            opt=opt,
            attack=attack,
            objective=objective,
            scheduler=scheduler,
            amp=amp,
            progress=progress,
            desc=f"epoch {epoch}",
        )
        seconds = time.perf_counter() - start
        row = dict(
            epoch=epoch,
            lr=opt.param_groups[0]["lr"],
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            test_accuracy=None,
            test_robust_accuracy=None,
            seconds=seconds,
        )
        if test_loader is not None:
            row["test_accuracy"] = evaluation.accuracy(model, test_loader)
            if eval_attack is not None:
                row["test_robust_accuracy"] = evaluation.robust_accuracy(
                    model, test_loader, eval_attack, progress=False
                )
        history.append(row)
        if callback is not None:
            callback(row)
    return history


# ------------------------------------------------------- training from a config

DEFAULT_CONFIG = dict(
    arch="small_cnn",  # models.create name
    dataset="mnist",  # data.load name
    n_train=55_000,  # training examples (the validation ones are held out first)
    n_val=5_000,  # validation examples
    seed=0,  # initial weights, subset draw and batch order
    recipe="standard",  # see RECIPES
    epochs=4,
    batch_size=100,
    optimizer="adam",  # "adam" or "sgd" (momentum 0.9, weight decay 5e-4)
    lr=5e-3,  # peak learning rate
    schedule="cyclic",  # see lr_schedule
)
RECIPES = ("standard",)


def config(**overrides) -> dict:
    """DEFAULT_CONFIG with `overrides`; unknown keys are an error, not a typo cached."""
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}: use {sorted(DEFAULT_CONFIG)}"
        )
    cfg = {**DEFAULT_CONFIG, **overrides}
    if cfg["recipe"] not in RECIPES:
        raise ValueError(f"unknown recipe {cfg['recipe']!r}: use one of {RECIPES}")
    return cfg


def train_from_config(model: nn.Module, cfg: dict, *, progress: bool = True) -> dict:
    """Train `model` in place as `cfg` says (a zoo `train_fn`); return its metrics.

    Loads the data subset of `cfg` on the model's device, builds the optimizer and
    the per-batch schedule, and runs `fit`. Metrics: the history, the final test
    accuracy on the full test set and the total training seconds.
    """
    device = next(model.parameters()).device
    splits = data.load(
        cfg["dataset"],
        n_train=cfg["n_train"],
        n_val=cfg["n_val"],
        seed=cfg["seed"],
        device=device,
    )
    train_loader = data.Batches(
        splits.x_train, splits.y_train, batch_size=cfg["batch_size"], shuffle=True
    )
    test_loader = data.Batches(splits.x_test, splits.y_test, batch_size=1000)
    if cfg["optimizer"] == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    elif cfg["optimizer"] == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=cfg["lr"],
            momentum=0.9,
            weight_decay=5e-4,
            nesterov=True,
        )
    else:
        raise ValueError(f"unknown optimizer {cfg['optimizer']!r}: use 'adam' or 'sgd'")
    scheduler = lr_schedule(
        opt, cfg["schedule"], epochs=cfg["epochs"], steps_per_epoch=len(train_loader)
    )
    history = fit(
        model,
        train_loader,
        opt=opt,
        epochs=cfg["epochs"],
        test_loader=test_loader,
        scheduler=scheduler,
        amp=device.type == "cuda",
        progress=progress,
    )
    return dict(
        history=history,
        test_accuracy=evaluation.accuracy(model, test_loader),
        train_seconds=sum(row["seconds"] for row in history),
    )
