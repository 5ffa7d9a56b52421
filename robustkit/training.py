"""Training loops: one epoch (`run_epoch`), several with history (`fit`), LR schedules.

Training solves the outer problem min_theta E[ loss(h_theta(x'), y) ], where x' is
the clean input (standard training) or an attack's output (adversarial training).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from robustkit import attacks, data, evaluation, models
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
    # The numbers stay on the device until the end of the epoch: a .item() per batch
    # would make the CPU wait for the GPU at every step instead of queueing the next
    # one, and on a small model every extra kernel per batch shows (one argmax here).
    losses, predictions, labels = [], [], []
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
        losses.append(loss.detach())
        predictions.append(logits.detach().argmax(1))
        labels.append(y)
    model.eval()
    if not labels:
        return EpochResult(0.0, 0.0)
    sizes = torch.tensor([len(t) for t in labels], device=losses[0].device)
    n = int(sizes.sum())
    total_loss = (torch.stack(losses).float() * sizes).sum().item()
    correct = (torch.cat(predictions) == torch.cat(labels)).sum().item()
    return EpochResult(total_loss / n, correct / n)


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
    """
    if not (isinstance(epochs, int) and epochs >= 0):
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if (keep_best or collapse_drop is not None) and (val is None or val_attack is None):
        raise ValueError("keep_best and collapse_drop need `val` and `val_attack`")
    history, best, best_state = [], -1.0, None
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
        row = dict.fromkeys(HISTORY_KEYS)
        row.update(
            epoch=epoch,
            lr=opt.param_groups[0]["lr"],
            train_loss=train.loss,
            train_accuracy=train.accuracy,
            seconds=time.perf_counter() - start,
        )
        if test_loader is not None:
            row["test_accuracy"] = evaluation.accuracy(model, test_loader)
            if eval_attack is not None:
                row["test_robust_accuracy"] = evaluation.robust_accuracy(
                    model, test_loader, eval_attack, progress=False
                )
        if val is not None and val_attack is not None:
            row["val_robust_accuracy"] = evaluation.robust_accuracy(
                model, [val], val_attack, progress=False
            )
        history.append(row)
        if callback is not None:
            callback(row)
        score = row["val_robust_accuracy"]
        if score is not None and score > best:
            best = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if (
            collapse_drop is not None
            and score is not None
            and score < best - collapse_drop
        ):
            break  # catastrophic overfitting: roll back (below) to the best epoch
    if best_state is not None and (keep_best or len(history) < epochs):
        model.load_state_dict(best_state)
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
    eps=None,  # L-inf training budget (adversarial recipes)
    alpha=None,  # attack step size
    attack_steps=None,  # attack iterations (1 for the FGSM recipes)
    random_start=None,  # FGSM from a random point of the ball (FGSM-RS) or from x
    beta=None,  # TRADES trade-off weight
    eps_warmup=None,  # fraction of training over which eps (and alpha) ramp up from 0
    temperature=None,  # softmax temperature of defensive distillation
    guard=None,  # "best": keep the best robust-validation epoch; "collapse": also
    #              stop and roll back when it collapses (catastrophic overfitting)
)
# Recipe defaults for MNIST at eps = 0.3 (the papers' settings); config() fills them.
RECIPES = {
    "standard": {},
    "fgsm": dict(eps=0.3, alpha=0.375, attack_steps=1, random_start=False, guard=None),
    "fgsm_rs": dict(
        eps=0.3,
        alpha=0.375,
        attack_steps=1,
        random_start=True,
        guard="collapse",
        epochs=10,
        eps_warmup=0.3,
    ),
    "pgd": dict(
        eps=0.3,
        alpha=0.01,
        attack_steps=40,
        random_start=True,
        guard="best",
        epochs=10,
        eps_warmup=0.3,
    ),
    "trades": dict(
        eps=0.3,
        alpha=0.01,
        attack_steps=40,
        beta=6.0,
        guard="best",
        epochs=10,
        eps_warmup=0.3,
    ),
}
RECIPES["distillation"] = dict(temperature=100.0)
VAL_BATCH = 1_000  # held-out examples the guards attack after each epoch
SCHEDULES = ("constant", "step", "cyclic", "cosine")  # the kinds of lr_schedule


def _number(
    low: float,
    high: float = math.inf,
    *,
    above: bool = False,
    integer: bool = False,
    optional: bool = False,
) -> Callable[[object], bool]:
    """A config rule: a finite number in [low, high] (> low if `above`; an int if
    `integer`; or None if `optional`). A bool is not a number here."""
    types = int if integer else (int, float)

    def rule(v: object) -> bool:
        if v is None:
            return optional
        if isinstance(v, bool) or not isinstance(v, types) or not math.isfinite(v):
            return False
        return (v > low if above else v >= low) and v <= high

    return rule


