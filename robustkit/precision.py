"""Attacks and evaluations in lower precision: one model wrapper, for every attack.

    fast = precision.autocast(model, "bf16")  # bf16 convolutions and matmuls
    evaluation.robust_accuracy(fast, loader, attack)  # any attack, unchanged

Every attack only calls `model(x)`, so running the model under `torch.autocast` and
handing its logits back in float32 puts the whole attack loop in bfloat16 where it
costs (the forward and backward passes) while losses, steps, projections and the
adversarial images stay in float32: x_adv keeps x's dtype and the eps-ball is exact.
The default, float32, is the teaching numbers' precision; `bench/attacks.py` and the
GPU tests compare the two (robust accuracy within 0.5 points is the bar).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PRECISIONS = {"float32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Autocast(nn.Module):
    """`model` run under torch.autocast(dtype) on its input's device type; its
    logits are returned in float32."""

    def __init__(self, model: nn.Module, precision: str = "bf16") -> None:
        super().__init__()
        self.model, self.precision = model, precision

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=PRECISIONS[self.precision]):
            logits = self.model(x)
        return logits.float()


def autocast(model: nn.Module, precision: str = "bf16") -> nn.Module:
    """`model` itself for "float32", else it wrapped in `Autocast` (see the module's
    docstring). A ValueError names an unknown precision."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}"
        )
    return model if PRECISIONS[precision] is None else Autocast(model, precision)
