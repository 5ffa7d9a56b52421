"""The table of training recipes: a config, and one small function per recipe.

A config is a flat dict (DEFAULT_CONFIG's keys) that says everything a trained
model depends on; `config(recipe, dataset=..., **overrides)` completes and checks
one, and `train(model, cfg)` trains a model as it says. Each recipe is a function
`(cfg, ramp) -> (attack, objective)` for the loop of `robustkit.training`: the inner
maximization (None: clean inputs) and the outer loss, with `ramp()` the warm-up's
fraction of the full budget at each training batch. Budgets, step sizes and the
optimizer default to the dataset's row of `robustkit.datasets`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robustkit import (
    attacks,
    certify,
    data,
    datasets,
    distributed,
    evaluation,
    models,
    training,
)
from robustkit.distributed import Shard
from robustkit.types import Attack, Loader

Objective = training.Objective

DEFAULT_CONFIG = dict(
    arch=None,  # models.create name (None: the dataset's default)
    dataset=datasets.DEFAULT,  # datasets.TABLE name
    n_train=None,  # training examples, validation held out first (None: dataset's)
    n_val=None,  # validation examples (None: the dataset's)
    seed=0,  # initial weights, subset draw and batch order
    recipe="standard",  # see RECIPES
    epochs=4,
    batch_size=None,  # None: the dataset's
    optimizer=None,  # "adam" or "sgd" (momentum 0.9, wd 5e-4); None: the dataset's
    lr=None,  # peak learning rate (None: the dataset's)
    schedule="cyclic",  # see training.lr_schedule
    eps=None,  # L-inf training budget (adversarial recipes)
    alpha=None,  # attack step size
    attack_steps=None,  # attack iterations (1 for the FGSM recipes)
    random_start=None,  # FGSM from a random point of the ball (FGSM-RS) or from x
    beta=None,  # TRADES trade-off weight
    eps_warmup=None,  # fraction of training over which eps (and alpha) ramp up from 0
    temperature=None,  # softmax temperature of defensive distillation
    kappa=None,  # IBP: the clean loss's final weight (from 1, over the warm-up)
    sigma=None,  # Gaussian-noise training (randomized smoothing): the noise's std
    noise=None,  # N-FGSM: half-width of the uniform start, in multiples of eps
    align=None,  # GradAlign: weight of the gradient-alignment regularizer
    guard=None,  # "best": keep the best robust-validation epoch; "collapse": also
    #              stop and roll back when it collapses (catastrophic overfitting)
    augment=None,  # "crop_flip": random 4-pixel crops and flips (natural images)
)
VAL_BATCH = 1_000  # held-out examples the guards attack after each epoch
# test images of the per-epoch history (the first, as in Wong et al.'s per-epoch
# evaluation); the metrics' final test_accuracy counts the whole test set
MONITOR = 1_000


DATASET_DEFAULTS = ("dataset", "arch", "n_train", "n_val", "batch_size", "optimizer",
                    "lr")  # fmt: skip
# The optimizer and peak learning rate (one-cycle schedule) each architecture trains
# well with: Adam for the small CNNs (no batch norm), SGD with momentum for the
# ResNet (Wong et al. 2020: one cycle to 0.2, batch 128).
ARCH_OPTIMIZER = {
    "small_cnn": ("adam", 5e-3),
    "mnist_cnn": ("adam", 5e-3),
    "preact_resnet18": ("sgd", 0.2),
}


def _dataset_defaults(ds: datasets.Dataset, arch: str) -> dict:
    """What every recipe takes from the dataset's row (and its architecture) unless
    told otherwise."""
    optimizer, lr = ARCH_OPTIMIZER.get(arch, ("adam", 5e-3))
    return dict(
        arch=arch,
        n_train=ds.sizes["n_train"],
        n_val=ds.sizes["n_val"],
        batch_size=ds.batch_size,
        optimizer=optimizer,
        lr=lr,
        augment="crop_flip" if ds.augment else None,
    )


# ------------------------------------------------------------------ the recipes


def standard(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """Empirical risk minimization: cross-entropy on clean inputs."""
    return None, training.cross_entropy_objective


def pgd(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """Adversarial training on PGD examples (Madry et al. 2018): cross-entropy on
    `attack_steps` steps of size alpha, from a uniform point of the eps-ball if
    `random_start`. FGSM training is its one-step case, from x (FGSM) or from the
    random point (FGSM-RS, Wong et al. 2020, alpha = 1.25 eps)."""
    attack = partial(
        attacks.pgd, steps=cfg["attack_steps"], random_start=cfg["random_start"]
    )
    start = uniform_start if cfg["random_start"] else None
    return _ramped(
        attack, cfg["eps"], cfg["alpha"], ramp, start
    ), training.cross_entropy_objective


def n_fgsm(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """N-FGSM (de Jorge et al. 2022): cross-entropy on one FGSM step of size alpha
    from x + U[-noise * eps, noise * eps], not projected back into the eps-ball
    (`attacks.n_fgsm`): single-step training that the paper finds free of
    catastrophic overfitting, without FGSM-RS's guard or GradAlign's extra cost."""
    attack = partial(attacks.n_fgsm, noise=cfg["noise"])

    def start(x: Tensor, eps: float) -> Tensor:
        return attacks.core.random_init(x, cfg["noise"] * eps, "linf")

    return _ramped(
        attack, cfg["eps"], cfg["alpha"], ramp, start
    ), training.cross_entropy_objective


def grad_align(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """FGSM training with GradAlign (Andriushchenko & Flammarion 2020): cross-entropy
    on one FGSM step of size alpha from x, plus `align` times the gradients'
    misalignment at two points of the ball (`gradient_misalignment`). Keeping them
    aligned keeps the loss locally linear, which FGSM training loses when it
    overfits catastrophically; it costs a double backward pass."""
    step = partial(attacks.pgd, steps=1, random_start=False)
    attack = _ramped(step, cfg["eps"], cfg["alpha"], ramp)

    def objective(model, x, x_adv, y):
        loss, logits = training.cross_entropy_objective(model, x, x_adv, y)
        eps = cfg["eps"] * ramp.last  # this batch's budget, as the attack had it
        return loss + cfg["align"] * gradient_misalignment(model, x, y, eps), logits

    return attack, objective


def gradient_misalignment(model: nn.Module, x: Tensor, y: Tensor, eps: float) -> Tensor:
    """GradAlign's regularizer: the batch mean of 1 - cos(grad_x CE(h(x), y),
    grad_x CE(h(x + eta), y)), eta ~ U[-eps, eps] (clipped to the image bounds),
    differentiable in the model's parameters (double backpropagation).

    Reference:
        Andriushchenko & Flammarion, "Understanding and Improving Fast Adversarial
        Training", NeurIPS 2020. https://arxiv.org/abs/2007.02617
    """
    points = (x, (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1))
    grads = []
    for point in points:
        point = point.detach().requires_grad_(True)
        loss = F.cross_entropy(model(point), y)
        grads.append(torch.autograd.grad(loss, point, create_graph=True)[0].flatten(1))
    cos = F.cosine_similarity(*grads, dim=1, eps=1e-12)
    return (1 - cos).mean()


def trades(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """TRADES (Zhang et al. 2019): PGD on KL(h(x) || h(x')), then
    CE(h(x), y) + beta * KL(h(x) || h(x'))."""
    attack = partial(attacks.trades_pgd, steps=cfg["attack_steps"])
    attack = _ramped(attack, cfg["eps"], cfg["alpha"], ramp, trades_start)
    return attack, partial(trades_objective, beta=cfg["beta"])


def ibp(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """Interval bound propagation training (Gowal et al. 2018): kappa * CE(h(x), y)
    + (1 - kappa) * CE of the worst-case logits that the interval bounds of the
    eps-ball allow (`certify.ibp_loss`); eps ramps up from 0 and kappa down from 1
    to cfg's kappa over the warm-up."""

    def objective(model, x, x_adv, y):
        scale = ramp()
        kappa = 1 - (1 - cfg["kappa"]) * scale
        return certify.ibp_loss(model, x, y, eps=cfg["eps"] * scale, kappa=kappa)

    return None, objective


def noise(cfg: dict, ramp: Ramp) -> tuple[Attack | None, Objective]:
    """Gaussian data augmentation, the base classifier of randomized smoothing
    (Cohen et al. 2019): cross-entropy on x + N(0, sigma^2 I), not clipped. The
    noisy input takes the attack's place in the loop."""

    def gaussian(model, x, y, rows=None):
        noisy = x + cfg["sigma"] * torch.randn_like(x)
        return noisy if rows is None else noisy[rows]  # drawn for the whole batch

    return gaussian, training.cross_entropy_objective


def uniform_start(x: Tensor, eps: float) -> Tensor:
    """PGD's random start for x (`attacks.core.random_init`, L-inf)."""
    return attacks.core.random_init(x, eps, "linf")


def trades_start(x: Tensor, eps: float) -> Tensor:
    """TRADES' start for x: 0.001 * N(0, I)."""
    return 0.001 * torch.randn_like(x)


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


class Recipe(NamedTuple):
    """A recipe: its config defaults (from the dataset's row) and its parts."""

    defaults: Callable[[datasets.Dataset], dict]
    parts: Callable[[dict, Ramp], tuple[Attack | None, Objective]] | None


def _adversarial(ds: datasets.Dataset, **extra) -> dict:
    return dict(eps=ds.eps, epochs=ds.epochs, eps_warmup=0.3, **extra)


RECIPES = {
    "standard": Recipe(lambda ds: {}, standard),
    "fgsm": Recipe(
        lambda ds: dict(eps=ds.eps, alpha=1.25 * ds.eps, attack_steps=1,
                        random_start=False),
        pgd,
    ),
    "fgsm_rs": Recipe(
        lambda ds: _adversarial(ds, alpha=1.25 * ds.eps, attack_steps=1,
                                random_start=True, guard="collapse"),
        pgd,
    ),
    "n_fgsm": Recipe(
        lambda ds: _adversarial(ds, alpha=ds.eps, attack_steps=1, noise=2.0,
                                guard="collapse"),
        n_fgsm,
    ),
    # the paper's CIFAR-10 weight at 8/255 (0.2); FGSM from x with alpha = eps
    "grad_align": Recipe(
        lambda ds: _adversarial(ds, alpha=ds.eps, attack_steps=1, align=0.2,
                                guard="collapse"),
        grad_align,
    ),
    "pgd": Recipe(
        lambda ds: _adversarial(ds, alpha=ds.alpha, attack_steps=ds.attack_steps,
                                random_start=True, guard="best"),
        pgd,
    ),
    "trades": Recipe(
        lambda ds: _adversarial(ds, alpha=ds.alpha, attack_steps=ds.attack_steps,
                                beta=6.0, guard="best"),
        trades,
    ),
    "distillation": Recipe(lambda ds: dict(temperature=100.0), None),  # see train
    # Gowal et al.: kappa 1 -> 0.5 as eps ramps up over the first half of training
    "ibp": Recipe(lambda ds: dict(eps=ds.eps, epochs=ds.epochs, eps_warmup=0.5,
                                  kappa=0.5), ibp),
    "noise": Recipe(lambda ds: dict(sigma=0.25), noise),
}  # fmt: skip

# ----------------------------------------------------------- config and training


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
    "dataset": (lambda v: v in datasets.names(), datasets.names()),
    "n_train": (_number(1, integer=True), "an int >= 1"),
    "n_val": (_number(0, integer=True), "an int >= 0"),
    "seed": (_number(0, integer=True), "an int >= 0"),
    "recipe": (lambda v: v in list(RECIPES), sorted(RECIPES)),
    "epochs": (_number(1, integer=True), "an int >= 1"),
    "batch_size": (_number(1, integer=True), "an int >= 1"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "'adam' or 'sgd'"),
    "lr": (_number(0, above=True), "a finite number > 0"),
    "schedule": (lambda v: v in training.SCHEDULES, list(training.SCHEDULES)),
    "eps": (_number(0, optional=True), "None or a finite number >= 0"),
    "alpha": (_number(0, optional=True), "None or a finite number >= 0"),
    "attack_steps": (_number(1, integer=True, optional=True), "None or an int >= 1"),
    "random_start": (lambda v: v is None or isinstance(v, bool), "None or a bool"),
    "beta": (_number(0, optional=True), "None or a finite number >= 0"),
    "eps_warmup": (_number(0, 1, optional=True), "None or a number in [0, 1]"),
    "temperature": (_number(0, above=True, optional=True), "None or a number > 0"),
    "kappa": (_number(0, 1, optional=True), "None or a number in [0, 1]"),
    "sigma": (_number(0, above=True, optional=True), "None or a number > 0"),
    "noise": (_number(0, above=True, optional=True), "None or a number > 0"),
    "align": (_number(0, optional=True), "None or a finite number >= 0"),
    "guard": (lambda v: v in (None, "best", "collapse"), "None, 'best' or 'collapse'"),
    "augment": (lambda v: v in (None, "crop_flip"), "None or 'crop_flip'"),
}


def config(recipe: str = "standard", **overrides) -> dict:
    """A complete training config: DEFAULT_CONFIG, then the dataset's defaults (and
    its architecture's optimizer, ARCH_OPTIMIZER), then
    the recipe's (which read the dataset's budget), then `overrides`. Unknown keys
    and values that training cannot use (CONFIG_RULES) are an error rather than a
    typo silently cached. An override of None for a key of DATASET_DEFAULTS keeps
    the dataset's value; for the others (e.g. guard=None) it is the value."""
    if not (isinstance(recipe, str) and recipe in RECIPES):
        raise ValueError(f"unknown recipe {recipe!r}: use one of {sorted(RECIPES)}")
    unknown = set(overrides) - set(DEFAULT_CONFIG)
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}: use {sorted(DEFAULT_CONFIG)}"
        )
    given = {
        k: v
        for k, v in overrides.items()
        if not (v is None and k in DATASET_DEFAULTS)  # None: the dataset's
    }
    name = given.get("dataset", DEFAULT_CONFIG["dataset"])
    if not CONFIG_RULES["dataset"][0](name):  # before its row is read
        raise ValueError(
            f"bad config values: dataset={name!r} (use {datasets.names()})"
        )
    ds = datasets.get(name)
    cfg = {
        **DEFAULT_CONFIG,
        **_dataset_defaults(ds, given.get("arch", ds.arch)),
        **RECIPES[recipe].defaults(ds),
        **given,
        "recipe": recipe,
    }
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
    """The inner maximization (attack) and the outer objective of a config's
    recipe, their budget ramped up from 0 over the warm-up (`Ramp`)."""
    recipe = RECIPES.get(cfg["recipe"])
    if recipe is None or recipe.parts is None:
        raise ValueError(
            f"recipe {cfg['recipe']!r} has no attack and objective: use one of "
            f"{sorted(k for k, r in RECIPES.items() if r.parts is not None)}"
        )
    warmup = round((cfg["eps_warmup"] or 0) * cfg["epochs"] * steps_per_epoch)
    return recipe.parts(cfg, Ramp(warmup))


class Ramp:
    """The budget's fraction at each training batch: it grows linearly over the
    first `warmup` calls (one per batch), then stays 1. A large budget from the
    first step can stall training at chance, with the model predicting one class."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.calls = warmup, itertools.count(1)
        self.last = 0.0  # the fraction of the latest call (an objective reads it)

    def __call__(self) -> float:
        self.last = min(1.0, next(self.calls) / self.warmup) if self.warmup > 0 else 1.0
        return self.last


def _ramped(
    attack: Callable,
    eps: float,
    alpha: float,
    ramp: Ramp,
    start: Callable[[Tensor, float], Tensor] | None = None,
) -> Attack:
    """`attack` with eps and alpha scaled by `ramp()` at each call.

    Called with `rows` (under torchrun, by `training.run_epoch`), it takes the
    whole batch, draws the random start `start(x, eps)` for all of it, as one
    process would, and returns the adversarial examples of those rows only.
    """

    def ramped_attack(
        model: nn.Module, x: Tensor, y: Tensor, rows: slice | None = None
    ) -> Tensor:
        scale = ramp()
        kwargs = dict(eps=eps * scale, alpha=alpha * scale)
        if rows is None:
            return attack(model, x, y, **kwargs)
        if start is not None and kwargs["eps"] > 0 and len(x):
            kwargs["init"] = start(x, kwargs["eps"])[rows]
        return attack(model, x[rows], y[rows], **kwargs)

    return ramped_attack


def optimizer(model: nn.Module, cfg: dict, steps_per_epoch: int):
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
    scheduler = training.lr_schedule(
        opt, cfg["schedule"], epochs=cfg["epochs"], steps_per_epoch=steps_per_epoch
    )
    return opt, scheduler


def train(
    model: nn.Module,
    cfg: dict,
    *,
    progress: bool = True,
    callback: Callable[[dict], None] | None = None,
    shard: Shard | None = None,
) -> dict:
    """Train `model` in place as `cfg` says; return its metrics.

    Loads the data subset of `cfg` on the model's device, builds the optimizer, the
    per-batch schedule and the recipe's attack and objective, and runs
    `training.fit`. With a guard, PGD-20 accuracy on VAL_BATCH validation images is
    measured after each epoch. Metrics: the history (its test accuracy per epoch on
    the first MONITOR test images), the clean test accuracy on the full test set, the
    total training seconds and the device they were measured on.

    Under torchrun (`shard`: `robustkit.train` passes it), every process trains
    its rows of each global batch of `batch_size` on the DDP-wrapped model
    (`training.run_epoch`); the weights stay the same on all of them.
    """
    if shard is not None:
        check_shardable(cfg, shard)
    device = next(model.parameters()).device
    if device.type == "cuda":  # convolutions in NHWC, as tensor cores want them
        model.to(memory_format=torch.channels_last)
    splits = data.load(
        cfg["dataset"],
        n_train=cfg["n_train"],
        n_val=cfg["n_val"],
        seed=cfg["seed"],
        device=device,
    )
    train_loader = data.Batches(
        splits.x_train,
        splits.y_train,
        batch_size=cfg["batch_size"],
        shuffle=True,
        transform=data.crop_flip if cfg.get("augment") == "crop_flip" else None,
    )
    test_loader = data.Batches(splits.x_test, splits.y_test, batch_size=1000)
    monitor = data.Batches(splits.x_test[:MONITOR], splits.y_test[:MONITOR],
                           batch_size=1000)  # fmt: skip
    if cfg["recipe"] == "distillation":
        return _distillation(model, cfg, train_loader, test_loader, monitor, progress)
    opt, scheduler = optimizer(model, cfg, len(train_loader))
    attack, objective = recipe_parts(cfg, len(train_loader))
    guard = cfg["guard"]
    val = val_attack = None
    if guard is not None:
        val = (splits.x_val[:VAL_BATCH], splits.y_val[:VAL_BATCH])
        val_attack = _ramped(partial(attacks.pgd, steps=20), cfg["eps"],
                             2.5 * cfg["eps"] / 20, Ramp(0), uniform_start)  # fmt: skip
    history = training.fit(
        distributed.wrap(model, shard),
        train_loader,
        opt=opt,
        epochs=cfg["epochs"],
        test_loader=monitor,
        attack=attack,
        objective=objective,
        scheduler=scheduler,
        val=val,
        val_attack=val_attack,
        keep_best=guard is not None,
        collapse_drop=0.2 if guard == "collapse" else None,
        amp=device.type == "cuda",
        progress=progress and (shard is None or shard.main),
        callback=callback,
        shard=shard,
    )
    return dict(
        history=history,
        test_accuracy=evaluation.accuracy(model, test_loader),
        train_seconds=sum(row["seconds"] for row in history),
        device=_device_name(device),
    )


def check_shardable(cfg: dict, shard: Shard) -> None:
    """A ValueError, before any work, for a config that cannot be split over
    `shard.world` processes: distillation, or a batch that leaves one without rows."""
    if cfg["recipe"] in ("distillation", "grad_align"):  # grad_align: double backward
        raise ValueError(
            f"recipe {cfg['recipe']!r} does not run under torchrun yet: train it in "
            "one process (python -m robustkit.train ...)"
        )
    last = cfg["n_train"] % cfg["batch_size"]
    for size, what in ((cfg["batch_size"], "batch_size"), (last, "the last batch")):
        if 0 < size < shard.world:
            raise ValueError(
                f"{what} ({size} images, n_train={cfg['n_train']}, batch_size="
                f"{cfg['batch_size']}) is smaller than the {shard.world} processes: "
                "every process needs rows of every batch; change n_train or batch_size"
            )


def _distillation(
    model: nn.Module,
    cfg: dict,
    train_loader: Loader,
    test_loader: Loader,
    monitor: Loader,
    progress: bool,
) -> dict:
    """Defensive distillation (Papernot et al. 2016): a teacher trained at T, then
    `model` distilled from its soft labels at T (`training.distill`)."""
    device = next(model.parameters()).device
    temperature = cfg["temperature"]
    teacher = models.create(cfg["arch"], cfg["dataset"]).to(device)
    opt, scheduler = optimizer(teacher, cfg, len(train_loader))
    teacher_history = training.fit(
        teacher,
        train_loader,
        opt=opt,
        epochs=cfg["epochs"],
        objective=partial(temperature_objective, temperature=temperature),
        scheduler=scheduler,
        test_loader=monitor,
        progress=progress,
    )
    opt, scheduler = optimizer(model, cfg, len(train_loader))
    history = training.distill(
        model,
        teacher,
        train_loader,
        temperature=temperature,
        opt=opt,
        epochs=cfg["epochs"],
        scheduler=scheduler,
        test_loader=monitor,
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


def _device_name(device: torch.device) -> str:
    """'cpu' or e.g. 'cuda (NVIDIA H200)': where training times were measured."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
