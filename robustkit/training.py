"""Training loops: one epoch (`run_epoch`), several with history (`fit`), LR schedules,
and the distillation loop. The recipes that use them are in `robustkit.recipes`.

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

from robustkit import distributed, evaluation
from robustkit.distributed import Shard
from robustkit.progress import bar
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
    "val_robust_accuracy",
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
    shard: Shard | None = None,
) -> EpochResult:
    """One pass over `loader`: trains iff `opt` is given, attacks iff `attack` is.

    The attack is crafted with the model in eval mode (BatchNorm statistics frozen,
    no dropout); the training step then runs in train mode. `scheduler` steps once
    per batch. Batches stay on the device they come on.

    Under torchrun (`shard`), `model` is the DDP-wrapped network and every process
    gets the same global batches: it calls `attack(bare_model, x, y, rows=rows)`,
    which returns the adversarial examples of its rows (`recipes` builds such
    attacks), and weighs its rows' mean loss by their share of the batch, so the
    gradient DDP averages is the global batch's. The loss and accuracy are summed
    over the processes.

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
        shard: This process's rows of every batch, under torchrun.

    Returns:
        EpochResult(loss, accuracy) averaged over examples.
    """
    # The numbers stay on the device until the end of the epoch: a .item() per batch
    # would make the CPU wait for the GPU at every step instead of queueing the next
    # one, and on a small model every extra kernel per batch shows (one argmax here).
    bare = distributed.bare(model)
    losses, predictions, labels = [], [], []
    for x, y in bar(loader, desc=desc, disable=not progress, unit="batch"):
        weight = None  # under torchrun: the share of the batch times the processes
        if shard is None:
            x_adv = x if attack is None else _crafted(attack, bare, x, y)
        else:
            rows = shard.rows(len(x))
            weight = (rows.stop - rows.start) * shard.world / len(x)
            x_adv = x[rows] if attack is None else _crafted(attack, bare, x, y, rows)
            x, y = x[rows], y[rows]
        model.train(opt is not None)
        with torch.set_grad_enabled(opt is not None), autocast(x.device, amp):
            loss, logits = objective(model, x, x_adv, y)
        if opt is not None:
            opt.zero_grad(set_to_none=True)
            (loss if weight is None else loss * weight).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
        losses.append(loss.detach())
        predictions.append(logits.detach().argmax(1))
        labels.append(y)
    model.eval()
    sizes = torch.tensor([len(t) for t in labels])
    if labels:
        device = losses[0].device
        sums = torch.stack([
            (torch.stack(losses).float() * sizes.to(device)).sum(),
            (torch.cat(predictions) == torch.cat(labels)).sum().float(),
            sizes.sum().to(device).float(),
        ])  # fmt: skip
    else:
        sums = torch.zeros(3)
    total_loss, correct, n = distributed.total(sums.double(), shard).tolist()
    if not n:
        return EpochResult(0.0, 0.0)
    return EpochResult(total_loss / n, correct / n)


def _crafted(
    attack: Attack, model: nn.Module, x: Tensor, y: Tensor, rows: slice | None = None
) -> Tensor:
    """attack(model, x, y) in eval mode; with `rows`, the adversarial examples of
    those rows of the batch (the attack draws its random numbers for all of it)."""
    model.eval()
    return attack(model, x, y) if rows is None else attack(model, x, y, rows=rows)


SCHEDULES = ("constant", "step", "cyclic", "cosine")  # the kinds of lr_schedule


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
    val: tuple[Tensor, Tensor] | None = None,
    val_attack: Attack | None = None,
    keep_best: bool = False,
    collapse_drop: float | None = None,
    amp: bool = False,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    shard: Shard | None = None,
) -> list[dict]:
    """Train for `epochs` epochs and return one history row per epoch.

    Each row has the keys of HISTORY_KEYS: epoch (1-based), lr (at the epoch's end),
    train_loss, train_accuracy (on the inputs trained on, adversarial if `attack`),
    test_accuracy and test_robust_accuracy (under `eval_attack`), val_robust_accuracy
    (on the held batch `val` under `val_attack`), seconds (training time of the
    epoch, evaluation excluded); a value not measured is None.

    Two guards use the validation number. `keep_best` restores, at the end, the
    weights of the epoch with the best robust validation accuracy (robust
    overfitting, Rice et al. 2020). `collapse_drop` stops training and rolls back to
    the best epoch as soon as robust validation accuracy falls more than this below
    its best (catastrophic overfitting of FGSM training, Wong et al. 2020).
    `callback(row)` is called after each epoch (e.g. a live plot).

    Under torchrun (`shard`, see `run_epoch`), `model` is the DDP-wrapped network;
    the evaluations use the bare module, and the validation attack, which must
    take `rows` like the training one, runs on this process's rows of the held
    batch, its robust counts summed over the processes.
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if (keep_best or collapse_drop is not None) and (val is None or val_attack is None):
        raise ValueError("keep_best and collapse_drop need `val` and `val_attack`")
    bare = distributed.bare(model)
    history, best, best_state, collapsed = [], -1.0, None, False
    for epoch in bar(range(1, epochs + 1), desc="epochs", disable=not progress,
                     unit="epoch"):  # fmt: skip
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
            shard=shard,
        )
        row = dict.fromkeys(HISTORY_KEYS)
        row.update(
            epoch=epoch,
            lr=opt.param_groups[0]["lr"],
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            seconds=time.perf_counter() - start,
        )
        if test_loader is not None:  # the same weights on every process
            row["test_accuracy"] = evaluation.accuracy(bare, test_loader)
            if eval_attack is not None:
                row["test_robust_accuracy"] = evaluation.robust_accuracy(
                    bare, test_loader, eval_attack, progress=False
                )
        if val is not None and val_attack is not None:
            row["val_robust_accuracy"] = _val_robust_accuracy(
                bare, val, val_attack, shard
            )
        # the next epoch's order comes from the RNG: it must be the same everywhere
        distributed.check_same(distributed.rng_fingerprint(), shard, "RNG states")
        history.append(row)
        if callback is not None:
            callback(row)
        score = row["val_robust_accuracy"]
        if score is not None and score > best:
            best = score
            best_state = {k: v.detach().clone() for k, v in bare.state_dict().items()}
        if (
            collapse_drop is not None
            and score is not None
            and score < best - collapse_drop
        ):
            collapsed = True  # on the last epoch too: its weights are the collapse
            break  # catastrophic overfitting: roll back (below) to the best epoch
    if best_state is not None and (keep_best or collapsed):
        bare.load_state_dict(best_state)
    return history


