"""Learning-rate schedules as pure functions of the (0-based) epoch."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch


def multistep(epoch: int, lr: float, milestones: Sequence[int], gamma: float = 0.1, warmup_epochs: int = 0) -> float:
    """Linear warm-up lr*(e+1)/W for e < W (CurveNet's allocating stage), then x gamma at each milestone."""
    if epoch < warmup_epochs:
        return lr * (epoch + 1) / warmup_epochs
    return lr * gamma ** sum(epoch >= m for m in milestones)


def cosine(epoch: int, lr: float, epochs: int, warmup_epochs: int = 0, min_lr: float = 0.0) -> float:
    if epoch < warmup_epochs:
        return lr * (epoch + 1) / warmup_epochs
    t = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def recipe_lr(recipe: Mapping, epoch: int) -> float:
    """The classifier lr of a recipe config at ``epoch``."""
    kind = recipe["schedule"]
    if kind == "multistep":
        return multistep(epoch, recipe["lr"], recipe["milestones"], recipe["gamma"], recipe["warmup_epochs"])
    if kind == "cosine":
        return cosine(epoch, recipe["lr"], recipe["epochs"], recipe["warmup_epochs"])
    if kind == "constant":
        return float(recipe["lr"])
    raise ValueError(f"unknown recipe.schedule {kind!r}; use multistep, cosine or constant")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
