"""Defenses that act on the model's input or output (the outer problem is training's).

Every defense here is an nn.Module wrapping a model, so attacks see it as a model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def softmax_with_temperature(logits: Tensor, temperature: float) -> Tensor:
    """softmax(z / T): T > 1 softens the distribution, T < 1 sharpens it."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return torch.softmax(logits / temperature, dim=1)


class Temperature(nn.Module):
    """Outputs model(x) / temperature: the same predictions, rescaled logits.

    With a tiny temperature (e.g. 1e-3) the logits grow 1000-fold and the softmax
    saturates: cross-entropy and its input gradient underflow to exactly zero on
    confidently classified inputs, although nothing about the decision changed. That
    is gradient masking in its simplest form.
    """

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.model, self.temperature = model, temperature

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x) / self.temperature
