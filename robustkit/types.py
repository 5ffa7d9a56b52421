"""Type aliases shared by every module."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import Tensor

Model = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Attack = Callable[[Model, Tensor, Tensor], Tensor]
Norm = Literal["linf", "l2"]
Bounds = tuple[float, float]
Device = torch.device | str
Loader = Iterable[tuple[Tensor, Tensor]]
Transform = Callable[[Tensor], Tensor]  # an input transformation (robustkit.defenses)
