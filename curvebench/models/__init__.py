"""Model registry. Every model exposes ``slmo_groups``: the ordered module-name groups (stem, then
the residual stages) that SLMO may take out of the meta path, and ``classifier``: the name of the
final linear layer (methods such as LDAM replace it)."""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from curvebench.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a registered model by name."""
    return MODELS.get(name)(num_classes=num_classes, in_channels=in_channels, **kwargs)


def num_slmo_stages(model: nn.Module) -> int:
    """How many residual stages SLMO can skip (the stem is group 0 and is not counted)."""
    return len(model.slmo_groups) - 1  # type: ignore[attr-defined]


# Import the model modules so that they register themselves.
from curvebench.models import resnet_cifar, small, torchvision_models, wrn  # noqa: E402,F401

__all__ = ["MODELS", "build_model", "num_slmo_stages", "register_model"]