# key -> (rule, the values it allows); `config` checks every key against its rule
CONFIG_RULES = {
    "arch": (lambda v: v in list(models.ARCHITECTURES), sorted(models.ARCHITECTURES)),
    "dataset": (lambda v: v in list(data.CLASSES), sorted(data.CLASSES)),
    "n_train": (_number(1, integer=True), "an int >= 1"),
    "n_val": (_number(0, integer=True), "an int >= 0"),
    "seed": (_number(0, integer=True), "an int >= 0"),
    "recipe": (lambda v: v in list(RECIPES), sorted(RECIPES)),
    "epochs": (_number(1, integer=True), "an int >= 1"),
    "batch_size": (_number(1, integer=True), "an int >= 1"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "'adam' or 'sgd'"),
    "lr": (_number(0, above=True), "a finite number > 0"),
    "schedule": (lambda v: v in SCHEDULES, list(SCHEDULES)),
    "eps": (_number(0, optional=True), "None or a finite number >= 0"),
    "alpha": (_number(0, optional=True), "None or a finite number >= 0"),
    "attack_steps": (_number(1, integer=True, optional=True), "None or an int >= 1"),
    "random_start": (lambda v: v is None or isinstance(v, bool), "None or a bool"),
    "beta": (_number(0, optional=True), "None or a finite number >= 0"),
    "eps_warmup": (_number(0, 1, optional=True), "None or a number in [0, 1]"),
    "temperature": (_number(0, above=True, optional=True), "None or a number > 0"),
    "guard": (lambda v: v in (None, "best", "collapse"), "None, 'best' or 'collapse'"),
}


def config(recipe: str = "standard", **overrides) -> dict:
    """A complete training config: DEFAULT_CONFIG, then the recipe's defaults, then
    `overrides`. Unknown keys and values that training cannot use (CONFIG_RULES) are
    an error rather than a typo silently cached."""
    if not (isinstance(recipe, str) and recipe in RECIPES):
        raise ValueError(f"unknown recipe {recipe!r}: use one of {sorted(RECIPES)}")
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}: use {sorted(DEFAULT_CONFIG)}"
        )
    cfg = {**DEFAULT_CONFIG, **RECIPES[recipe], **overrides, "recipe": recipe}
    bad = [
        f"{key}={cfg[key]!r} (use {allowed})"
        for key, (ok, allowed) in CONFIG_RULES.items()
        if not ok(cfg[key])
    ]
    if cfg["guard"] is not None and cfg["n_val"] == 0:
        bad.append(f"guard={cfg['guard']!r} with n_val=0 (the guards need n_val >= 1)")
    if bad:
        raise ValueError("bad config values: " + "; ".join(bad))
    # 1.25 * 0.3 and 0.375 must name the same model: floats keep 10 significant digits
    return {
        k: float(f"{v:.10g}") if isinstance(v, float) else v for k, v in cfg.items()
    }


def recipe_parts(
    cfg: dict, steps_per_epoch: int = 1
) -> tuple[Attack | None, Objective]:
    """The inner maximization (attack) and outer objective of a config's recipe.

    standard: clean cross-entropy. fgsm / fgsm_rs: one FGSM step of size alpha, from x
    or from a uniform point of the eps-ball (Wong et al. 2020). pgd: PGD with
    random start (Madry et al. 2018). trades: PGD on KL(h(x) || h(x')), then
    CE(h(x), y) + beta * KL(h(x) || h(x')) (Zhang et al. 2019).
    """
    recipe = cfg["recipe"]
    if recipe == "standard":
        return None, cross_entropy_objective
    if recipe in ("fgsm", "fgsm_rs", "pgd"):
        attack = partial(
            attacks.pgd, steps=cfg["attack_steps"], random_start=cfg["random_start"]
        )
        objective = cross_entropy_objective
    elif recipe == "trades":
        attack = partial(attacks.trades_pgd, steps=cfg["attack_steps"])
        objective = partial(trades_objective, beta=cfg["beta"])
    else:
        raise ValueError(f"unknown recipe {recipe!r}: use one of {sorted(RECIPES)}")
    warmup = round((cfg["eps_warmup"] or 0) * cfg["epochs"] * steps_per_epoch)
    return _ramped(attack, cfg["eps"], cfg["alpha"], warmup), objective


