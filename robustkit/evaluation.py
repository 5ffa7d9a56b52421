"""Clean and robust accuracy."""

from __future__ import annotations

import torch
from torch import Tensor
from tqdm.auto import tqdm

from robustkit.types import Attack, Loader, Model


@torch.no_grad()
def predict(model: Model, x: Tensor, *, batch_size: int = 1024) -> Tensor:
    """Predicted classes argmax_k h(x)_k, shape (N,), computed in batches."""
    return torch.cat(
        [model(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    )


def accuracy(model: Model, loader: Loader, *, progress: bool = False) -> float:
    """Fraction of examples in `loader` that the model classifies correctly."""
    correct = total = 0
    for x, y in tqdm(loader, desc="accuracy", leave=False, disable=not progress):
        correct += (predict(model, x) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


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
    correct = total = 0
    for x, y in tqdm(loader, desc="robust accuracy", leave=False, disable=not progress):
        x_adv = attack(model, x, y)
        correct += (
            ((predict(model, x) == y) & (predict(model, x_adv) == y)).sum().item()
        )
        total += len(y)
    return correct / max(total, 1)