def _val_robust_accuracy(
    model: nn.Module, val: tuple[Tensor, Tensor], attack: Attack, shard: Shard | None
) -> float:
    """`evaluation.robust_accuracy` on the held batch; under torchrun each process
    attacks its rows of the clean-correct examples and the counts are summed."""
    if shard is None:
        return evaluation.robust_accuracy(model, [val], attack, progress=False)
    x, y = val
    idx = (evaluation.predict(model, x) == y).nonzero().squeeze(1)
    rows = shard.rows(len(idx))
    x_adv = attack(model, x[idx], y[idx], rows=rows)
    robust = (evaluation.predict(model, x_adv) == y[idx][rows]).sum().double()
    return distributed.total(robust, shard).item() / len(y)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    loader: Loader,
    *,
    temperature: float,
    opt: torch.optim.Optimizer,
    epochs: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    test_loader: Loader | None = None,
    progress: bool = True,
) -> list[dict]:
    """Defensive distillation: train `student` on the teacher's soft labels at T.

    Minimizes -sum_k softmax(t(x) / T)_k log softmax(s(x) / T)_k, the cross-entropy
    between the teacher's and the student's distributions at temperature T; the
    student is then deployed at T = 1, i.e. its raw logits are used. The teacher
    should itself have been trained at T (`temperature_objective`).

    Returns:
        The student's `fit` history.

    Reference:
        Papernot et al., "Distillation as a Defense to Adversarial Perturbations
        against Deep Neural Networks", IEEE S&P 2016. https://arxiv.org/abs/1511.04508
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    teacher.eval()

    def soft_label_objective(model, x, x_adv, y):
        with torch.no_grad():
            soft = F.softmax(teacher(x) / temperature, 1)
        logits = model(x)
        return -(soft * F.log_softmax(logits / temperature, 1)).sum(1).mean(), logits

    return fit(
        student,
        loader,
        opt=opt,
        epochs=epochs,
        objective=soft_label_objective,
        scheduler=scheduler,
        test_loader=test_loader,
        progress=progress,
    )
