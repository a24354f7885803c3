"""ResNet-32 for CIFAR (He et al. 2016) with option-A (parameter-free) shortcuts."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from curvebench.models import register_model
from curvebench.models.init import apply_init


class ShortcutA(nn.Module):
    """Subsample by 2 and zero-pad the channels: no parameters."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """Stem conv3x3(16) -> 3 stages of n BasicBlocks (16, 32, 64 wide) -> global pool -> linear."""

    slmo_groups = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",))
    classifier = "linear"

    def __init__(self, blocks_per_stage: int, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, layers, in_planes = (16, 32, 64), [], 16
        for i, width in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, width, 2 if (i > 0 and j == 0) else 1))
                in_planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.feature_dim = 64
        self.linear = nn.Linear(64, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@register_model("resnet32")
def resnet32(num_classes: int, in_channels: int = 3, init: str = "curvenet") -> ResNetCifar:
    model = ResNetCifar(5, num_classes, in_channels)
    apply_init(model, init)
    return model


@register_model("resnet8")
def resnet8(num_classes: int, in_channels: int = 3, init: str = "curvenet") -> ResNetCifar:
    """One block per stage: the same code path as ResNet-32 at a fraction of the cost (tests)."""
    model = ResNetCifar(1, num_classes, in_channels)
    apply_init(model, init)
    return model
