"""Small CNNs for 8x8 digits and 28x28 Fashion-MNIST: same interface as the CIFAR models, CPU-cheap."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.models import register_model
from curvebench.models.init import apply_init


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU stages (``stem``, ``stage1..3``) -> global pool -> linear; widths and strides per stage."""

    slmo_groups = (("stem",), ("stage1",), ("stage2",), ("stage3",))
    classifier = "linear"

    def __init__(self, num_classes: int, in_channels: int, widths: tuple[int, int, int, int],
                 strides: tuple[int, int, int, int]) -> None:
        super().__init__()
        cins = (in_channels, *widths[:3])
        self.stem, self.stage1, self.stage2, self.stage3 = (_conv_bn(c, w, s) for c, w, s in zip(cins, widths, strides))
        self.feature_dim = widths[-1]
        self.linear = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


class DigitsCNN(SmallCNN):
    """stem(16) -> stage1(16) -> stage2(32, /2) -> stage3(64, /2) -> global pool -> linear."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16) -> None:
        super().__init__(num_classes, in_channels, (width, width, 2 * width, 4 * width), (1, 1, 2, 2))


@register_model("digits_cnn")
def digits_cnn(num_classes: int, in_channels: int = 1, init: str = "kaiming", width: int = 16) -> DigitsCNN:
    model = DigitsCNN(num_classes, in_channels, width)
    apply_init(model, init)
    return model


class FmnistCNN(SmallCNN):
    """For 28x28 Fashion-MNIST: stem(w, /2) -> stage1(2w) -> stage2(4w, /2) -> stage3(4w) -> pool -> linear.

    The stride-2 stem halves the resolution first (14x14, then 7x7): at w = 8 a training step costs
    about half of DigitsCNN's at full resolution and a test pass a fifth, which is what lets all 13
    methods run per epoch evaluations on the full 10,000-image test set within the CPU budget.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 8) -> None:
        super().__init__(num_classes, in_channels, (width, 2 * width, 4 * width, 4 * width), (2, 1, 2, 1))


@register_model("fmnist_cnn")
def fmnist_cnn(num_classes: int, in_channels: int = 1, init: str = "kaiming", width: int = 8) -> FmnistCNN:
    model = FmnistCNN(num_classes, in_channels, width)
    apply_init(model, init)
    return model