def _ramped(attack: Callable, eps: float, alpha: float, warmup: int) -> Attack:
    """`attack` with eps and alpha growing linearly over its first `warmup` calls
    (one call per training batch): a large budget from the first step can stall
    training at chance, with the model predicting one class."""
    calls = itertools.count(1)

    def ramped_attack(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        scale = min(1.0, next(calls) / warmup) if warmup > 0 else 1.0
        return attack(model, x, y, eps=eps * scale, alpha=alpha * scale)

    return ramped_attack


def trades_objective(
    model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, beta: float
) -> tuple[Tensor, Tensor]:
    """TRADES: CE(h(x), y) + beta * KL(softmax h(x) || softmax h(x_adv)), batch mean.

    Reference:
        Zhang et al., "Theoretically Principled Trade-off between Robustness and
        Accuracy", ICML 2019. https://arxiv.org/abs/1901.08573
    """
    logits, logits_adv = model(x), model(x_adv)
    kl = F.kl_div(
        F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean"
    )
    return F.cross_entropy(logits, y) + beta * kl, logits_adv


def temperature_objective(
    model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, *, temperature: float
) -> tuple[Tensor, Tensor]:
    """Cross-entropy of softmax(h(x_adv) / T) against y: training at temperature T."""
    logits = model(x_adv)
    return F.cross_entropy(logits / temperature, y), logits


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


def _optimizer(model: nn.Module, cfg: dict, steps_per_epoch: int):
    """The optimizer and per-batch schedule a config asks for."""
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
        opt, cfg["schedule"], epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch
    )
    return opt, scheduler


def _train_distilled(
    model: nn.Module,
    cfg: dict,
    train_loader: Loader,
    test_loader: Loader,
    progress: bool,
) -> dict:
    """The distillation recipe: a teacher trained at T, then `model` distilled."""
    device = next(model.parameters()).device
    temperature = cfg["temperature"]
    teacher = models.create(cfg["arch"], cfg["dataset"]).to(device)
    opt, scheduler = _optimizer(teacher, cfg, len(train_loader))
    teacher_history = fit(
        teacher,
        train_loader,
        opt=opt,
        epochs=cfg["epochs"],
        objective=partial(temperature_objective, temperature=temperature),
        scheduler=scheduler,
        test_loader=test_loader,
        progress=progress,
    )
    opt, scheduler = _optimizer(model, cfg, len(train_loader))
    history = distill(
        model,
        teacher,
        train_loader,
        temperature=temperature,
        opt=opt,
        epochs=cfg["epochs"],
        scheduler=scheduler,
        test_loader=test_loader,
        progress=progress,
    )
    return dict(
        history=history,
        teacher_history=teacher_history,
        teacher_test_accuracy=evaluation.accuracy(teacher, test_loader),
        test_accuracy=evaluation.accuracy(model, test_loader),
        train_seconds=sum(r["seconds"] for r in teacher_history + history),
        device=_device_name(test_loader.x.device),
    )


def train_from_config(
    model: nn.Module,
    cfg: dict,
    *,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
) -> dict:
    """Train `model` in place as `cfg` says (a zoo `train_fn`); return its metrics.

    Loads the data subset of `cfg` on the model's device, builds the optimizer, the
    per-batch schedule and the recipe's attack and objective, and runs `fit`. With
    a guard, PGD-20 accuracy on VAL_BATCH validation images is measured after each
    epoch. Metrics: the history, the clean test accuracy on the full test set and
    the total training seconds and the device they were measured on.
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
    opt, scheduler = _optimizer(model, cfg, len(train_loader))
    if cfg["recipe"] == "distillation":
        return _train_distilled(model, cfg, train_loader, test_loader, progress)
    attack, objective = recipe_parts(cfg, len(train_loader))
    guard = cfg["guard"]
    if guard not in (None, "best", "collapse"):
        raise ValueError(f"guard must be None, 'best' or 'collapse', got {guard!r}")
    val = val_attack = None
    if guard is not None:
        val = (splits.x_val[:VAL_BATCH], splits.y_val[:VAL_BATCH])
        val_attack = partial(
            attacks.pgd, eps=cfg["eps"], alpha=2.5 * cfg["eps"] / 20, steps=20
        )
    history = fit(
        model,
        train_loader,
        opt=opt,
        epochs=cfg["epochs"],
        test_loader=test_loader,
        attack=attack,
        objective=objective,
        scheduler=scheduler,
        val=val,
        val_attack=val_attack,
        keep_best=guard is not None,
        collapse_drop=0.2 if guard == "collapse" else None,
        amp=device.type == "cuda",
        progress=progress,
        callback=callback,
    )
    return dict(
        history=history,
        test_accuracy=evaluation.accuracy(model, test_loader),
        train_seconds=sum(row["seconds"] for row in history),
        device=_device_name(device),
    )


def _device_name(device: torch.device) -> str:
    """'cpu' or e.g. 'cuda (NVIDIA H200)': where training times were measured."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
