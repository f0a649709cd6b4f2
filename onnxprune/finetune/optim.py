"""Optimizer and learning-rate schedule of the training loop, and checks of their options.

The schedule is a plain function of the step index, applied to the optimizer before every
step (no torch scheduler object), so it is exact, deterministic and the same on every rank.
``constant`` without warm-up leaves the optimizer's learning rate untouched, which keeps
results made before schedules existed byte-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ParameterError

Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine"]
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def check_options(
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    weight_decay: float,
    patience: int | None,
    schedule: str = "constant",
    warmup: float = 0.0,
    momentum: float = 0.0,
) -> None:
    """Every option checked up front, so a typo fails in one line before any work."""
    if epochs < 1:
        raise ParameterError(f"epochs must be >= 1, got {epochs}")
    if not lr > 0:
        raise ParameterError(f"learning rate must be > 0, got {lr}")
    if batch_size < 1:
        raise ParameterError(f"batch size must be >= 1, got {batch_size}")
    if optimizer not in OPTIMIZERS:
        raise ParameterError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not weight_decay >= 0:
        raise ParameterError(f"weight decay must be >= 0, got {weight_decay}")
    if not momentum >= 0:
        raise ParameterError(f"momentum must be >= 0, got {momentum}")
    if patience is not None and patience < 1:
        raise ParameterError(f"patience must be >= 1 (or None), got {patience}")
    if schedule not in SCHEDULES:
        raise ParameterError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if not 0 <= warmup < 1:
        raise ParameterError(f"warmup must be a fraction of the steps in [0, 1), got {warmup}")


def make_optimizer(
    module: nn.Module, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """Adam (L2 added to the gradient), AdamW (decoupled decay) or SGD with momentum."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ParameterError("the module has no trainable parameters")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate per optimizer step: linear warm-up, then constant or cosine to ~0.

    ``warmup`` is the fraction of all ``total_steps`` spent warming up (at least one step
    when > 0), rising linearly to ``lr`` at its last step. Cosine then decays from ``lr``
    towards 0, reaching lr * (1 - cos(pi / n)) / 2 at the last of its n steps, so no step is
    wasted at exactly 0. The plan covers all epochs; early stopping only cuts it short.
    """

    lr: float
    total_steps: int
    schedule: Schedule = "constant"
    warmup: float = 0.0

    @property
    def warmup_steps(self) -> int:
        if self.warmup <= 0:
            return 0
        return min(self.total_steps, max(1, math.ceil(self.warmup * self.total_steps)))

    @property
    def is_constant(self) -> bool:
        """True when every step uses ``lr``: the optimizer is then never touched."""
        return self.schedule == "constant" and self.warmup_steps == 0

    def __call__(self, step: int) -> float:
        """The learning rate of step ``step`` (0-based)."""
        warm = self.warmup_steps
        if step < warm:
            return self.lr * (step + 1) / warm
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Set step ``step``'s learning rate on every parameter group (none if constant)."""
        if self.is_constant:
            return
        value = self(step)
        for group in optimizer.param_groups:
            group["lr"] = value

    def describe(self) -> str:
        """'cosine, warm-up 10%' style text for logs; empty for the constant default."""
        parts = [] if self.schedule == "constant" else [self.schedule]
        if self.warmup_steps:
            parts.append(f"warm-up {100 * self.warmup:g}% ({self.warmup_steps} steps)")
        return ", ".join(parts)
