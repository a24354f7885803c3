"""A small CNN for the 8x8 digits data set: same interface as the CIFAR models, CPU-cheap."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from curvenet.models import register_model
from curvenet.models.init import apply_init


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class DigitsCNN(nn.Module):
    """stem(16) -> stage1(16) -> stage2(32, /2) -> stage3(64, /2) -> global pool -> linear."""

    slmo_groups = (("stem",), ("stage1",), ("stage2",), ("stage3",))
    classifier = "linear"

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, width)
        self.stage1 = _conv_bn(width, width)
        self.stage2 = _conv_bn(width, 2 * width, 2)
        self.stage3 = _conv_bn(2 * width, 4 * width, 2)
        self.feature_dim = 4 * width
        self.linear = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@register_model("digits_cnn")
def digits_cnn(num_classes: int, in_channels: int = 1, init: str = "kaiming", width: int = 16) -> DigitsCNN:
    model = DigitsCNN(num_classes, in_channels, width)
    apply_init(model, init)
    return model


class FmnistCNN(nn.Module):
    """For 28x28 Fashion-MNIST: stem(w, /2) -> stage1(2w) -> stage2(4w, /2) -> stage3(4w) -> pool -> linear.

    The stride-2 stem halves the resolution first (14x14, then 7x7): at w = 8 a training step costs
    about half of DigitsCNN's at full resolution and a test pass a fifth, which is what lets all 13
    methods run per epoch evaluations on the full 10,000-image test set within the CPU budget.
    """

    slmo_groups = (("stem",), ("stage1",), ("stage2",), ("stage3",))
    classifier = "linear"

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.stem = _conv_bn(in_channels, width, 2)
        self.stage1 = _conv_bn(width, 2 * width)
        self.stage2 = _conv_bn(2 * width, 4 * width, 2)
        self.stage3 = _conv_bn(4 * width, 4 * width)
        self.feature_dim = 4 * width
        self.linear = nn.Linear(4 * width, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@register_model("fmnist_cnn")
def fmnist_cnn(num_classes: int, in_channels: int = 1, init: str = "kaiming", width: int = 8) -> FmnistCNN:
    model = FmnistCNN(num_classes, in_channels, width)
    apply_init(model, init)
    return model
