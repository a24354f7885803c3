"""Weight initialisations used by the official codes."""

from __future__ import annotations

import torch.nn as nn

INITS = ("kaiming", "curvenet")


def kaiming_init(model: nn.Module) -> None:
    """Kaiming-normal conv and linear weights (LDAM, MW-Net, HAR); BN left at its defaults."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)


def curvenet_init(model: nn.Module) -> None:
    """CurveNet's ``weights_init`` on top of Kaiming: conv ~ N(0, 0.02^2), BN gamma ~ N(1, 0.02^2),
    BN beta = 0; linear layers keep Kaiming weights and PyTorch's default bias."""
    kaiming_init(model)
    curvenet_conv_bn_init(model)


def curvenet_conv_bn_init(model: nn.Module) -> None:
    """CurveNet's ``weights_init`` alone: conv ~ N(0, 0.02^2), BN gamma ~ N(1, 0.02^2), beta = 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def apply_init(model: nn.Module, init: str) -> None:
    if init == "kaiming":
        kaiming_init(model)
    elif init == "curvenet":
        curvenet_init(model)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose one of {INITS + ('default',)}")
